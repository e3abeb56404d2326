"""Would the 3DGS forward compositing run faster with a tile row's pixels as vector lanes? Measured side by side.

The CPU kernels (``methods/core/cpu_kernels.py``) composite a Gaussian only over the pixels of each row where it
can reach alpha >= 1/255 (its span: 3 to 7 pixels on average in the rasterizer benchmark's grid), in scalar code,
with exp(-sigma) along the row by a two-multiply recurrence (two exps per row). A GPU instead gives every pixel
of the tile a lane and evaluates each Gaussian at all of them. This benchmark runs that lane layout on the CPU,
forward only, RGB + depth, against the production kernel on the same inputs, one thread, so that the question
"is the distance to the dgemm bound (``bench_rasterizer.py``) the scalar code's fault?" has a measured answer:

- ``lanes64``: per Gaussian-row, alpha at all pixels of the row in one branch-free loop (float64 exp per pixel,
  written so that LLVM vectorizes it: 4 lanes per ymm register on the machines measured), then the compositing
  pass over the row's pixels;
- ``lanes32``: the same in float32 (the precision of gsplat's CUDA kernels; LLVM chose 16-lane zmm vectors on
  the AVX-512 machine measured), the Gaussian rows converted once beforehand (not timed).

Both give the production kernel's images to within their precision (``max|dC|``, the largest colour difference).
Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python tests/perf/bench_row_lanes.py [--points 20000,256,160 ...] [--repeats 5]

Results (2026-12-02 02:30 UTC, the 2-core Intel VM of ``bench_rasterizer.py``'s grid of that day, AVX-512;
medians of 5, one thread; the ratio is the production kernel's time over the variant's):

          N     size | scalar spans |           lanes64  max|dC| |           lanes32  max|dC|
      20000  256x160 |       8.5 ms |    20.2 ms  0.42x  1.1e-14 |    25.1 ms  0.34x  3.2e-05
     300000  256x160 |      35.6 ms |    90.6 ms  0.39x  3.9e-15 |    86.3 ms  0.41x  1.5e-03
      20000  960x540 |      44.3 ms |   108.3 ms  0.41x  2.0e-14 |    83.0 ms  0.53x  5.6e-03
     100000  960x540 |     203.2 ms |   511.7 ms  0.40x  5.3e-15 |   409.6 ms  0.50x  3.6e-04

The lane layouts are 2-3x slower than the scalar spans at every point, in float32 too: each Gaussian-row costs a
whole row of exps and compositing steps where the spans visit 3 to 7 pixels with two exps, and a 16-pixel row is a
short loop (float32's 16-lane vectors did not make it faster than float64's 4-lane ones, so the vector arithmetic
is not where such a row's time goes). A hand-written kernel with intrinsics (a C++ extension) might do better on
the short rows, but would still evaluate 2-5x the pairs. Earlier versions of the production kernels tried the
other vector layout, 8-lane masked blocks over a span's pixels, and found it no faster (cpu_kernels' module
docstring). So the compositing stays scalar, and the compute bound it can approach is the scalar FMA rate that
``bench_rasterizer.py`` reports beside the dgemm rate.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from gfbench.methods.core import cpu_kernels as K
from gfbench.methods.core import rasterize_cpu as rc
from gfbench.methods.core.cpu_kernels import (
    ALPHA_THRESHOLD, MAX_ALPHA, MIN_TRANSMITTANCE, PREFETCH_AHEAD, TILE_SIZE, ellipse_rows, exp_inline,
    positive_definite, prefetch_row, sigma_bound, tile_origin,
)

from bench_rasterizer import make_scene

f32 = np.float32
LOG2_E_32, LN2_32 = f32(1.442695), f32(0.6931472)
EXP32_ORDER = 7  # Taylor terms for exp(r), |r| <= ln(2) / 2, in float32: remainder below 2e-8 relative


@intrinsic
def _bits_to_float32(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits``."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(fastmath=K.FASTMATH, inline="always")
def exp32(x):
    """exp(x) in float32, branch-free (so that a loop calling it vectorizes), |x| clamped to 87."""
    x = min(max(x, f32(-87.0)), f32(87.0))
    n = np.floor(x * LOG2_E_32 + f32(0.5))
    r = x - n * LN2_32
    p = f32(1.0)
    for k in range(EXP32_ORDER, 0, -1):
        p = f32(1.0) + p * r / f32(k)
    return p * _bits_to_float32((np.int32(n) + np.int32(127)) << np.int32(23))


def make_lane_kernel(dtype):
    """The lane-layout forward for float64 or float32 Gaussian rows (one compiled kernel each)."""
    one, half, zero = dtype(1.0), dtype(0.5), dtype(0.0)
    max_alpha, threshold, min_t = dtype(MAX_ALPHA), dtype(ALPHA_THRESHOLD), dtype(MIN_TRANSMITTANCE)
    exp = exp_inline if dtype is np.float64 else exp32

    @njit(nogil=True, fastmath=K.FASTMATH)
    def lanes_fwd(params, tile_offsets, flatten_ids, tile_w, tile_h, colors, T_final, last):
        height, width = T_final.shape[1], T_final.shape[2]
        T = np.empty((TILE_SIZE, TILE_SIZE), dtype=dtype)
        acc = np.empty((4, TILE_SIZE, TILE_SIZE), dtype=dtype)
        last_t = np.empty((TILE_SIZE, TILE_SIZE), dtype=np.int64)
        px, alpha = np.empty(TILE_SIZE, dtype=dtype), np.empty(TILE_SIZE, dtype=dtype)
        for tile in range(tile_offsets.shape[0] - 1):
            cam, x0, y0, x1, y1 = tile_origin(tile, tile_w, tile_h, width, height)
            T[:] = one
            acc[:] = zero
            last_t[:] = -1
            for lane in range(TILE_SIZE):
                px[lane] = dtype(x0 + lane) + half
            n_live = (x1 - x0) * (y1 - y0)
            end = tile_offsets[tile + 1]
            for j in range(tile_offsets[tile], end):
                if n_live == 0:
                    break
                if j + PREFETCH_AHEAD < end:
                    prefetch_row(params, flatten_ids[j + PREFETCH_AHEAD])
                g = params[flatten_ids[j]]
                mx, my, a, b, c, o = g[0], g[1], g[2], g[3], g[4], g[5]
                smax = sigma_bound(float(o))
                if smax < 0 or not positive_definite(float(a), float(b), float(c)):
                    continue
                ylo, yhi = ellipse_rows(float(mx), float(my), float(a), float(b), float(c), smax, y0, y1, False)
                for y in range(ylo, yhi):
                    row = y - y0
                    dy = my - (dtype(y) + half)
                    cy, by = half * c * dy * dy, b * dy
                    for lane in range(x1 - x0):  # every pixel of the row: vector code
                        dx = mx - px[lane]
                        alpha[lane] = min(max_alpha, o * exp(-(half * a * dx * dx + by * dx + cy)))
                    f0, f1, f2, f3 = g[6], g[7], g[8], g[9]
                    finished = 0
                    for lane in range(x1 - x0):  # compositing, gsplat's rules, branch-free: vector code
                        Tp, al = T[row, lane], alpha[lane]
                        hit = (Tp >= zero) & (al >= threshold)
                        next_T = Tp * (one - al)
                        done = hit & (next_T <= min_t)
                        take = hit & ~done
                        vis = al * Tp if take else zero
                        acc[0, row, lane] += vis * f0
                        acc[1, row, lane] += vis * f1
                        acc[2, row, lane] += vis * f2
                        acc[3, row, lane] += vis * f3
                        last_t[row, lane] = j if take else last_t[row, lane]
                        T[row, lane] = next_T if take else (-Tp if done else Tp)
                        finished += done
                    n_live -= finished
            for y in range(y0, y1):
                for x in range(x0, x1):
                    T_final[cam, y, x] = abs(T[y - y0, x - x0])
                    last[cam, y, x] = last_t[y - y0, x - x0]
                    for k in range(4):
                        colors[cam, y, x, k] = acc[k, y - y0, x - x0]

    return lanes_fwd


LANES = {"lanes64": (np.float64, make_lane_kernel(np.float64)), "lanes32": (np.float32, make_lane_kernel(np.float32))}


def inputs(n: int, W: int, H: int):
    """The production pipeline's Gaussian rows and tile lists for the rasterizer benchmark's scene."""
    p, viewmats, Ks = make_scene(n, W, H)
    with torch.no_grad():
        proj = rc.project_3d(p["means"], p["quats"], p["scales"], p["opacities"], viewmats, Ks, W, H, eps2d=0.3,
                             near_plane=0.01, far_plane=1e10, radius_clip=0.0)
        features = torch.cat([p["colors"][None], proj.depths[..., None]], -1)
        params = rc.gaussian_rows(proj.host["means2d"], proj.host["conics"], p["opacities"][None], features)
    return params, rc.bin_tiles(proj, W, H)


def production(params, bins, W, H):
    out = (np.empty((1, H, W, 4)), np.empty((1, H, W)), np.empty((1, H, W), np.int64),
           np.zeros((bins.n_tiles, 2), np.int64))
    K.rasterize_3dgs_fwd(params, bins.tile_offsets, bins.flatten_ids, bins.tile_width, bins.tile_height, False,
                         *out, 0, 1)
    return out[0]


def lanes(kernel, dtype, params, bins, W, H):
    out = (np.empty((1, H, W, 4), dtype), np.empty((1, H, W), dtype), np.empty((1, H, W), np.int64))
    kernel(params, bins.tile_offsets, bins.flatten_ids, bins.tile_width, bins.tile_height, *out)
    return out[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=["20000,256,160", "300000,256,160", "20000,960,540",
                                                         "100000,960,540"], help="N,WIDTH,HEIGHT")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'N':>7s} {'size':>8s} | {'scalar spans':>12s} | {'lanes64':>17s} {'max|dC|':>8s} | "
          f"{'lanes32':>17s} {'max|dC|':>8s}")
    for point in args.points:
        n, W, H = (int(v) for v in point.split(","))
        params, bins = inputs(n, W, H)
        variants = {"production": lambda: production(params, bins, W, H)}
        for name, (dtype, kernel) in LANES.items():
            rows = np.ascontiguousarray(params, dtype=dtype)
            variants[name] = lambda kernel=kernel, dtype=dtype, rows=rows: lanes(kernel, dtype, rows, bins, W, H)
        images = {name: run() for name, run in variants.items()}  # also compiles
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        cells = [f"{ms[name]:7.1f} ms {ms['production'] / ms[name]:5.2f}x "
                 f"{np.abs(images[name] - images['production']).max():8.1e}" for name in LANES]
        print(f"{n:7d} {W:4d}x{H:<3d} | {ms['production']:9.1f} ms | {' | '.join(cells)}", flush=True)


if __name__ == "__main__":
    main()
