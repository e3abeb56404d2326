"""Pure-PyTorch tile rasterizer for 2D Gaussian surfels (the CPU twin of gsplat's ``rasterization_2dgs``).

Same tiling and compositing rules as :mod:`.rasterize_cpu`; what changes is the per-pixel kernel. For
each pixel and surfel the ray is intersected with the surfel plane in homogeneous coordinates (2DGS paper,
gsplat's ``RasterizeToPixels2DGSFwd.cu``): with the rows u, v, w of the splat-to-pixel transform
``M = K [s_u t_u, s_v t_v, mu]``, the planes h_u = x w - u and h_v = y w - v meet at c = h_u x h_v, whose
dehomogenised first two coordinates are the splat-space point (s_u, s_v). The Gaussian weight uses
sigma = 0.5 min(s_u^2 + s_v^2, 2 |mean2d - pixel|^2): the second term is the screen-space low-pass filter
that keeps surfels seen edge-on from vanishing.

Vectorisation: with pixel offsets (X, Y) from the tile centre and u' = u - x0 w, v' = v - y0 w,
c = X (v' x w) + Y (w x u') + u' x v' is linear in (X, Y), and 2 |mean2d - pixel|^2 is quadratic; so one
matmul of the [P, 4] basis (1, X, Y, X^2 + Y^2) with [B, 4, 4K] coefficients yields c and the filter
term for all pairs of a tile batch, and backward reduces per-pair gradients to pixel moments the same way.

Besides colours and alpha the kernel composites camera-space normals, the depth distortion
sum_ij w_i w_j |d_i - d_j| (gsplat's L1 form, depth read from the last colour channel as gsplat does)
and the median depth.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .projection import project_surfels_2d
from .rasterize_cpu import (
    MAX_ALPHA,
    TILE_SIZE,
    add_depth_channel,
    alpha_times_grad,
    bin_gaussians,
    camera_colors,
    effective_alphas,
    finish_render,
    flat_with_padding,
    tile_batches,
    tile_info,
    tile_pixel_offsets,
    tiles_to_image,
    transmittance,
    zero_from,
)

LOWPASS_INV_SQUARE = 2.0  # gsplat's FILTER_INV_SQUARE_2DGS


def surfel_basis(dtype: torch.dtype) -> Tensor:
    """[P, 4] (1, X, Y, X^2 + Y^2) of the pixel offsets from the tile centre."""
    X, Y = tile_pixel_offsets(dtype).unbind(-1)
    return torch.stack([torch.ones_like(X), X, Y, X * X + Y * Y], dim=-1)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.cross(a, b, dim=-1)


def _local_rows(centres: Tensor, ray_transforms: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows u', v', w [B, K, 3] of the transform in tile-local pixel coordinates."""
    u, v, w = ray_transforms.unbind(-2)
    return u - centres[:, None, 0, None] * w, v - centres[:, None, 1, None] * w, w


def _pair_terms(basis: Tensor, centres: Tensor, means2d: Tensor, ray_transforms: Tensor):
    """Per-pair c = h_u x h_v (three [B, P, K]) and the low-pass term 2 |mean - pixel|^2 [B, P, K]."""
    u, v, w = _local_rows(centres, ray_transforms)
    m = means2d - centres[:, None, :]
    lowpass = LOWPASS_INV_SQUARE * torch.stack(
        [(m * m).sum(-1), -2 * m[..., 0], -2 * m[..., 1], torch.ones_like(m[..., 0])], dim=-1
    )  # [B, K, 4] over the basis (1, X, Y, X^2 + Y^2)
    cross_coefs = torch.stack([_cross(u, v), _cross(v, w), _cross(w, u)], dim=-1)  # [B, K, 3 out, 3 basis]
    cross_coefs = torch.cat([cross_coefs, torch.zeros_like(cross_coefs[..., :1])], dim=-1)
    coefs = torch.cat([cross_coefs, lowpass[:, :, None, :]], dim=2)  # [B, K, 4 out, 4 basis]
    # [P, 4] @ [B, 4 out, 4 basis, K] -> [B, 4 out, P, K]: each output a contiguous plane
    terms = torch.matmul(basis, coefs.permute(0, 2, 3, 1))
    cx, cy, cz, g2 = terms.unbind(1)
    return cx, cy, cz, g2


def _ray_splat_distance(cx: Tensor, cy: Tensor, cz: Tensor) -> tuple[Tensor, Tensor]:
    """s_u^2 + s_v^2 and whether the ray is parallel to the splat (c_z == 0: gsplat skips the pair)."""
    degenerate = cz == 0
    return (cx * cx + cy * cy).div_((cz * cz).masked_fill_(degenerate, 1.0)), degenerate


