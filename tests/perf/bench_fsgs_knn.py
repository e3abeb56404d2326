"""Speed of FSGS's k nearest neighbours (K = 3) and of one whole unpooling plan, on the CPU.

Not a pytest module (pytest collects ``test_*.py`` only). Run:

    OMP_NUM_THREADS=2 .venv/bin/python tests/perf/bench_fsgs_knn.py [--sizes 100000 300000] [--cdist-max 100000]

Points: a noisy surface (a sphere shell with jitter, as Gaussians spread over a scene) plus uniform clutter.
Prints seconds per call (best of --repeat) for the scipy cKDTree path and, up to --cdist-max points, the
blocked torch.cdist path (quadratic: meant for CUDA tensors; timed on the CPU for comparison), and for a whole
``plan_unpooling`` (k-NN + selection + new attributes) on CPU parameters.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gfbench.methods.fsgs.knn import nearest_neighbors
from gfbench.methods.fsgs.unpooling import UnpoolSettings, plan_unpooling


def points(count: int, rng: np.random.Generator) -> np.ndarray:
    surface = rng.normal(size=(count - count // 10, 3))
    surface /= np.linalg.norm(surface, axis=1, keepdims=True)
    surface += 0.01 * rng.normal(size=surface.shape)
    clutter = rng.uniform(-3, 3, size=(count // 10, 3))
    return np.concatenate([surface, clutter]).astype(np.float32)


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def params_for(xyz: np.ndarray) -> torch.nn.ParameterDict:
    n = len(xyz)
    values = dict(means=torch.from_numpy(xyz), scales=torch.full((n, 3), -2.0), quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                  opacities=torch.zeros(n), sh0=torch.zeros(n, 1, 3), shN=torch.zeros(n, 15, 3))
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in values.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000], help="point counts to time")
    parser.add_argument("--cdist-max", type=int, default=100_000, help="largest count to time the blocked cdist path at")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (best is reported)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch threads: {torch.get_num_threads()}")
    for count in args.sizes:
        xyz = points(count, rng)
        tensor = torch.from_numpy(xyz)
        kdtree = best_time(lambda: nearest_neighbors(tensor, 3, method="kdtree"), args.repeat)
        line = f"N={count:>8,}  kdtree {kdtree:7.3f} s"
        if count <= args.cdist_max:
            cdist = best_time(lambda: nearest_neighbors(tensor, 3, method="cdist"), 1)
            line += f"  cdist {cdist:7.2f} s"
        params = params_for(xyz)
        plan = best_time(lambda: plan_unpooling(params, 1.0, UnpoolSettings(proximity_threshold=0.05, min_scale=None)),
                         args.repeat)
        line += f"  plan_unpooling {plan:7.3f} s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
