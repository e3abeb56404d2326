"""The runner with stand-in methods: resume, overwrite, changed configs, crashes, records and renders."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gfbench import methods, results, specs
from gfbench.cli import main
from gfbench.methods import Render
from gfbench.runner import plan_jobs, run_suite
from gfbench.shards import write_scene
from helpers import tiny_scene

CALLS = []


class MeanColor:
    """Renders the mean color of its train pixels everywhere."""

    name = "mean-color"

    def __init__(self, device="cpu"):
        self.color = None

    def fit(self, train_views, *, points, config, seed, workdir, progress=None):
        CALLS.append(("fit", config.get("steps"), seed))
        self.color = np.mean([v.image.reshape(-1, 3).mean(0) for v in train_views], axis=0) / 255.0
        if progress:
            progress(config.get("steps", 1), {"loss": 0.5, "psnr": 10.0})

    def render(self, cameras):
        return [Render(np.broadcast_to(self.color, (c.height, c.width, 3)).astype(np.float32)) for c in cameras]


class Crashes(MeanColor):
    name = "crashes"

    def fit(self, *args, **kwargs):
        raise RuntimeError("injected crash")


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A suite over a tiny built dataset, and the two stand-in methods registered."""
    spec_dir = tmp_path / "specs"
    (spec_dir / "suites").mkdir(parents=True)
    (spec_dir / "testset.yaml").write_text(
        "id: testset\nkind: dataset\nversion: 1\nlayout: colmap\nscenes: [a, b]\n")
    suite = {
        "id": "test-masked", "kind": "suite", "version": 1, "dataset": "testset", "scenes": "all",
        "protocol": specs.load_suite("synthetic-masked").protocol,
        "metrics": ["psnr", "ssim"], "preset": "quick", "seeds": [0],
    }
    (spec_dir / "suites" / "test-masked.yaml").write_text(json.dumps(suite))
    data = tmp_path / "data"
    for scene_id, seed in (("a", 0), ("b", 1)):
        write_scene(tiny_scene(frames=6, width=24, height=16, seed=seed, dataset="testset", scene_id=scene_id), data)
    monkeypatch.setenv("GFBENCH_SPECS", str(spec_dir))
    table = {"mean-color": f"{__name__}:MeanColor", "crashes": f"{__name__}:Crashes"}
    monkeypatch.setattr(methods, "_entry_points", lambda: table)
    presets = tmp_path / "mean-color.yaml"
    presets.write_text("settings:\n  steps: {type: int, min: 1}\npresets:\n  quick: {steps: 7}\n")
    monkeypatch.setattr(MeanColor, "presets_file", str(presets), raising=False)
    CALLS.clear()
    return {"data": data, "results": tmp_path / "results", "suite": specs.load_suite("test-masked")}


def run(world, method_names, **kwargs):
    overrides = kwargs.pop("overrides", {})
    jobs = plan_jobs(world["suite"], method_names, None, None, None, overrides)
    return run_suite(jobs, world["results"], world["data"], show_progress=False, **kwargs)


def test_records_hold_metrics_config_and_provenance(world):
    summary = run(world, ["mean-color"])
    assert len(summary.done) == 2 and not summary.failed
    record = results.read_record(summary.done[0])
    assert record["status"] == "ok" and record["method"] == "mean-color" and record["scene"] == "a"
    assert record["config"] == {"steps": 7} and len(record["config_hash"]) == 64
    assert set(record["metrics"]) >= {"psnr", "ssim"}
    assert len(record["per_image"]) == 3  # 6 frames, every 2nd is a train frame
    assert record["metrics"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in record["per_image"]]))
    for key in ("versions", "git_commit", "device", "wall_time_s", "peak_memory_mb", "created", "split"):
        assert key in record
    compare = summary.done[0].with_suffix("") / "compare"
    assert len(list(compare.glob("*.png"))) == 3


def test_rerun_skips_finished_jobs_and_overwrite_redoes_them(world):
    run(world, ["mean-color"])
    assert len(CALLS) == 2
    again = run(world, ["mean-color"])
    assert len(again.skipped) == 2 and not again.done and len(CALLS) == 2
    redo = run(world, ["mean-color"], overwrite=True)
    assert len(redo.done) == 2 and len(CALLS) == 4


def test_changed_config_is_a_new_job(world):
    first = run(world, ["mean-color"])
    changed = run(world, ["mean-color"], overrides={"steps": 9})
    assert len(changed.done) == 2 and set(changed.done).isdisjoint(first.done)
    assert CALLS[-1] == ("fit", 9, 0)


def test_a_crash_is_recorded_and_the_other_jobs_still_run(world):
    summary = run(world, ["crashes", "mean-color"])
    assert len(summary.failed) == 2 and len(summary.done) == 2
    failed = results.read_record(summary.failed[0])
    assert failed["status"] == "failed" and "injected crash" in failed["error"]
    assert all(results.read_record(p)["status"] == "ok" for p in summary.done)
    # a failed job is retried on the next run; the finished ones are not
    retry = run(world, ["crashes", "mean-color"])
    assert len(retry.failed) == 2 and len(retry.skipped) == 2


def test_missing_real_scene_fails_before_any_training(world, tmp_path):
    with pytest.raises(Exception, match="not built.*gfbench build-data testset"):
        run_suite(plan_jobs(world["suite"], ["mean-color"], None, None, None, {}), world["results"],
                  tmp_path / "empty", show_progress=False)
    assert CALLS == []


def test_cli_run_and_bad_input(world):
    cli = CliRunner()
    args = ["run", "--suite", "test-masked", "--method", "mean-color", "--data", str(world["data"]),
            "--results", str(world["results"])]
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 ran, 0 skipped" in result.output
    assert "0 ran, 2 skipped" in cli.invoke(main, args).output
    bad = cli.invoke(main, args + ["--scenes", "zzz"])
    assert bad.exit_code != 0 and "no scene 'zzz'" in bad.output
    bad = cli.invoke(main, ["run", "--suite", "test-masked", "--method", "nope"])
    assert bad.exit_code != 0 and "unknown method 'nope'" in bad.output
    crash = cli.invoke(main, ["run", "--suite", "test-masked", "--method", "crashes", *args[5:]])
    assert crash.exit_code == 1 and "2 failed" in crash.output


def test_missing_lpips_weights_stop_the_run_before_training(world, tmp_path, monkeypatch):
    from gfbench.metrics import LpipsWeightsMissing

    monkeypatch.setenv("GFBENCH_LPIPS_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    suite = specs.SuiteSpec(**{**world["suite"].__dict__, "metrics": ("psnr", "lpips_vgg_3dgs")})
    with pytest.raises(LpipsWeightsMissing, match="vgg16-397923af.pth"):
        run_suite(plan_jobs(suite, ["mean-color"], None, None, None, {}), world["results"], world["data"],
                  show_progress=False)
    assert CALLS == []
