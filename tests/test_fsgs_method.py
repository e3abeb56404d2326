"""FSGS as a method: pseudo views get only the depth term (never a photometric one, never the densification
statistics), the oracle prior turns them off or is refused, and ``gfbench run --method fsgs`` runs end to end on
synthetic-sparse-3 with a tiny depth model and with the oracle, its record naming the prior."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gfbench import results, specs
from gfbench.camera import Camera
from gfbench.cli import main
from gfbench.leaderboard import method_label
from gfbench.methods import ConfigError, load_preset
from gfbench.methods.fsgs import FSGS
from gfbench.priors import Priors
from helpers import BrightnessDepth, orbit_camera, orbit_views, random_points
from worlds import tiny_depth_anything

STEPS = 12


class KeepsTrainer(FSGS):
    """FSGS that keeps its trainer, to look at the sources through the trainer's public state."""

    def setup(self, trainer):
        super().setup(trainer)
        self.trainer = trainer


def camera(i: int) -> Camera:
    return orbit_camera(i, 0.4)


@pytest.fixture(scope="module")
def views():
    return orbit_views(0.4)


@pytest.fixture(scope="module")
def points():
    return random_points()


def config(**overrides):
    return {**load_preset("fsgs", "quick"), "steps": STEPS, "log_every": 1, "pseudo_start_iter": 0,
            "pseudo_stop_iter": STEPS, "pseudo_every": 1, "pseudo_pool_size": 5, "depth_pseudo_ramp": 0, **overrides}


def fit(views, points, tmp_path, prior, **overrides) -> KeepsTrainer:
    method = KeepsTrainer()
    method.fit(views, points=points, config=config(**overrides), seed=0, workdir=tmp_path,
               priors=Priors({"depth": prior}))
    return method


def test_pseudo_views_get_only_the_depth_term(views, points, tmp_path):
    prior = BrightnessDepth()
    method = fit(views, points, tmp_path, prior)
    source = method.trainer.sources["pseudo"]
    assert not source.feeds_densification and all(view.image is None for view in source.views)
    pseudo_terms = {key for entry in method.history for key in entry if key.startswith("pseudo/")}
    assert pseudo_terms == {"pseudo/loss", "pseudo/weight", "pseudo/depth"}
    assert all("depth" in entry and "rgb" in entry for entry in method.history)  # the train views' terms
    # the train images are predicted once and cached; each pseudo render (steps 1..11) uncached
    assert prior.calls[:3] == [(np.dtype(np.uint8), True)] * 3
    assert prior.calls[3:] == [(np.dtype(np.float32), False)] * (STEPS - 1)


def colour_gradient(method, source_name: str) -> tuple[float, float]:
    """|d loss / d colours| and |d loss / d means| of one view of the source, at the end of training."""
    trainer = method.trainer
    source = trainer.sources[source_name]
    view = source.views[0]
    for param in method.params.values():
        param.grad = None
    terms = source.loss(trainer, trainer.render(view), view, STEPS - 1)
    sum(terms.values()).backward()
    return float(method.params["sh0"].grad.abs().sum()), float(method.params["means"].grad.abs().sum())


def test_a_pseudo_view_loss_never_reaches_the_colours(views, points, tmp_path):
    method = fit(views, points, tmp_path, BrightnessDepth())
    pseudo_colour, pseudo_means = colour_gradient(method, "pseudo")
    train_colour, _ = colour_gradient(method, "train")
    assert pseudo_colour == 0.0 and pseudo_means > 0.0  # geometry only: no photometric term
    assert train_colour > 0.0  # the train views' photometric term does reach the colours


def test_the_oracle_turns_pseudo_views_off_or_is_refused(views, points, tmp_path):
    oracle = BrightnessDepth(novel_images=False, name="oracle")
    method = fit(views, points, tmp_path, oracle)
    assert list(method.trainer.sources) == ["train"]
    assert all(cache for _, cache in oracle.calls)  # only the train images were asked for
    with pytest.raises(ConfigError, match="pseudo_views = 'on' needs a depth prior that predicts novel images; "
                                          "the 'oracle' prior knows only the train images"):
        fit(views, points, tmp_path, oracle, pseudo_views="on")
    method = fit(views, points, tmp_path, BrightnessDepth(), pseudo_views="off")
    assert list(method.trainer.sources) == ["train"]


def test_depth_term_uses_the_accumulated_depth_by_default(views, points, tmp_path):
    method = fit(views, points, tmp_path, BrightnessDepth(), pseudo_views="off")
    view = method.trainer.train_views[0]
    rendered = method.trainer.render(view)
    accumulated = rendered.extras["accumulated_depth"]
    torch.testing.assert_close(rendered.depth * rendered.alpha[..., 0].clamp_min(1e-10), accumulated)


# ---------------------------------------------------------------- end to end through the CLI


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fsgs-data")


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory):
    return tiny_depth_anything(tmp_path_factory.mktemp("prior") / "depth-anything")


@pytest.mark.parametrize("prior", ["model", "oracle"])
def test_fsgs_runs_end_to_end_on_synthetic_sparse(data_root, depth_model, tmp_path, monkeypatch, prior):
    monkeypatch.delenv("GFBENCH_DEPTH_PRIOR", raising=False)
    flag = "oracle" if prior == "oracle" else str(depth_model)
    result = CliRunner().invoke(main, [
        "run", "--method", "fsgs", "--suite", "synthetic-sparse-3", "--scenes", "tabletop", "--data", str(data_root),
        "--results", str(tmp_path / "results"), "--depth-prior", flag, "--set", "steps=6", "--set",
        "pseudo_start_iter=0", "--set", "pseudo_every=2", "--set", "pseudo_pool_size=4"])
    assert result.exit_code == 0, result.output
    (path,) = list((tmp_path / "results").rglob("seed0-*.json"))
    record = results.read_record(path)
    assert record["status"] == "ok" and record["method"] == "fsgs", record.get("error")
    name = "oracle" if prior == "oracle" else "depth-anything"
    assert record["priors"]["depth"]["name"] == name and record["identity"]["priors"]["depth"]["name"] == name
    assert record["config"]["pseudo_views"] == "auto"
    label = method_label(record, specs.load_suite("synthetic-sparse-3"))
    # labelled with its prior (and its config, --set differing from the preset)
    suffix = r"\+oracle-depth" if prior == "oracle" else r"\+depth:depth-anything#[0-9a-f]{6}"
    assert re.fullmatch(r"fsgs@cfg-[0-9a-f]+" + suffix, label), label
