"""The two CPU compositings side by side: the numba ``spans`` kernels against the C ``lanes`` kernels, 3DGS and 2DGS,
forward and backward, on one thread, on the inputs the renderer gives them.

``$GFBENCH_CPU_COMPOSITING`` chooses between them (``methods/core/lanes.py``); this measures what the choice is worth.
Each point takes ``bench_rasterizer.py``'s random scene (Gaussians filling a 60-degree view), projects and bins it as
the renderer does, then times the compositing kernels alone, interleaved (spans, lanes, spans, ...), the median of
``--repeats``. The backward of both runs from the spans forward's state and the same random output gradients. ``max|d|``
is the largest difference between the two forwards' outputs (colours, depth, alpha; 2DGS: normals, distortion and median
depth too), ``index d`` the number of pixels whose last (2DGS: or median) Gaussian differs, ``rel d`` the largest
difference between the backward rows relative to their column's largest magnitude. Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python tests/perf/bench_compositing.py [--kinds 3dgs 2dgs] [--repeats 5] \
        [--points 20000,256,160 ...]

Results
-------
2026-12-02 18:08 UTC, a 2-core Intel VM with AVX-512 (LLVM: rocketlake), the command above with ``--repeats 5``:

    kind        N     size | spans fwd lanes fwd     x | spans bwd lanes bwd     x |  max|d|   rel d index d
    3dgs    20000  256x160 |     8.1ms     6.6ms 1.24x |    10.9ms     7.6ms 1.43x | 1.8e-14 1.5e-14       0
    3dgs   300000  256x160 |    35.5ms    21.9ms 1.62x |    48.0ms    31.0ms 1.55x | 3.5e-15 1.6e-14       0
    3dgs   100000  512x320 |    82.2ms    51.0ms 1.61x |   105.3ms    60.7ms 1.74x | 6.2e-15 2.5e-14       0
    3dgs    20000  960x540 |    44.0ms    31.7ms 1.39x |    60.2ms    32.1ms 1.87x | 3.3e-14 3.2e-14       0
    3dgs   100000  960x540 |   196.1ms   106.1ms 1.85x |   262.1ms   127.7ms 2.05x | 6.2e-15 2.7e-14       0
    2dgs    20000  256x160 |    10.3ms     8.2ms 1.26x |    15.2ms    11.7ms 1.30x | 2.2e-15 9.0e-14       0
    2dgs   300000  256x160 |    89.0ms    68.7ms 1.30x |   135.0ms   103.5ms 1.30x | 2.2e-15 6.8e-14       0
    2dgs   100000  512x320 |   113.5ms    72.9ms 1.56x |   178.0ms   106.7ms 1.67x | 2.7e-15 3.8e-14       0
    2dgs    20000  960x540 |    77.1ms    47.6ms 1.62x |   122.1ms    59.1ms 2.07x | 2.7e-15 6.4e-14       0
    2dgs   100000  960x540 |   307.8ms   166.8ms 1.84x |   500.4ms   232.5ms 2.15x | 3.1e-15 5.9e-14       0

The lanes kernels win everywhere, most where Gaussians cover many pixels; the last and median indices agree at
every pixel. Three changes made that so at the small-surfel point (2DGS 300k on 256x160, where the first 2DGS lanes
kernels were 0.85x forward, 0.90x backward): every cache line of a Gaussian's row is prefetched (the kernels had
fetched only the first of the 2DGS row's 152 bytes, and ``perf`` put 57% of the surfel set-up on the miss that
followed), exp's polynomial by Estrin's scheme rather than Horner's, and the 2DGS backward's dL/dM from per-lane sums
over all of a surfel's pixels, once per surfel, instead of reductions per row (1.11-1.24x on the backward alone).
The first two took the 3DGS kernels from 1.05-1.56x / 1.18-1.75x (14:30 UTC) to the numbers above as well.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_rasterizer as B  # noqa: E402  (its scene and culling: the grid's inputs)

from gfbench.methods.core import cpu_kernels as K  # noqa: E402
from gfbench.methods.core import lanes  # noqa: E402
from gfbench.methods.core import rasterize_cpu as rc  # noqa: E402
from gfbench.methods.core import rasterize_cpu_2dgs as rc2  # noqa: E402

POINTS = [(20_000, 256, 160), (300_000, 256, 160), (100_000, 512, 320), (20_000, 960, 540), (100_000, 960, 540)]


def one_thread(kernel, *args):
    kernel(*args, 0, 1)


def image(C, W, H, *trailing, dtype=np.float64):
    return np.empty((C, H, W, *trailing), dtype=dtype)


class Compositing3D:
    """The 3DGS kernels' inputs and calls (as rasterize_cpu.RasterizeTiles3D makes them)."""

    name = "3dgs"

    def __init__(self, n, W, H):
        p, viewmats, Ks = B.make_scene(n, W, H)
        proj, self.bins, feats = B.projected_3dgs(p, viewmats, Ks, W, H)
        self.params = rc.gaussian_rows(proj.host["means2d"], proj.host["conics"], p["opacities"][None].detach(),
                                       feats.detach())
        self.W, self.H, self.C = W, H, self.bins.n_cameras

    def outputs(self):
        return [image(self.C, self.W, self.H, 4), image(self.C, self.W, self.H), image(self.C, self.W, self.H,
                                                                                         dtype=np.int64)]

    def spans_forward(self, out):
        pairs = np.zeros((self.bins.n_tiles, 2), dtype=np.int64)
        b = self.bins
        one_thread(K.rasterize_3dgs_fwd, self.params, b.tile_offsets, b.flatten_ids, b.tile_width, b.tile_height,
                   False, *out, pairs)

    def lanes_forward(self, out):
        lanes.forward(self.params, self.bins, self.W, self.H, *out, one_thread)

    def output_grads(self, rng):
        return [rng.standard_normal((self.C, self.H, self.W, 4)), rng.standard_normal((self.C, self.H, self.W))]

    def spans_backward(self, state, grads, rows):
        b = self.bins
        one_thread(K.rasterize_3dgs_bwd, self.params, b.tile_offsets, b.flatten_ids, b.tile_width, b.tile_height,
                   False, state[1], state[2], *grads, rows)

    def lanes_backward(self, state, grads, rows):
        lanes.backward(self.params, self.bins, self.W, self.H, state[1], state[2], *grads, rows, one_thread)


