"""Typed method settings and presets: the schema, includes and ``extends``, checks at planning time with
messages that name the setting, the value and what is allowed, for every method (one without a presets file
too)."""

import numpy as np
import pytest
from click.testing import CliRunner

from gfbench import methods, specs
from gfbench.cli import main
from gfbench.methods import ConfigError, Render, load_preset, method_presets
from gfbench.methods.config import Setting, parse_setting, read_presets
from gfbench.runner import plan_jobs, resolve_config


@pytest.mark.parametrize("spec, value, expected", [
    ({"type": "int", "min": 1}, 7, 7),
    ({"type": "float", "gt": 0}, 1, 1.0),           # an int is a number
    ({"type": "float", "gt": 0}, "1e-3", 1e-3),     # YAML reads 1e-3 as a string
    ({"type": "float", "min": 0, "max": 1}, 1.0, 1.0),
    ({"type": "bool"}, False, False),
    ({"type": "str", "choices": ["a", "b"]}, "b", "b"),
    ({"type": "float", "gt": 0, "nullable": True}, None, None),
    ({"type": "int", "min": 1, "odd": True}, 11, 11),
])
def test_allowed_values_are_typed(spec, value, expected):
    checked = parse_setting("x", spec, "test").check(value)
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize("spec, value, message", [
    ({"type": "int", "min": 1}, -5, "setting 'x' = -5 is not allowed: expected an integer >= 1"),
    ({"type": "int", "min": 1}, 1.5, "= 1.5 is not allowed: expected an integer >= 1"),
    ({"type": "int", "min": 1}, True, "= true is not allowed: expected an integer >= 1"),
    ({"type": "int", "min": 1}, "abc", "= 'abc' is not allowed: expected an integer >= 1"),
    ({"type": "int", "min": 1}, None, "= null is not allowed"),
    ({"type": "float", "gt": 0}, 0, "= 0 is not allowed: expected a number > 0"),
    ({"type": "float", "gt": 0}, float("nan"), "expected a number > 0"),
    ({"type": "float", "gt": 0, "lt": 1}, 1, "expected a number in (0, 1)"),
    ({"type": "float", "min": 0, "max": 1}, 1.5, "expected a number in [0, 1]"),
    ({"type": "float", "gt": 0}, True, "= true is not allowed"),
    ({"type": "bool"}, "yes", "expected true or false"),
    ({"type": "str", "choices": ["a", "b"]}, "c", "expected one of a, b"),
    ({"type": "int", "min": 1, "odd": True}, 10, "expected an odd integer >= 1"),
])
def test_values_not_allowed_say_what_is(spec, value, message):
    with pytest.raises(ConfigError) as info:
        parse_setting("x", spec, "test").check(value)
    assert message in str(info.value)


def write(path, text):
    path.write_text(text)
    return path


def test_include_merges_settings_and_presets_and_extends_starts_from_another(tmp_path):
    write(tmp_path / "base.yaml", "settings:\n  a: {type: int, min: 0}\n  b: {type: float, gt: 0}\n"
                                  "presets:\n  paper: {a: 1, b: 2.0}\n  quick: {extends: paper, a: 5}\n")
    path = write(tmp_path / "m.yaml", "include: base\nsettings:\n  c: {type: bool}\npresets:\n  paper: {c: true}\n"
                                      "  quick: {b: 0.5}\n  mine: {extends: quick, c: false}\n")
    presets = read_presets(path, "m").presets
    assert presets == {"paper": {"a": 1, "b": 2.0, "c": True}, "quick": {"a": 5, "b": 0.5, "c": True},
                       "mine": {"a": 5, "b": 0.5, "c": False}}


def test_a_presets_file_outside_gfbench_includes_the_gaussian_base(tmp_path):
    path = write(tmp_path / "outside.yaml", "include: gaussian-base\nsettings:\n  w: {type: float, gt: 0}\npresets:\n"
                                            "  paper: {init_random_rotation: false, prune_opa: 0.005, w: 1.0}\n")
    presets = read_presets(path, "outside").presets
    assert presets["quick"]["steps"] == 300 and presets["quick"]["w"] == 1.0
    assert presets["paper"] == {**load_preset("3dgs", "paper"), "w": 1.0}


@pytest.mark.parametrize("text, message", [
    ("settings:\n  a: {type: int}\npresets:\n  p: {a: 1, b: 2}\n", "preset 'p': 'b' is not a declared setting"),
    ("settings:\n  a: {type: int}\n  b: {type: int}\npresets:\n  p: {a: 1}\n",
     "preset 'p' gives no value for setting 'b'"),
    ("settings:\n  a: {type: int, min: 2}\npresets:\n  p: {a: 1}\n", "preset 'p': setting 'a' = 1 is not allowed"),
    ("settings:\n  a: {type: integer}\npresets: {}\n", "type must be one of int, float, bool, str"),
    ("settings:\n  a: {type: int, minimum: 1}\npresets: {}\n", "unknown field 'minimum'"),
    ("settings:\n  a: {type: int}\npresets:\n  p: {extends: q, a: 1}\n", "extends 'q', which is not a preset"),
    ("settings:\n  a: {type: int}\npresets:\n  p: {extends: q}\n  q: {extends: p}\n", "'extends' cycle"),
    ("include: nowhere\n", "include 'nowhere': no nowhere.yaml"),
    ("presets: [1, 2]\n", "field 'presets': expected a mapping"),
    ("sets: {}\n", "unknown field 'sets'"),
    ("settings: {a: {type: int\n", "not valid YAML"),
])
def test_broken_presets_files_name_the_problem(tmp_path, text, message):
    path = write(tmp_path / "m.yaml", text)
    with pytest.raises(ConfigError) as info:
        read_presets(path, "m")
    assert str(path) in str(info.value) and message in str(info.value)


