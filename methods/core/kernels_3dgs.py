"""Compiled (numba) tile rasterization of 3D Gaussians, forward and backward, as gsplat 1.5.3's
``RasterizeToPixels3DGSFwd.cu`` / ``...Bwd.cu`` do it, one tile per parallel iteration.

Forward, per tile: walk the tile's depth-sorted list front to back; for every pixel, alpha =
min(0.999, o exp(-sigma)) with sigma = 0.5 (a dx^2 + c dy^2) + b dx dy and (dx, dy) = mean - pixel
centre; skip alpha < 1/255 (and sigma < 0); a pixel is done at the first Gaussian that would take its
transmittance T to <= 1e-4 (that one excluded), and the tile stops when all its pixels are done. Saved for
backward: the final T and the index of the last Gaussian composited, per pixel (no per-pair storage).

Backward, per tile: walk back to front from the last contributor, recovering T before each Gaussian by
dividing by (1 - alpha) (as the CUDA kernel does), with the closed-form compositing gradients. Per-Gaussian
sums of one tile go to that intersection's row of a [M, F] buffer; :func:`reduce_per_gaussian` then adds
each Gaussian's rows, so no two threads write the same memory and the result is deterministic.

Only the pixels where a Gaussian can reach alpha >= 1/255 are visited: sigma <= ln(255 o) is an ellipse,
whose rows and per-row spans are solved in closed form (widened by a pixel and a relative margin, so they
contain every pixel the exact test accepts). The exact test still decides each pixel, so the result is
the same as visiting the whole tile (``full_tile=True``, used by the tests to check exactly that).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels_tiles import ALPHA_THRESHOLD, FASTMATH, MAX_ALPHA, MIN_TRANSMITTANCE, TILE_PIXELS, TILE_SIZE

N_GEOM = 6  # per-Gaussian row: mean x, mean y, conic a, b, c, opacity; then the D features
SPAN_MARGIN = 1e-6  # relative slack on the ellipse's sigma bound, so rounding never shrinks a span


@njit(cache=True, fastmath=FASTMATH, inline="always")
def tile_origin(tile, tile_w, tile_h, width, height):
    """Camera index, first pixel (x0, y0) and one-past-last pixel (x1, y1) of a global tile id."""
    per_camera = tile_w * tile_h
    cam = tile // per_camera
    local = tile - cam * per_camera
    x0 = (local % tile_w) * TILE_SIZE
    y0 = (local // tile_w) * TILE_SIZE
    return cam, x0, y0, min(x0 + TILE_SIZE, width), min(y0 + TILE_SIZE, height)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def sigma_bound(o):
    """Largest sigma at which o exp(-sigma) can still reach 1/255 (negative: never), with slack."""
    if o < ALPHA_THRESHOLD:
        return -1.0
    s = math.log(o / ALPHA_THRESHOLD)
    return s + SPAN_MARGIN * (1.0 + s)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def ellipse_rows(mx, my, a, b, c, smax, y0, y1, full_tile):
    """Rows [lo, hi) of the tile that the ellipse sigma <= smax reaches."""
    if full_tile:
        return y0, y1
    det = a * c - b * b
    if not (det > 0 and a > 0):
        return y0, y1
    ey = math.sqrt(2.0 * smax * a / det)  # max |dy| on the ellipse
    lo = max(y0, int(math.floor(my - ey - 0.5)) - 1)
    hi = min(y1, int(math.ceil(my + ey - 0.5)) + 2)
    return lo, max(lo, hi)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def ellipse_span(mx, dy, a, b, c, smax, x0, x1, full_tile):
    """Columns [lo, hi) of a row (at offset dy = my - pixel y) where sigma <= smax can hold."""
    if full_tile:
        return x0, x1
    det = a * c - b * b
    if not (det > 0 and a > 0):
        return x0, x1
    # 0.5 a dx^2 + b dy dx + 0.5 c dy^2 <= smax  <=>  (a dx + b dy)^2 <= 2 a smax - det dy^2
    disc = 2.0 * a * smax - det * dy * dy
    if disc < 0:
        return x0, x0
    half = math.sqrt(disc) / a
    centre = -b * dy / a  # dx at the row's sigma minimum; pixel x + 0.5 = mx - dx
    lo = max(x0, int(math.floor(mx - centre - half - 0.5)) - 1)
    hi = min(x1, int(math.ceil(mx - centre + half - 0.5)) + 2)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def rasterize_3dgs_fwd(params, tile_offsets, flatten_ids, n_cameras, width, height, tile_w, tile_h,
                       full_tile):
    """Returns colours [C, H, W, D], final transmittance [C, H, W], last composited index [C, H, W]
    (into ``flatten_ids``, -1 if none) and the number of Gaussian-pixel pairs evaluated per tile."""
    D = params.shape[1] - N_GEOM
    n_tiles = tile_offsets.shape[0] - 1
    colors = np.empty((n_cameras, height, width, D))
    T_final = np.empty((n_cameras, height, width))
    last = np.empty((n_cameras, height, width), dtype=np.int64)
    pairs = np.zeros(n_tiles, dtype=np.int64)
    for tile in prange(n_tiles):
        cam, x0, y0, x1, y1 = tile_origin(tile, tile_w, tile_h, width, height)
        T = np.ones(TILE_PIXELS)
        acc = np.zeros((TILE_PIXELS, D))
        last_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        done = np.zeros(TILE_PIXELS, dtype=np.bool_)
        n_live = (x1 - x0) * (y1 - y0)
        n_pairs = 0
        for j in range(tile_offsets[tile], tile_offsets[tile + 1]):
            if n_live == 0:
                break
            g = params[flatten_ids[j]]
            mx, my, a, b, c, o = g[0], g[1], g[2], g[3], g[4], g[5]
            smax = sigma_bound(o)
            if smax < 0:
                continue
            ylo, yhi = ellipse_rows(mx, my, a, b, c, smax, y0, y1, full_tile)
            for y in range(ylo, yhi):
                dy = my - (y + 0.5)
                xlo, xhi = ellipse_span(mx, dy, a, b, c, smax, x0, x1, full_tile)
                n_pairs += xhi - xlo
                for x in range(xlo, xhi):
                    p = (y - y0) * TILE_SIZE + (x - x0)
                    if done[p]:
                        continue
                    dx = mx - (x + 0.5)
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    alpha = min(MAX_ALPHA, o * math.exp(-sigma))
                    if sigma < 0 or alpha < ALPHA_THRESHOLD:
                        continue
                    next_T = T[p] * (1.0 - alpha)
                    if next_T <= MIN_TRANSMITTANCE:
                        done[p] = True
                        n_live -= 1
                        continue
                    vis = alpha * T[p]
                    for k in range(D):
                        acc[p, k] += vis * g[N_GEOM + k]
                    last_t[p] = j
                    T[p] = next_T
        pairs[tile] = n_pairs
        for y in range(y0, y1):
            for x in range(x0, x1):
                p = (y - y0) * TILE_SIZE + (x - x0)
                T_final[cam, y, x] = T[p]
                last[cam, y, x] = last_t[p]
                for k in range(D):
                    colors[cam, y, x, k] = acc[p, k]
    return colors, T_final, last, pairs


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def rasterize_3dgs_bwd(params, tile_offsets, flatten_ids, n_cameras, width, height, tile_w, tile_h,
                       T_final, last, v_colors, v_T, full_tile):
    """Per-intersection gradient rows [M, 6 + D]: dL/d(mean x, mean y, conic a, b, c, opacity, features).

    ``v_colors`` [C, H, W, D] and ``v_T`` [C, H, W] are the gradients of the forward's outputs."""
    D = params.shape[1] - N_GEOM
    n_tiles = tile_offsets.shape[0] - 1
    per_isect = np.zeros((flatten_ids.shape[0], N_GEOM + D))
    for tile in prange(n_tiles):
        start, end = tile_offsets[tile], tile_offsets[tile + 1]
        if start == end:
            continue
        cam, x0, y0, x1, y1 = tile_origin(tile, tile_w, tile_h, width, height)
        T = np.ones(TILE_PIXELS)
        later = np.zeros(TILE_PIXELS)  # dL/dT_final T_final + sum over later Gaussians of w dL/dw
        last_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        g_out = np.zeros((TILE_PIXELS, D))
        newest = -1
        for y in range(y0, y1):
            for x in range(x0, x1):
                p = (y - y0) * TILE_SIZE + (x - x0)
                T[p] = T_final[cam, y, x]
                later[p] = v_T[cam, y, x] * T[p]
                last_t[p] = last[cam, y, x]
                newest = max(newest, last_t[p])
                for k in range(D):
                    g_out[p, k] = v_colors[cam, y, x, k]
        grad = np.zeros(N_GEOM + D)
        for j in range(newest, start - 1, -1):
            g = params[flatten_ids[j]]
            mx, my, a, b, c, o = g[0], g[1], g[2], g[3], g[4], g[5]
            smax = sigma_bound(o)
            if smax < 0:
                continue
            grad[:] = 0.0
            ylo, yhi = ellipse_rows(mx, my, a, b, c, smax, y0, y1, full_tile)
            for y in range(ylo, yhi):
                dy = my - (y + 0.5)
                xlo, xhi = ellipse_span(mx, dy, a, b, c, smax, x0, x1, full_tile)
                for x in range(xlo, xhi):
                    p = (y - y0) * TILE_SIZE + (x - x0)
                    if j > last_t[p]:
                        continue
                    dx = mx - (x + 0.5)
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    vis = math.exp(-sigma)
                    alpha = min(MAX_ALPHA, o * vis)
                    if sigma < 0 or alpha < ALPHA_THRESHOLD:
                        continue
                    inv_one_minus = 1.0 / (1.0 - alpha)
                    T_k = T[p] * inv_one_minus  # transmittance in front of this Gaussian
                    w = alpha * T_k
                    q = 0.0  # dL/dw = feature . dL/dcolour
                    for k in range(D):
                        q += g[N_GEOM + k] * g_out[p, k]
                        grad[N_GEOM + k] += w * g_out[p, k]
                    v_alpha = T_k * q - later[p] * inv_one_minus
                    if o * vis <= MAX_ALPHA:  # clamped alphas pass no gradient (gsplat)
                        grad[5] += vis * v_alpha
                        v_sigma = -alpha * v_alpha
                        grad[0] += v_sigma * (a * dx + b * dy)
                        grad[1] += v_sigma * (b * dx + c * dy)
                        grad[2] += v_sigma * 0.5 * dx * dx
                        grad[3] += v_sigma * dx * dy
                        grad[4] += v_sigma * 0.5 * dy * dy
                    later[p] += w * q
                    T[p] = T_k
            for f in range(N_GEOM + D):
                per_isect[j, f] = grad[f]
    return per_isect
