"""The specs must be found from an installed wheel too, not only from a checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, cwd=out)
    return next(out.glob("gfbench-*.whl"))


def test_wheel_carries_specs_and_presets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for spec in (REPO / "datasets").rglob("*.yaml"):
        assert f"gfbench/_specs/{spec.relative_to(REPO / 'datasets').as_posix()}" in names
    for preset in (REPO / "methods" / "presets").glob("*.yaml"):
        assert f"gfbench/methods/presets/{preset.name}" in names
    for table in (REPO / "leaderboards" / "paper").glob("*.csv"):
        assert f"gfbench/_paper/{table.name}" in names
    assert not any(name.startswith("datasets/") for name in names)  # no top-level package shadowing HF datasets


def test_installed_wheel_finds_its_specs(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "GFBENCH_SPECS"}
    env["PYTHONPATH"] = str(target)
    code = ("import gfbench.paths, gfbench.specs as s; print(gfbench.paths.specs_root()); "
            "print(len(s.list_datasets()), len(s.list_suites()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path, check=True)
    root, counts = out.stdout.split("\n")[:2]
    assert root == str(target / "gfbench" / "_specs")
    assert counts == f"{len(list((REPO / 'datasets').glob('*.yaml')))} {len(list((REPO / 'datasets' / 'suites').glob('*.yaml')))}"