class Compositing2D:
    """The 2DGS kernels' inputs and calls (as rasterize_cpu_2dgs.RasterizeTiles2D makes them)."""

    name = "2dgs"

    def __init__(self, n, W, H):
        p, viewmats, Ks = B.make_scene(n, W, H, unit_third_scale=True)
        with torch.no_grad():
            proj = rc2.project_2d(p["means"], p["quats"], p["scales"], viewmats, Ks, W, H, **B.CULLING)
            self.bins = rc.bin_tiles(proj, W, H)
            feats = torch.cat([p["colors"][None], proj.depths[..., None]], -1)
            self.params = rc.gaussian_rows(proj.host["means2d"], proj.host["ray_transforms"], p["opacities"][None],
                                           feats, proj.host["normals"])
        self.W, self.H, self.C = W, H, self.bins.n_cameras

    def outputs(self):
        C, W, H = self.C, self.W, self.H
        return [image(C, W, H, 4), image(C, W, H, 3), image(C, W, H), image(C, W, H), image(C, W, H),
                image(C, W, H, dtype=np.int64), image(C, W, H, dtype=np.int64)]

    def spans_forward(self, out):
        pairs = np.zeros((self.bins.n_tiles, 2), dtype=np.int64)
        b = self.bins
        one_thread(K.rasterize_2dgs_fwd, self.params, b.tile_offsets, b.flatten_ids, b.tile_width, b.tile_height,
                   False, *out, pairs)

    def lanes_forward(self, out):
        depth_total = np.empty(out[2].shape)  # the depth channel the backward reads (_state takes the spans' copy)
        lanes.forward_2dgs(self.params, self.bins, self.W, self.H, *out, depth_total, one_thread)

    def output_grads(self, rng):
        C, W, H = self.C, self.W, self.H
        return [rng.standard_normal((C, H, W, 4)), rng.standard_normal((C, H, W, 3))] + [
            rng.standard_normal((C, H, W)) for _ in range(3)]

    def _state(self, state):
        T, last, median_idx = state[2], state[5], state[6]
        return T, last, median_idx, np.ascontiguousarray(state[0][..., -1])

    def spans_backward(self, state, grads, rows):
        b = self.bins
        one_thread(K.rasterize_2dgs_bwd, self.params, b.tile_offsets, b.flatten_ids, b.tile_width, b.tile_height,
                   False, *self._state(state), *grads, rows)

    def lanes_backward(self, state, grads, rows):
        lanes.backward_2dgs(self.params, self.bins, self.W, self.H, *self._state(state), *grads, rows, one_thread)


