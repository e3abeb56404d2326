"""CPU tile rasterizer for 2D Gaussian surfels (the CPU twin of gsplat's ``rasterization_2dgs``), on
compiled kernels.

Same pipeline as :mod:`.rasterize_cpu`: projection (:class:`ProjectSurfels`, the maths of
:func:`.projection.project_surfels_2d`), tile binning, then per-tile compositing (:mod:`.cpu_kernels`,
whose docstring has the ray-splat intersection, or for RGB + depth the C ``lanes`` kernels of :mod:`.lanes` where
$GFBENCH_CPU_COMPOSITING resolves to them, as for 3DGS). Besides colours and alpha the kernel composites
camera-space normals, gsplat's depth distortion and the median depth. With camera tensors that require
grad the projection falls back to plain PyTorch so that cameras get gradients too. Memory as for 3DGS,
with rows of 15 + D values (means2d, the 3x3 transform, opacity, features, normals) and per-pixel
normals, distortion, median depth and median index besides. The surface normals of the rendered depth are
gsplat's ``depth_to_normal`` to the bit, computed faster (:mod:`.surface_normals`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import cpu_kernels as K
from . import lanes
from .projection import project_surfels_2d
from .rasterize_cpu import (
    SCRATCH,
    TileBins,
    _cameras_need_grad,
    add_depth_channel,
    as_f64,
    as_kernel_input,
    bin_tiles,
    camera_colors,
    finish_render,
    gaussian_rows,
    grad_will_flow,
    keep_rows_for_backward,
    kernel_images,
    kernel_output,
    line_aligned,
    output_twins,
    run_workers,
    take_saved_rows,
    tile_info,
    to_torch,
)
from .surface_normals import surface_normals


class ProjectSurfels(torch.autograd.Function):
    """(means, quats, scales, cameras) -> means2d [C, N, 2], ray_transforms [C, N, 3, 3], depths [C, N],
    camera-space normals [C, N, 3], radii [C, N, 2] int32. The float64 outputs also go into ``host``."""

    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, width, height, near, far, clip, host):
        inputs = [as_f64(t) for t in (means, quats, scales, viewmats, Ks)]  # float64 copies: see as_kernel_input
        C, N = viewmats.shape[0], means.shape[0]
        out = (*(np.empty(shape) for shape in ((C, N, 2), (C, N, 3, 3), (C, N), (C, N, 3))),
               np.empty((C, N, 2), dtype=np.int32))
        twins = output_twins(out[:4], means.dtype)
        run_workers(K.project_2dgs_fwd, *inputs, width, height, near, far, clip, *out, twins)
        host.update(zip(("means2d", "ray_transforms", "depths", "normals", "radii"), out))
        ctx.inputs, ctx.radii = inputs, out[4]
        tensors = [to_torch(twin, means.dtype) for twin in twins] + [torch.from_numpy(out[4])]
        ctx.mark_non_differentiable(tensors[4])
        return tuple(tensors)

    @staticmethod
    def backward(ctx, v_means2d, v_transforms, v_depths, v_normals, _v_radii):
        N = ctx.inputs[0].shape[0]
        grads = tuple(kernel_output((N, k), v_means2d.dtype) for k in (3, 4, 3))
        run_workers(
            K.project_2dgs_bwd, *ctx.inputs, ctx.radii,
            *(as_kernel_input(g) for g in (v_means2d, v_transforms, v_depths, v_normals)), *grads,
        )
        return (*[to_torch(g, v_means2d.dtype) for g in grads], None, None, None, None, None, None, None, None)


@dataclass
class ProjectedSurfels:
    means2d: Tensor
    ray_transforms: Tensor
    depths: Tensor
    normals: Tensor
    radii: Tensor
    host: dict  # float64 NumPy twins of the above


def project_2d(means, quats, scales, viewmats, Ks, width, height, *, near_plane, far_plane,
               radius_clip) -> ProjectedSurfels:
    """Projection through the compiled kernel, or plain PyTorch when the cameras need gradients."""
    names = ("means2d", "ray_transforms", "depths", "normals")
    if _cameras_need_grad(viewmats, Ks):
        p = project_surfels_2d(
            means, quats, scales, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
        )
        host = {name: as_f64(getattr(p, name)) for name in names}
        return ProjectedSurfels(*(getattr(p, n) for n in names), p.radii, host={**host, "radii": p.radii.numpy()})
    host: dict = {}
    out = ProjectSurfels.apply(
        means, quats, scales, viewmats, Ks, width, height, float(near_plane), float(far_plane), float(radius_clip),
        host,
    )
    return ProjectedSurfels(*out, host=host)


class RasterizeTiles2D(torch.autograd.Function):
    """(means2d, ray_transforms, opacities [C, N], features [C, N, D], normals [C, N, 3], densify [C, N, 2])
    -> features [C, H, W, D], camera-space normals [C, H, W, 3], final transmittance, distortion and
    median depth (each [C, H, W, 1]), with no background.

    ``densify`` is a zero tensor whose gradient is gsplat's ``gradient_2dgs``: its 2DGS backward writes
    dL/dM[0, 2] * depth and dL/dM[1, 2] * depth (the image-plane translation part of the splat transform,
    rescaled to pixels) into the grad of such a dummy, which its ``DefaultStrategy`` reads for surfels.
    ``host`` holds float64 twins of the projection's outputs (incl. ``depths``)."""

    @staticmethod
    def forward(ctx, means2d, ray_transforms, opacities, features, normals, densify, bins: TileBins, width, height,
                host, backward_follows=True):
        params = gaussian_rows(host["means2d"], host["ray_transforms"], opacities, features, host["normals"])
        C, D = bins.n_cameras, features.shape[-1]
        image = (C, height, width)
        T, T_out = line_aligned(image), None  # T_out: T in the caller's float32, where the lanes kernels write it
        last, median_idx = (line_aligned(image, np.int64) for _ in range(2))
        pairs = np.zeros((bins.n_tiles, 2), dtype=np.int64)
        ctx.lanes = lanes.composite(D)
        if ctx.lanes:  # the caller's images in its dtype where it is float32 (no conversion after)
            feats, norms, distort, median = (kernel_output(shape, means2d.dtype)
                                             for shape in ((*image, D), (*image, 3), image, image))
            T_out = line_aligned(image, np.float32) if feats.dtype == np.float32 else None
            depth_total = line_aligned(image)
            lanes.forward_2dgs(params, bins, width, height, feats, norms, T, distort, median, last, median_idx,
                               depth_total, run_workers, T_out)
        else:
            feats, norms = np.empty((*image, D)), np.empty((*image, 3))
            distort, median = np.empty(image), np.empty(image)
            run_workers(
                K.rasterize_2dgs_fwd, params, bins.tile_offsets, bins.flatten_ids, bins.tile_width,
                bins.tile_height, False, feats, norms, T, distort, median, last, median_idx, pairs,
            )
            depth_total = feats[..., -1].copy()
        ctx.bins, ctx.depths, ctx.size = bins, host["depths"], (width, height)
        keep_rows_for_backward(ctx, params, backward_follows)
        ctx.saved = (T, last, median_idx, depth_total)
        ctx.shapes = [tuple(t.shape) for t in (means2d, ray_transforms, opacities, features, normals)]
        bins.record_work(None if ctx.lanes else pairs)  # the lanes kernels do not count their work
        dtype = means2d.dtype
        return (to_torch(feats, dtype), to_torch(norms, dtype),
                *(to_torch(a[..., None], dtype) for a in (T if T_out is None else T_out, distort, median)))

    @staticmethod
    def backward(ctx, v_features, v_normals, v_T, v_distort, v_median):
        bins, params = ctx.bins, take_saved_rows(ctx)
        T, last, median_idx, depth_total = ctx.saved
        per_isect = SCRATCH.take((bins.n_isects, params.shape[1]))
        output_grads = (v_features, v_normals, v_T[..., 0], v_distort[..., 0], v_median[..., 0])
        if ctx.lanes:  # the forward's kernels, whatever $GFBENCH_CPU_COMPOSITING says now
            lanes.backward_2dgs(params, bins, *ctx.size, T, last, median_idx, depth_total,
                                *kernel_images(*output_grads), per_isect, run_workers)
        else:
            output_grads = [as_f64(g) for g in output_grads]
            run_workers(
                K.rasterize_2dgs_bwd, params, bins.tile_offsets, bins.flatten_ids, bins.tile_width,
                bins.tile_height, False, T, last, median_idx, depth_total, *output_grads, per_isect,
            )
        rows = bins.per_rank(per_isect)
        # dL/dM[0, 2], dL/dM[1, 2] (row columns 2 + 2, 2 + 5) times each rank's depth
        rank_depths = ctx.depths.reshape(-1)[bins.order][:, None]
        v_translation = np.ascontiguousarray(rows[:, [4, 7]] * rank_depths)
        C, N = ctx.depths.shape
        grads = bins.to_gaussians(rows, ctx.shapes, v_features.dtype)
        v_densify = bins.to_gaussians(v_translation, [(C, N, 2)], v_features.dtype)[0]
        for scratch in (params, per_isect, rows):
            SCRATCH.give_back(scratch)
        return (*grads, v_densify, None, None, None, None, None)


