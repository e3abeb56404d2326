"""The FSGS presets (methods/presets/fsgs.yaml over the shared base): complete for every FSGS module, every
setting sourced, and each schedule what its comments promise."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.methods import load_preset, method_presets
from gfbench.methods.fsgs import DepthLossSchedule, make_fsgs_strategy, pseudo_cameras

PRESETS_FILE = method_presets("fsgs").path
PRESETS = method_presets("fsgs").presets
PSEUDO_KEYS = {
    "interpolate": ("pseudo_pool_size", "pseudo_interpolation_min", "pseudo_interpolation_max", "pseudo_noise"),
    "random-around-mean": ("pseudo_pool_size", "pseudo_depth_percentile_low", "pseudo_depth_percentile_high",
                           "pseudo_focus_near_factor",
                           "pseudo_focus_far_factor", "pseudo_focus_disparity_weight"),
}
CODE_DIFFERENCES = {"unpool_score", "unpool_pairing", "split_far_threshold", "pseudo_view_rule", "depth_train_form"}


def full_config(name: str) -> dict:
    return load_preset("fsgs", name)


def test_presets_exist_with_their_run_lengths():
    assert {name: PRESETS[name]["steps"] for name in PRESETS} == {
        "paper-fsgs": 10000, "paper": 7000, "code-fsgs": 10000, "quick": 300}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_module_finds_its_settings(name):
    config = full_config(name)
    strategy = make_fsgs_strategy(config)
    assert strategy.grow_grad2d == 5e-4 and strategy.reset_opacity == 0.05
    DepthLossSchedule.from_config(config)
    for key in PSEUDO_KEYS[config["pseudo_view_rule"]]:
        assert key in config
    assert config["depth_render"] == "accumulated"


def test_every_setting_line_names_its_source():
    presets_part = PRESETS_FILE.read_text().split("\npresets:\n", 1)[1]
    unsourced = [line for line in presets_part.splitlines()
                 if re.match(r"^\s+[a-z_0-9]+:\s*\S", line) and "#" not in line and "extends:" not in line]
    assert unsourced == []


def test_every_fsgs_setting_is_typed_and_the_base_is_included():
    settings = method_presets("fsgs").settings
    assert settings["prune_scale3d"].nullable and settings["strategy"].choices == ("fsgs",)
    assert PRESETS["quick"]["ssim_lambda"] == load_preset("3dgs", "quick")["ssim_lambda"]


def test_code_variant_differs_from_the_paper_exactly_where_the_header_says():
    paper, code = PRESETS["paper-fsgs"], PRESETS["code-fsgs"]
    assert {key for key in code if code[key] != paper.get(key)} == CODE_DIFFERENCES


def test_quick_schedule_keeps_fsgs_proportions():
    config = full_config("quick")
    strategy = make_fsgs_strategy(config)
    steps = range(config["steps"])
    assert [s for s in steps if strategy.is_refine_step(s)] == [100, 150, 200, 250]
    assert [s for s in steps if strategy.is_unpool_step(s)] == [100, 150]
    assert [s for s in steps if strategy.is_reset_step(s)] == [61, 151, 241]
    schedule = DepthLossSchedule.from_config(config)
    assert sum(schedule.is_pseudo_step(s) for s in steps) == 44


def test_fsgs_schedule_matches_its_train_loop():
    strategy = make_fsgs_strategy(full_config("paper-fsgs"))
    steps = range(10000)
    assert [s for s in steps if strategy.is_reset_step(s)] == [2001, 5001, 8001]
    unpools = [s for s in steps if strategy.is_unpool_step(s)]
    assert unpools[0] == 600 and unpools[-1] == 1900 and len(unpools) == 14
    assert sum(strategy.is_refine_step(s) for s in steps) == 94
    seven_thousand = make_fsgs_strategy(full_config("paper"))
    assert [s for s in range(7000) if seven_thousand.is_reset_step(s)] == [2001, 5001]


@pytest.mark.parametrize("name", ["quick", "code-fsgs"])
def test_presets_build_their_pseudo_camera_pools(name):
    config = dict(full_config(name), pseudo_pool_size=50)
    cameras = [Camera(K=intrinsics(30.0, 30.0, 16.0, 12.0), c2w=look_at(np.array([x, -4.0, 1.0]), np.zeros(3)),
                      width=32, height=24) for x in (-1.0, 0.0, 1.5)]
    points = np.random.default_rng(0).uniform(-1, 1, size=(300, 3))
    pool = pseudo_cameras(cameras, np.random.default_rng(0), config, points)
    assert len(pool) == 50 and all(camera.width == 32 for camera in pool)
