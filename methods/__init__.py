"""Reconstruction methods: the plug-in contract, the registry, and presets.

A method is a class with a ``name``, constructed as ``cls(device=...)``, that implements :class:`Method`.
Methods register under the ``gfbench.methods`` entry-point group (``name = "package.module:Class"``), so an
outside package adds one by declaring that entry point; gfbench's own are declared in its pyproject.toml.
Presets are data: ``methods/presets/<name>.yaml`` maps a preset name to a config dict.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import yaml

from gfbench.camera import Camera
from gfbench.scene import PointCloud
from gfbench.views import View

ENTRY_POINT_GROUP = "gfbench.methods"

ProgressFn = Callable[[int, dict[str, float]], None]


@dataclass
class Render:
    """A rendered view: ``rgb`` HxWx3 float32 (nominally [0, 1]; metrics clip), ``depth`` HxW float32 or None."""

    rgb: np.ndarray
    depth: np.ndarray | None = None


@runtime_checkable
class Method(Protocol):
    name: str

    def fit(
        self,
        train_views: list[View],
        *,
        points: PointCloud | None,
        config: dict[str, Any],
        seed: int,
        workdir: Path,
        progress: ProgressFn | None = None,
    ) -> None:
        """Reconstruct the scene from ``train_views`` (and initial ``points``, possibly None)."""

    def render(self, cameras: list[Camera]) -> list[Render]:
        """Render each camera at its full size."""


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_methods() -> list[str]:
    return sorted(_entry_points())


def load_method_class(name: str) -> type:
    table = _entry_points()
    if name not in table:
        raise UnknownMethodError(f"unknown method {name!r}; registered methods: {', '.join(sorted(table)) or 'none'}")
    module_name, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def preset_path(name: str) -> Path:
    return Path(str(resources.files("gfbench.methods") / "presets" / f"{name}.yaml"))


def load_preset(name: str, preset: str) -> dict[str, Any]:
    """The config of ``preset`` for method ``name`` from its presets file (``{}`` if the method has none)."""
    path = preset_path(name)
    if not path.exists():
        return {}
    presets = yaml.safe_load(path.read_text()) or {}
    if preset not in presets:
        raise KeyError(f"{path}: method {name!r} has no preset {preset!r}; presets: {', '.join(presets)}")
    return dict(presets[preset])
