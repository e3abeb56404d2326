"""Would the 3DGS compositing run faster with a tile row's pixels as vector lanes? Measured side by side.

The CPU kernels (``methods/core/cpu_kernels.py``, the ``spans`` compositing) composite a Gaussian only over the
pixels of each row where it can reach alpha >= 1/255 (its span: 3 to 7 pixels on average in the rasterizer
benchmark's grid), in scalar code, with exp(-sigma) along the row by a two-multiply recurrence (two exps per row).
A GPU instead gives every pixel of the tile a lane and evaluates each Gaussian at all of them. This benchmark runs
that lane layout on the CPU, RGB + depth, against the spans kernel on the same inputs, one thread, so that the
question "is the distance to the dgemm bound (``bench_rasterizer.py``) the scalar code's fault?" has a measured
answer. Forward:

- ``lanes64``: per Gaussian-row, alpha at all pixels of the row in one branch-free loop (float64 exp per pixel,
  written so that LLVM vectorizes it: 4 lanes per ymm register on the machines measured), then a branch-free
  compositing pass over the row's pixels;
- ``lanes32``: the same in float32 (the precision of gsplat's CUDA kernels; LLVM chose 16-lane zmm vectors on
  the AVX-512 machine measured), the Gaussian rows converted once beforehand (not timed);
- ``avx512``: the same layout hand-written in C with AVX-512 intrinsics, in float32, a row of 16 pixels being one
  vector, exp per pixel (``row_lanes_avx512.c``, compiled here with gcc -O3 -march=native and called through
  ctypes);
- ``lanes_3dgs.c``: the package's opt-in ``lanes`` compositing (``methods/core/lanes_3dgs.c``,
  ``GFBENCH_CPU_COMPOSITING=lanes``): the layout in C in float64, a row being two 8-lane vectors, with
  exp(-sigma) by the spans kernels' recurrence turned 90 degrees (down the rows: two vector exps per Gaussian
  and tile, then two multiplies per pixel and row).

Then the backward of the last against the spans kernel's, from the same forward state and random output
gradients (``max rel d``: the largest gradient difference relative to its column's largest magnitude). The C
columns are left empty where the CPU lacks AVX-512 or there is no gcc. All give the spans kernel's images to
within their precision (``max|dC|``, the largest colour difference). Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python tests/perf/bench_row_lanes.py [--points 20000,256,160 ...] [--repeats 5]

Results (2026-12-02 14:05 UTC, a 2-core Intel AVX-512 VM (LLVM: rocketlake), the machine of ``bench_rasterizer.py``'s
grid of that day; medians of 5, one thread; the ratio is the spans kernel's time over the variant's):

      N     size | scalar spans |           lanes64  max|dC| |           lanes32  max|dC| |            avx512  max|dC| |      lanes_3dgs.c  max|dC|
  20000  256x160 |       6.8 ms |    17.4 ms  0.39x  1.1e-14 |    13.3 ms  0.51x  3.2e-05 |     4.3 ms  1.59x  3.2e-05 |     7.0 ms  0.98x  1.9e-14
 300000  256x160 |      32.0 ms |    82.9 ms  0.39x  3.9e-15 |    62.6 ms  0.51x  1.5e-03 |    19.3 ms  1.65x  1.5e-03 |    29.2 ms  1.10x  3.2e-15
  20000  960x540 |      43.9 ms |   105.8 ms  0.42x  2.0e-14 |    77.5 ms  0.57x  5.6e-03 |    22.9 ms  1.92x  5.6e-03 |    33.8 ms  1.30x  3.0e-14
 100000  960x540 |     177.7 ms |   471.5 ms  0.38x  5.3e-15 |   354.3 ms  0.50x  3.6e-04 |    88.5 ms  2.01x  3.6e-04 |   121.7 ms  1.46x  6.7e-15

    backward (RGB + depth): the production kernel against the package's lanes backward
          N     size | scalar spans |         lanes_3dgs.c max rel d
      20000  256x160 |       9.4 ms |     7.5 ms  1.26x   1.8e-14
     300000  256x160 |      44.4 ms |    38.4 ms  1.16x   2.0e-14
      20000  960x540 |      61.0 ms |    34.1 ms  1.79x   3.4e-14
     100000  960x540 |     241.4 ms |   141.8 ms  1.70x   2.6e-14

As numba and LLVM vectorize it, the lane layout is 2-2.6x slower than the scalar spans; float32's 16-lane vectors
made it only 1.3x faster than float64's 4-lane ones (the short row loops' vector bodies are not where the time
goes). Written by hand with AVX-512 intrinsics it evaluates every pixel of each row (2-5x the pairs of the spans)
and still wins: in float32 by 1.59-2.01x; in float64 with the recurrence by up to 1.46x forward and 1.16-1.79x
backward, most where images are large, with results within 4e-14 of the spans kernel's. (Before the kernels
checked that the recurrence is exact for each Gaussian and tile, falling back to an exp per pixel where it is not:
thin Gaussians at an angle, long ones far from the tile; none here, but the check costs about 10% at 256x160,
where the unchecked kernels measured 1.05-1.13x forward and 1.31-1.38x backward. The table's check evaluated sigma
at the box's corners in scalars; done on the row's lanes as vectors instead, a run on a busier VM at 14:30 UTC
gave 1.05-1.56x forward and 1.18-1.75x backward.) In float64 with an exp
per pixel instead (an earlier version of that kernel) it was only about as fast as the spans (0.83-1.11x in two
runs): half the lanes per vector and twice the polynomial took the gain, and the recurrence gave it back. So the
distance to the dgemm bound is partly the scalar code's; the price of the vector kernels is C with intrinsics for
one instruction set, and last bits that differ from the spans kernels' (which training turns into moves of tenths
of a dB in the published numbers: see ``cpu_kernels._rotmat``), hence opt-in. Skipping the 8-lane half-rows that
a Gaussian's span does not reach did not help the float64 kernel with an exp per pixel (0.97-1.12x). Denormal
numbers matter to every lane kernel: far pixels' exps underflow, and each denormal operand costs a microcode
assist. The C kernels flush them to zero (without that the float32 one ran 4x slower at 20k Gaussians on 256x160)
and the numba kernels cap sigma at SIGMA_CLAMP (an earlier run without the cap had ``lanes32`` at 0.33-0.50x).
Prefetching the Gaussian rows gave the float32 C kernel -25% at 300k. Earlier versions of the production kernels
tried 8-lane masked blocks over a span's pixels, and found them no faster (cpu_kernels' module docstring). An
earlier run on the same kind of VM (03:10 UTC) gave 0.38-0.40x, 0.50-0.53x and 1.63-1.96x for the first three
columns.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from gfbench.methods.core import cpu_kernels as K
from gfbench.methods.core import lanes as lanes_kernels
from gfbench.methods.core import rasterize_cpu as rc
from gfbench.methods.core.cpu_kernels import (
    ALPHA_THRESHOLD, MAX_ALPHA, MIN_TRANSMITTANCE, PREFETCH_AHEAD, TILE_SIZE, ellipse_rows, exp_inline,
    positive_definite, prefetch_row, sigma_bound, tile_origin,
)

from bench_rasterizer import make_scene, projected_3dgs

f32 = np.float32
LOG2_E_32, LN2_32 = f32(1.442695), f32(0.6931472)
SIGMA_CLAMP = 80.0  # far pixels' sigma capped here: o exp(-80) >= 7e-38 for o >= 1/255, a normal float32
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
    max_sigma = dtype(SIGMA_CLAMP)
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
                        sigma = min(half * a * dx * dx + by * dx + cy, max_sigma)  # alpha stays a normal number
                        alpha[lane] = min(max_alpha, o * exp(-sigma))
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


AVX512_SOURCE = Path(__file__).with_name("row_lanes_avx512.c")


def load_avx512_kernel():
    """``row_lanes_avx512.c`` compiled for this CPU (gcc -O3 -march=native) and loaded through ctypes, or None with
    the reason when there is no gcc or no AVX-512."""
    missing = lanes_kernels.missing_requirement()
    if missing is not None:
        return None, missing
    library = Path(tempfile.mkdtemp(prefix="gfbench-lanes-")) / "row_lanes_avx512.so"
    subprocess.run(["gcc", "-O3", "-march=native", "-shared", "-fPIC", "-o", str(library), str(AVX512_SOURCE), "-lm"],
                   check=True)
    kernel = ctypes.CDLL(str(library)).fwd_lanes
    pointer, integer, real = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    kernel.argtypes = [pointer, integer, pointer, pointer] + [integer] * 4 + [real] * 5 + [pointer] * 3
    kernel.restype = integer
    return kernel, ""


def avx512(kernel, params32, bins, W, H):
    out = (np.empty((1, H, W, 4), np.float32), np.empty((1, H, W), np.float32), np.empty((1, H, W), np.int64))
    kernel(params32.ctypes.data, params32.shape[1], bins.tile_offsets.ctypes.data, bins.flatten_ids.ctypes.data,
           bins.tile_width, bins.tile_height, W, H, MAX_ALPHA, ALPHA_THRESHOLD, MIN_TRANSMITTANCE, K.SPAN_MARGIN,
           K.PIXEL_MARGIN, *(a.ctypes.data for a in out))
    return out[0]


def one_thread(kernel, *args):
    """:func:`.rasterize_cpu.run_workers` on this thread only."""
    kernel(*args, 0, 1)


def package_lanes(params, bins, W, H):
    """The package's lanes compositing (``methods/core/lanes_3dgs.c``), forward."""
    out = (np.empty((1, H, W, 4)), np.empty((1, H, W)), np.empty((1, H, W), np.int64))
    lanes_kernels.forward(params, bins, W, H, *out, one_thread)
    return out[0]


