"""Pure-PyTorch tile rasterizer for 3D Gaussians (the CPU twin of gsplat's ``rasterization``).

Pipeline, mirroring gsplat 1.5.3 with ``packed=False``:

1. :func:`~gfbench.methods.core.projection.project_gaussians_3d` (EWA projection, culling, radii).
2. :func:`bin_gaussians`: every visible Gaussian is listed in each 16x16 tile its bounding box touches;
   the list is sorted by (camera, tile, depth), exactly the order gsplat's ``isect_tiles`` produces.
3. :func:`tile_batches`: tiles with similar Gaussian counts are padded to a common length and batched, so
   one vectorised step evaluates [tiles, 256 pixels, Gaussians-per-tile] at once.
4. Per batch, front-to-back alpha compositing with gsplat's rules: alpha = min(0.999, o exp(-sigma)),
   contributions with alpha < 1/255 are skipped, and a pixel stops before the Gaussian that would take its
   transmittance to <= 1e-4.

Gradients: compositing runs in a custom autograd function per batch. It keeps the batch's inputs and its
effective alphas (4 bytes per pixel-Gaussian pair) instead of an autograd graph over [tiles, pixels,
Gaussians] tensors, and backward applies the closed-form front-to-back gradients as gsplat's CUDA backward
does. Projection and colour handling are ordinary autograd, so ``means2d`` receives the screen-space
gradient that gsplat's ``DefaultStrategy`` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor

from .projection import ALPHA_THRESHOLD, project_gaussians_3d, sh_to_colors

TILE_SIZE = 16
MAX_ALPHA = 0.999  # gsplat clamps per-Gaussian alpha here (its CUDA kernels use 0.999, not 0.99)
MIN_TRANSMITTANCE = 1e-4  # a pixel is done before a Gaussian that would take T to <= this
# Upper bound on tiles x pixels x Gaussians evaluated in one vectorised step (~16 MiB per float32 buffer).
MAX_PAIRS_PER_BATCH = 1 << 22
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


# ----------------------------------------------------------------------------------------------------
# Tile binning
# ----------------------------------------------------------------------------------------------------


@dataclass
class TileBins:
    """Gaussian-tile intersections sorted by (camera, tile, depth), like gsplat's ``isect_tiles``."""

    n_cameras: int
    tile_width: int
    tile_height: int
    flatten_ids: Tensor  # [M] int64 index c * N + g into the [C, N] per-camera arrays
    offsets: Tensor  # [C * TH * TW + 1] int64: tile t owns flatten_ids[offsets[t]:offsets[t + 1]]
    tiles_per_gauss: Tensor  # [C, N] int32
    isect_ids: Tensor  # [M] int64 gsplat-style keys (camera | tile << 32 | depth bits)

    @property
    def counts(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def isect_offsets(self) -> Tensor:
        """gsplat's ``isect_offsets`` [C, TH, TW] int32."""
        return self.offsets[:-1].reshape(self.n_cameras, self.tile_height, self.tile_width).int()


@torch.no_grad()
def bin_gaussians(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int = TILE_SIZE
) -> TileBins:
    """Assign each visible Gaussian to the tiles its bounding box overlaps, sorted front to back."""
    C, N = depths.shape
    device = means2d.device
    tile_w = math.ceil(width / tile_size)
    tile_h = math.ceil(height / tile_size)
    means2d = means2d.detach()
    r = radii.to(means2d.dtype)
    # Same rounding and clamping as gsplat's isect_tiles: [min, max) in tile units.
    lo = torch.floor((means2d - r) / tile_size)
    hi = torch.ceil((means2d + r) / tile_size)
    limits = torch.tensor([tile_w, tile_h], dtype=lo.dtype, device=device)
    lo = torch.minimum(lo.clamp_min(0), limits).long()
    hi = torch.minimum(hi.clamp_min(0), limits).long()
    extent = hi - lo  # [C, N, 2]
    visible = (radii > 0).all(dim=-1)
    tiles_per_gauss = extent[..., 0] * extent[..., 1] * visible  # [C, N]

    counts = tiles_per_gauss.reshape(-1)
    flat_ids = torch.nonzero(counts, as_tuple=True)[0]  # visible (c, g) with at least one tile
    per_gauss = counts[flat_ids]
    rep = torch.repeat_interleave(flat_ids, per_gauss)  # one entry per intersection
    first = torch.cumsum(per_gauss, 0) - per_gauss
    k = torch.arange(rep.numel(), device=device) - torch.repeat_interleave(first, per_gauss)
    span_x = extent[..., 0].reshape(-1)[rep]
    tx = lo[..., 0].reshape(-1)[rep] + k % span_x
    ty = lo[..., 1].reshape(-1)[rep] + k // span_x
    cam = rep // N
    tile = (cam * tile_h + ty) * tile_w + tx  # global tile id

    # Sort by (tile, depth): rank depths once, then a single integer sort.
    depth_rank = torch.empty(C * N, dtype=torch.long, device=device)
    depth_rank[torch.argsort(depths.detach().reshape(-1), stable=True)] = torch.arange(C * N, device=device)
    order = torch.argsort(tile * (C * N) + depth_rank[rep])
    flatten_ids = rep[order]
    tile = tile[order]

    n_tiles = C * tile_h * tile_w
    offsets = torch.zeros(n_tiles + 1, dtype=torch.long, device=device)
    offsets[1:] = torch.cumsum(torch.bincount(tile, minlength=n_tiles), 0)

    # gsplat's 64-bit key: camera id and tile id in the high word, the float32 depth bits in the low word.
    tile_bits = (tile_h * tile_w).bit_length()
    local_tile = tile % (tile_h * tile_w)
    depth_bits = depths.detach().float().reshape(-1)[flatten_ids].view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = (((flatten_ids // N) << tile_bits) | local_tile) << 32 | depth_bits
    return TileBins(C, tile_w, tile_h, flatten_ids, offsets, tiles_per_gauss.int(), isect_ids)


@dataclass
class TileBatch:
    """Tiles padded to a common Gaussian count K and evaluated together."""

    tile_ids: Tensor  # [B] global tile ids
    gauss_ids: Tensor  # [B, K] flat c * N + g; padding points one past the end (row C * N)
    centres: Tensor  # [B, 2] pixel coordinates of the tile centres


def _padded_length(count: int) -> int:
    """Round a per-tile Gaussian count up a ~1.19x geometric ladder (multiples of 8) to bound padding."""
    k = 8
    while k < count:
        k = max(k + 8, int(k * 1.19) // 8 * 8)
    return k


@torch.no_grad()
def tile_batches(
    bins: TileBins, tile_size: int = TILE_SIZE, dtype: torch.dtype = torch.float32,
    max_pairs: int = MAX_PAIRS_PER_BATCH,
) -> Iterator[TileBatch]:
    """Yield batches of non-empty tiles grouped by padded Gaussian count."""
    counts = bins.counts
    device = counts.device
    tiles = torch.nonzero(counts, as_tuple=True)[0]
    if tiles.numel() == 0:
        return
    tile_counts = counts[tiles]
    sort = torch.argsort(tile_counts)
    tiles, tile_counts = tiles[sort], tile_counts[sort]
    padded = torch.tensor([_padded_length(int(c)) for c in tile_counts.tolist()], device=device)
    P = tile_size * tile_size
    pad_id = bins.tiles_per_gauss.numel()
    for K in torch.unique_consecutive(padded).tolist():
        group = torch.nonzero(padded == K, as_tuple=True)[0]
        per_batch = max(1, max_pairs // (P * K))
        slots = torch.arange(K, device=device)[None, :]
        for start in range(0, group.numel(), per_batch):
            sel = group[start : start + per_batch]
            t = tiles[sel]
            pos = bins.offsets[t][:, None] + slots
            ids = bins.flatten_ids[pos.clamp_max(bins.flatten_ids.numel() - 1)]
            ids = torch.where(slots < tile_counts[sel][:, None], ids, torch.full_like(ids, pad_id))
            local_tile = t % (bins.tile_width * bins.tile_height)
            origin = torch.stack([local_tile % bins.tile_width, local_tile // bins.tile_width], dim=-1)
            centres = origin.to(dtype) * tile_size + 0.5 * tile_size
            yield TileBatch(tile_ids=t, gauss_ids=ids, centres=centres)


def tile_pixel_offsets(dtype: torch.dtype, tile_size: int = TILE_SIZE) -> Tensor:
    """[P, 2] pixel centres relative to their tile's centre, row-major (x fastest), in [-7.5, 7.5]."""
    local = torch.arange(tile_size * tile_size)
    xy = torch.stack([local % tile_size, local // tile_size], dim=-1).to(dtype)
    return xy + 0.5 - 0.5 * tile_size


def with_padding_row(values: Tensor) -> Tensor:
    """[C*N, ...] -> [C*N + 1, ...] with a zero row that padded slots index (zero opacity: invisible)."""
    return torch.cat([values, values.new_zeros((1,) + values.shape[1:])], dim=0)


def zero_from(*tensors: Tensor) -> Tensor:
    """A scalar zero that depends on ``tensors`` in autograd (so backward runs even if nothing rendered)."""
    return sum(t.sum() * 0 for t in tensors)


def tiles_to_image(
    per_tile: Tensor, tile_ids: Tensor, n_cameras: int, tile_h: int, tile_w: int,
    width: int, height: int, fill: float = 0.0, tile_size: int = TILE_SIZE,
) -> Tensor:
    """Scatter per-tile pixel values [T, P, D] into images [C, H, W, D]; tiles not listed get ``fill``."""
    D = per_tile.shape[-1]
    n_tiles = n_cameras * tile_h * tile_w
    full = per_tile.new_full((n_tiles, tile_size * tile_size, D), fill).index_copy(0, tile_ids, per_tile)
    img = full.reshape(n_cameras, tile_h, tile_w, tile_size, tile_size, D).permute(0, 1, 3, 2, 4, 5)
    return img.reshape(n_cameras, tile_h * tile_size, tile_w * tile_size, D)[:, :height, :width]


# ----------------------------------------------------------------------------------------------------
# Front-to-back compositing (shared with 2DGS)
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def effective_alphas(alpha: Tensor, skip: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Zero the pairs gsplat does not composite; return those alphas and the final transmittance.

    ``alpha`` [..., K] is depth-sorted along the last axis. A pair is skipped when alpha < 1/255 (or
    ``skip``); a pixel stops at the first Gaussian that would take its transmittance to <= 1e-4, that one
    excluded. Transmittance only decreases, so "stopped" is exactly "inclusive product of (1 - alpha)
    over the non-skipped pairs <= 1e-4", and the final transmittance is the smallest product above it.
    """
    faint = alpha < ALPHA_THRESHOLD
    if skip is not None:
        faint |= skip
    alpha = alpha.masked_fill(faint, 0.0)
    T_incl = torch.cumprod(1.0 - alpha, dim=-1)
    live = T_incl > MIN_TRANSMITTANCE
    alpha = alpha.masked_fill_(~live, 0.0)
    T_final = T_incl.masked_fill_(~live, 1.0).amin(dim=-1, keepdim=True)
    return alpha, T_final


def transmittance(alpha: Tensor) -> tuple[Tensor, Tensor]:
    """(1 - alpha) and the exclusive transmittance T_k = prod_{j<k} (1 - alpha_j), both [..., K]."""
    one_minus = 1.0 - alpha
    return one_minus, torch.cumprod(one_minus, dim=-1).div_(one_minus)  # alpha <= 0.999: no 0/0


def reverse_exclusive_cumsum(x: Tensor) -> Tensor:
    """[..., K] -> [..., K] with out[..., k] = sum(x[..., k + 1:])."""
    return x.sum(dim=-1, keepdim=True) - torch.cumsum(x, dim=-1)


def alpha_times_grad(w: Tensor, q: Tensor, alpha: Tensor, one_minus: Tensor, g_T_final: Tensor,
                     T_final: Tensor) -> Tensor:
    """alpha_k * dL/dalpha_k for compositing weights w_k = alpha_k T_k, given q_k = dL/dw_k.

    dw_k/dalpha_k = T_k and dw_i/dalpha_k = -w_i / (1 - alpha_k) for i > k; T_final = prod (1 - alpha).
    Pairs clamped at alpha = 0.999 get no gradient (as in gsplat); skipped pairs have alpha = 0.
    """
    wq = w * q
    later = reverse_exclusive_cumsum(wq) + g_T_final * T_final
    ga = wq - alpha / one_minus * later
    return ga.masked_fill_(alpha >= MAX_ALPHA, 0.0)


# ----------------------------------------------------------------------------------------------------
# 3DGS compositing kernel
# ----------------------------------------------------------------------------------------------------
#
# Within a tile the exponent sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, with (dx, dy) = mean - pixel, is a
# quadratic polynomial in the pixel's offset (X, Y) from the tile centre, and every tile has the same
# 256 offsets. So sigma for a whole batch is one matmul, [P, 6] basis (1, X, Y, X^2, XY, Y^2) times
# [B, 6, K] coefficients; backward likewise reduces per-pair gradients to six pixel moments per Gaussian
# with one matmul. Coordinates are taken relative to the tile centre to keep the expansion well conditioned.


def quadratic_basis(dtype: torch.dtype) -> Tensor:
    """[P, 6] monomials (1, X, Y, X^2, XY, Y^2) of the pixel offsets from the tile centre."""
    X, Y = tile_pixel_offsets(dtype).unbind(-1)
    return torch.stack([torch.ones_like(X), X, Y, X * X, X * Y, Y * Y], dim=-1)


def _sigma_coefficients(mx: Tensor, my: Tensor, conics: Tensor) -> Tensor:
    """[B, 6, K] coefficients of sigma in the quadratic basis; (mx, my) are tile-local means [B, K]."""
    a, b, c = conics.unbind(-1)
    return torch.stack(
        [
            0.5 * a * mx * mx + b * mx * my + 0.5 * c * my * my,
            -(a * mx + b * my),
            -(b * mx + c * my),
            0.5 * a,
            b,
            0.5 * c,
        ],
        dim=1,
    )


class _Composite3D(torch.autograd.Function):
    """Composite one tile batch: colours [B, P, D] and final transmittance [B, P, 1].

    Saves only the effective alphas [B, P, K] and recomputes transmittance in backward, where gradients
    take the closed form of front-to-back compositing (as in gsplat's CUDA backward).
    """

    @staticmethod
    def forward(ctx, basis, centres, means2d, conics, opacities, colors):
        local = means2d - centres[:, None, :]
        mx, my = local.unbind(-1)
        sigma = torch.matmul(basis, _sigma_coefficients(mx, my, conics))  # [B, P, K]
        # Conics are positive definite by construction, so gsplat's "sigma < 0: skip" never fires there;
        # the polynomial may round a hair below 0 at a Gaussian's centre, which must not skip it.
        alpha = torch.exp(sigma.neg_()).mul_(opacities[:, None, :]).clamp_max_(MAX_ALPHA)
        alpha, T_final = effective_alphas(alpha)
        _, T = transmittance(alpha)
        out = torch.bmm(T.mul_(alpha), colors)
        ctx.save_for_backward(basis, local, conics, opacities, colors, alpha, T_final)
        return out, T_final

    @staticmethod
    def backward(ctx, g_out, g_T_final):
        basis, local, conics, opacities, colors, alpha, T_final = ctx.saved_tensors
        one_minus, T = transmittance(alpha)
        w = T.mul_(alpha)
        q = torch.bmm(g_out, colors.transpose(1, 2))  # dL/dw_k = c_k . g_out
        ga = alpha_times_grad(w, q, alpha, one_minus, g_T_final, T_final)  # = -dL/dsigma
        g_colors = torch.bmm(w.transpose(1, 2), g_out)

        # Pixel moments of ga: m[i] = sum_p basis_i(p) ga[p]; alpha = o exp(-sigma).
        m0, mX, mY, mXX, mXY, mYY = torch.matmul(basis.transpose(0, 1), ga).unbind(1)  # [B, K] each
        g_opac = torch.where(opacities > 0, m0 / opacities.clamp_min(1e-30), torch.zeros_like(m0))
        mx, my = local.unbind(-1)
        sx = mx * m0 - mX  # sum ga dx
        sy = my * m0 - mY  # sum ga dy
        sxx = mx * mx * m0 - 2 * mx * mX + mXX  # sum ga dx^2
        sxy = mx * my * m0 - mx * mY - my * mX + mXY
        syy = my * my * m0 - 2 * my * mY + mYY
        a, b, c = conics.unbind(-1)
        g_means = -torch.stack([a * sx + b * sy, b * sx + c * sy], dim=-1)
        g_conics = -torch.stack([0.5 * sxx, sxy, 0.5 * syy], dim=-1)
        return None, None, g_means, g_conics, g_opac, g_colors


def flat_with_padding(x: Tensor) -> Tensor:
    """[C, N, ...] -> [C*N + 1, ...]: flattened per-camera values plus the zero row padded slots index."""
    return with_padding_row(x.reshape((-1,) + x.shape[2:]))


def composite_tiles_3d(
    bins: TileBins, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
    width: int, height: int,
) -> tuple[Tensor, Tensor]:
    """Render [C, H, W, D] colours and [C, H, W, 1] alphas (no background) from per-camera Gaussians."""
    C = opacities.shape[0]
    params = [flat_with_padding(x) for x in (means2d, conics, opacities, colors)]
    basis = quadratic_basis(means2d.dtype)
    tile_ids, outs, Ts = [], [], []
    for batch in tile_batches(bins, dtype=means2d.dtype):
        gathered = [p[batch.gauss_ids] for p in params]
        out, T_final = _Composite3D.apply(basis, batch.centres, *gathered)
        tile_ids.append(batch.tile_ids)
        outs.append(out)
        Ts.append(T_final)
    P = TILE_SIZE * TILE_SIZE
    if outs:
        tile_ids_t, out_t, T_t = torch.cat(tile_ids), torch.cat(outs), torch.cat(Ts)
    else:  # nothing visible: still hand back outputs connected to the inputs, as gsplat does
        tile_ids_t = torch.zeros(0, dtype=torch.long, device=means2d.device)
        anchor = zero_from(means2d, conics, opacities, colors)
        out_t = colors.new_zeros((0, P, colors.shape[-1])) + anchor
        T_t = colors.new_zeros((0, P, 1)) + anchor
    shape = (C, bins.tile_height, bins.tile_width, width, height)
    render = tiles_to_image(out_t, tile_ids_t, *shape, fill=0.0)
    T_img = tiles_to_image(T_t, tile_ids_t, *shape, fill=1.0)
    return render, 1.0 - T_img


# ----------------------------------------------------------------------------------------------------
# Colour / render-mode plumbing (shared with 2DGS)
# ----------------------------------------------------------------------------------------------------


def camera_colors(
    colors: Tensor, sh_degree: Optional[int], means: Tensor, viewmats: Tensor
) -> Tensor:
    """Per-camera features [C, N, D] from colours [N, D] / [C, N, D] or SH [N, K, 3] / [C, N, K, 3]."""
    C, N = viewmats.shape[0], means.shape[0]
    if sh_degree is not None:
        return sh_to_colors(sh_degree, colors, means, viewmats)
    if colors.dim() == 2:
        return colors[None].expand(C, N, colors.shape[-1])
    if colors.dim() == 3 and colors.shape[:2] == (C, N):
        return colors
    raise ValueError(f"colors must be [N, D] or [C, N, D] without sh_degree, got {tuple(colors.shape)}")


def add_depth_channel(
    features: Tensor, depths: Tensor, render_mode: str, backgrounds: Optional[Tensor]
) -> tuple[Tensor, Optional[Tensor]]:
    """Append (or substitute) the z-depth channel for the depth render modes, as gsplat does."""
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if render_mode in ("RGB+D", "RGB+ED"):
        features = torch.cat([features, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(backgrounds.shape[:-1] + (1,))], -1)
    elif render_mode in ("D", "ED"):
        features = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(backgrounds.shape[:-1] + (1,))
    return features, backgrounds


def finish_render(
    render: Tensor, alphas: Tensor, backgrounds: Optional[Tensor], render_mode: str
) -> Tensor:
    """Blend the background behind the composite and normalise expected depth (ED modes)."""
    if backgrounds is not None:
        render = render + backgrounds[:, None, None, :] * (1.0 - alphas)
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)
    return render


# ----------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------


def rasterize_3dgs_cpu(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *,
    sh_degree: Optional[int] = None, near_plane: float = 0.01, far_plane: float = 1e10,
    backgrounds: Optional[Tensor] = None, render_mode: str = "RGB+ED", eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> tuple[Tensor, Tensor, dict]:
    """CPU equivalent of ``gsplat.rasterization(..., packed=False, rasterize_mode="classic")``."""
    C, N = viewmats.shape[0], means.shape[0]
    proj = project_gaussians_3d(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
    )
    opac = opacities[None, :].expand(C, N)
    features = camera_colors(colors, sh_degree, means, viewmats)
    features, backgrounds = add_depth_channel(features, proj.depths, render_mode, backgrounds)
    bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, width, height)
    render, alphas = composite_tiles_3d(bins, proj.means2d, proj.conics, opac, features, width, height)
    render = finish_render(render, alphas, backgrounds, render_mode)
    info = {
        "batch_ids": None,
        "conics": proj.conics,
        "n_batches": 1,
        **tile_info(proj, opac, bins, width, height),
    }
    return render, alphas, info


def tile_info(proj, opacities: Tensor, bins, width: int, height: int) -> dict:
    """The ``info`` keys gsplat returns for both Gaussian kinds (what its strategies read)."""
    return {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "opacities": opacities,
        "tile_width": bins.tile_width,
        "tile_height": bins.tile_height,
        "tiles_per_gauss": bins.tiles_per_gauss,
        "isect_ids": bins.isect_ids,
        "flatten_ids": bins.flatten_ids.int(),
        "isect_offsets": bins.isect_offsets(),
        "width": width,
        "height": height,
        "tile_size": TILE_SIZE,
        "n_cameras": opacities.shape[0],
    }
