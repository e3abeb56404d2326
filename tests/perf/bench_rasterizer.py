"""The CPU rasterizer against gsplat 1.5.3's own PyTorch reference rasterizer, side by side in one process.

Run (from the repository root; the reference shim lives beside the checkout in ``../shared/perf``):

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/perf/bench_rasterizer.py \
        [--kinds 3dgs 2dgs] [--gaussians 20000 100000 300000] [--sizes 256x160 512x320 960x540] \
        [--threads 2] [--repeats 3] [--reference-limit 900] [--reference-memory 12] [--compositing lanes]

The baseline is what a user would otherwise reach for on a CPU: gsplat's ``_rasterization`` (3DGS) and its
``_torch_impl_2dgs`` pieces (2DGS), made to run on the CPU by ``gsplat_reference_cpu.py`` (which swaps in
vectorized torch code for the few CUDA-only helpers). Both sides take the same random Gaussians filling a
60-degree view at depths 2..8 (the same 3D scene at every image size), render RGB + expected depth for one
camera and backpropagate a random linear loss of colours and alphas (and normals for 2DGS).

What a row prints
-----------------
Per grid point: forward+backward time of the reference (once) and of gfbench (best of ``--repeats``), their
ratio, the same in process CPU seconds (all threads; robust to a shared machine, where wall time depends on what
else runs), gfbench's render-only (no-grad) time, the peak memory of each side (the process's RSS high-water mark,
reset before the side runs, minus the RSS at that moment: what the side adds), the largest difference between the
two sides' RGB, alpha (and 2DGS normals) images, the work gfbench did, and its distance from the dgemm bound.
Image differences come from float32 (reference) against float64 (gfbench) arithmetic deciding the alpha >= 1/255
and T > 1e-4 tests differently for a few pairs (each worth at most ~1/255 of a colour), and for 2DGS from
bounding-box radii that round to a different integer for a few surfels (their tile lists differ). gsplat's torch
2DGS projection composites normals scaled by the third scale (its CUDA kernel, which gfbench follows, uses unit
normals), so the 2DGS scene has third scales of 1, which surfels otherwise ignore.

The compute bounds
------------------
gfbench counts the work its forward does (Gaussian-pixel pairs whose alpha it evaluates, Gaussian-rows it sets
up, Gaussian-tile intersections; backward revisits at most those) and the Gaussians it projects, and charges each
the flops of forward + backward counted from the kernels' arithmetic (``FLOPS`` below: an FMA as 2, exp as 20,
a square root or division as 1 though it costs tens of cycles). The summary after the grid divides those flops by
two rates, each the best probed in the run (probes run at start-up, before every point and after the last; one
probe can catch the shared cores busy and halve the rate, which would flatter the points measured against it):

- ``x bound``: all flops at the rate of a BLAS dgemm (:func:`machine_gflops`: both FMA pipes busy with full
  vectors), the top of the roofline. ``x cpu`` is the same ratio counted in CPU seconds instead of wall seconds:
  gfbench's CPU seconds over the CPU seconds its flops need at the dgemm's rate per CPU second. Other jobs in the
  VM taking cores away slow the wall clock but not that ratio.
- ``x scalar``: all flops at the rate of scalar float64 FMAs (:func:`machine_scalar_gflops`: 12 independent
  ``vfmadd...sd`` chains on the kernels' worker threads), the top for code that computes one value per
  instruction, which is what the compositing's pixel loops are. On the Intel VMs the dgemm rate is 5.5-6.3x this
  one (on Zen 4 it should be 4x by design: 512-bit FMAs run as two halves; not probed there).

The scalar bound is not the machine's limit for this work, even in float64: the 3DGS compositing with a tile
row's pixels as vector lanes, hand-written in C with AVX-512 intrinsics, float64, exp(-sigma) by a recurrence down
the rows (the package's ``lanes`` compositing, ``methods/core/lanes_3dgs.c``) is 1.24-1.85x as fast forward and
1.43-2.05x backward as the scalar kernels on one thread (``bench_compositing.py``), although it evaluates 2-5x the
pairs; for 2DGS (``lanes_2dgs.c``, an exp per pixel) 1.26-1.84x and 1.30-2.15x. So the dgemm bound is the one
to measure against. The work charged is the scalar algorithm's (the lanes kernels' extra pairs and the vector row
set-up's extra slots are not counted; work counts always come from the spans kernels). With 300k Gaussians binning and the gradient reduction are memory-bound (per-Gaussian rows
visited in depth order), which no flop count sees.

``--compositing`` chooses gfbench's compositing (3DGS and 2DGS) as $GFBENCH_CPU_COMPOSITING does (``auto``, the
default, takes ``lanes`` where AVX-512 and gcc are there).

Results
-------
2026-12-02 12:49 UTC, a 2-core Intel VM with AVX-512 (LLVM: rocketlake, 480 MB L3), the command above with
``--repeats 5``, before the lanes kernels existed (so 3DGS on the spans kernels; ``--compositing spans`` runs them
now); best dgemm 207.9 Gflop/s on 2 threads, best scalar FMA rate 32.9 Gflop/s. gfbench is 26-160x
faster than the reference wherever the reference ran (skipped where it would need 13-43 GB), adds 20-639 MB of
memory (the reference 0.6-11.7 GB), and its render-only time is 36-46% of forward + backward. The summary:

    3dgs    20000  256x160  bound   0.5 ms  x bound  36.1  x cpu  28.2  scalar bound   3.2 ms  x scalar  5.7
    3dgs    20000  512x320  bound   1.3 ms  x bound  23.8  x cpu  20.4  scalar bound   8.3 ms  x scalar  3.8
    3dgs    20000  960x540  bound   3.9 ms  x bound  18.9  x cpu  17.2  scalar bound  24.7 ms  x scalar  3.0
    3dgs   100000  256x160  bound   2.2 ms  x bound  30.3  x cpu  27.1  scalar bound  13.6 ms  x scalar  4.8
    3dgs   100000  512x320  bound   6.0 ms  x bound  19.6  x cpu  18.3  scalar bound  37.7 ms  x scalar  3.1
    3dgs   100000  960x540  bound  17.1 ms  x bound  15.1  x cpu  14.4  scalar bound 108.2 ms  x scalar  2.4
    3dgs   300000  256x160  bound   3.0 ms  x bound  36.4  x cpu  31.3  scalar bound  19.1 ms  x scalar  5.8
    3dgs   300000  512x320  bound   7.5 ms  x bound  23.5  x cpu  21.2  scalar bound  47.6 ms  x scalar  3.7
    3dgs   300000  960x540  bound  19.5 ms  x bound  17.1  x cpu  15.8  scalar bound 123.1 ms  x scalar  2.7
    2dgs    20000  256x160  bound   0.6 ms  x bound  40.5  x cpu  31.3  scalar bound   3.8 ms  x scalar  6.4
    2dgs    20000  512x320  bound   1.5 ms  x bound  35.9  x cpu  30.0  scalar bound   9.3 ms  x scalar  5.7
    2dgs    20000  960x540  bound   4.4 ms  x bound  31.3  x cpu  28.3  scalar bound  28.0 ms  x scalar  4.9
    2dgs   100000  256x160  bound   2.9 ms  x bound  30.2  x cpu  25.9  scalar bound  18.6 ms  x scalar  4.8
    2dgs   100000  512x320  bound   7.2 ms  x bound  23.6  x cpu  21.8  scalar bound  45.6 ms  x scalar  3.7
    2dgs   100000  960x540  bound  21.6 ms  x bound  20.2  x cpu  19.4  scalar bound 136.7 ms  x scalar  3.2
    2dgs   300000  256x160  bound   5.4 ms  x bound  35.2  x cpu  30.6  scalar bound  34.0 ms  x scalar  5.6
    2dgs   300000  512x320  bound  16.6 ms  x bound  24.6  x cpu  22.8  scalar bound 105.3 ms  x scalar  3.9
    2dgs   300000  960x540  bound  46.6 ms  x bound  19.9  x cpu  19.0  scalar bound 294.9 ms  x scalar  3.1

So 3DGS is 15.1-36.4x from the dgemm bound and 2.4-5.8x from the scalar one; 2DGS 19.9-40.5x and 3.1-6.4x. An
earlier run of the same code (12:38 UTC, best dgemm 207.6) gave 15.6-42.1x and 20.3-42.3x.

3DGS on the lanes kernels, the same machine an hour later (13:49 UTC, ``--kinds 3dgs --compositing lanes``; best
dgemm 203.2, scalar 32.9): gfbench 28-208x faster than the reference wherever it ran (at 100k on 960x540 too this
time: 33.7 s against 0.163 s), memory 21-458 MB, render-only 35-46% of forward + backward, and against the bounds:

    3dgs    20000  256x160  bound   0.5 ms  x bound  34.6  x cpu  25.5  scalar bound   3.2 ms  x scalar  5.6
    3dgs    20000  512x320  bound   1.3 ms  x bound  18.2  x cpu  14.9  scalar bound   8.3 ms  x scalar  3.0
    3dgs    20000  960x540  bound   4.0 ms  x bound  15.0  x cpu  13.0  scalar bound  24.6 ms  x scalar  2.4
    3dgs   100000  256x160  bound   2.2 ms  x bound  25.4  x cpu  22.6  scalar bound  13.6 ms  x scalar  4.1
    3dgs   100000  512x320  bound   6.1 ms  x bound  14.3  x cpu  13.0  scalar bound  37.7 ms  x scalar  2.3
    3dgs   100000  960x540  bound  17.5 ms  x bound   9.3  x cpu   8.6  scalar bound 108.0 ms  x scalar  1.5
    3dgs   300000  256x160  bound   3.1 ms  x bound  34.3  x cpu  29.2  scalar bound  19.1 ms  x scalar  5.6
    3dgs   300000  512x320  bound   7.7 ms  x bound  18.9  x cpu  16.6  scalar bound  47.5 ms  x scalar  3.1
    3dgs   300000  960x540  bound  19.9 ms  x bound  11.7  x cpu  10.3  scalar bound 122.8 ms  x scalar  1.9

9.3-34.6x from the dgemm bound (spans: 15.1-36.4x): a forward + backward 1.2-1.6x faster wherever the image
has many pixels per Gaussian (100k on 960x540: 259 -> 163 ms), about the same at 256x160, where the per-Gaussian
stages dominate. That run predates the kernels' check that the row recurrence is exact for each Gaussian and tile
(``bench_row_lanes.py``: about 10% of the compositing at 256x160 as first written, less as vector code). With it
(14:13 UTC) the VM was busy (dgemm probes 103-166 Gflop/s, scalar 24.7-29.9): 10.1-40.8x from the dgemm bound in
wall time, 9.3-29.0x in CPU seconds (``x cpu``, which the load moves less), against 8.6-29.2x in CPU seconds at
13:49.

Both kinds on the lanes kernels (17:12 UTC, ``auto``, after the 2DGS lanes kernels, the full-row prefetch and the
Estrin exp, before the 2DGS backward's per-surfel dL/dM; best dgemm 173.9, scalar 29.5): gfbench 28.7-183.7x faster than the reference wherever it ran (forward
+ backward, wall), memory 21-649 MB (the reference 0.7-13.0 GB), render-only 37-45% of forward + backward:

    3dgs    20000  256x160  bound   0.6 ms  x bound  28.7  x cpu  22.3  scalar bound   3.5 ms  x scalar  4.9
    3dgs    20000  512x320  bound   1.6 ms  x bound  19.0  x cpu  15.6  scalar bound   9.3 ms  x scalar  3.2
    3dgs    20000  960x540  bound   4.7 ms  x bound  13.4  x cpu  11.9  scalar bound  27.5 ms  x scalar  2.3
    3dgs   100000  256x160  bound   2.6 ms  x bound  24.7  x cpu  21.5  scalar bound  15.2 ms  x scalar  4.2
    3dgs   100000  512x320  bound   7.1 ms  x bound  14.2  x cpu  12.7  scalar bound  42.0 ms  x scalar  2.4
    3dgs   100000  960x540  bound  20.4 ms  x bound   8.8  x cpu   8.1  scalar bound 120.5 ms  x scalar  1.5
    3dgs   300000  256x160  bound   3.6 ms  x bound  33.4  x cpu  28.4  scalar bound  21.3 ms  x scalar  5.7
    3dgs   300000  512x320  bound   9.0 ms  x bound  18.3  x cpu  16.0  scalar bound  53.0 ms  x scalar  3.1
    3dgs   300000  960x540  bound  23.3 ms  x bound  11.4  x cpu  10.2  scalar bound 137.1 ms  x scalar  1.9
    2dgs    20000  256x160  bound   0.7 ms  x bound  40.5  x cpu  30.2  scalar bound   4.2 ms  x scalar  6.9
    2dgs    20000  512x320  bound   1.8 ms  x bound  32.4  x cpu  26.0  scalar bound  10.4 ms  x scalar  5.5
    2dgs    20000  960x540  bound   5.3 ms  x bound  23.0  x cpu  19.9  scalar bound  31.2 ms  x scalar  3.9
    2dgs   100000  256x160  bound   3.5 ms  x bound  25.5  x cpu  22.1  scalar bound  20.7 ms  x scalar  4.3
    2dgs   100000  512x320  bound   8.6 ms  x bound  18.0  x cpu  16.3  scalar bound  50.8 ms  x scalar  3.1
    2dgs   100000  960x540  bound  25.8 ms  x bound  12.7  x cpu  11.9  scalar bound 152.2 ms  x scalar  2.2
    2dgs   300000  256x160  bound   6.4 ms  x bound  30.5  x cpu  26.5  scalar bound  37.8 ms  x scalar  5.2
    2dgs   300000  512x320  bound  19.9 ms  x bound  18.6  x cpu  17.2  scalar bound 117.2 ms  x scalar  3.2
    2dgs   300000  960x540  bound  55.7 ms  x bound  12.2  x cpu  11.5  scalar bound 328.3 ms  x scalar  2.1

2DGS moved from 19.9-40.5x (spans, 12:49) to 12.2-40.5x, most where images are large (100k on 960x540: 20.2 ->
12.7x); 3DGS 8.8-33.4x. Still only one point (3DGS 100k on 960x540) is within 10x of the dgemm bound.

2DGS again with the final kernels (18:17 UTC, ``--kinds 2dgs``, after the backward's per-surfel dL/dM and the
near-parabola mend; best dgemm 172.9, scalar 29.7): 30.3-96.0x faster than the reference wherever it ran, memory
32-640 MB, render-only 42-46% of forward + backward:

    2dgs    20000  256x160  bound   0.7 ms  x bound  39.0  x cpu  29.0  scalar bound   4.2 ms  x scalar  6.7
    2dgs    20000  512x320  bound   1.8 ms  x bound  29.0  x cpu  23.4  scalar bound  10.3 ms  x scalar  5.0
    2dgs    20000  960x540  bound   5.3 ms  x bound  23.4  x cpu  19.4  scalar bound  31.0 ms  x scalar  4.0
    2dgs   100000  256x160  bound   3.5 ms  x bound  24.4  x cpu  20.8  scalar bound  20.6 ms  x scalar  4.2
    2dgs   100000  512x320  bound   8.7 ms  x bound  16.6  x cpu  14.8  scalar bound  50.5 ms  x scalar  2.9
    2dgs   100000  960x540  bound  26.0 ms  x bound  10.9  x cpu  10.1  scalar bound 151.3 ms  x scalar  1.9
    2dgs   300000  256x160  bound   6.5 ms  x bound  28.5  x cpu  24.4  scalar bound  37.6 ms  x scalar  4.9
    2dgs   300000  512x320  bound  20.0 ms  x bound  16.7  x cpu  15.3  scalar bound 116.5 ms  x scalar  2.9
    2dgs   300000  960x540  bound  56.0 ms  x bound  10.5  x cpu   9.8  scalar bound 326.4 ms  x scalar  1.8

10.5-39.0x in wall time, 9.8-29.0x in CPU seconds: the large images are at the 10x line, the small ones (few pixels
per surfel) 24-39x away, where the per-Gaussian stages and PyTorch's glue take most of the time.

With either compositing the points farthest from both bounds are the small images: few pixels per Gaussian, so the
per-Gaussian stages (projection, binning, gradient reduction, dtype conversions) and the autograd glue weigh most.
At 3DGS 300k on 256x160 (105-115 ms a call when profiled) the kernels take about 84 ms: compositing 37 (forward
15.5, backward 22), projection 23 (9 + 14), binning 9, reduction and scatter 11, row packing 2.5.

Single points move by up to +-20% between runs on a shared VM, and the same code lands at different distances on
different CPUs (the dgemm rate varies more between them than the scalar rate does). Earlier grids against the
dgemm bound: the same kernels on a Zen 5 VM (2026-12-02, dgemm 96.1 Gflop/s) 3DGS 9.3-22.9x and 2DGS 11.0-28.2x,
and on this kind of Intel VM at 02:20 UTC (161.2) 14.7-35.9x and 18.6-43.2x; earlier versions of the kernels
(before the binning's NumPy sort, and on the Zen 4 also before the row set-up's 8-slot block) on a Zen 4 VM
(2026-12-01, 102.6) 8.1-20.1x and 11.7-28.4x, and on an Intel Emerald Rapids VM (2026-12-01, 145.8) 22.2-49.8x
and 23.3-51.0x.

With ``--torch-threads 1`` (PyTorch on one thread, the kernels on two, as gfbench trains on the CPU) one
forward + backward took, in one process alternating both settings (medians of 12): 3DGS 5k at 256x144 (the
synthetic scenes' size) -16%, 20k at 256x160 -9%, 100k at 512x320 0%; 2DGS 5k -11%, 20k -3%, 20k at 960x540
+6%.

The reference's cost grows with the pairs it materializes (it needed 11 GB at 300k Gaussians, 512x320):
it is skipped where its time or memory, predicted from the points already run, would exceed
``--reference-limit`` seconds or ``--reference-memory`` GB. Each prediction scales an earlier point by the
larger of the Gaussian-count and pair-count ratios, and the smallest guess counts; that is optimistic (it
said 12-13 GB for 3DGS at 300k, 960x540, where the reference passed 24 GB and the OOM killer ended the
run), so the reference is also skipped where the line through the two earlier runs with as many Gaussians
(memory = fixed + per pair) passes 80% of the machine's memory.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from numba import njit

from gfbench.methods.core import lanes
from gfbench.methods.core import rasterize_cpu as rc
from gfbench.methods.core import rasterize_cpu_2dgs as rc2
from gfbench.methods.core.memory import retain_freed_memory
from gfbench.methods.core.rasterize import rasterize_2dgs, rasterize_3dgs

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SHIM = REPO.parent / "shared" / "perf" / "gsplat_reference_cpu.py"

# Work counted from cpu_kernels line by line (an FMA as 2, an add, multiply, divide, square root, compare or
# min as 1, exp as 20, the usual cost of its polynomial; D = 4 features), forward + backward, for each
# evaluated Gaussian-pixel pair, each Gaussian-row set up, each Gaussian-tile intersection and each
# (camera, Gaussian) projected:
#   3DGS pair: forward 10 + 2D (exp(-sigma) by the row recurrence: 2 multiplies), backward 42 + 4D
#        row: forward 78 (span: 16, two exps with their arguments: 48, the rest 14), backward the same
#   2DGS pair: forward 60 + 2 (D + 3) (ray-splat c, g3 with its division, low-pass, exp, compositing of
#        D + 3 channels, distortion 9), backward 129 (the forward's 45 again, distortion 17, channels
#        4 (D + 3), dL/dc 19, ...); row: forward 76 (planes 24, span 48), backward 130 (+ row gradients 54)
#   intersection: about 60 each way (opacity bound with its log, row range); projection: about 650 (3DGS)
#   and 500 (2DGS) forward + backward.
# Backward revisits at most the forward's pairs and rows (each pixel stops at its last contributor), so
# charging it the forward's counts slightly overstates the work.
FLOPS = {
    "3dgs": {"pair": 76, "row": 156, "isect": 120, "gaussian": 650},
    "2dgs": {"pair": 203, "row": 206, "isect": 120, "gaussian": 500},
}


# ----------------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------------


def machine_gflops(threads: int, size: int = 768, repeats: int = 10) -> tuple[float, float]:
    """Float64 throughput in Gflop/s from the best of ``repeats`` size^3 dgemms on ``threads`` threads: per
    wall second (what ``threads`` cores give when the machine is ours) and per CPU second of the process
    (what one core gives while it runs us, whatever else shares the machine)."""
    torch.set_num_threads(threads)
    a = torch.rand(size, size, dtype=torch.float64)
    b = torch.rand(size, size, dtype=torch.float64)
    wall = cpu = 0.0
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        wall = max(wall, 2 * size**3 / (time.perf_counter() - start) / 1e9)
        cpu = max(cpu, 2 * size**3 / max(time.process_time() - start_cpu, 1e-9) / 1e9)
    return wall, cpu


SCALAR_CHAINS = 12  # independent FMA chains: enough to keep two FMA pipes busy at a latency of up to 6 cycles
SCALAR_PROBE_STEPS = 5_000_000


@njit(nogil=True, fastmath={"contract"})
def scalar_fma_chains(steps, out, worker, n_workers):
    """``steps`` rounds of SCALAR_CHAINS independent scalar float64 multiply-adds (one ``vfmadd...sd`` each: numba
    leaves straight-line code unvectorized, as its SLP vectorizer is off by default, and each chain is a
    recurrence the loop vectorizer cannot widen). The sum goes to ``out[worker]`` so that nothing is dropped."""
    m, c = 0.9999999, 1e-9
    a0, a1, a2, a3, a4, a5 = 1.0 + worker, 1.1, 1.2, 1.3, 1.4, 1.5
    a6, a7, a8, a9, a10, a11 = 1.6, 1.7, 1.8, 1.9, 2.0, 2.1
    for _ in range(steps):
        a0, a1, a2, a3 = a0 * m + c, a1 * m + c, a2 * m + c, a3 * m + c
        a4, a5, a6, a7 = a4 * m + c, a5 * m + c, a6 * m + c, a7 * m + c
        a8, a9, a10, a11 = a8 * m + c, a9 * m + c, a10 * m + c, a11 * m + c
    out[worker] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11


def machine_scalar_gflops(threads: int, repeats: int = 5) -> float:
    """Scalar float64 throughput in Gflop/s per wall second on ``threads`` threads, from the best of ``repeats``
    runs of :func:`scalar_fma_chains` on the rasterizer's own worker threads: the rate of code that issues one
    FMA per value, as the compositing kernels' pixel loops do."""
    out = np.zeros(threads)
    scalar_fma_chains(1, out, 0, 1)  # compile
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        rc.run_workers(scalar_fma_chains, SCALAR_PROBE_STEPS, out, n_workers=threads)
        best = max(best, 2 * SCALAR_CHAINS * SCALAR_PROBE_STEPS * threads / (time.perf_counter() - start) / 1e9)
    return best


