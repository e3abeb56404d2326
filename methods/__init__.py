"""Reconstruction methods: the plug-in contract (v2), the registry, capabilities and typed presets.

The contract
============
A method is **a presets file plus a class**, registered under the ``gfbench.methods`` entry-point group
(``name = "package.module:Class"``) of any installed package; gfbench's own are declared in its pyproject.toml.
The runner constructs it as ``cls(device="cpu" | "cuda")`` and calls::

    method.fit(train_views, points=..., config=..., seed=..., workdir=..., progress=..., priors=...)
    method.render(cameras) -> list[Render]

- ``train_views`` (:class:`gfbench.views.View`): images with their cameras; a cropped view keeps its box and
  the full frame's camera (``View.frame_camera``). Train views never carry stored depth.
- ``priors`` (:class:`gfbench.priors.Priors`): the only way a method gets pretrained models or depth, e.g.
  ``priors["depth"].predict(images)`` (relative inverse depth). The runner resolves the priors a method's
  capabilities name (``--depth-prior PATH|oracle``) and records each with the sha256 of its files. A ``fit``
  without a ``priors`` parameter is called without it.
- ``config``: the resolved preset, checked against the typed settings (:mod:`gfbench.methods.config`); a
  preset value given per protocol (``{masked: a, sparse: b}``) arrives as the suite's protocol's value (the
  method is not told the protocol otherwise).

Class attributes the registry reads (all optional):

- ``name``: the method's name (the entry point's name is what users type).
- ``capabilities`` (:class:`Capabilities`): devices it runs on, protocols it supports, priors it needs;
  ``gfbench ls methods`` shows them and ``gfbench run`` without ``--method`` runs only what fits.
- ``presets_file``: its presets file; default ``methods/presets/<name>.yaml`` inside gfbench. A presets file
  may ``include: gaussian-base`` (found beside it or in gfbench's presets folder). A method without a presets
  file takes no settings and no ``--preset``.
- ``check_config(config, *, device)`` (classmethod): cross-setting checks at planning time, raising
  :class:`ConfigError` (e.g. a densification strategy that needs CUDA).

Priors
======
``priors["depth"]`` (:mod:`gfbench.priors.depth`): ``predict(images, cache=True)`` returns one HxW float32
relative inverse depth map per HxWx3 image (uint8, or float in [0, 1], numpy or torch); predictions of the
scene's images are cached on disk, pass ``cache=False`` for renders that will not recur. ``source`` names the
prior (``oracle`` or the folder, with sha256s); ``novel_images`` is False for the oracle, which knows only the
stored depth of the train images (a pseudo view's render has none). ``priors["video"]``
(:mod:`gfbench.priors.video`, named by ``--prior PATH`` or ``$GFBENCH_VIDEO_PRIOR``): ``repair(RGBDVideo,
reference_image)`` and ``estimate_depth(frames)``, GenFusion's RGB-D video diffusion prior. A new kind of prior
is a module under ``gfbench/priors`` that calls ``register_kind(PriorKind(...))`` (resolve at planning,
load before the first job, build per scene) plus its flag in ``gfbench run`` (``benchmark/cli/run.py``).

Gaussian methods
================
Methods on the shared Gaussian core subclass :class:`gfbench.methods.core.training.GaussianMethod` and supply
``rasterize``; the open training loop (:class:`gfbench.methods.core.training.Trainer`) gives them public seams:

- ``regularization(rendered, view, step)``: extra loss terms computed on a rendered view, seeing the view.
- ``setup(trainer)``: called once before step 0, after the Gaussians and the strategy exist; add view sources
  and step callbacks there. The trainer exposes ``priors``, ``views`` (as given) and ``train_views`` (as
  :class:`~gfbench.methods.core.training.TrainView` s, whose ``data`` holds per-view tensors such as a depth
  estimate), ``workdir``, ``params`` / ``optimizers`` / ``strategy``, ``rng_for(name)``, and
  ``render(view)`` / ``render_camera(camera)`` (e.g. ``view.full_camera``, the whole frame of a crop).
- :class:`~gfbench.methods.core.training.ViewSource`: views that join training (``trainer.add_source``) and
  leave it (``trainer.remove_source``) at any step, each with its own loss (``ViewSource.loss``), a weight per
  step (a number or a function of the step; 0 skips the source), and whether its renders feed the
  densification statistics (``feeds_densification``; at most one such render per step).
  :class:`~gfbench.methods.core.training.TrainView` may have no image (pseudo views: only a method's own
  loss terms apply) and carries ``data`` for a source's per-view tensors (a depth estimate, a repaired depth).
- ``trainer.add_callback(fn, start=, every=, until=)``: ``fn(trainer, step)`` before the step's renders.
- Densification by config: the ``strategy`` setting names ``default`` (gsplat's DefaultStrategy with 3DGS's
  opacity reset), ``mcmc`` (gsplat's MCMCStrategy, CUDA only) or a class of the method's own ``strategies``
  table, implementing gsplat's strategy interface plus ``from_config(config, *, gradient_key)``
  (:mod:`gfbench.methods.core.strategies`). :func:`gfbench.methods.core.densify.append_gaussians` adds
  Gaussians with their optimizer state, for strategies that grow new ones (unpooling).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from gfbench.camera import Camera
from gfbench.methods.config import PROTOCOLS, ConfigError, MethodPresets, builtin_presets_dir, no_presets, read_presets
from gfbench.scene import PointCloud
from gfbench.views import View

ENTRY_POINT_GROUP = "gfbench.methods"
DEVICES = ("cpu", "cuda")
PRIOR_KINDS = ("depth", "video")

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
        """Reconstruct the scene from ``train_views`` (and initial ``points``, possibly None). A method that
        uses priors also takes ``priors`` (a :class:`gfbench.priors.Priors`)."""

    def render(self, cameras: list[Camera]) -> list[Render]:
        """Render each camera at its full size."""


@dataclass(frozen=True)
class Capabilities:
    """Where a method can run: ``devices`` (cpu, cuda), suite ``protocols`` (masked, corner, sparse) and the
    ``priors`` it needs (depth, video)."""

    devices: tuple[str, ...] = DEVICES
    protocols: tuple[str, ...] = PROTOCOLS
    priors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field, values, known in (("devices", self.devices, DEVICES), ("protocols", self.protocols, PROTOCOLS),
                                     ("priors", self.priors, PRIOR_KINDS)):
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ValueError(f"Capabilities.{field}: unknown {unknown[0]!r} (known: {', '.join(known)})")

    def problems(self, *, device: str, protocol: str, priors: set[str] | frozenset[str]) -> list[str]:
        """Why the method cannot run here (empty when it can): device, protocol, priors not configured."""
        reasons = []
        if device.split(":")[0] not in self.devices:
            reasons.append(f"runs on {', '.join(self.devices)}, not {device}")
        if protocol not in self.protocols:
            reasons.append(f"supports the {', '.join(self.protocols)} protocols, not {protocol}")
        for kind in self.priors:
            if kind not in priors:
                reasons.append(f"needs a {kind} prior (none configured)")
        return reasons


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class MethodLoadError(RuntimeError):
    """A registered method's entry point cannot be imported or does not name a method class."""


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_methods() -> list[str]:
    return sorted(_entry_points())


