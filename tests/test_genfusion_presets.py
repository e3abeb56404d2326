"""GenFusion's presets (methods/presets/genfusion.yaml): every preset resolves for both protocols into settings
the GenFusion modules accept, the Table 1 ablation rows switch exactly one component each, the paper/code
differences, and per-protocol values in the typed settings."""

from __future__ import annotations

import pytest

from gfbench.methods import load_preset, method_presets
from gfbench.methods.config import ConfigError, read_presets
from gfbench.methods.genfusion.densification import SparsityAwareStrategy
from gfbench.methods.genfusion.presets import (
    GENFUSION_KEYS,
    PROTOCOLS,
    STRATEGIES,
    TRAJECTORIES,
    for_protocol,
    preset_names,
    resolve_preset,
)
from gfbench.methods.genfusion.schedule import RepairSchedule
from gfbench.methods.genfusion.trajectories import EllipseSettings
from gfbench.methods.genfusion.windows import REFERENCE_RULES, WINDOW_RULES

PRESETS = sorted(preset_names())
TWO_DGS_KEYS = set(load_preset("2dgs", "paper"))
ROWS = [name for name in PRESETS if name.startswith("table1-")]
SWITCHES = ("train_view_depth", "sample_view_rgb", "sample_view_depth", "strategy")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_resolves_into_settings_the_modules_accept(name, protocol):
    config = resolve_preset(name, protocol)
    assert set(GENFUSION_KEYS) <= set(config)
    assert set(config) <= TWO_DGS_KEYS | set(GENFUSION_KEYS), "a setting that is neither GenFusion's nor 2DGS's"
    assert all(isinstance(config[k], bool) for k in SWITCHES[:3])
    assert config["strategy"] in STRATEGIES
    assert config["window_rule"] in WINDOW_RULES and config["reference_rule"] in REFERENCE_RULES
    assert TRAJECTORIES[config["trajectory"]] == protocol  # masked: the train poses; sparse: the ellipse
    schedule = RepairSchedule.from_config(config)
    assert schedule.rounds() and schedule.rounds()[-1] < config["steps"]
    EllipseSettings.from_config(config)
    SparsityAwareStrategy.from_config(config, gradient_key="gradient_2dgs")


def switches(name, protocol="masked"):
    config = resolve_preset(name, protocol)
    return tuple(config[k] for k in SWITCHES)


def test_table1_rows_add_one_component_each_up_to_the_paper_preset():
    assert ROWS == sorted(ROWS) and len(ROWS) == 5
    assert [switches(row) for row in ROWS] == [
        (False, False, False, "default"),
        (True, False, False, "default"),
        (True, True, False, "default"),
        (True, True, True, "default"),
        (True, True, True, "sparsity_aware"),
    ]
    for protocol in PROTOCOLS:
        assert resolve_preset(ROWS[-1], protocol) == resolve_preset("paper", protocol)
    baseline = resolve_preset(ROWS[0], "masked")
    assert {k: baseline[k] for k in TWO_DGS_KEYS} == load_preset("2dgs", "paper")  # row 1 is plain 2DGS


def test_paper_and_code_differ_where_the_scripts_do():
    rounds = {(name, protocol): RepairSchedule.from_config(resolve_preset(name, protocol)).rounds()
              for name in ("paper", "code") for protocol in PROTOCOLS}
    assert rounds[("paper", "masked")] == rounds[("paper", "sparse")] == rounds[("code", "sparse")] == [
        1000, 2000, 3000, 4000, 5000, 6000]
    assert rounds[("code", "masked")] == [3000, 4000, 5000, 6000]
    code_masked, code_sparse = resolve_preset("code", "masked"), resolve_preset("code", "sparse")
    assert (code_masked["lambda_reg"], code_sparse["lambda_reg"]) == (0.5, 1.0)
    assert (code_masked["ssim_lambda"], code_sparse["ssim_lambda"], resolve_preset("paper", "masked")["ssim_lambda"]) == (0.8, 0.5, 0.2)
    assert (code_masked["strategy"], code_sparse["strategy"]) == ("sparsity_aware", "default")
    assert (code_masked["train_view_depth"], code_sparse["train_view_depth"]) == (False, True)
    assert (code_masked["reference_rule"], code_sparse["reference_rule"]) == ("random", "nearest")


def test_quick_has_two_rounds_and_a_gate_that_bites_in_300_steps():
    config = resolve_preset("quick", "masked")
    assert RepairSchedule.from_config(config).rounds() == [100, 200]
    strategy = SparsityAwareStrategy.from_config(config, gradient_key="gradient_2dgs")
    assert [strategy.min_visibility(s) for s in (100, 150)] == [20, 20]
    assert (config["refine_start_iter"], config["refine_every"], config["refine_stop_iter"]) == (50, 50, 200)


def test_per_protocol_values_and_errors(tmp_path):
    config = {"a": {"masked": 1, "sparse": 2}, "b": 3, "c": {"masked": 4}, "d": {"other": 5}}
    assert for_protocol(config, "masked") == {"a": 1, "b": 3, "c": 4, "d": {"other": 5}}
    with pytest.raises(ConfigError, match="'c' has no value for the sparse protocol"):
        for_protocol(config, "sparse")
    with pytest.raises(ConfigError, match="protocol 'dense'"):
        for_protocol(config, "dense")
    with pytest.raises(ValueError, match="protocol 'corner'"):
        resolve_preset("paper", "corner")
    with pytest.raises(ConfigError, match="no preset 'fast'"):
        resolve_preset("fast", "masked")
    assert method_presets("genfusion").presets["code"]["lambda_reg"] == {"masked": 0.5, "sparse": 1.0}


def test_per_protocol_values_are_typed_like_plain_ones(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("settings:\n  w: {type: float, min: 0}\npresets:\n  p: {w: {masked: 1, sparse: -1}}\n")
    with pytest.raises(ConfigError, match="preset 'p': setting 'w' = -1 is not allowed"):
        read_presets(path, "m")
    path.write_text("settings:\n  w: {type: float, min: 0}\npresets:\n  p: {w: {masked: 1, sparse: 2}}\n")
    presets = read_presets(path, "m")
    assert presets.config("p", "sparse") == {"w": 2.0} and presets.config("p") == {"w": {"masked": 1.0, "sparse": 2.0}}
