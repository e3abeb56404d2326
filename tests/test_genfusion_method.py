"""GenFusion as a method, through the contract's public seams: repaired views join training with the schedule's
weight at the scheduled steps, leave at the next round and never feed the densification statistics; the
train views carry the prior's depth; a contact sheet per round; `gfbench run` with a tiny prior end to end, its
record naming the prior with the sha256 of its files; a missing or broken prior refused before training."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from click.testing import CliRunner

from gfbench import results, specs
from gfbench.cli import main
from gfbench.methods.core.strategies import OpacityResettingStrategy
from gfbench.methods.genfusion import GenFusion, RepairSchedule, resolve_preset
from gfbench.priors import Priors, folder_fingerprint
from gfbench.priors.video import build_video_prior, video_prior_spec
from gfbench.protocols import make_split
from helpers import tiny_scene
from worlds import make_world

STEPS = 12
SETTINGS = {"steps": STEPS, "log_every": 1, "repair_start": 3, "repair_every": 4, "repair_until": 12,
            "refine_start_iter": 1, "refine_every": 2, "refine_stop_iter": 10}


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory):
    spec = copy.deepcopy(video_prior_spec("tiny"))
    spec["prior"]["sampling"]["steps"] = 2  # two DDIM steps: plumbing, not quality
    return build_video_prior(spec, seed=0).save_pretrained(tmp_path_factory.mktemp("prior") / "tiny-video")


@pytest.fixture(scope="module")
def split():
    scene = tiny_scene(frames=6, width=24, height=16, seed=0)
    return make_split(scene, specs.load_suite("synthetic-masked").protocol, seed=0)


class SpyStrategy(OpacityResettingStrategy):
    """The default strategy, noting the size of every render that feeds its statistics."""

    def step_pre_backward(self, params, optimizers, state, step, info):
        self.fed.append((step, int(info["width"]), int(info["height"])))
        super().step_pre_backward(params, optimizers, state, step, info)

    @classmethod
    def from_config(cls, config, *, gradient_key):
        strategy = super().from_config(config, gradient_key=gradient_key)
        strategy.fed = []
        return strategy


class SpiedGenFusion(GenFusion):
    strategies = {**GenFusion.strategies, "spy": SpyStrategy}

    def setup(self, trainer):
        super().setup(trainer)
        self.trainer = trainer


@pytest.fixture(scope="module")
def fitted(split, prior_folder, tmp_path_factory):
    """One short run (three repair rounds), shared by the tests that look at it: (method, config, workdir)."""
    from gfbench.priors.video import load_video_prior

    config = {**resolve_preset("quick", "masked"), "strategy": "spy", **SETTINGS}
    method, workdir = SpiedGenFusion(device="cpu"), tmp_path_factory.mktemp("genfusion-job")
    method.fit(split.train, points=split.points, config=config, seed=0, workdir=workdir,
               priors=Priors({"video": load_video_prior(prior_folder)}))
    return method, config, workdir


def test_repaired_views_join_with_the_schedule_weight_and_leave_at_the_next_round(fitted):
    method, config, _ = fitted
    schedule = RepairSchedule.from_config(config)
    rounds = schedule.rounds()
    assert rounds == [3, 7, 11] and [entry["step"] for entry in method.repair_log] == rounds
    assert len(method.history) == STEPS
    for entry in method.history:
        step = int(entry["step"]) - 1
        present = sorted({key.split("/")[0] for key in entry if key.startswith("repaired-")})
        current = [i for i, start in enumerate(rounds) if start <= step][-1:]  # the latest round so far
        if not current or schedule.weight(step) == 0:
            assert present == [], step
            continue
        assert present == [f"repaired-{current[0]}"], step  # the previous round's views have left
        assert entry[f"repaired-{current[0]}/weight"] == pytest.approx(schedule.weight(step)), step
        assert entry[f"repaired-{current[0]}/repair_rgb"] > 0 and f"repaired-{current[0]}/repair_depth" in entry
        # the weighted repaired loss is part of the optimized loss
        train_terms = sum(entry[k] for k in ("rgb", "train_depth", "dist", "normal") if k in entry)
        assert entry["loss"] == pytest.approx(train_terms + schedule.weight(step) * entry[f"repaired-{current[0]}/loss"],
                                              rel=1e-4)
    assert list(method.trainer.sources) == ["train", f"repaired-{len(rounds) - 1}"]


def test_repaired_views_never_feed_densification(split, fitted):
    method, _, _ = fitted
    fed = method.trainer.strategy.fed
    train_size = {(v.camera.width, v.camera.height) for v in split.train}
    repaired = method.trainer.sources["repaired-2"].views
    assert {(v.width, v.height) for v in repaired} == {(24, 16)} != train_size  # full frames, not the patches
    assert [step for step, _, _ in fed] == list(range(STEPS))  # exactly one render per step: the train view's
    assert {(w, h) for _, w, h in fed} == train_size


def test_train_views_carry_the_prior_depth_and_each_round_leaves_a_contact_sheet(split, fitted):
    method, _, tmp_path = fitted
    for view in method.trainer.train_views:
        depth = view.data["prior_depth"]
        assert tuple(depth.shape) == (view.height, view.width) and bool((depth > 0).all())
    assert all("train_depth" in entry for entry in method.history)
    sheets = sorted(p.name for p in (tmp_path / "genfusion").glob("*.png"))
    assert sheets == ["repair-round00-step00003.png", "repair-round01-step00007.png", "repair-round02-step00011.png"]
    assert [entry["views"] for entry in method.repair_log] == [len(split.train)] * 3  # masked: the train poses
    rounds = json.loads((tmp_path / "genfusion" / "rounds.json").read_text())
    assert [(r["step"], r["round"], r["sheet"]) for r in rounds] == list(zip([3, 7, 11], [0, 1, 2], sheets))


def test_switched_off_components_call_no_prior(split, tmp_path):
    baseline = resolve_preset("table1-1-baseline", "masked")  # Table 1's row 1: every component off
    switches = {key: baseline[key] for key in ("train_view_depth", "sample_view_rgb", "sample_view_depth", "strategy")}
    config = {**resolve_preset("quick", "masked"), **SETTINGS, **switches}
    method = GenFusion(device="cpu")
    method.fit(split.train, points=split.points, config=config, seed=0, workdir=tmp_path, priors=Priors())
    assert method.repair_log == [] and not any(k.startswith("repaired-") for e in method.history for k in e)


# ---------------------------------------------------------------- gfbench run


def run_cli(world, *args, env=None):
    return CliRunner().invoke(main, ["run", "--data", str(world["data"]), "--results", str(world["results"]), *args],
                              env=env)


def test_a_missing_or_broken_prior_is_refused_before_training(tmp_path, monkeypatch, prior_folder):
    world = make_world(tmp_path, monkeypatch)
    monkeypatch.delenv("GFBENCH_VIDEO_PRIOR", raising=False)
    result = run_cli(world, "--suite", "test-masked", "--method", "genfusion")
    assert result.exit_code != 0 and "needs a video prior" in result.output and "--prior PATH" in result.output
    broken = tmp_path / "broken"
    (broken / "unet").mkdir(parents=True)
    for item in prior_folder.iterdir():
        if item.name != "unet":
            (broken / item.name).symlink_to(item)
    (broken / "unet" / "config.json").write_text((prior_folder / "unet" / "config.json").read_text())
    result = run_cli(world, "--suite", "test-masked", "--method", "genfusion", "--prior", str(broken))
    assert result.exit_code != 0 and "unet/'diffusion_pytorch_model.safetensors'" in result.output
    assert not world["results"].exists() or not list(world["results"].rglob("*.json"))


def test_run_without_method_skips_genfusion_saying_why(tmp_path, monkeypatch):
    from gfbench.cli.run import choose_methods

    monkeypatch.delenv("GFBENCH_VIDEO_PRIOR", raising=False)
    chosen, skipped = choose_methods([], device="cpu", protocol="masked", configured=set(), preset="quick")
    assert "genfusion" not in chosen and "2dgs" in chosen
    assert dict(skipped)["genfusion"] == "needs a video prior (none configured)"
    chosen, _ = choose_methods([], device="cpu", protocol="masked", configured={"video"}, preset="quick")
    assert "genfusion" in chosen


@pytest.mark.slow  # builds the synthetic scene (48 frames) and runs one repair round
def test_gfbench_run_genfusion_on_synthetic_masked_records_the_prior(tmp_path, monkeypatch, prior_folder):
    monkeypatch.delenv("GFBENCH_VIDEO_PRIOR", raising=False)
    data, out = tmp_path / "data", tmp_path / "results"
    settings = ["--set", "steps=2", "--set", "repair_start=1", "--set", "repair_every=1", "--set", "repair_until=3"]
    result = CliRunner().invoke(main, ["run", "--data", str(data), "--results", str(out), "--suite", "synthetic-masked",
                                       "--method", "genfusion", "--scenes", "tabletop", "--prior", str(prior_folder),
                                       *settings])
    assert result.exit_code == 0, result.output
    assert "video prior: tiny-video" in result.output
    (path,) = list(out.rglob("seed0-*.json"))
    record = results.read_record(path)
    assert record["status"] == "ok" and record["method"] == "genfusion"
    assert record["config"]["strategy"] == "sparsity_aware" and record["config"]["trajectory"] == "train_poses"
    entry = record["priors"]["video"]
    assert entry["kind"] == "video" and entry["name"] == "tiny-video"
    assert entry["files_sha256"] == folder_fingerprint(prior_folder) and "unet/diffusion_pytorch_model.safetensors" in entry["files_sha256"]
    assert record["identity"]["priors"]["video"]["name"] == "tiny-video"
    rounds = json.loads((path.with_suffix("") / "genfusion" / "rounds.json").read_text())
    assert [(r["step"], r["views"]) for r in rounds] == [(1, len(record["split"]["train_indices"]))]
    assert (path.with_suffix("") / "genfusion" / rounds[0]["sheet"]).is_file()
    assert np.isfinite(record["metrics"]["psnr"])


def test_leaderboard_matches_a_record_to_its_preset_under_the_record_protocol():
    from gfbench.leaderboard import Entries

    for protocol in ("masked", "sparse"):
        record = {"method": "genfusion", "preset": "code", "config": resolve_preset("code", protocol),
                  "identity": {"protocol": {"type": protocol}}}
        assert Entries().of(record).config == "code", protocol
    changed = {**resolve_preset("code", "masked"), "lambda_reg": 1.0}  # the sparse value on a masked run
    record = {"method": "genfusion", "preset": "code", "config": changed, "identity": {"protocol": {"type": "masked"}}}
    assert Entries().of(record).config.startswith("cfg-")
