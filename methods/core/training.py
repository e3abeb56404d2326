"""The training loop shared by the Gaussian methods (3DGS, 2DGS): one random train view per step, rendered
at its own size and intrinsics, masked photometric loss plus a method's regularizers, Adam per parameter,
and densification by gsplat's ``DefaultStrategy`` (with the opacity reset that gsplat 1.5.3 skips).

A method subclasses :class:`GaussianMethod` and supplies ``rasterize`` (and optionally ``regularization``).
Every number comes from the config (the method's preset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa
from torch import Tensor

from gfbench.camera import Camera
from gfbench.methods import ProgressFn, Render
from gfbench.methods.core import gaussians as G
from gfbench.methods.core.losses import photometric_loss, psnr
from gfbench.scene import PointCloud
from gfbench.views import View


@dataclass
class OpacityResettingStrategy(DefaultStrategy):
    """gsplat's ``DefaultStrategy`` plus the periodic opacity reset of 3DGS.

    gsplat 1.5.3 guards its reset with ``step % self.reset_every == 0 & step > 0``. ``&`` binds tighter than
    the comparisons, so this is the chained comparison ``step % reset_every == (0 & step) > 0``, whose last
    link ``0 > 0`` is always False: the reset never runs. This class resets at every positive multiple of
    ``reset_every`` while refining (``step < refine_stop_iter``, as 3DGS resets only while densifying).
    Should gsplat fix its guard, resetting twice in one step is harmless: the reset clamps the opacities to
    one value and zeroes the optimizer's moments, both idempotent.

    ``reset_opacity`` is the post-sigmoid value opacities are clamped to (3DGS and 2DGS: 0.01); None keeps
    gsplat's ``2 x prune_opa``.
    """

    reset_opacity: float | None = None

    @property
    def opacity_reset_value(self) -> float:
        return self.prune_opa * 2.0 if self.reset_opacity is None else self.reset_opacity

    def is_reset_step(self, step: int) -> bool:
        return 0 < step < self.refine_stop_iter and step % self.reset_every == 0

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if self.is_reset_step(step):
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.opacity_reset_value)


STRATEGY_KEYS = (
    "refine_start_iter",
    "refine_every",
    "refine_stop_iter",
    "grow_grad2d",
    "grow_scale3d",
    "prune_opa",
    "prune_scale3d",
    "reset_every",
    "reset_opacity",
)


def make_strategy(config: dict[str, Any], *, gradient_key: str) -> OpacityResettingStrategy:
    """The densification strategy with the config's numbers (``gradient_key``: "means2d" or "gradient_2dgs")."""
    return OpacityResettingStrategy(key_for_gradient=gradient_key, **{key: config[key] for key in STRATEGY_KEYS})


@dataclass
class TrainTarget:
    """A train view as tensors: ``image [H, W, 3]`` float in [0, 1], ``mask [H, W]`` bool or None, and the
    camera as ``viewmat [1, 4, 4]`` (world-to-camera) and ``K [1, 3, 3]``."""

    image: Tensor
    mask: Tensor | None
    viewmat: Tensor
    K: Tensor
    width: int
    height: int

    @classmethod
    def from_view(cls, view: View, device: str | torch.device) -> "TrainTarget":
        camera = view.camera
        h, w = view.image.shape[:2]
        if (w, h) != (camera.width, camera.height):
            raise ValueError(f"view {view.name!r}: image is {w}x{h} but its camera says {camera.width}x{camera.height}")
        image = torch.as_tensor(view.image, device=device).float() / 255.0
        mask = None if view.mask is None else torch.as_tensor(np.asarray(view.mask, bool), device=device)
        viewmat, K = camera_tensors(camera, device)
        return cls(image=image, mask=mask, viewmat=viewmat, K=K, width=w, height=h)


def camera_tensors(camera: Camera, device: str | torch.device) -> tuple[Tensor, Tensor]:
    """``(viewmat [1, 4, 4], K [1, 3, 3])`` float32 tensors for the rasterizer."""
    viewmat = torch.as_tensor(camera.w2c, dtype=torch.float32, device=device)[None]
    K = torch.as_tensor(camera.K, dtype=torch.float32, device=device)[None]
    return viewmat, K


