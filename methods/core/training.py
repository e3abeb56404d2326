"""The open training loop of the Gaussian methods (3DGS, 2DGS and the methods built on them).

Each step: the step callbacks that are due run; then every view source with a non-zero weight at this step
hands out its views (the train views: one per step in a fresh random order every pass, 3DGS's viewpoint
stack), each is rendered at its own size and intrinsics and scored by its source's loss, the weighted sum is
back-propagated, Adam steps every parameter, and the densification strategy sees the render that feeds its
statistics (the train view's).

A method subclasses :class:`GaussianMethod`, supplies ``rasterize``, and may add ``regularization`` (terms
that see the rendered view), ``setup`` (add :class:`ViewSource` s and step callbacks to the :class:`Trainer`)
and ``strategies`` (its own densification classes, chosen by the ``strategy`` setting). Every number comes
from the config (the method's preset).
"""

from __future__ import annotations

import zlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from gfbench.camera import Camera
from gfbench.methods import Capabilities, ProgressFn, Render
from gfbench.methods.config import ConfigError
from gfbench.methods.core import gaussians as G
from gfbench.methods.core.losses import photometric_loss, psnr
from gfbench.methods.core.rasterize_cpu import split_threads
from gfbench.methods.core.strategies import (
    OpacityResettingStrategy,
    make_strategy,
    strategy_class,
    strategy_devices,
)
from gfbench.priors import Priors
from gfbench.scene import PointCloud
from gfbench.views import View

TRAIN_SOURCE = "train"


@dataclass
class TrainView:
    """A view as the loop trains on it, as tensors on the method's device.

    ``image [H, W, 3]`` float in [0, 1], or None for a view without an image (a pseudo view: only its source's
    own loss terms apply); ``mask [H, W]`` bool (True = pixel counts) or None; ``viewmat [1, 4, 4]``
    (world-to-camera) and ``K [1, 3, 3]`` of ``camera``; ``full_camera``: the whole frame's camera (the same as
    ``camera`` unless the view is a crop); ``data``: whatever per-view values a source keeps with the view
    (a depth estimate, a repaired depth, a weight map).
    """

    name: str
    camera: Camera
    image: Tensor | None
    mask: Tensor | None
    viewmat: Tensor
    K: Tensor
    full_camera: Camera
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.camera.width

    @property
    def height(self) -> int:
        return self.camera.height

    @classmethod
    def from_view(cls, view: View, device: str | torch.device) -> "TrainView":
        camera = view.camera
        h, w = view.image.shape[:2]
        if (w, h) != (camera.width, camera.height):
            raise ValueError(f"view {view.name!r}: image is {w}x{h} but its camera says {camera.width}x{camera.height}")
        return cls.from_camera(camera, device, name=view.name, image=view.image, mask=view.mask,
                               full_camera=view.full_frame_camera)

    @classmethod
    def from_camera(cls, camera: Camera, device: str | torch.device, *, name: str,
                    image: np.ndarray | Tensor | None = None, mask: np.ndarray | Tensor | None = None,
                    full_camera: Camera | None = None, data: dict[str, Any] | None = None) -> "TrainView":
        """A view of ``camera``; ``image`` HxWx3 uint8 (numpy) or float in [0, 1], or None."""
        viewmat, K = camera_tensors(camera, device)
        return cls(name=name, camera=camera, image=_image_tensor(image, device), mask=_mask_tensor(mask, device),
                   viewmat=viewmat, K=K, full_camera=full_camera or camera, data=dict(data or {}))


def _image_tensor(image: np.ndarray | Tensor | None, device) -> Tensor | None:
    if image is None:
        return None
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return torch.as_tensor(image, device=device).float() / 255.0
    return torch.as_tensor(image, device=device, dtype=torch.float32)


def _mask_tensor(mask: np.ndarray | Tensor | None, device) -> Tensor | None:
    if mask is None:
        return None
    return torch.as_tensor(np.asarray(mask, bool) if isinstance(mask, np.ndarray) else mask, device=device).bool()


TrainTarget = TrainView  # the name this class had before the open loop


def camera_tensors(camera: Camera, device: str | torch.device) -> tuple[Tensor, Tensor]:
    """``(viewmat [1, 4, 4], K [1, 3, 3])`` float32 tensors for the rasterizer."""
    viewmat = torch.as_tensor(camera.w2c, dtype=torch.float32, device=device)[None]
    K = torch.as_tensor(camera.K, dtype=torch.float32, device=device)[None]
    return viewmat, K