def rasterize_2dgs_cpu(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *,
    sh_degree: Optional[int] = None, near_plane: float = 0.01, far_plane: float = 1e10,
    backgrounds: Optional[Tensor] = None, render_mode: str = "RGB+ED", eps2d: float = 0.3,
    radius_clip: float = 0.0, distloss: bool = False, depth_mode: str = "expected",
):
    """CPU equivalent of ``gsplat.rasterization_2dgs(..., packed=False)`` (see ``rasterize.rasterize_2dgs``)."""
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
    # gsplat's gradient_2dgs: see RasterizeTiles2D
    densify = torch.zeros((C, N, 2), dtype=means.dtype, device=means.device, requires_grad=True)
    opac = opacities[None, :].expand(C, N)
    features = camera_colors(colors, sh_degree, means, viewmats)
    features, backgrounds = add_depth_channel(features, proj.depths, render_mode, backgrounds)
    bins = bin_tiles(proj, width, height)
    render, normals_cam, T, distort, median = RasterizeTiles2D.apply(
        proj.means2d, proj.ray_transforms, opac, features, proj.normals, densify, bins, width, height, proj.host,
        grad_will_flow(proj.means2d, proj.ray_transforms, opac, features, proj.normals, densify),
    )
    alphas = 1.0 - T
    render = finish_render(render, alphas, backgrounds, render_mode)

    camtoworlds = torch.linalg.inv(viewmats)
    surf_normals = None
    if render_mode in ("RGB+ED", "RGB+D"):
        depth = render[..., -1:] if depth_mode == "expected" else median
        surf_normals = surface_normals(depth, camtoworlds, Ks)
    render_normals = torch.einsum("cij,chwj->chwi", camtoworlds[:, :3, :3], normals_cam)

    info = {
        **tile_info(proj, opac, bins, width, height),
        "ray_transforms": proj.ray_transforms,
        "normals": proj.normals,
        "render_distort": distort,
        "gradient_2dgs": densify,
    }
    return render, alphas, render_normals, surf_normals, distort, median, info