class ViewSampler:
    """Train-view indices in a fresh random order every pass over the views (3DGS's viewpoint stack)."""

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


class GaussianMethod:
    """Base of the Gaussian methods: ``fit`` trains, ``render`` renders full frames.

    After ``fit``: ``params`` (the Gaussians), ``history`` (one record per logged step with ``step``,
    ``loss``, ``psnr``, ``gaussians``), ``extent`` and ``sh_degree``.
    """

    name = "gaussian"
    surfel = False
    gradient_key = "means2d"

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

    def regularization(self, rendered: Rendered, mask: Tensor | None, step: int) -> dict[str, Tensor]:
        """Extra loss terms at ``step`` (already weighted); none by default."""
        return {}

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
    ) -> None:
        self.config = dict(config)
        self.history = []
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(seed)
            rng = np.random.default_rng(seed)
            self._train(train_views, points, rng, progress)
        if config["save_checkpoint"] and workdir is not None:
            self.save(Path(workdir) / "gaussians.pt")

    def _rng_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def _train(self, views: list[View], points: PointCloud | None, rng: np.random.Generator, progress) -> None:
        config = self.config
        targets = [TrainTarget.from_view(v, self.device) for v in views]
        cameras = [v.camera for v in views]
        self.extent = G.scene_extent(cameras, config["extent_factor"])
        cloud = G.initial_points(points, cameras, config, self.extent, rng)
        self.params = G.init_params(cloud, config, rng, surfel=self.surfel, device=self.device)
        optimizers = G.make_optimizers(self.params, config, self.extent)
        scheduler = G.means_lr_scheduler(optimizers["means"], config)
        strategy = make_strategy(config, gradient_key=self.gradient_key)
        strategy.check_sanity(self.params, optimizers)
        state = strategy.initialize_state(scene_scale=self.extent)
        sampler = ViewSampler(len(targets), rng)
        steps, log_every = int(config["steps"]), int(config["log_every"])
        for step in range(steps):
            target = targets[sampler.next()]
            terms = self._train_step(step, target, optimizers, strategy, state)
            scheduler.step()
            if step % log_every == 0 or step == steps - 1:
                record = {name: float(value) for name, value in terms.items()}
                record["gaussians"] = float(len(self.params["means"]))
                self.history.append({"step": float(step + 1), **record})
                if progress is not None:
                    progress(step + 1, record)
        self.sh_degree = G.sh_degree_at(max(steps - 1, 0), config)

    def _train_step(self, step, target: TrainTarget, optimizers, strategy, state) -> dict[str, Tensor]:
        rendered = self.rasterize(
            target.viewmat, target.K, target.width, target.height, G.sh_degree_at(step, self.config)
        )
        strategy.step_pre_backward(self.params, optimizers, state, step, rendered.info)
        loss, terms = self.loss(rendered, target, step)
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        strategy.step_post_backward(self.params, optimizers, state, step, rendered.info, packed=False)
        return terms

    def loss(self, rendered: Rendered, target: TrainTarget, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of ``rendered`` against ``target`` at ``step``, and its terms for logging
        (detached: ``loss``, ``psnr`` and each regularizer)."""
        config = self.config
        loss, _ = photometric_loss(
            rendered.rgb,
            target.image,
            target.mask,
            ssim_lambda=config["ssim_lambda"],
            ssim_window=config["ssim_window"],
            ssim_sigma=config["ssim_sigma"],
        )
        terms = {"psnr": psnr(rendered.rgb, target.image, target.mask)}
        for name, value in self.regularization(rendered, target.mask, step).items():
            loss = loss + value
            terms[name] = value.detach()
        terms["loss"] = loss.detach()
        return loss, terms

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
    "TrainTarget",
    "ViewSampler",
    "camera_tensors",
    "make_strategy",
    "step_weight",
    "to_numpy",
]
