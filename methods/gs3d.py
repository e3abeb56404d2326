"""3D Gaussian Splatting (Kerbl et al. 2023) on the shared Gaussian core.

Depth in ``render`` is the expected depth (alpha-normalized, gsplat's "ED" mode). Numbers: ``presets/3dgs.yaml``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gfbench.methods.core.gaussians import sh_colors
from gfbench.methods.core.rasterize import rasterize_3dgs
from gfbench.methods.core.training import GaussianMethod, Rendered


class GaussianSplatting3D(GaussianMethod):
    name = "3dgs"
    surfel = False
    gradient_key = "means2d"

    def rasterize(self, viewmat: Tensor, K: Tensor, width: int, height: int, sh_degree: int) -> Rendered:
        p = self.params
        colors, alphas, info = rasterize_3dgs(
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
            near_plane=float(self.config["near_plane"]),
            far_plane=float(self.config["far_plane"]),
            render_mode="RGB+ED",
        )
        return Rendered(rgb=colors[0, ..., :3], depth=colors[0, ..., 3], alpha=alphas[0], info=info)