class ViewSampler:
    """View indices in a fresh random order every pass over the views (3DGS's viewpoint stack)."""

    def __init__(self, count: int, rng: np.random.Generator):
        if count < 1:
            raise ValueError("training needs at least one train view")
        self.count, self.rng, self.queue = count, rng, []

    def next(self) -> int:
        if not self.queue:
            self.queue = list(self.rng.permutation(self.count))
        return int(self.queue.pop())


@dataclass
class Rendered:
    """One rendered camera: ``rgb [H, W, 3]``, ``depth [H, W]``, ``alpha [H, W, 1]``, the rasterizer's
    ``info`` (for the strategy) and method-specific maps in ``extras``."""

    rgb: Tensor
    depth: Tensor
    alpha: Tensor
    info: dict[str, Any]
    extras: dict[str, Tensor] = field(default_factory=dict)


Weight = float | Callable[[int], float]


class ViewSource:
    """Views that take part in training, with their own loss and a weight per step.

    - ``views``: :class:`TrainView` s; ``per_step`` of them are rendered each step the weight is non-zero,
      drawn in a fresh random order every pass (``rng``: the trainer gives one derived from the seed and the
      source's name when None).
    - ``weight``: a number, or a function of the step (e.g. GenFusion's ``lambda * sin(...)``); at 0 the
      source is skipped that step (nothing rendered, nothing drawn).
    - ``feeds_densification``: whether its renders feed the strategy's statistics (the train views do; at
      most one such render per step).
    - ``regularized``: whether the method's ``regularization`` terms apply to its renders.

    Subclass and override ``loss`` (and ``views_at`` / ``weight_at``) for a source's own terms; the default
    loss is the method's photometric loss where the view has an image, plus its regularizers when
    ``regularized``.
    """

    def __init__(self, name: str, views: list[TrainView], *, weight: Weight = 1.0, feeds_densification: bool = False,
                 regularized: bool = False, per_step: int = 1, rng: np.random.Generator | None = None):
        if not name or "/" in name:
            raise ValueError(f"a view source needs a name without '/', got {name!r}")
        if per_step < 1:
            raise ValueError(f"view source {name!r}: per_step must be >= 1, got {per_step}")
        self.name, self.views, self.weight = name, list(views), weight
        self.feeds_densification, self.regularized, self.per_step = feeds_densification, regularized, per_step
        self.rng = rng
        self._sampler: ViewSampler | None = None

    def weight_at(self, step: int) -> float:
        return float(self.weight(step) if callable(self.weight) else self.weight)

    def views_at(self, step: int) -> list[TrainView]:
        if not self.views:
            return []
        if self._sampler is None:
            self._sampler = ViewSampler(len(self.views), self.rng if self.rng is not None else np.random.default_rng())
        return [self.views[self._sampler.next()] for _ in range(self.per_step)]

    def loss(self, trainer: "Trainer", rendered: Rendered, view: TrainView, step: int) -> dict[str, Tensor]:
        """Unweighted loss terms of one rendered view (summed, then multiplied by the step's weight)."""
        return trainer.method.view_loss_terms(rendered, view, step, regularized=self.regularized)


@dataclass
class StepCallback:
    """``fn(trainer, step)`` before the renders of every step ``start, start + every, ...`` up to ``until``
    (inclusive; None: to the end)."""

    fn: Callable[["Trainer", int], None]
    start: int = 0
    every: int = 1
    until: int | None = None

    def due(self, step: int) -> bool:
        on_schedule = step >= self.start and (step - self.start) % self.every == 0
        return on_schedule and (self.until is None or step <= self.until)