def cpu_description() -> str:
    """The CPU as LLVM (numba's compiler, which targets it) sees it, and its widest float64 vectors (4 lanes
    with AVX2, 8 with AVX-512)."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    lanes = 8 if features.get("avx512f") else 4 if features.get("avx2") else 2
    return f"{llvm.get_host_cpu_name()}, {lanes} float64 lanes per vector"


def _status_mb_of(path: Path, key: str) -> float:
    for line in path.read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def _status_mb(key: str) -> float:
    return _status_mb_of(Path("/proc/self/status"), key)


def reset_peak_rss() -> float:
    """Hand freed heap back to the OS, reset the RSS high-water mark to the current RSS (Linux) and return
    that RSS in MB, so that the next peak measures what the next piece of work adds."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


# ----------------------------------------------------------------------------------------------------
# Scene and the two sides
# ----------------------------------------------------------------------------------------------------


def make_scene(n: int, width: int, height: int, seed: int = 0, unit_third_scale: bool = False):
    """n Gaussians filling a 60-degree view at depths 2..8; at 256 px wide they are 0.1-5 px (1 sigma)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    f = 220.0 * width / 256
    z = 2.0 + 6.0 * rand(n)
    x = (rand(n) - 0.5) * width / f * z * 1.1
    y = (rand(n) - 0.5) * height / f * z * 1.1
    params = {
        "means": torch.stack([x, y, z], dim=-1),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.exp(math.log(0.004) + rand(n, 3) * math.log(12.0)),
        "opacities": 0.1 + 0.85 * rand(n),
        "colors": rand(n, 3),
    }
    if unit_third_scale:
        params["scales"][:, 2] = 1.0
    params = {k: v.requires_grad_() for k, v in params.items()}
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])[None]
    return params, viewmats, Ks


def load_reference(shim: Path):
    if not shim.is_file():
        raise SystemExit(f"--reference-shim: {shim} does not exist (gsplat_reference_cpu.py from shared/perf)")
    spec = importlib.util.spec_from_file_location("gsplat_reference_cpu", shim)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    ref.install()
    from gsplat.rendering import _rasterization

    def reference_3dgs(p, viewmats, Ks, W, H):
        colors, alphas, _ = _rasterization(*p.values(), viewmats, Ks, W, H, render_mode="RGB+ED")
        return colors[0, ..., :3], alphas[0]

    def reference_2dgs(p, viewmats, Ks, W, H):
        colors, alphas, normals, _ = ref.rasterization_2dgs_torch(
            *p.values(), viewmats, Ks, W, H, render_mode="RGB+ED"
        )
        return colors[0, ..., :3], alphas[0], normals[0]

    return {"3dgs": reference_3dgs, "2dgs": reference_2dgs}


def gfbench_3dgs(p, viewmats, Ks, W, H):
    colors, alphas, _ = rasterize_3dgs(*p.values(), viewmats, Ks, W, H, render_mode="RGB+ED")
    return colors[0, ..., :3], alphas[0]


def gfbench_2dgs(p, viewmats, Ks, W, H):
    colors, alphas, normals, *_ = rasterize_2dgs(*p.values(), viewmats, Ks, W, H, render_mode="RGB+ED")
    return colors[0, ..., :3], alphas[0], normals[0]  # identity view: world normals are camera normals


GFBENCH = {"3dgs": gfbench_3dgs, "2dgs": gfbench_2dgs}


CULLING = dict(near_plane=0.01, far_plane=1e10, radius_clip=0.0)  # the renderers' defaults (gsplat's)
EPS2D = 0.3  # the 3DGS renderer's default low-pass (gsplat's)


def projected_3dgs(p, viewmats, Ks, W, H):
    """The 3DGS projection, its tile lists and the RGB + depth features, as the renderer makes them (no grad)."""
    with torch.no_grad():
        proj = rc.project_3d(p["means"], p["quats"], p["scales"], p["opacities"], viewmats, Ks, W, H, eps2d=EPS2D,
                             **CULLING)
        features = torch.cat([p["colors"][None], proj.depths[..., None]], -1)
    return proj, rc.bin_tiles(proj, W, H), features


def work_counts(kind: str, p, viewmats, Ks, W, H) -> dict[str, int]:
    """Gaussian-pixel pairs and Gaussian-rows the forward evaluates and Gaussian-tile intersections,
    through the same pieces as the renderer (with the spans compositing, which counts them: the bound is the
    scalar algorithm's work whichever compositing is timed)."""
    with torch.no_grad(), lanes.using("spans"):
        opac = p["opacities"][None]
        if kind == "3dgs":
            proj, bins, feats = projected_3dgs(p, viewmats, Ks, W, H)
            rc.RasterizeTiles3D.apply(proj.means2d, proj.conics, opac, feats, bins, W, H, proj.host, False)
        else:
            proj = rc2.project_2d(p["means"], p["quats"], p["scales"], viewmats, Ks, W, H, **CULLING)
            bins = rc.bin_tiles(proj, W, H)
            feats = torch.cat([p["colors"][None], proj.depths[..., None]], -1)
            densify = torch.zeros(proj.means2d.shape)
            rc2.RasterizeTiles2D.apply(proj.means2d, proj.ray_transforms, opac, feats, proj.normals, densify, bins,
                                       W, H, proj.host, False)
    return {"pair": bins.pairs_evaluated, "row": bins.rows_evaluated, "isect": bins.n_isects,
            "gaussian": p["means"].shape[0]}


_LOSS_WEIGHTS: dict[tuple, torch.Tensor] = {}  # (output index, shape) -> its fixed random weights


def random_loss(outputs) -> torch.Tensor:
    """A fixed random linear loss of the outputs. The weights are drawn once per output shape, outside the
    timings: drawing them each call cost about 1 ms at 256x160 and 13 ms at 960x540, charged to whichever
    side was being timed."""
    loss = 0
    for index, output in enumerate(outputs):
        key = (index, tuple(output.shape))
        if key not in _LOSS_WEIGHTS:
            _LOSS_WEIGHTS[key] = torch.rand(output.shape, generator=torch.Generator().manual_seed(1 + index))
        loss = loss + (_LOSS_WEIGHTS[key] * output).sum()
    return loss


def time_side(render, p, viewmats, Ks, W, H, repeats: int):
    """Best forward+backward wall seconds and process CPU seconds (each the best of ``repeats``), best
    no-grad wall seconds, peak added RSS (MB) and the last outputs. The rasterizer's scratch pool is emptied
    first, so that buffers kept from an earlier (larger) point do not hide what this one needs."""
    rc.SCRATCH.clear()
    rss_before = reset_peak_rss()
    both, cpu, fwd = [], [], []
    for _ in range(repeats):
        for t in p.values():
            t.grad = None
        start, start_cpu = time.perf_counter(), time.process_time()
        outputs = render(p, viewmats, Ks, W, H)
        random_loss(outputs).backward()
        both.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    rss = peak_rss_mb() - rss_before
    for _ in range(repeats if render in GFBENCH.values() else 0):
        with torch.no_grad():
            start = time.perf_counter()
            render(p, viewmats, Ks, W, H)
            fwd.append(time.perf_counter() - start)
    return min(both), min(cpu), (min(fwd) if fwd else float("nan")), rss, [o.detach() for o in outputs]


def first_call_seconds() -> float:
    """One tiny forward+backward of each kind: the JIT compile on a fresh machine, else the cache load."""
    start = time.perf_counter()
    for kind in ("3dgs", "2dgs"):
        p, viewmats, Ks = make_scene(50, 64, 48, unit_third_scale=kind == "2dgs")
        random_loss(GFBENCH[kind](p, viewmats, Ks, 64, 48)).backward()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=["3dgs", "2dgs"], default=["3dgs", "2dgs"],
                        help="which rasterizers to compare")
    parser.add_argument("--gaussians", nargs="+", type=int, default=[20_000, 100_000, 300_000],
                        help="Gaussian counts of the grid")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 160), (512, 320), (960, 540)],
                        help="image sizes of the grid, WIDTHxHEIGHT")
    parser.add_argument("--threads", type=int, default=2, help="torch and numba threads for both sides")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch's threads while gfbench's side runs, its kernels keeping --threads (gfbench "
                             "trains on the CPU with 1: rasterize_cpu.split_threads); default: --threads")
    parser.add_argument("--repeats", type=int, default=3, help="gfbench timings are the best of this many")
    parser.add_argument("--reference-limit", type=float, default=900.0,
                        help="skip the reference where its predicted forward+backward time exceeds this (s)")
    parser.add_argument("--reference-memory", type=float, default=12.0,
                        help="skip the reference where its predicted peak memory exceeds this (GB)")
    parser.add_argument("--compositing", choices=lanes.CHOICES, default="auto",
                        help="gfbench's compositing, 3DGS and 2DGS ($GFBENCH_CPU_COMPOSITING: auto takes lanes where "
                             "they can run)")
    parser.add_argument("--reference-shim", type=Path, default=DEFAULT_SHIM,
                        help="path to gsplat_reference_cpu.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retained = retain_freed_memory()  # as the gfbench command runs (GFBENCH_RETAIN_FREED_MEMORY=0: without)
    os.environ[lanes.ENV] = args.compositing
    lanes.require(args.compositing)
    references = load_reference(args.reference_shim)

    first = first_call_seconds()
    gflops = machine_gflops(args.threads)
    scalar = machine_scalar_gflops(args.threads)
    split = "" if args.torch_threads is None else f" (gfbench: PyTorch on {args.torch_threads}, kernels on {args.threads})"
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_description()}; {args.threads} threads{split}; "
          f"gfbench first call (JIT compile, or load from numba's cache) {first:.1f} s; "
          f"freed memory {'retained' if retained else 'returned to the OS'}; compositing {lanes.active()}; "
          f"machine float64 throughput (dgemm) "
          f"{gflops[0]:.1f} Gflop/s per wall second on {args.threads} threads, {gflops[1]:.1f} per CPU second; "
          f"scalar FMA throughput {scalar:.1f} Gflop/s")
    header = (f"{'kind':5s} {'N':>7s} {'size':>8s} | {'ref f+b':>8s} {'gfb f+b':>8s} {'ratio':>7s} | "
              f"{'ref cpu':>8s} {'gfb cpu':>8s} {'ratio':>7s} | {'gfb fwd':>8s} | {'ref mem':>8s} {'gfb mem':>8s} | "
              f"{'max|dRGB|':>9s} {'max|dA|':>8s} {'max|dN|':>8s} | {'isects':>8s} {'rows':>8s} {'pairs':>9s} "
              f"{'bound':>7s} {'x bound':>7s} {'x cpu':>6s}")
    print(header)
    print("-" * len(header))
    reference_runs: dict[str, list] = {kind: [] for kind in args.kinds}  # (N, pairs, seconds, MB)
    points = []  # (kind, N, W, H, flops, gfbench f+b seconds, gfbench CPU seconds)
    peak = gflops
    for kind in args.kinds:
        for n in args.gaussians:
            for W, H in args.sizes:
                peak = tuple(map(max, peak, machine_gflops(args.threads)))
                scalar = max(scalar, machine_scalar_gflops(args.threads))
                points.append(run_point(kind, n, W, H, args, references[kind], peak, reference_runs[kind]))
    peak = tuple(map(max, peak, machine_gflops(args.threads)))
    scalar = max(scalar, machine_scalar_gflops(args.threads))
    print_against_peak(points, peak, scalar, args.threads)