def inputs(n: int, W: int, H: int):
    """The production pipeline's Gaussian rows and tile lists for the rasterizer benchmark's scene."""
    p, viewmats, Ks = make_scene(n, W, H)
    proj, bins, features = projected_3dgs(p, viewmats, Ks, W, H)
    return rc.gaussian_rows(proj.host["means2d"], proj.host["conics"], p["opacities"][None].detach(), features), bins


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


def production_backward(params, bins, W, H, grads):
    """The production 3DGS backward's per-intersection gradient rows, from its own forward's state."""
    state = (np.empty((1, H, W, 4)), np.empty((1, H, W)), np.empty((1, H, W), np.int64),
             np.zeros((bins.n_tiles, 2), np.int64))
    K.rasterize_3dgs_fwd(params, bins.tile_offsets, bins.flatten_ids, bins.tile_width, bins.tile_height, False,
                         *state, 0, 1)
    T_final, last = state[1], state[2]
    per_isect = np.empty((bins.n_isects, params.shape[1]))
    run = lambda: K.rasterize_3dgs_bwd(params, bins.tile_offsets, bins.flatten_ids, bins.tile_width,  # noqa: E731
                                       bins.tile_height, False, T_final, last, *grads, per_isect, 0, 1)
    return run, per_isect, (T_final, last)


