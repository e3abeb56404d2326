"""Where gfbench finds its specs and keeps its data."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "GFBENCH_DATA"
SPECS_ENV = "GFBENCH_SPECS"


def data_root(override: str | os.PathLike | None = None) -> Path:
    """Shard root: an explicit ``override``, else ``$GFBENCH_DATA``, else ``~/.cache/gfbench/data``."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.home() / ".cache" / "gfbench" / "data"


def specs_root() -> Path:
    """The ``datasets/`` folder of YAML specs: ``$GFBENCH_SPECS``, else the checkout's ``datasets/`` beside
    ``benchmark/`` (editable install), else the copy a wheel installs as ``gfbench/_specs``."""
    if os.environ.get(SPECS_ENV):
        return Path(os.environ[SPECS_ENV]).expanduser()
    package_dir = Path(__file__).resolve().parent
    checkout = package_dir.parent / "datasets"
    if (package_dir.parent / "pyproject.toml").exists() and checkout.is_dir():
        return checkout
    return package_dir / "_specs"


def splits_root() -> Path:
    return specs_root() / "splits"