def print_against_peak(points, peak: tuple[float, float], scalar: float, threads: int) -> None:
    """The bound of every point again, at the best dgemm rates seen in the whole run (probed before each
    point and after the last): on a shared machine one probe can catch the cores busy and halve the rate,
    which would flatter the points measured against it. ``x scalar`` is the same time against the run's best
    scalar FMA rate (:func:`machine_scalar_gflops`) instead of the dgemm's."""
    print(f"peak float64 throughput (dgemm) over the run: {peak[0]:.1f} Gflop/s per wall second on {threads} "
          f"threads, {peak[1]:.1f} per CPU second; scalar FMA throughput {scalar:.1f} Gflop/s; against them:")
    for kind, n, W, H, flops, seconds, cpu_seconds in points:
        bound, x_bound, x_cpu = against_bound(flops, seconds, cpu_seconds, peak)
        scalar_bound = flops / (scalar * 1e9)
        print(f"{kind:5s} {n:7d} {W:4d}x{H:<3d}  bound {bound * 1e3:5.1f} ms  x bound {x_bound:5.1f}  "
              f"x cpu {x_cpu:5.1f}  scalar bound {scalar_bound * 1e3:5.1f} ms  x scalar {seconds / scalar_bound:4.1f}")


def against_bound(flops: float, seconds: float, cpu_seconds: float, rates: tuple[float, float]):
    """(bound in seconds, x bound, x cpu) of ``flops`` done in ``seconds`` (``cpu_seconds``) against dgemm
    ``rates`` (Gflop/s per wall second, per CPU second): x cpu is the CPU seconds over those the flops need
    at the dgemm's rate per CPU second."""
    bound = flops / (rates[0] * 1e9)
    return bound, seconds / bound, cpu_seconds * rates[1] * 1e9 / flops


