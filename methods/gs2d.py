"""2D Gaussian Splatting (Huang et al. 2024): surfels on the shared Gaussian core, with 2DGS's depth
distortion and normal consistency losses.

``render`` returns the depth named by ``depth_mode`` in the config: "expected" (alpha-normalized mean depth,
2DGS's ``depth_ratio = 0``, its advice for unbounded scenes) or "median". Numbers: ``presets/2dgs.yaml``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gfbench.methods.core.gaussians import sh_colors
from gfbench.methods.core.losses import distortion_loss, normal_consistency_loss
from gfbench.methods.core.rasterize import rasterize_2dgs
from gfbench.methods.core.training import GaussianMethod, Rendered, TrainView, step_weight


class GaussianSurfels2D(GaussianMethod):
    name = "2dgs"
    surfel = True
    gradient_key = "gradient_2dgs"

    def rasterize(self, viewmat: Tensor, K: Tensor, width: int, height: int, sh_degree: int) -> Rendered:
        p, config = self.params, self.config
        colors, alphas, normals, surf_normals, distort, median, info = rasterize_2dgs(
            p["means"],
            p["quats"],
            torch.exp(p["scales"]),
            torch.sigmoid(p["opacities"]),
            sh_colors(p),
            viewmat,
            K,
            width,
            height,
            sh_degree=sh_degree,
            near_plane=float(config["near_plane"]),
            far_plane=float(config["far_plane"]),
            render_mode="RGB+ED",
            distloss=torch.is_grad_enabled() and config["lambda_dist"] > 0,
            depth_mode=config["depth_mode"],
        )
        depth = colors[0, ..., 3] if config["depth_mode"] == "expected" else median[0, ..., 0]
        extras = {"normals": normals[0], "surf_normals": surf_normals.reshape(normals[0].shape)}
        if distort is not None:
            extras["distort"] = distort[0]
        return Rendered(rgb=colors[0, ..., :3], depth=depth, alpha=alphas[0], info=info, extras=extras)

    def regularization(self, rendered: Rendered, view: TrainView, step: int) -> dict[str, Tensor]:
        config, mask = self.config, view.mask
        terms = {}
        dist_weight = step_weight(step, config["lambda_dist"], config["dist_start_iter"])
        if dist_weight > 0:
            terms["dist"] = dist_weight * distortion_loss(rendered.extras["distort"], mask)
        normal_weight = step_weight(step, config["lambda_normal"], config["normal_start_iter"])
        if normal_weight > 0:
            extras = rendered.extras
            terms["normal"] = normal_weight * normal_consistency_loss(
                extras["normals"], extras["surf_normals"], rendered.alpha, mask
            )
        return terms