class Trainer:
    """One training run, handed to a method's ``setup`` and to step callbacks.

    Public state: ``method``, ``config``, ``priors``, ``seed``, ``rng`` (the run's generator, which draws the
    train views: a method that draws from it changes the train order; ``rng_for(name)`` gives it its own),
    ``device``, ``views`` (the train :class:`~gfbench.views.View` s as given: uint8 images, for priors and
    reference frames), ``train_views`` (the same as :class:`TrainView` s, in the same order, ``full_camera``
    included), ``points``, ``workdir`` (the job's folder, for a method's own pictures; may be None),
    ``extent``, ``params``, ``optimizers``, ``strategy``, ``strategy_state``, ``sources`` (name ->
    :class:`ViewSource`, in order), ``step`` (the current step) and ``steps``.
    """

    def __init__(self, method: "GaussianMethod", views: list[View], points: PointCloud | None,
                 config: dict[str, Any], *, seed: int, rng: np.random.Generator, priors: Priors | None = None,
                 workdir: Path | None = None):
        if not views:
            raise ValueError("training needs at least one train view")
        self.method, self.config, self.seed, self.rng = method, config, seed, rng
        self.priors = priors if priors is not None else Priors()
        self.device = method.device
        self.points, self.workdir = points, None if workdir is None else Path(workdir)
        self.views = list(views)
        self.train_views = [TrainView.from_view(v, self.device) for v in views]
        self.steps = int(config["steps"])
        self.step = 0
        self.sources: dict[str, ViewSource] = {}
        self.callbacks: list[StepCallback] = []
        self.extent = 1.0

    # --- set up -----------------------------------------------------------------------------------------
    def initialize(self) -> None:
        """Gaussians at the initial points, their optimizers, the densification strategy, the train source."""
        config, method = self.config, self.method
        cameras = [v.camera for v in self.train_views]
        self.extent = G.scene_extent(cameras, config["extent_factor"])
        cloud = G.initial_points(self.points, cameras, config, self.extent, self.rng)
        method.params = G.init_params(cloud, config, self.rng, surfel=method.surfel, device=self.device)
        method.extent = self.extent
        self.optimizers = G.make_optimizers(method.params, config, self.extent)
        self.scheduler = G.means_lr_scheduler(self.optimizers["means"], config)
        self.strategy = method.make_strategy(config)
        self.strategy.check_sanity(method.params, self.optimizers)
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.extent)
        self.add_source(ViewSource(TRAIN_SOURCE, self.train_views, feeds_densification=True, regularized=True,
                                   rng=self.rng))

    @property
    def params(self) -> torch.nn.ParameterDict:
        return self.method.params

    def rng_for(self, name: str) -> np.random.Generator:
        """A generator of its own for ``name``, derived from the seed (stable across machines)."""
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])

    def add_source(self, source: ViewSource) -> ViewSource:
        """Add ``source``; its views take part from the current step on (a callback adding it at step N trains
        on it at step N)."""
        if source.name in self.sources:
            raise ValueError(f"a view source named {source.name!r} is already training")
        if source.rng is None:
            source.rng = self.rng_for(source.name)
        self.sources[source.name] = source
        return source

    def remove_source(self, name: str) -> ViewSource:
        """Remove the source ``name``; from the current step on its views are not rendered."""
        if name not in self.sources:
            raise KeyError(f"no view source named {name!r}; sources: {', '.join(self.sources)}")
        return self.sources.pop(name)

    def add_callback(self, fn: Callable[["Trainer", int], None], *, start: int = 0, every: int = 1,
                     until: int | None = None) -> StepCallback:
        """Call ``fn(trainer, step)`` before the renders of steps ``start, start + every, ...`` up to ``until``."""
        if every < 1 or start < 0:
            raise ValueError(f"a step callback needs start >= 0 and every >= 1, got start={start}, every={every}")
        callback = StepCallback(fn, start, every, until)
        self.callbacks.append(callback)
        return callback

    # --- rendering --------------------------------------------------------------------------------------
    def sh_degree(self, step: int | None = None) -> int:
        return G.sh_degree_at(self.step if step is None else step, self.config)

    def render(self, view: TrainView, step: int | None = None) -> Rendered:
        """Render ``view`` with the SH degree of ``step`` (default: the current one), with gradients."""
        return self.method.rasterize(view.viewmat, view.K, view.width, view.height, self.sh_degree(step))

    @torch.no_grad()
    def render_camera(self, camera: Camera, step: int | None = None) -> Rendered:
        """Render ``camera`` at its size without gradients (e.g. a trajectory for a repair round)."""
        viewmat, K = camera_tensors(camera, self.device)
        return self.method.rasterize(viewmat, K, camera.width, camera.height, self.sh_degree(step))

    # --- the loop ---------------------------------------------------------------------------------------
    def run(self, progress: ProgressFn | None = None) -> None:
        config, method = self.config, self.method
        log_every = int(config["log_every"])
        for step in range(self.steps):
            self.step = step
            for callback in list(self.callbacks):
                if callback.due(step):
                    callback.fn(self, step)
            logs = self.train_step(step)
            self.scheduler.step()
            if step % log_every == 0 or step == self.steps - 1:
                record = {name: float(value) for name, value in logs.items()}
                record["gaussians"] = float(len(method.params["means"]))
                method.history.append({"step": float(step + 1), **record})
                if progress is not None:
                    progress(step + 1, record)
        method.sh_degree = G.sh_degree_at(max(self.steps - 1, 0), config)

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimization step; returns what to log (tensors and numbers)."""
        params, optimizers, strategy, state = self.method.params, self.optimizers, self.strategy, self.strategy_state
        total, logs, feeding = None, {}, []
        for source in list(self.sources.values()):
            weight = source.weight_at(step)
            if weight == 0:
                continue
            for view in source.views_at(step):
                rendered = self.render(view, step)
                if source.feeds_densification:
                    strategy.step_pre_backward(params, optimizers, state, step, rendered.info)
                    feeding.append((source.name, rendered.info))
                terms = source.loss(self, rendered, view, step)
                if not terms:
                    continue
                loss = _sum(terms.values())
                weighted = loss if weight == 1.0 else weight * loss
                total = weighted if total is None else total + weighted
                self._log(logs, source, terms, loss, weight, rendered, view)
        for name, value in getattr(strategy, "loss_terms", _no_terms)(params, step).items():
            total = value if total is None else total + value
            logs[name] = value.detach()
        if len(feeding) > 1:
            raise RuntimeError(f"step {step}: {len(feeding)} renders feed the densification statistics (sources "
                               f"{', '.join(name for name, _ in feeding)}); at most one may per step")
        if total is not None:
            total.backward()
            for optimizer in optimizers.values():
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            logs["loss"] = total.detach()
        if feeding:
            strategy.step_post_backward(params, optimizers, state, step, feeding[0][1], packed=False)
        return logs

    @staticmethod
    def _log(logs: dict, source: ViewSource, terms: dict[str, Tensor], loss: Tensor, weight: float,
             rendered: Rendered, view: TrainView) -> None:
        if source.name == TRAIN_SOURCE:
            if view.image is not None:
                logs["psnr"] = psnr(rendered.rgb, view.image, view.mask)
            for name, value in terms.items():
                logs[name] = value.detach()
            return
        prefix = f"{source.name}/"
        logs[prefix + "loss"] = logs.get(prefix + "loss", 0.0) + loss.detach()
        logs[prefix + "weight"] = weight
        for name, value in terms.items():
            logs[prefix + name] = logs.get(prefix + name, 0.0) + value.detach()


def _sum(values) -> Tensor:
    total = None
    for value in values:
        total = value if total is None else total + value
    return total


def _no_terms(params, step) -> dict[str, Tensor]:
    return {}


class GaussianMethod:
    """Base of the Gaussian methods: ``fit`` trains (through a :class:`Trainer`), ``render`` renders full frames.

    After ``fit``: ``params`` (the Gaussians), ``history`` (one record per logged step with ``step``, ``loss``,
    ``psnr``, each loss term, ``<source>/loss`` and ``<source>/weight`` of the other view sources, and
    ``gaussians``), ``extent`` and ``sh_degree``.
    """

    name = "gaussian"
    surfel = False
    gradient_key = "means2d"
    capabilities = Capabilities()
    strategies: dict[str, type] = {}  # a method's own densification classes, by the name its preset uses
    # PyTorch's threads while training on the CPU, the rasterizer's kernels keeping the process's (see
    # rasterize_cpu.split_threads); None leaves PyTorch's as they are. Speed only: 3DGS, 2DGS and FSGS train
    # the same Gaussians bit for bit (tests/test_cpu_threads.py); GenFusion's loop has reductions that follow
    # the thread count (5e-6 dB on one synthetic-masked scene). A model run inside the loop runs under
    # rasterize_cpu.full_threads.
    cpu_training_torch_threads: int | None = 1

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.params: torch.nn.ParameterDict | None = None
        self.config: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []
        self.extent = 1.0
        self.sh_degree = 0

    # --- what a method supplies -------------------------------------------------------------------------
    def rasterize(self, viewmat: Tensor, K: Tensor, width: int, height: int, sh_degree: int) -> Rendered:
        raise NotImplementedError

    def regularization(self, rendered: Rendered, view: TrainView, step: int) -> dict[str, Tensor]:
        """Extra loss terms (already weighted) on ``rendered``, the render of ``view`` at ``step``; none by
        default. Applied to the train views and to any view source with ``regularized=True``."""
        return {}

    def setup(self, trainer: Trainer) -> None:
        """Called once before step 0, after the Gaussians and the strategy exist: add view sources and step
        callbacks here."""

    # --- config -----------------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: dict[str, Any], *, device: str) -> None:
        """Checks across settings at planning time: the strategy exists and runs on ``device``."""
        try:
            strategy = strategy_class(config.get("strategy", "default"), cls.strategies)
        except ConfigError as exc:
            raise ConfigError(f"method {cls.name!r}: {exc}") from None
        devices = strategy_devices(strategy)
        if device.split(":")[0] not in devices:
            raise ConfigError(f"method {cls.name!r}: strategy {config.get('strategy')!r} runs on "
                              f"{', '.join(devices)} only, not {device}")

    def make_strategy(self, config: dict[str, Any]):
        return make_strategy(config, gradient_key=self.gradient_key, own=self.strategies)

    # --- losses -----------------------------------------------------------------------------------------
    def photometric_loss(self, rendered: Rendered, view: TrainView) -> Tensor:
        """``(1 - l) L1 + l D-SSIM`` of the render against the view's image, over its valid pixels."""
        config = self.config
        loss, _ = photometric_loss(rendered.rgb, view.image, view.mask, ssim_lambda=config["ssim_lambda"],
                                   ssim_window=config["ssim_window"], ssim_sigma=config["ssim_sigma"])
        return loss

    def view_loss_terms(self, rendered: Rendered, view: TrainView, step: int, *,
                        regularized: bool = True) -> dict[str, Tensor]:
        """The photometric term ``rgb`` (views with an image) and, when ``regularized``, the method's
        regularizers."""
        terms = {} if view.image is None else {"rgb": self.photometric_loss(rendered, view)}
        if regularized:
            terms.update(self.regularization(rendered, view, step))
        return terms

    def loss(self, rendered: Rendered, view: TrainView, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The train-view loss of ``rendered`` at ``step`` and its detached terms (``loss``, ``psnr``, each
        regularizer)."""
        terms = self.view_loss_terms(rendered, view, step)
        loss = _sum(terms.values())
        logged = {"psnr": psnr(rendered.rgb, view.image, view.mask)}
        logged.update({name: value.detach() for name, value in terms.items() if name != "rgb"})
        logged["loss"] = loss.detach()
        return loss, logged

    # --- training ---------------------------------------------------------------------------------------
    def fit(
        self,
        train_views: list[View],
        *,
        points: PointCloud | None,
        config: dict[str, Any],
        seed: int,
        workdir: Path,
        progress: ProgressFn | None = None,
        priors: Priors | None = None,
    ) -> None:
        self.config = dict(config)
        self.history = []
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(seed)
            trainer = Trainer(self, train_views, points, self.config, seed=seed, rng=np.random.default_rng(seed),
                              priors=priors, workdir=workdir)
            trainer.initialize()
            with self._training_threads():
                self.setup(trainer)
                trainer.run(progress)
        if config["save_checkpoint"] and workdir is not None:
            self.save(Path(workdir) / "gaussians.pt")

    def _training_threads(self):
        threads = self.cpu_training_torch_threads
        return nullcontext() if self.device.type != "cpu" or threads is None else split_threads(threads)

    def _rng_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    # --- rendering --------------------------------------------------------------------------------------
    @torch.no_grad()
    def render(self, cameras: list[Camera]) -> list[Render]:
        if self.params is None:
            raise RuntimeError(f"{self.name}: render() called before fit()")
        renders = []
        for camera in cameras:
            viewmat, K = camera_tensors(camera, self.device)
            out = self.rasterize(viewmat, K, camera.width, camera.height, self.sh_degree)
            renders.append(Render(rgb=to_numpy(out.rgb), depth=to_numpy(out.depth)))
        return renders

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: p.detach().cpu() for name, p in self.params.items()}
        torch.save({"method": self.name, "sh_degree": self.sh_degree, "params": tensors}, path)

    @property
    def num_gaussians(self) -> int:
        return 0 if self.params is None else len(self.params["means"])


def to_numpy(image: Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.detach().float().cpu().numpy(), dtype=np.float32)


def step_weight(step: int, weight: float, start: int) -> float:
    """A regularizer's weight: ``weight`` once ``step`` has passed ``start`` (2DGS: ``iteration > start``)."""
    return weight if step > start else 0.0


__all__ = [
    "GaussianMethod",
    "OpacityResettingStrategy",
    "Rendered",
    "StepCallback",
    "TrainTarget",
    "TrainView",
    "Trainer",
    "ViewSampler",
    "ViewSource",
    "camera_tensors",
    "make_strategy",
    "step_weight",
    "to_numpy",
]
