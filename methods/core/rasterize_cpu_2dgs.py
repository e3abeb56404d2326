"""CPU tile rasterizer for 2D Gaussian surfels (the CPU twin of gsplat's ``rasterization_2dgs``), on
compiled kernels.

Same pipeline as :mod:`.rasterize_cpu`: projection (:class:`ProjectSurfels`, the maths of
:func:`.projection.project_surfels_2d`), tile binning, then per-tile compositing (:mod:`.cpu_kernels`,
whose docstring has the ray-splat intersection). Besides colours and alpha the kernel composites
camera-space normals, gsplat's depth distortion and the median depth. With camera tensors that require
grad the projection falls back to plain PyTorch so that cameras get gradients too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import cpu_kernels as K
from .projection import project_surfels_2d
from .rasterize_cpu import (
    TileBins,
    _cameras_need_grad,
    add_depth_channel,
    as_f64,
    bin_tiles,
    camera_colors,
    finish_render,
    gaussian_rows,
    run_workers,
    split_rows,
    tile_info,
)


class ProjectSurfels(torch.autograd.Function):
    """(means, quats, scales, cameras) -> means2d [C, N, 2], ray_transforms [C, N, 3, 3], depths [C, N],
    camera-space normals [C, N, 3], radii [C, N, 2] int32."""

    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, width, height, near, far, clip):
        host = [as_f64(t) for t in (means, quats, scales, viewmats, Ks)]
        C, N = viewmats.shape[0], means.shape[0]
        out = (np.zeros((C, N, 2)), np.zeros((C, N, 3, 3)), np.zeros((C, N)), np.zeros((C, N, 3)),
               np.zeros((C, N, 2), dtype=np.int32))
        run_workers(K.project_2dgs_fwd, *host, width, height, near, far, clip, *out)
        ctx.host, ctx.radii = host, out[4]
        dtype = means.dtype
        tensors = [torch.from_numpy(a).to(dtype) for a in out[:4]] + [torch.from_numpy(out[4])]
        ctx.mark_non_differentiable(tensors[4])
        return tuple(tensors)

    @staticmethod
    def backward(ctx, v_means2d, v_transforms, v_depths, v_normals, _v_radii):
        N = ctx.host[0].shape[0]
        grads = (np.zeros((N, 3)), np.zeros((N, 4)), np.zeros((N, 3)))
        run_workers(
            K.project_2dgs_bwd, *ctx.host, ctx.radii, as_f64(v_means2d), as_f64(v_transforms), as_f64(v_depths),
            as_f64(v_normals), *grads,
        )
        dtype = v_means2d.dtype
        return (*[torch.from_numpy(g).to(dtype) for g in grads], None, None, None, None, None, None, None)


@dataclass
class ProjectedSurfels:
    means2d: Tensor
    ray_transforms: Tensor
    depths: Tensor
    normals: Tensor
    radii: Tensor


def project_2d(means, quats, scales, viewmats, Ks, width, height, *, near_plane, far_plane,
               radius_clip) -> ProjectedSurfels:
    """Projection through the compiled kernel, or plain PyTorch when the cameras need gradients."""
    if _cameras_need_grad(viewmats, Ks):
        p = project_surfels_2d(
            means, quats, scales, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
        )
        return ProjectedSurfels(p.means2d, p.ray_transforms, p.depths, p.normals, p.radii)
    out = ProjectSurfels.apply(
        means, quats, scales, viewmats, Ks, width, height, float(near_plane), float(far_plane), float(radius_clip)
    )
    return ProjectedSurfels(*out)


class RasterizeTiles2D(torch.autograd.Function):
    """(means2d, ray_transforms, opacities [C, N], features [C, N, D], normals [C, N, 3]) ->
    features [C, H, W, D], camera-space normals [C, H, W, 3], final transmittance, distortion and
    median depth (each [C, H, W, 1]), with no background."""

    @staticmethod
    def forward(ctx, means2d, ray_transforms, opacities, features, normals, bins: TileBins, width, height):
        params = gaussian_rows(means2d, ray_transforms, opacities, features, normals)
        C, D = bins.n_cameras, features.shape[-1]
        feats, norms = np.empty((C, height, width, D)), np.empty((C, height, width, 3))
        T, distort, median = (np.empty((C, height, width)) for _ in range(3))
        last, median_idx = (np.empty((C, height, width), dtype=np.int64) for _ in range(2))
        pairs = np.zeros(bins.n_tiles, dtype=np.int64)
        run_workers(
            K.rasterize_2dgs_fwd, params, bins.tile_offsets, bins.flatten_ids, bins.tile_width,
            bins.tile_height, False, feats, norms, T, distort, median, last, median_idx, pairs,
        )
        ctx.bins, ctx.params = bins, params
        ctx.saved = (T, last, median_idx, feats[..., -1].copy())
        ctx.shapes = [tuple(t.shape) for t in (means2d, ray_transforms, opacities, features, normals)]
        bins.pairs_evaluated = int(pairs.sum())
        dtype = means2d.dtype
        per_pixel = [torch.from_numpy(a).to(dtype) for a in (feats, norms)]
        per_pixel += [torch.from_numpy(a)[..., None].to(dtype) for a in (T, distort, median)]
        return tuple(per_pixel)

    @staticmethod
    def backward(ctx, v_features, v_normals, v_T, v_distort, v_median):
        bins = ctx.bins
        T, last, median_idx, depth_total = ctx.saved
        per_isect = np.zeros((bins.n_isects, ctx.params.shape[1]))
        run_workers(
            K.rasterize_2dgs_bwd, ctx.params, bins.tile_offsets, bins.flatten_ids, bins.tile_width,
            bins.tile_height, False, T, last, median_idx, depth_total, as_f64(v_features), as_f64(v_normals),
            as_f64(v_T[..., 0]), as_f64(v_distort[..., 0]), as_f64(v_median[..., 0]), per_isect,
        )
        return (*split_rows(bins.per_gaussian(per_isect), ctx.shapes, v_features.dtype), None, None, None)


def _with_densify_hook(ray_transforms: Tensor, depths: Tensor) -> tuple[Tensor, Tensor]:
    """A zero [C, N, 2] tensor whose gradient is gsplat's ``gradient_2dgs``, and the transforms using it.

    gsplat's 2DGS backward writes dL/dM[0, 2] * depth and dL/dM[1, 2] * depth (the image-plane translation
    part of the splat transform, rescaled to pixels) into the grad of a dummy tensor; adding
    ``densify * depth`` to those two entries gives exactly that gradient through autograd.
    """
    C, N = depths.shape
    densify = torch.zeros((C, N, 2), dtype=ray_transforms.dtype, device=ray_transforms.device,
                          requires_grad=True)
    shift = densify * depths.detach()[..., None]
    zero = torch.zeros_like(shift[..., 0])
    column = torch.stack([shift[..., 0], shift[..., 1], zero], dim=-1)  # added to column 2
    offset = torch.stack([torch.zeros_like(column), torch.zeros_like(column), column], dim=-1)
    return densify, ray_transforms + offset


def rasterize_2dgs_cpu(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *,
    sh_degree: Optional[int] = None, near_plane: float = 0.01, far_plane: float = 1e10,
    backgrounds: Optional[Tensor] = None, render_mode: str = "RGB+ED", eps2d: float = 0.3,
    radius_clip: float = 0.0, distloss: bool = False, depth_mode: str = "expected",
):
    """CPU equivalent of ``gsplat.rasterization_2dgs(..., packed=False)`` (see ``rasterize.rasterize_2dgs``)."""
    from gsplat.utils import depth_to_normal  # pure torch

    del eps2d  # accepted for parity with gsplat, which ignores it for surfels too
    if distloss and render_mode not in ("D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"distloss needs a depth render mode, got {render_mode!r}")
    if depth_mode not in ("expected", "median"):
        raise ValueError(f"depth_mode must be 'expected' or 'median', got {depth_mode!r}")
    C, N = viewmats.shape[0], means.shape[0]
    proj = project_2d(
        means, quats, scales, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
    )
    densify, ray_transforms = _with_densify_hook(proj.ray_transforms, proj.depths)
    opac = opacities[None, :].expand(C, N)
    features = camera_colors(colors, sh_degree, means, viewmats)
    features, backgrounds = add_depth_channel(features, proj.depths, render_mode, backgrounds)
    bins = bin_tiles(proj.means2d, proj.radii, proj.depths, width, height)
    render, normals_cam, T, distort, median = RasterizeTiles2D.apply(
        proj.means2d, ray_transforms, opac, features, proj.normals, bins, width, height
    )
    alphas = 1.0 - T
    render = finish_render(render, alphas, backgrounds, render_mode)

    camtoworlds = torch.linalg.inv(viewmats)
    surf_normals = None
    if render_mode in ("RGB+ED", "RGB+D"):
        depth = render[..., -1:] if depth_mode == "expected" else median
        surf_normals = depth_to_normal(depth, camtoworlds, Ks)
    render_normals = torch.einsum("cij,chwj->chwi", camtoworlds[:, :3, :3], normals_cam)

    info = {
        **tile_info(proj, opac, bins, width, height),
        "ray_transforms": proj.ray_transforms,
        "normals": proj.normals,
        "render_distort": distort,
        "gradient_2dgs": densify,
    }
    return render, alphas, render_normals, surf_normals, distort, median, info