def _median_index(alpha: Tensor, T: Tensor) -> tuple[Tensor, Tensor]:
    """Index [B, P, 1] of the last contributing surfel entered while T > 0.5, and whether there is one."""
    before_half = (alpha > 0) & (T > 0.5)
    order = torch.arange(1, alpha.shape[-1] + 1, device=alpha.device, dtype=alpha.dtype)
    idx = (before_half * order).argmax(dim=-1, keepdim=True)
    return idx, before_half.any(dim=-1, keepdim=True)


class _Composite2D(torch.autograd.Function):
    """Composite one tile batch of surfels.

    Returns colours [B, P, D], camera-space normals [B, P, 3], final transmittance, distortion and median
    depth (each [B, P, 1]). Saves the effective alphas; backward recomputes the pair terms and applies
    closed-form gradients.
    """

    @staticmethod
    def forward(ctx, basis, centres, means2d, ray_transforms, opacities, colors, normals):
        cx, cy, cz, g2 = _pair_terms(basis, centres, means2d, ray_transforms)
        g3, degenerate = _ray_splat_distance(cx, cy, cz)
        sigma = torch.minimum(g3, g2).mul_(0.5)  # either branch's value; ties make no difference here
        alpha = torch.exp(sigma.neg_()).mul_(opacities[:, None, :]).clamp_max_(MAX_ALPHA)
        # g3 and g2 are >= 0 up to rounding, so gsplat's "sigma < 0: skip" only needs the degenerate case.
        alpha, T_final = effective_alphas(alpha, skip=degenerate)
        _, T = transmittance(alpha)
        w = alpha * T
        D = colors.shape[-1]
        out = torch.bmm(w, torch.cat([colors, normals], dim=-1))
        depth = colors[..., -1:]  # [B, K, 1]
        # Distortion sum_{i,j} w_i w_j |d_i - d_j| = 2 sum_i w_i d_i (1 + T_final - T_i (2 - alpha_i))
        # (expand sum_{j<i} w_j d_j with sum_{i>j} w_i = T_j (1 - alpha_j) - T_final), one matmul.
        v = (2.0 - alpha).mul_(T).mul_(w)
        distort = 2.0 * (out[..., D - 1 : D] * (1.0 + T_final) - torch.bmm(v, depth))
        idx, has_median = _median_index(alpha, T)
        median = torch.gather(depth[..., 0][:, None, :].expand_as(T), -1, idx) * has_median

        ctx.save_for_backward(basis, centres, means2d, ray_transforms, opacities, colors, normals, alpha,
                              T_final)
        return out[..., :D], out[..., D:], T_final, distort, median

    @staticmethod
    def backward(ctx, g_out, g_normals, g_T_final, g_distort, g_median):
        basis, centres, means2d, M, opacities, colors, normals, alpha, T_final = ctx.saved_tensors
        D = colors.shape[-1]
        one_minus, T = transmittance(alpha)
        w = alpha * T
        depth = colors[:, None, :, -1]  # [B, 1, K]

        # q = dL/dw per pair: from the composited features and from the distortion, whose derivative
        # in w_k is 2 (d_k (1 + T_final - 2 T_k) - 2 A_k + A_total), A_k = sum_{j<k} w_j d_j.
        g_feat_px = torch.cat([g_out, g_normals], dim=-1)
        q = torch.bmm(g_feat_px, torch.cat([colors, normals], dim=-1).transpose(1, 2))
        wd = w * depth
        A = torch.cumsum(wd, dim=-1).sub_(wd)
        A_total = A[..., -1:] + wd[..., -1:]
        q_dist = (1.0 + T_final - 2.0 * T).mul_(depth).sub_(2.0 * A).add_(A_total)
        q += q_dist.mul_(2.0 * g_distort)
        ga = alpha_times_grad(w, q, alpha, one_minus, g_T_final, T_final)  # alpha dL/dalpha = -dL/dsigma

        g_features = torch.bmm(w.transpose(1, 2), g_feat_px)
        # Depth (last colour channel) gradients from the distortion and the median.
        g_depth = (2.0 * g_distort * w * (1.0 + T_final - 2.0 * T + w)).sum(dim=1)
        idx, has_median = _median_index(alpha, T)
        g_depth += torch.zeros_like(T).scatter_(-1, idx, g_median * has_median).sum(dim=1)
        g_colors = torch.cat([g_features[..., : D - 1], g_features[..., D - 1 : D] + g_depth[..., None]], -1)
        g_norm = g_features[..., D:]
        m0 = ga.sum(dim=1)
        g_opac = torch.where(opacities > 0, m0 / opacities.clamp_min(1e-30), torch.zeros_like(m0))

        g_means, g_M = _geometry_grads(basis, centres, means2d, M, ga)
        return None, None, g_means, g_M, g_opac, g_colors, g_norm