def load_method_class(name: str) -> type:
    """The class behind entry point ``name``; UnknownMethodError when none is registered, MethodLoadError
    (naming the entry point and the cause) when it cannot be loaded."""
    table = _entry_points()
    if name not in table:
        raise UnknownMethodError(f"unknown method {name!r}; registered methods: {', '.join(sorted(table)) or 'none'}")
    module_name, _, attr = table[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr) if attr else None
    except Exception as exc:  # a third-party module may fail in any way while importing
        raise MethodLoadError(f"method {name!r}: entry point {table[name]!r} cannot be loaded: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not inspect.isclass(cls) or not all(callable(getattr(cls, hook, None)) for hook in ("fit", "render")):
        raise MethodLoadError(f"method {name!r}: entry point {table[name]!r} is not a class with fit() and render()")
    return cls


def capabilities_of(cls: type) -> Capabilities:
    caps = getattr(cls, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else Capabilities()


def accepts_priors(fit: Callable) -> bool:
    """Whether ``fit`` takes a ``priors`` keyword (or ``**kwargs``)."""
    parameters = inspect.signature(fit).parameters.values()
    return any(p.name == "priors" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def preset_path(name: str, cls: type | None = None) -> Path:
    """The presets file of method ``name``: its class's ``presets_file``, else gfbench's ``presets/<name>.yaml``."""
    own = getattr(cls, "presets_file", None) if cls is not None else None
    return Path(own) if own else builtin_presets_dir() / f"{name}.yaml"


def method_presets(name: str, cls: type | None = None) -> MethodPresets:
    """The typed settings and checked presets of method ``name`` (none when it has no presets file)."""
    cls = cls if cls is not None else load_method_class(name)
    path = preset_path(name, cls)
    if getattr(cls, "presets_file", None) and not path.is_file():
        raise ConfigError(f"method {name!r}: its presets_file {path} does not exist")
    return read_presets(path, name) if path.is_file() else no_presets(name)


def load_preset(name: str, preset: str) -> dict[str, Any]:
    """The checked config of ``preset`` for method ``name``; ConfigError when the method has no such preset."""
    return method_presets(name).config(preset)


__all__ = [
    "Capabilities", "ConfigError", "ENTRY_POINT_GROUP", "Method", "MethodLoadError", "Render", "UnknownMethodError",
    "accepts_priors", "available_methods", "capabilities_of", "load_method_class", "load_preset", "method_presets",
    "preset_path",
]