def lanes_backward(params, bins, W, H, grads, state):
    """The package's lanes backward on the production forward's state: a callable and the rows it fills."""
    per_isect = np.empty((bins.n_isects, params.shape[1]))
    run = lambda: lanes_kernels.backward(params, bins, W, H, *state, *grads, per_isect, one_thread)  # noqa: E731
    return run, per_isect


def backward_line(params, bins, n, W, H, repeats):
    """Production backward against the package's lanes backward (one thread, medians): times, ratio and the
    largest difference of each gradient column relative to that column's largest magnitude."""
    rng = np.random.default_rng(1)
    grads = (rng.standard_normal((1, H, W, 4)), rng.standard_normal((1, H, W)))
    run_production, expected, state = production_backward(params, bins, W, H, grads)
    run_lanes, got = lanes_backward(params, bins, W, H, grads, state)
    times = {"production": [], "lanes": []}
    for _ in range(repeats + 1):  # the first round warms up
        for name, run in (("production", run_production), ("lanes", run_lanes)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    production_ms, lanes_ms = (statistics.median(t[1:]) * 1e3 for t in times.values())
    scale = np.maximum(np.abs(expected).max(axis=0), 1e-300)
    relative = (np.abs(got - expected) / scale).max()
    return (f"{n:7d} {W:4d}x{H:<3d} | {production_ms:9.1f} ms | {lanes_ms:7.1f} ms {production_ms / lanes_ms:5.2f}x "
            f"{relative:9.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=["20000,256,160", "300000,256,160", "20000,960,540",
                                                         "100000,960,540"], help="N,WIDTH,HEIGHT")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernel, missing = load_avx512_kernel()
    names = list(LANES) + ["avx512", "lanes_3dgs.c"]
    columns = " | ".join(f"{name:>17s} {'max|dC|':>8s}" for name in names)
    note = f"   (the C kernels: {missing})" if missing else ""
    print(f"{'N':>7s} {'size':>8s} | {'scalar spans':>12s} | {columns}{note}")
    backward_lines = []
    for point in args.points:
        n, W, H = (int(v) for v in point.split(","))
        params, bins = inputs(n, W, H)
        variants = {"production": lambda: production(params, bins, W, H)}
        for name, (dtype, lane_kernel) in LANES.items():
            rows = np.ascontiguousarray(params, dtype=dtype)
            variants[name] = (lambda lane_kernel=lane_kernel, dtype=dtype, rows=rows:
                              lanes(lane_kernel, dtype, rows, bins, W, H))
        if kernel is not None:
            rows32 = np.ascontiguousarray(params, dtype=np.float32)
            variants["avx512"] = lambda: avx512(kernel, rows32, bins, W, H)
            variants["lanes_3dgs.c"] = lambda: package_lanes(params, bins, W, H)
        images = {name: run() for name, run in variants.items()}  # also compiles
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        cells = [f"{ms[name]:7.1f} ms {ms['production'] / ms[name]:5.2f}x "
                 f"{np.abs(images[name] - images['production']).max():8.1e}" if name in ms else f"{'':>26s}"
                 for name in names]
        print(f"{n:7d} {W:4d}x{H:<3d} | {ms['production']:9.1f} ms | {' | '.join(cells)}", flush=True)
        if kernel is not None:
            backward_lines.append(backward_line(params, bins, n, W, H, args.repeats))
    if backward_lines:
        print("\nbackward (RGB + depth): the production kernel against the package's lanes backward")
        print(f"{'N':>7s} {'size':>8s} | {'scalar spans':>12s} | {'lanes_3dgs.c':>20s} {'max rel d':>9s}")
        print("\n".join(backward_lines))


if __name__ == "__main__":
    main()
