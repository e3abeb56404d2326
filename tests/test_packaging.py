"""The specs and the shipped priors must be found from an installed wheel too, not only from a checkout."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gfbench.priors import folder_fingerprint

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("benchmark", "methods", "datasets", "leaderboards", "pyproject.toml", "README.md")
SHIPPED = Path("benchmark") / "priors" / "shipped"
# a stand-in shipped prior: what a prior folder may hold (configs, safetensors weights, notes, pictures), at depth
PROBE = {"prior.json": b"{}", "unet/config.json": b"{}", "unet/diffusion_pytorch_model.safetensors": bytes(range(64)),
         "image_encoder/model.safetensors": b"\x01" * 32, "README.md": b"# probe\n", "loss_curve.png": b"\x89PNG"}


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    """A copy of the checkout's package sources with one more shipped prior, ``packaging-probe`` (PROBE)."""
    tree = tmp_path_factory.mktemp("source") / "gfbench"
    tree.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".*")
    for name in SOURCES:
        source = REPO / name
        (shutil.copytree(source, tree / name, ignore=ignore) if source.is_dir() else shutil.copy2(source, tree / name))
    for relative, content in PROBE.items():
        (tree / SHIPPED / "packaging-probe" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / SHIPPED / "packaging-probe" / relative).write_bytes(content)
    return tree


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, source_tree):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source_tree)], check=True, capture_output=True, cwd=out)
    return next(out.glob("gfbench-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    return target


def run_installed(target, code, cwd):
    env = {k: v for k, v in os.environ.items() if k != "GFBENCH_SPECS"}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=cwd, check=True)


def test_wheel_carries_specs_and_presets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for spec in (REPO / "datasets").rglob("*.yaml"):
        assert f"gfbench/_specs/{spec.relative_to(REPO / 'datasets').as_posix()}" in names
    for preset in (REPO / "methods" / "presets").glob("*.yaml"):
        assert f"gfbench/methods/presets/{preset.name}" in names
    for table in (REPO / "leaderboards" / "paper").glob("*.csv"):
        assert f"gfbench/_paper/{table.name}" in names
    assert not any(name.startswith("datasets/") for name in names)  # no top-level package shadowing HF datasets


def test_wheel_carries_the_lanes_kernels_sources(wheel):
    """The lanes kernels are built from their C sources on first use: each must be in the wheel."""
    from gfbench.methods.core import lanes

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {source.suffix for source in lanes.SOURCES} == {".c", ".h"}
    for source in lanes.SOURCES:
        assert f"gfbench/methods/core/{source.name}" in names, source.name


def test_wheel_carries_every_file_of_every_shipped_prior(wheel, source_tree):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [path for path in (source_tree / SHIPPED).rglob("*") if path.is_file()]
    assert len(shipped) >= len(PROBE)  # the probe, and the checkout's own shipped priors
    for path in shipped:
        assert f"gfbench/priors/shipped/{path.relative_to(source_tree / SHIPPED).as_posix()}" in names


def test_installed_wheel_finds_its_shipped_priors_with_the_checkout_sha256(installed, tmp_path):
    code = ("import json; from gfbench.priors import shipping, folder_fingerprint; "
            "print(shipping.shipped_root()); "
            "print(json.dumps({n: folder_fingerprint(shipping.shipped_folder(n)) for n in shipping.shipped_names()}))")
    out = run_installed(installed, code, tmp_path)
    root, fingerprints = out.stdout.split("\n")[:2]
    assert root == str(installed / "gfbench" / "priors" / "shipped")
    fingerprints = json.loads(fingerprints)
    assert fingerprints["packaging-probe"] == {name: hashlib.sha256(content).hexdigest()
                                               for name, content in sorted(PROBE.items())}
    checkout = [path for path in (REPO / SHIPPED).glob("*") if path.is_dir() and path.name[0] not in "._"]
    assert sorted(fingerprints) == sorted([*(path.name for path in checkout), "packaging-probe"])
    for folder in checkout:  # what a record of an installed gfbench names is what the checkout's would
        assert fingerprints[folder.name] == folder_fingerprint(folder), folder.name


def test_installed_wheel_finds_its_specs(installed, tmp_path):
    code = ("import gfbench.paths, gfbench.specs as s; print(gfbench.paths.specs_root()); "
            "print(len(s.list_datasets()), len(s.list_suites()))")
    out = run_installed(installed, code, tmp_path)
    root, counts = out.stdout.split("\n")[:2]
    assert root == str(installed / "gfbench" / "_specs")
    assert counts == f"{len(list((REPO / 'datasets').glob('*.yaml')))} {len(list((REPO / 'datasets' / 'suites').glob('*.yaml')))}"