def test_every_preset_of_every_builtin_method_is_complete_and_typed():
    for name in ("3dgs", "2dgs"):
        presets = method_presets(name)
        assert {"paper", "quick"} <= set(presets.presets)
        for config in presets.presets.values():
            assert set(config) == {k for k, s in presets.settings.items() if not s.optional}
            assert isinstance(config["steps"], int) and isinstance(config["means_lr"], float)
    # the numbers that differ between the two come from their own files, the rest from the base
    three, two = load_preset("3dgs", "paper"), load_preset("2dgs", "paper")
    assert (three["prune_opa"], two["prune_opa"]) == (0.005, 0.05)
    assert (three["init_random_rotation"], two["init_random_rotation"]) == (False, True)
    shared = set(three) - {"prune_opa", "init_random_rotation"}
    assert {k: three[k] for k in shared} == {k: two[k] for k in shared}
    assert load_preset("2dgs", "code") == {**two, "lambda_dist": 0.0}
    assert load_preset("2dgs", "quick")["dist_start_iter"] == 100 and load_preset("3dgs", "quick")["steps"] == 300


class NoPresets:
    name = "no-presets"

    def __init__(self, device="cpu"):
        pass

    def fit(self, train_views, *, points, config, seed, workdir, progress=None):
        pass

    def render(self, cameras):
        return [Render(np.zeros((c.height, c.width, 3), np.float32)) for c in cameras]


@pytest.fixture
def registry(monkeypatch):
    table = {"3dgs": "gfbench.methods.gs3d:GaussianSplatting3D", "2dgs": "gfbench.methods.gs2d:GaussianSurfels2D",
             "no-presets": f"{__name__}:NoPresets"}
    monkeypatch.setattr(methods, "_entry_points", lambda: table)


def test_a_method_without_presets_takes_no_settings_and_no_explicit_preset(registry):
    suite = specs.load_suite("synthetic-masked")
    (job, *_) = plan_jobs(suite, ["no-presets"], None, None, None, {})
    assert job.config == {} and job.preset == "quick"
    with pytest.raises(ConfigError, match="method 'no-presets' has no preset 'quick'; presets: none"):
        plan_jobs(suite, ["no-presets"], None, None, "quick", {})
    with pytest.raises(ConfigError, match="method 'no-presets' has no setting 'steps'; settings: none"):
        plan_jobs(suite, ["no-presets"], None, None, None, {"steps": 5})


def test_unknown_settings_and_presets_are_refused_for_every_method(registry):
    with pytest.raises(ConfigError, match="method '3dgs' has no setting 'lambda_dist'"):
        resolve_config("3dgs", "quick", {"lambda_dist": 0.0})
    assert resolve_config("2dgs", "quick", {"lambda_dist": 0})["lambda_dist"] == 0.0
    with pytest.raises(ConfigError, match="method '3dgs' has no preset 'code'; presets: paper, quick"):
        plan_jobs(specs.load_suite("synthetic-masked"), ["2dgs", "3dgs"], None, None, "code", {})


@pytest.mark.parametrize("setting, shown, allowed", [
    ("steps=-5", "-5", "an integer >= 1"),
    ("steps=1.5", "1.5", "an integer >= 1"),
    ("steps=true", "true", "an integer >= 1"),
    ("steps=abc", "'abc'", "an integer >= 1"),
    ("means_lr=0", "0", "a number > 0"),
    ("ssim_lambda=2", "2", "a number in [0, 1]"),
])
def test_cli_refuses_bad_settings_before_anything_runs(registry, tmp_path, setting, shown, allowed):
    result = CliRunner().invoke(main, ["run", "--suite", "synthetic-masked", "--method", "3dgs", "--set", setting,
                                       "--results", str(tmp_path / "r"), "--data", str(tmp_path / "d")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    key = setting.split("=")[0]
    assert f"Error: method '3dgs': setting '{key}' = {shown} is not allowed: expected {allowed}" in result.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_cli_refuses_unknown_presets_and_malformed_values(registry, tmp_path):
    base = ["run", "--suite", "synthetic-masked", "--results", str(tmp_path / "r"), "--data", str(tmp_path / "d")]
    result = CliRunner().invoke(main, [*base, "--method", "no-presets", "--preset", "fast"])
    assert result.exit_code != 0 and "method 'no-presets' has no preset 'fast'" in result.output
    result = CliRunner().invoke(main, [*base, "--method", "3dgs", "--set", "steps=[1"])
    assert result.exit_code != 0 and "--set: a value is not valid YAML" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_setting_describes_itself():
    setting = Setting("steps", "int", min=1, help="training steps")
    assert setting.allowed() == "an integer >= 1"
    assert method_presets("2dgs").describe("depth_mode").startswith("depth_mode: one of expected, median")


@pytest.mark.parametrize("name, preset, digest", [
    ("3dgs", "paper", "27c6974e7c82546e"), ("3dgs", "quick", "a30ef29e212d7653"),
    ("2dgs", "paper", "13662783e88f06f2"), ("2dgs", "quick", "518a02735169297e"), ("2dgs", "code", "c68dea19c404bda4"),
])
def test_builtin_configs_keep_the_identity_of_the_published_runs(name, preset, digest):
    """The hashes of the configs as they were when the synthetic leaderboards were published (one YAML file
    per method, before the shared base and typed settings): a record's identity includes its config, so a
    changed config would orphan every published record."""
    from gfbench.results import config_hash

    assert config_hash(load_preset(name, preset))[:16] == digest