def timed(call, *args) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def measure(kernels, repeats: int) -> dict:
    spans_out, lanes_out = kernels.outputs(), kernels.outputs()
    grads = kernels.output_grads(np.random.default_rng(0))
    rows = {side: np.empty((kernels.bins.n_isects, kernels.params.shape[1])) for side in ("spans", "lanes")}
    times = {key: [] for key in ("spans fwd", "lanes fwd", "spans bwd", "lanes bwd")}
    kernels.spans_forward(spans_out), kernels.lanes_forward(lanes_out)  # compile / load, outside the timings
    kernels.spans_backward(spans_out, grads, rows["spans"]), kernels.lanes_backward(spans_out, grads, rows["lanes"])
    for _ in range(repeats):
        times["spans fwd"].append(timed(kernels.spans_forward, spans_out))
        times["lanes fwd"].append(timed(kernels.lanes_forward, lanes_out))
        times["spans bwd"].append(timed(kernels.spans_backward, spans_out, grads, rows["spans"]))
        times["lanes bwd"].append(timed(kernels.lanes_backward, spans_out, grads, rows["lanes"]))
    floats = [(a, b) for a, b in zip(spans_out, lanes_out) if a.dtype == np.float64]
    indices = [(a, b) for a, b in zip(spans_out, lanes_out) if a.dtype == np.int64]
    scale = np.abs(rows["spans"]).max(axis=0)
    rel = np.abs(rows["lanes"] - rows["spans"]).max(axis=0) / np.where(scale > 0, scale, 1.0)
    return {**{key: statistics.median(value) for key, value in times.items()},
            "max|d|": max(float(np.abs(a - b).max()) for a, b in floats), "rel d": float(rel.max()),
            "index d": sum(int((a != b).sum()) for a, b in indices)}


def parse_point(text: str) -> tuple[int, int, int]:
    n, W, H = (int(v) for v in text.split(","))
    return n, W, H


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=["3dgs", "2dgs"], default=["3dgs", "2dgs"])
    parser.add_argument("--points", nargs="+", type=parse_point, default=POINTS, help="N,width,height")
    parser.add_argument("--repeats", type=int, default=5, help="timings are the median of this many")
    args = parser.parse_args()
    lanes.require("lanes")  # the comparison needs both; the error says why where the lanes cannot run
    print(f"one thread, medians of {args.repeats}; x = spans time / lanes time\n")
    print(f"{'kind':5s} {'N':>7s} {'size':>8s} | {'spans fwd':>9s} {'lanes fwd':>9s} {'x':>5s} | {'spans bwd':>9s} "
          f"{'lanes bwd':>9s} {'x':>5s} | {'max|d|':>7s} {'rel d':>7s} {'index d':>7s}")
    for kind in args.kinds:
        for n, W, H in args.points:
            kernels = (Compositing3D if kind == "3dgs" else Compositing2D)(n, W, H)
            m = measure(kernels, args.repeats)
            ms = {key: 1e3 * m[key] for key in ("spans fwd", "lanes fwd", "spans bwd", "lanes bwd")}
            print(f"{kind:5s} {n:7d} {f'{W}x{H}':>8s} | {ms['spans fwd']:7.1f}ms {ms['lanes fwd']:7.1f}ms "
                  f"{m['spans fwd'] / m['lanes fwd']:4.2f}x | {ms['spans bwd']:7.1f}ms {ms['lanes bwd']:7.1f}ms "
                  f"{m['spans bwd'] / m['lanes bwd']:4.2f}x | {m['max|d|']:7.1e} {m['rel d']:7.1e} {m['index d']:7d}",
                  flush=True)


if __name__ == "__main__":
    main()