def predict_reference(runs, n: int, pairs: int) -> tuple[float, float]:
    """(seconds, MB) of the reference at (n, pairs), from earlier runs; 0 when there are none."""
    guesses = [(s * max(n / n0, pairs / p0), mb * max(n / n0, pairs / p0)) for n0, p0, s, mb in runs]
    return (min(g[0] for g in guesses), min(g[1] for g in guesses)) if guesses else (0.0, 0.0)


def reference_memory_line(runs, n: int, pairs: int) -> float:
    """The reference's MB at (n, pairs) on the line through the two earlier runs with the same number of
    Gaussians and the most pairs (0 without two): memory = fixed + per pair. At 3DGS 300k, 960x540 the
    scaled guesses of :func:`predict_reference` said 12-13 GB, where the reference passed 24 GB and was killed
    by the kernel's OOM killer; this line says 24 GB."""
    same_n = sorted((run for run in runs if run[0] == n), key=lambda run: run[1])[-2:]
    if len(same_n) < 2 or same_n[1][1] == same_n[0][1]:
        return 0.0
    (_, p0, _, mb0), (_, p1, _, mb1) = same_n
    per_pair = (mb1 - mb0) / (p1 - p0)
    return mb1 + per_pair * (pairs - p1)


MACHINE_MEMORY_SHARE = 0.8  # of the machine's memory the reference may be predicted to need (the rest: us, the OS)


