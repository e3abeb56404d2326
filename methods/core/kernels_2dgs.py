"""Compiled (numba) tile rasterization of 2D Gaussian surfels, forward and backward, as gsplat 1.5.3's
``RasterizeToPixels2DGSFwd.cu`` / ``...Bwd.cu`` do it, one tile per parallel iteration.

Per pixel and surfel the ray is intersected with the surfel plane in homogeneous coordinates: with the
rows u, v, w of the splat-to-pixel transform M, the planes h_u = x w - u and h_v = y w - v meet at
c = h_u x h_v, whose dehomogenised (c_x / c_z, c_y / c_z) is the splat-space point. sigma = 0.5 min(g3, g2)
with g3 = |c_xy / c_z|^2 and the screen-space low-pass g2 = 2 |mean2d - pixel|^2; pairs with c_z = 0 are
skipped. Compositing, early termination and the back-to-front backward are those of :mod:`.kernels_3dgs`;
on top the kernel composites camera-space normals, gsplat's depth distortion (depth read from the last
feature channel) and the median depth (the last surfel entered while T > 0.5).

Along a pixel row h_v is fixed, so c = x (w x h_v) - (u x h_v) is linear in x: the forward needs three
multiply-adds per pixel for c, the backward sums dL/dc over a row and applies the cross-product rule once
per row. The pixels visited are those where min(g3, g2) <= 2 ln(255 o) can hold: the image of the splat
disk |s| <= r (rows from its dual conic, per-row spans from a quadratic in x) united with the low-pass
disk, widened by a pixel; whenever the image is not a bounded ellipse the whole row or tile is visited.
The exact test decides each pixel, so the result equals visiting the whole tile (``full_tile=True``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels_3dgs import sigma_bound, tile_origin
from .kernels_tiles import ALPHA_THRESHOLD, FASTMATH, MAX_ALPHA, MIN_TRANSMITTANCE, TILE_PIXELS, TILE_SIZE

N_GEOM = 12  # per-surfel row: mean x, mean y, M (9, row-major), opacity; then D features, then 3 normals
LOWPASS_INV_SQUARE = 2.0  # gsplat's FILTER_INV_SQUARE_2DGS


@njit(cache=True, fastmath=FASTMATH, inline="always")
def surfel_rows(g, smax, y0, y1, full_tile):
    """Rows [lo, hi) that the splat disk's image or the low-pass disk can reach."""
    if full_tile:
        return y0, y1
    my = g[1]
    half = math.sqrt(smax)  # low-pass: |d|^2 <= smax
    lo_f, hi_f = my - half, my + half
    r2 = 2.0 * smax
    # dual conic of the disk's image, C* = M diag(r2, r2, -1) M^T; tangents y = k solve
    # C*_22 k^2 - 2 C*_12 k + C*_11 = 0 (indices 1 = v row, 2 = w row)
    c11 = r2 * (g[5] * g[5] + g[6] * g[6]) - g[7] * g[7]
    c12 = r2 * (g[5] * g[8] + g[6] * g[9]) - g[7] * g[10]
    c22 = r2 * (g[8] * g[8] + g[9] * g[9]) - g[10] * g[10]
    disc = c12 * c12 - c11 * c22
    if not (c22 < 0 and disc >= 0):
        return y0, y1  # not a bounded ellipse: every row
    root = math.sqrt(disc)
    k1, k2 = (c12 + root) / c22, (c12 - root) / c22
    lo_f = min(lo_f, min(k1, k2))
    hi_f = max(hi_f, max(k1, k2))
    lo = max(y0, int(math.floor(lo_f - 0.5)) - 1)
    hi = min(y1, int(math.ceil(hi_f - 0.5)) + 2)
    return lo, max(lo, hi)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def surfel_span(g, dy, ax, ay, az, bx, by, bz, smax, x0, x1, full_tile):
    """Columns [lo, hi) of a row where min(g3, g2) <= 2 smax can hold; c = x (ax, ay, az) - (bx, by, bz)."""
    if full_tile:
        return x0, x1
    r2 = 2.0 * smax
    # |c_xy|^2 - r2 c_z^2 <= 0 as a quadratic A x^2 + B x + C in the pixel centre x
    A = ax * ax + ay * ay - r2 * az * az
    if not (A > 0):
        return x0, x1
    B = -2.0 * (ax * bx + ay * by - r2 * az * bz)
    C = bx * bx + by * by - r2 * bz * bz
    disc = B * B - 4.0 * A * C
    have_splat = disc >= 0
    lo_f, hi_f = 1e300, -1e300
    if have_splat:
        root = math.sqrt(disc)
        lo_f, hi_f = (-B - root) / (2.0 * A), (-B + root) / (2.0 * A)
    rem = smax - dy * dy  # low-pass disk on this row: dx^2 <= smax - dy^2
    if rem >= 0:
        half = math.sqrt(rem)
        lo_f, hi_f = min(lo_f, g[0] - half), max(hi_f, g[0] + half)
    elif not have_splat:
        return x0, x0
    lo = max(x0, int(math.floor(lo_f - 0.5)) - 1)
    hi = min(x1, int(math.ceil(hi_f - 0.5)) + 2)
    return lo, max(lo, hi)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def row_planes(g, py):
    """a = w x h_v and b = u x h_v for the row at pixel centre py (h_v = py w - v): c = x a - b."""
    ux, uy, uz = g[2], g[3], g[4]
    wx, wy, wz = g[8], g[9], g[10]
    hx, hy, hz = py * wx - g[5], py * wy - g[6], py * wz - g[7]
    ax, ay, az = wy * hz - wz * hy, wz * hx - wx * hz, wx * hy - wy * hx
    bx, by, bz = uy * hz - uz * hy, uz * hx - ux * hz, ux * hy - uy * hx
    return ax, ay, az, bx, by, bz, hx, hy, hz


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def rasterize_2dgs_fwd(params, tile_offsets, flatten_ids, n_cameras, width, height, tile_w, tile_h,
                       full_tile):
    """Returns features [C, H, W, D], normals [C, H, W, 3], final T, distortion, median depth (each
    [C, H, W]), the last composited index and the median's index [C, H, W] (into ``flatten_ids``, -1 if
    none) and the pairs evaluated per tile."""
    D = params.shape[1] - N_GEOM - 3
    n_tiles = tile_offsets.shape[0] - 1
    features = np.empty((n_cameras, height, width, D))
    normals = np.empty((n_cameras, height, width, 3))
    T_final = np.empty((n_cameras, height, width))
    distort = np.empty((n_cameras, height, width))
    median = np.empty((n_cameras, height, width))
    last = np.empty((n_cameras, height, width), dtype=np.int64)
    median_idx = np.empty((n_cameras, height, width), dtype=np.int64)
    pairs = np.zeros(n_tiles, dtype=np.int64)
    for tile in prange(n_tiles):
        cam, x0, y0, x1, y1 = tile_origin(tile, tile_w, tile_h, width, height)
        T = np.ones(TILE_PIXELS)
        acc = np.zeros((TILE_PIXELS, D + 3))
        dist_t = np.zeros(TILE_PIXELS)
        wd = np.zeros(TILE_PIXELS)  # sum of w * depth so far
        med_t = np.zeros(TILE_PIXELS)
        last_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        med_idx_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        done = np.zeros(TILE_PIXELS, dtype=np.bool_)
        n_live = (x1 - x0) * (y1 - y0)
        n_pairs = 0
        for j in range(tile_offsets[tile], tile_offsets[tile + 1]):
            if n_live == 0:
                break
            g = params[flatten_ids[j]]
            mx, my, o = g[0], g[1], g[11]
            depth = g[N_GEOM + D - 1]
            smax = sigma_bound(o)
            if smax < 0:
                continue
            ylo, yhi = surfel_rows(g, smax, y0, y1, full_tile)
            for y in range(ylo, yhi):
                py = y + 0.5
                dy = my - py
                ax, ay, az, bx, by, bz, _, _, _ = row_planes(g, py)
                xlo, xhi = surfel_span(g, dy, ax, ay, az, bx, by, bz, smax, x0, x1, full_tile)
                n_pairs += xhi - xlo
                for x in range(xlo, xhi):
                    p = (y - y0) * TILE_SIZE + (x - x0)
                    if done[p]:
                        continue
                    px = x + 0.5
                    cz = px * az - bz
                    if cz == 0:
                        continue
                    cx = px * ax - bx
                    cy = px * ay - by
                    g3 = (cx * cx + cy * cy) / (cz * cz)
                    dx = mx - px
                    g2 = LOWPASS_INV_SQUARE * (dx * dx + dy * dy)
                    sigma = 0.5 * min(g3, g2)
                    alpha = min(MAX_ALPHA, o * math.exp(-sigma))
                    if sigma < 0 or alpha < ALPHA_THRESHOLD:
                        continue
                    Tp = T[p]
                    next_T = Tp * (1.0 - alpha)
                    if next_T <= MIN_TRANSMITTANCE:
                        done[p] = True
                        n_live -= 1
                        continue
                    vis = alpha * Tp
                    for k in range(D + 3):
                        acc[p, k] += vis * g[N_GEOM + k]
                    dist_t[p] += 2.0 * (vis * depth * (1.0 - Tp) - vis * wd[p])
                    wd[p] += vis * depth
                    if Tp > 0.5:
                        med_t[p] = depth
                        med_idx_t[p] = j
                    last_t[p] = j
                    T[p] = next_T
        pairs[tile] = n_pairs
        for y in range(y0, y1):
            for x in range(x0, x1):
                p = (y - y0) * TILE_SIZE + (x - x0)
                for k in range(D):
                    features[cam, y, x, k] = acc[p, k]
                for k in range(3):
                    normals[cam, y, x, k] = acc[p, D + k]
                T_final[cam, y, x] = T[p]
                distort[cam, y, x] = dist_t[p]
                median[cam, y, x] = med_t[p]
                last[cam, y, x] = last_t[p]
                median_idx[cam, y, x] = med_idx_t[p]
    return features, normals, T_final, distort, median, last, median_idx, pairs


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def rasterize_2dgs_bwd(params, tile_offsets, flatten_ids, n_cameras, width, height, tile_w, tile_h,
                       T_final, last, median_idx, depth_total, v_features, v_normals, v_T, v_distort,
                       v_median, full_tile):
    """Per-intersection gradient rows [M, 12 + D + 3] in the layout of ``params``.

    ``depth_total`` [C, H, W] is the forward's sum of w * depth (its last feature channel)."""
    D = params.shape[1] - N_GEOM - 3
    F = params.shape[1]
    n_tiles = tile_offsets.shape[0] - 1
    per_isect = np.zeros((flatten_ids.shape[0], F))
    for tile in prange(n_tiles):
        start, end = tile_offsets[tile], tile_offsets[tile + 1]
        if start == end:
            continue
        cam, x0, y0, x1, y1 = tile_origin(tile, tile_w, tile_h, width, height)
        T = np.ones(TILE_PIXELS)
        Tf = np.ones(TILE_PIXELS)
        later = np.zeros(TILE_PIXELS)  # dL/dT_final T_final + sum over later surfels of w dL/dw
        behind_wd = np.zeros(TILE_PIXELS)  # sum over later surfels of w * depth
        wd_total = np.zeros(TILE_PIXELS)
        last_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        med_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        g_out = np.zeros((TILE_PIXELS, D + 3))
        g_dist = np.zeros(TILE_PIXELS)
        g_med = np.zeros(TILE_PIXELS)
        newest = -1
        for y in range(y0, y1):
            for x in range(x0, x1):
                p = (y - y0) * TILE_SIZE + (x - x0)
                T[p] = Tf[p] = T_final[cam, y, x]
                later[p] = v_T[cam, y, x] * T[p]
                wd_total[p] = depth_total[cam, y, x]
                last_t[p] = last[cam, y, x]
                med_t[p] = median_idx[cam, y, x]
                newest = max(newest, last_t[p])
                for k in range(D):
                    g_out[p, k] = v_features[cam, y, x, k]
                for k in range(3):
                    g_out[p, D + k] = v_normals[cam, y, x, k]
                g_dist[p] = v_distort[cam, y, x]
                g_med[p] = v_median[cam, y, x]
        grad = np.zeros(F)
        for j in range(newest, start - 1, -1):
            g = params[flatten_ids[j]]
            mx, my, o = g[0], g[1], g[11]
            depth = g[N_GEOM + D - 1]
            smax = sigma_bound(o)
            if smax < 0:
                continue
            grad[:] = 0.0
            ylo, yhi = surfel_rows(g, smax, y0, y1, full_tile)
            for y in range(ylo, yhi):
                py = y + 0.5
                dy = my - py
                ax, ay, az, bx, by, bz, hx, hy, hz = row_planes(g, py)
                xlo, xhi = surfel_span(g, dy, ax, ay, az, bx, by, bz, smax, x0, x1, full_tile)
                # sums over the row of dL/dc and x dL/dc
                s0x = s0y = s0z = s1x = s1y = s1z = 0.0
                for x in range(xlo, xhi):
                    p = (y - y0) * TILE_SIZE + (x - x0)
                    if j > last_t[p]:
                        continue
                    px = x + 0.5
                    cz = px * az - bz
                    if cz == 0:
                        continue
                    cx = px * ax - bx
                    cy = px * ay - by
                    g3 = (cx * cx + cy * cy) / (cz * cz)
                    dx = mx - px
                    g2 = LOWPASS_INV_SQUARE * (dx * dx + dy * dy)
                    sigma = 0.5 * min(g3, g2)
                    vis = math.exp(-sigma)
                    alpha = min(MAX_ALPHA, o * vis)
                    if sigma < 0 or alpha < ALPHA_THRESHOLD:
                        continue
                    inv_one_minus = 1.0 / (1.0 - alpha)
                    T_k = T[p] * inv_one_minus
                    w = alpha * T_k
                    # distortion D = sum_i 2 w_i (d_i (1 - T_i) - A_i), A_i = sum_{j<i} w_j d_j
                    after = T[p] - Tf[p]  # sum of w over later surfels
                    front_wd = wd_total[p] - behind_wd[p] - w * depth
                    dD_dw = 2.0 * (depth * (1.0 - T_k) - front_wd + behind_wd[p] - depth * after)
                    q = 0.0
                    for k in range(D + 3):
                        q += g[N_GEOM + k] * g_out[p, k]
                        grad[N_GEOM + k] += w * g_out[p, k]
                    v_w = q + g_dist[p] * dD_dw
                    grad[N_GEOM + D - 1] += g_dist[p] * 2.0 * w * ((1.0 - T_k) - after)
                    if j == med_t[p]:
                        grad[N_GEOM + D - 1] += g_med[p]
                    v_alpha = T_k * v_w - later[p] * inv_one_minus
                    if o * vis <= MAX_ALPHA:  # clamped alphas pass no gradient (gsplat)
                        grad[11] += vis * v_alpha
                        v_sigma = -alpha * v_alpha
                        if g3 <= g2:  # ray-splat branch (gsplat's choice on ties)
                            inv_cz = 1.0 / cz
                            vcx = v_sigma * cx * inv_cz * inv_cz
                            vcy = v_sigma * cy * inv_cz * inv_cz
                            vcz = -v_sigma * g3 * inv_cz
                            s0x += vcx
                            s0y += vcy
                            s0z += vcz
                            s1x += px * vcx
                            s1y += px * vcy
                            s1z += px * vcz
                        else:  # low-pass branch: sigma = |mean - pixel|^2
                            grad[0] += 2.0 * v_sigma * dx
                            grad[1] += 2.0 * v_sigma * dy
                    later[p] += w * v_w
                    behind_wd[p] += w * depth
                    T[p] = T_k
                # c = h_u x h_v with h_u = x w - u, h_v = py w - v: dL/dh_u = h_v x vc, dL/dh_v = vc x h_u
                # sum_x dL/dh_u = h_v x S0, sum_x x dL/dh_u = h_v x S1, sum_x dL/dh_v = S1 x w - S0 x u
                wx, wy, wz = g[8], g[9], g[10]
                ux, uy, uz = g[2], g[3], g[4]
                hu0x, hu0y, hu0z = hy * s0z - hz * s0y, hz * s0x - hx * s0z, hx * s0y - hy * s0x
                hu1x, hu1y, hu1z = hy * s1z - hz * s1y, hz * s1x - hx * s1z, hx * s1y - hy * s1x
                hvx = (s1y * wz - s1z * wy) - (s0y * uz - s0z * uy)
                hvy = (s1z * wx - s1x * wz) - (s0z * ux - s0x * uz)
                hvz = (s1x * wy - s1y * wx) - (s0x * uy - s0y * ux)
                grad[2] -= hu0x
                grad[3] -= hu0y
                grad[4] -= hu0z
                grad[5] -= hvx
                grad[6] -= hvy
                grad[7] -= hvz
                grad[8] += hu1x + py * hvx
                grad[9] += hu1y + py * hvy
                grad[10] += hu1z + py * hvz
            for f in range(F):
                per_isect[j, f] = grad[f]
    return per_isect