def _geometry_grads(basis, centres, means2d, M, ga):
    """dL/dmeans2d [B, K, 2] and dL/dM [B, K, 3, 3] given ga = -dL/dsigma per pair."""
    cx, cy, cz, g2 = _pair_terms(basis, centres, means2d, M)
    g3, degenerate = _ray_splat_distance(cx, cy, cz)
    use_3d = g3 <= g2  # gsplat takes the ray-splat kernel on ties
    # Per-pair dL/d(cx, cy, cz, g2), written straight into one [B, 4, P, K] buffer for the moments matmul.
    B, P, K = ga.shape
    per_pair = ga.new_empty((B, 4, P, K))
    # Ray-splat branch, sigma = 0.5 (cx^2 + cy^2) / cz^2: dsigma/dc = (cx, cy, -(cx^2 + cy^2) / cz) / cz^2.
    r = ga.masked_fill(~use_3d | degenerate, 0.0).neg_()
    r /= (cz * cz).masked_fill_(degenerate, 1.0)
    torch.mul(r, cx, out=per_pair[:, 0])
    torch.mul(r, cy, out=per_pair[:, 1])
    torch.mul(r.mul_(g3), cz, out=per_pair[:, 2]).neg_()
    # Low-pass branch, sigma = 0.5 g2.
    torch.mul(ga.masked_fill(use_3d, 0.0), -0.5, out=per_pair[:, 3])
    moments = torch.matmul(basis.transpose(0, 1), per_pair)  # [B, 4 out, 4 basis, K]
    G = moments.permute(0, 3, 1, 2)  # [B, K, out, basis]: dL/d coefficient

    u, v, w = _local_rows(centres, M)
    # cross rows: c = 1 * (u' x v') + X (v' x w) + Y (w x u');  d(a x b): dL/da = b x g, dL/db = g x a
    G0, GX, GY = G[:, :, :3, 0], G[:, :, :3, 1], G[:, :, :3, 2]
    g_u = _cross(v, G0) + _cross(GY, w)
    g_v = _cross(G0, u) + _cross(w, GX)
    g_w = _cross(GX, v) + _cross(u, GY)
    g_w = g_w - centres[:, None, 0, None] * g_u - centres[:, None, 1, None] * g_v  # u' = u - x0 w, ...
    g_M = torch.stack([g_u, g_v, g_w], dim=-2)
    # low-pass coefficients: 2 (|m|^2, -2 m_x, -2 m_y, 1) with m = mean - centre
    Gl = G[:, :, 3, :]
    m = means2d - centres[:, None, :]
    g_means = LOWPASS_INV_SQUARE * torch.stack(
        [2 * m[..., 0] * Gl[..., 0] - 2 * Gl[..., 1], 2 * m[..., 1] * Gl[..., 0] - 2 * Gl[..., 2]], dim=-1
    )
    return g_means, g_M


def composite_tiles_2d(
    bins, means2d: Tensor, ray_transforms: Tensor, opacities: Tensor, colors: Tensor, normals: Tensor,
    width: int, height: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Colours, alphas, camera-space normals, distortion and median depth images [C, H, W, *]."""
    C = opacities.shape[0]
    params = [flat_with_padding(x) for x in (means2d, ray_transforms, opacities, colors, normals)]
    basis = surfel_basis(means2d.dtype)
    tile_ids, outs = [], []
    for batch in tile_batches(bins, dtype=means2d.dtype):
        gathered = [p[batch.gauss_ids] for p in params]  # padding rows have opacity 0
        outs.append(_Composite2D.apply(basis, batch.centres, *gathered))
        tile_ids.append(batch.tile_ids)
    P = TILE_SIZE * TILE_SIZE
    widths = [colors.shape[-1], 3, 1, 1, 1]
    if outs:
        tile_ids_t = torch.cat(tile_ids)
        per_tile = [torch.cat(parts) for parts in zip(*outs)]
    else:  # nothing visible: still hand back outputs connected to the inputs, as gsplat does
        tile_ids_t = torch.zeros(0, dtype=torch.long, device=means2d.device)
        anchor = zero_from(means2d, ray_transforms, opacities, colors, normals)
        per_tile = [colors.new_zeros((0, P, d)) + anchor for d in widths]
    shape = (C, bins.tile_height, bins.tile_width, width, height)
    fills = [0.0, 0.0, 1.0, 0.0, 0.0]  # empty tiles: nothing composited, transmittance 1
    render, normals_img, T_img, distort, median = (
        tiles_to_image(x, tile_ids_t, *shape, fill=f) for x, f in zip(per_tile, fills)
    )
    return render, 1.0 - T_img, normals_img, distort, median


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
    proj = project_surfels_2d(
        means, quats, scales, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
    )
    densify, ray_transforms = _with_densify_hook(proj.ray_transforms, proj.depths)
    opac = opacities[None, :].expand(C, N)
    features = camera_colors(colors, sh_degree, means, viewmats)
    features, backgrounds = add_depth_channel(features, proj.depths, render_mode, backgrounds)
    bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, width, height)
    render, alphas, normals_cam, distort, median = composite_tiles_2d(
        bins, proj.means2d, ray_transforms, opac, features, proj.normals, width, height
    )
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