def machine_memory_mb() -> float:
    return _status_mb_of(Path("/proc/meminfo"), "MemTotal")


def gfbench_threads(args):
    """PyTorch's threads while gfbench's side runs (``--torch-threads``; its kernels keep ``--threads``)."""
    if args.torch_threads is None:
        return contextlib.nullcontext()
    return rc.split_threads(args.torch_threads)


def run_point(kind, n, W, H, args, reference, gflops, reference_runs) -> tuple:
    p, viewmats, Ks = make_scene(n, W, H, unit_third_scale=kind == "2dgs")
    render = GFBENCH[kind]
    random_loss(render(p, viewmats, Ks, W, H))  # warm-up; draws the loss weights
    with gfbench_threads(args):
        g_both, g_cpu, g_fwd, g_rss, g_out = time_side(render, p, viewmats, Ks, W, H, args.repeats)
    work = work_counts(kind, p, viewmats, Ks, W, H)
    pairs = work["pair"]
    flops = sum(work[k] * FLOPS[kind][k] for k in work)
    bound, x_bound, x_cpu = against_bound(flops, g_both, g_cpu, gflops)

    seconds, megabytes = predict_reference(reference_runs, n, pairs)
    line = reference_memory_line(reference_runs, n, pairs)
    beyond_machine = line > MACHINE_MEMORY_SHARE * machine_memory_mb()
    megabytes = max(megabytes, line)
    if seconds > args.reference_limit or megabytes > 1024 * args.reference_memory or beyond_machine:
        ref_text, ratio_text, diffs = f"~{seconds:6.0f}s", f"{'skip':>7s}", ["", "", ""]
        ref_cpu_text, cpu_ratio_text = f"{'':>8s}", f"{'':>7s}"
        rss_text = f"~{megabytes / 1024:5.0f}GB"
    else:
        r_both, r_cpu, _, r_rss, r_out = time_side(reference, p, viewmats, Ks, W, H, 1)
        reference_runs.append((n, max(pairs, 1), r_both, r_rss))
        ref_text, ratio_text, rss_text = f"{r_both:7.2f}s", f"{r_both / g_both:6.1f}x", f"{r_rss:6.0f}MB"
        ref_cpu_text, cpu_ratio_text = f"{r_cpu:7.2f}s", f"{r_cpu / g_cpu:6.1f}x"
        diffs = [f"{(a - b).abs().max().item():.1e}" for a, b in zip(g_out, r_out)] + [""]
    print(f"{kind:5s} {n:7d} {W:4d}x{H:<3d} | {ref_text} {g_both:7.3f}s {ratio_text} | {ref_cpu_text} {g_cpu:7.3f}s "
          f"{cpu_ratio_text} | {g_fwd:7.3f}s | {rss_text} {g_rss:6.0f}MB | {diffs[0]:>9s} {diffs[1]:>8s} {diffs[2]:>8s} | "
          f"{work['isect']:8d} {work['row']:8d} {pairs:9d} {bound * 1e3:5.0f}ms {x_bound:6.1f}x "
          f"{x_cpu:5.1f}x", flush=True)
    return kind, n, W, H, flops, g_both, g_cpu


if __name__ == "__main__":
    main()
