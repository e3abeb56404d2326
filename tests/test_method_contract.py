"""The method contract end to end: a third-party method (tests/plugins, registered by a dist-info through the
``gfbench.methods`` entry-point group) adds a view source at one step and removes it at another through the
public seams; broken entry points and methods that cannot run here are reported and the others still run."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gfbench import methods, results
from gfbench.cli import main
from gfbench.methods import Capabilities, Render
from worlds import install_plugin, make_world


@pytest.fixture
def world(tmp_path, monkeypatch):
    world = make_world(tmp_path, monkeypatch)
    install_plugin(tmp_path, monkeypatch)
    return world


def run_cli(world, *args):
    return CliRunner().invoke(main, ["run", "--data", str(world["data"]), "--results", str(world["results"]), *args])


def test_plugin_method_adds_a_view_at_step_n_and_removes_it_at_step_m(world):
    assert "addview" in methods.available_methods()
    result = run_cli(world, "--suite", "test-masked", "--method", "addview", "--scenes", "a")
    assert result.exit_code == 0, result.output
    (path,) = list(world["results"].rglob("seed0-*.json"))
    record = results.read_record(path)
    assert record["status"] == "ok" and record["method"] == "addview" and record["config"]["extra_weight"] == 0.25
    history = json.loads((path.with_suffix("") / "history.json").read_text())
    config = record["config"]
    start, stop, weight = config["extra_start"], config["extra_stop"], config["extra_weight"]
    assert [entry["step"] for entry in history] == list(range(1, config["steps"] + 1))  # log_every 1
    for entry in history:
        step = int(entry["step"]) - 1
        if start <= step < stop:
            assert entry["extra/weight"] == weight, step
            assert entry["extra/loss"] > 0
            # the weighted extra loss is part of the optimized loss, the train view's term unweighted
            assert entry["loss"] == pytest.approx(entry["rgb"] + weight * entry["extra/loss"], rel=1e-5)
        else:
            assert not any(key.startswith("extra/") for key in entry), step
            assert entry["loss"] == pytest.approx(entry["rgb"], rel=1e-6)


class MeanColor:
    name = "mean-color"

    def __init__(self, device="cpu"):
        self.color = None

    def fit(self, train_views, *, points, config, seed, workdir, progress=None):
        self.color = np.mean([v.image.reshape(-1, 3).mean(0) for v in train_views], axis=0) / 255.0

    def render(self, cameras):
        return [Render(np.broadcast_to(self.color, (c.height, c.width, 3)).astype(np.float32)) for c in cameras]


class NeedsDepth(MeanColor):
    name = "needs-depth"
    capabilities = Capabilities(priors=("depth",))


class GpuOnly(MeanColor):
    name = "gpu-only"
    capabilities = Capabilities(devices=("cuda",))


class SparseOnly(MeanColor):
    name = "sparse-only"
    capabilities = Capabilities(protocols=("sparse",))


class BrokenPresets(MeanColor):
    name = "broken-presets"


class OtherPresets(MeanColor):
    name = "other-presets"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    world = make_world(tmp_path, monkeypatch)
    monkeypatch.delenv("GFBENCH_DEPTH_PRIOR", raising=False)
    monkeypatch.setattr(BrokenPresets, "presets_file", str(tmp_path / "broken.yaml"), raising=False)
    (tmp_path / "broken.yaml").write_text("presets: [not, a, mapping]\n")
    monkeypatch.setattr(OtherPresets, "presets_file", str(tmp_path / "other.yaml"), raising=False)
    (tmp_path / "other.yaml").write_text("settings: {}\npresets:\n  paper: {}\n")
    table = {
        "mean-color": f"{__name__}:MeanColor",
        "needs-depth": f"{__name__}:NeedsDepth",
        "gpu-only": f"{__name__}:GpuOnly",
        "sparse-only": f"{__name__}:SparseOnly",
        "broken-import": "gfbench_no_such_module:Method",
        "broken-attr": f"{__name__}:NoSuchClass",
        "not-a-method": f"{__name__}:run_cli",
        "broken-presets": f"{__name__}:BrokenPresets",
        "other-presets": f"{__name__}:OtherPresets",
    }
    monkeypatch.setattr(methods, "_entry_points", lambda: table)
    return world


def test_run_without_method_runs_what_can_run_and_says_what_it_skipped(registry):
    result = run_cli(registry, "--suite", "test-masked")
    assert result.exit_code == 0, result.output
    output = result.output
    assert "methods mean-color," in output and "2 ran" in output
    expected = {
        "needs-depth": "needs a depth prior (none configured: --depth-prior PATH|oracle or $GFBENCH_DEPTH_PRIOR)",
        "gpu-only": "runs on cuda, not cpu",
        "sparse-only": "supports the sparse protocols, not masked",
        "broken-import": "entry point 'gfbench_no_such_module:Method' cannot be loaded: ModuleNotFoundError",
        "broken-attr": "cannot be loaded: AttributeError",
        "not-a-method": "is not a class with fit() and render()",
        "broken-presets": "broken.yaml: field 'presets': expected a mapping",
        "other-presets": "has no preset 'quick' (presets: paper)",
    }
    for name, reason in expected.items():
        assert f"skipped {name}: " in output and reason in output, (name, output)
    assert "Traceback" not in output
    recorded = {results.read_record(p)["method"] for p in registry["results"].rglob("seed0-*.json")}
    assert recorded == {"mean-color"}


def test_named_methods_that_cannot_run_are_errors_not_skips(registry):
    for name, message in (("needs-depth", "needs a depth prior"), ("gpu-only", "runs on cuda"),
                          ("broken-import", "cannot be loaded"), ("nope", "unknown method 'nope'")):
        result = run_cli(registry, "--suite", "test-masked", "--method", name)
        assert result.exit_code != 0 and message in result.output, (name, result.output)
        assert "Traceback" not in result.output
    assert not list(registry["results"].rglob("*.json"))


def test_ls_methods_shows_capabilities_presets_and_broken_entry_points(registry, monkeypatch):
    table = dict(methods._entry_points())
    table["3dgs"] = "gfbench.methods.gs3d:GaussianSplatting3D"
    monkeypatch.setattr(methods, "_entry_points", lambda: table)
    result = CliRunner().invoke(main, ["ls", "methods"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert "devices: cpu, cuda" in lines["3dgs"] and "presets: paper, quick" in lines["3dgs"]
    assert "priors: depth" in lines["needs-depth"] and "presets: none" in lines["needs-depth"]
    assert "devices: cuda " in lines["gpu-only"] and "protocols: sparse " in lines["sparse-only"]
    assert "BROKEN" in lines["broken-import"] and "ModuleNotFoundError" in lines["broken-import"]
