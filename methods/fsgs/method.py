"""FSGS (Zhu et al., ECCV 2024) as a gfbench method: 3DGS with proximity-guided unpooling, pseudo views and the
depth correlation loss against the run's depth prior. Numbers: ``presets/fsgs.yaml`` (its header says where the
paper and the official code differ).

- Train views: 3DGS's photometric loss plus ``depth_weight x (1 - pearson(rendered depth, -prior))`` against the
  prior's prediction of the train image (predicted once, cached on disk by the prior).
- Pseudo views (:class:`PseudoDepthSource`): cameras without an image; each render's colours go to the prior and
  only the depth term applies, weighted by :class:`DepthLossSchedule`; they never feed the densification
  statistics. They need a prior that predicts novel images: the ``oracle`` prior knows only the train images,
  so ``pseudo_views: auto`` leaves them out with it and ``pseudo_views: on`` refuses it.
- Densification: :class:`FSGSStrategy` (``strategy: fsgs``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gfbench.methods import Capabilities
from gfbench.methods.config import ConfigError
from gfbench.methods.core.gaussians import sh_colors
from gfbench.methods.core.rasterize import rasterize_3dgs
from gfbench.methods.core.rasterize_cpu import full_threads
from gfbench.methods.core.training import Rendered, Trainer, TrainView, ViewSource
from gfbench.methods.fsgs.depth_loss import DepthLossSchedule
from gfbench.methods.fsgs.pseudo_views import pseudo_cameras
from gfbench.methods.fsgs.strategy import FSGSStrategy
from gfbench.methods.gs3d import GaussianSplatting3D

PRIOR_DEPTH = "prior_inverse_depth"  # TrainView.data key of the prior's estimate
PSEUDO_SOURCE = "pseudo"


def depth_for_loss(rendered: Rendered, config: dict) -> Tensor:
    """The rendered depth the correlation sees: accumulated (``sum z alpha T``, FSGS's rasterizer) or expected."""
    return rendered.extras["accumulated_depth"] if config["depth_render"] == "accumulated" else rendered.depth


def valid_pixels(view_mask: Tensor | None, prior: Tensor) -> Tensor:
    """Pixels the depth term compares: the view's valid pixels where the prior has a finite, non-zero value (the
    oracle writes 0 where the dataset has no depth)."""
    valid = torch.isfinite(prior) & (prior != 0)
    return valid if view_mask is None else valid & view_mask


def predicted_inverse_depth(prior, images: list[np.ndarray], device, *, cache: bool) -> list[Tensor]:
    with full_threads():  # a depth model's inference wants every thread (training runs torch on one)
        predictions = prior.predict(images, cache=cache)
    return [torch.as_tensor(np.asarray(d, np.float32), device=device) for d in predictions]


class PseudoDepthSource(ViewSource):
    """FSGS's pseudo views: no image, no photometric term; the prior's depth of each render is the target."""

    def __init__(self, views: list[TrainView], schedule: DepthLossSchedule, prior, rng: np.random.Generator):
        super().__init__(PSEUDO_SOURCE, views, weight=schedule.pseudo_weight_at, feeds_densification=False,
                         regularized=False, rng=rng)
        self.schedule, self.prior = schedule, prior

    def loss(self, trainer: Trainer, rendered: Rendered, view: TrainView, step: int) -> dict[str, Tensor]:
        image = rendered.rgb.detach().clamp(0.0, 1.0).cpu().numpy()
        (target,) = predicted_inverse_depth(self.prior, [image], trainer.device, cache=False)
        depth = depth_for_loss(rendered, trainer.config)
        return {"depth": self.schedule.pseudo_view_loss(depth, target, valid_pixels(None, target))}


class FSGS(GaussianSplatting3D):
    name = "fsgs"
    capabilities = Capabilities(priors=("depth",))
    strategies = {"fsgs": FSGSStrategy}

    def rasterize(self, viewmat: Tensor, K: Tensor, width: int, height: int, sh_degree: int) -> Rendered:
        p = self.params
        colors, alphas, info = rasterize_3dgs(
            p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), sh_colors(p),
            viewmat, K, width, height, sh_degree=sh_degree, near_plane=float(self.config["near_plane"]),
            far_plane=float(self.config["far_plane"]), render_mode="RGB+D",
        )
        accumulated = colors[0, ..., 3]
        expected = accumulated / alphas[0, ..., 0].clamp_min(1e-10)  # gsplat's "ED"
        return Rendered(rgb=colors[0, ..., :3], depth=expected, alpha=alphas[0], info=info,
                        extras={"accumulated_depth": accumulated})

    # --- training -------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer) -> None:
        config = self.config
        self.schedule = DepthLossSchedule.from_config(config)
        prior = trainer.priors["depth"]
        targets = predicted_inverse_depth(prior, [v.image for v in trainer.views], trainer.device, cache=True)
        for view, target in zip(trainer.train_views, targets):
            if tuple(target.shape) != (view.height, view.width):
                raise ValueError(f"depth prior {prior.source.name!r} returned a {tuple(target.shape)} map for "
                                 f"view {view.name!r} of {view.height}x{view.width}")
            view.data[PRIOR_DEPTH] = target
        if self.uses_pseudo_views(prior):
            trainer.add_source(PseudoDepthSource(self.pseudo_views(trainer), self.schedule, prior,
                                                 trainer.rng_for(PSEUDO_SOURCE)))

    def uses_pseudo_views(self, prior) -> bool:
        mode = self.config["pseudo_views"]
        if mode == "on" and not prior.novel_images:
            raise ConfigError(f"method 'fsgs': pseudo_views = 'on' needs a depth prior that predicts novel images; "
                              f"the {prior.source.name!r} prior knows only the train images (a pseudo view's render "
                              f"has no stored depth): use a depth model (--depth-prior PATH), or pseudo_views=auto "
                              f"(off with this prior) or off")
        return mode == "on" or (mode == "auto" and prior.novel_images)

    def pseudo_views(self, trainer: Trainer) -> list[TrainView]:
        cameras = [view.camera for view in trainer.train_views]
        points = self.params["means"].detach().cpu().numpy()
        pool = pseudo_cameras(cameras, trainer.rng_for("pseudo-poses"), self.config, points)
        return [TrainView.from_camera(camera, trainer.device, name=f"pseudo-{i}") for i, camera in enumerate(pool)]

    def regularization(self, rendered: Rendered, view: TrainView, step: int) -> dict[str, Tensor]:
        """The train-view depth term, already weighted (the train source's weight is 1)."""
        target = view.data.get(PRIOR_DEPTH)
        weight = self.schedule.train_weight_at(step)
        if target is None or weight == 0:
            return {}
        depth = depth_for_loss(rendered, self.config)
        return {"depth": weight * self.schedule.train_view_loss(depth, target, valid_pixels(view.mask, target))}


__all__ = ["FSGS", "PseudoDepthSource"]
