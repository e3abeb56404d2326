"""The k nearest neighbours of Gaussian centres, exact, on any device without CUDA-only kernels.

FSGS finds neighbours with a modified ``simple-knn`` CUDA kernel (``distCUDA2`` returning indices). Here CPU
tensors go through scipy's ``cKDTree`` (already a dependency through scikit-image, and used for the 3DGS
initial scales), which holds hundreds of thousands of points in well under a second; tensors on other devices
(CUDA) use blocked ``torch.cdist`` + ``topk``, which is quadratic but runs on the accelerator.
``tests/perf/bench_fsgs_knn.py`` measures both.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

# blocked cdist: at most this many distances ([rows, N] float32) in memory at once (256 MiB)
CDIST_BLOCK_ENTRIES = 1 << 26


def nearest_neighbors(points: Tensor, k: int, *, method: str = "auto") -> tuple[Tensor, Tensor]:
    """For each of the N ``points`` [N, 3], its ``k`` nearest *other* points.

    Returns ``(distances [N, k'], indices [N, k'])`` on the points' device, nearest first, with
    ``k' = min(k, N - 1)`` (no neighbours for a single point); distances are Euclidean (not squared).
    ``method``: "kdtree" (scipy, CPU), "cdist" (blocked ``torch.cdist``, any device) or "auto" (kdtree for
    CPU tensors, cdist otherwise). A point never counts as its own neighbour, even when others coincide with it.
    """
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"nearest_neighbors expects points of shape [N, 3], got {list(points.shape)}")
    if k < 1:
        raise ValueError(f"nearest_neighbors needs k >= 1, got {k}")
    count = points.shape[0]
    k = min(k, count - 1)
    if k < 1:
        empty = torch.zeros((count, 0), device=points.device)
        return empty, empty.long()
    if method == "auto":
        method = "kdtree" if points.device.type == "cpu" else "cdist"
    if method == "kdtree":
        return _kdtree_neighbors(points, k)
    if method == "cdist":
        return _cdist_neighbors(points, k)
    raise ValueError(f"unknown nearest-neighbour method {method!r}; use 'auto', 'kdtree' or 'cdist'")


def _kdtree_neighbors(points: Tensor, k: int) -> tuple[Tensor, Tensor]:
    xyz = points.detach().cpu().double().numpy()
    # an unbalanced tree builds ~3x faster and queries as fast on Gaussian centres (tests/perf/bench_fsgs_knn.py)
    tree = cKDTree(xyz, balanced_tree=False, compact_nodes=False)
    _, found = tree.query(xyz, k=k + 1)
    indices = _drop_self(np.asarray(found, np.int64).reshape(len(xyz), k + 1), k)
    indices = torch.from_numpy(indices).to(points.device)
    return _exact_distances(points, indices), indices


def _drop_self(found: np.ndarray, k: int) -> np.ndarray:
    """The k neighbours of each row once the row's own index is removed: where coincident points hid it from
    the k + 1 found, the farthest found is dropped instead."""
    keep = found != np.arange(len(found))[:, None]
    self_missing = keep.all(axis=1)
    keep[self_missing, -1] = False
    return found[keep].reshape(len(found), k)


def _cdist_neighbors(points: Tensor, k: int) -> tuple[Tensor, Tensor]:
    xyz = points.detach().float()
    count = xyz.shape[0]
    rows = max(1, CDIST_BLOCK_ENTRIES // count)
    chunks = []
    for start in range(0, count, rows):
        block = xyz[start : start + rows]
        dist = torch.cdist(block, xyz)
        own = torch.arange(start, start + len(block), device=xyz.device)
        dist[torch.arange(len(block), device=xyz.device), own] = float("inf")
        chunks.append(dist.topk(k, dim=1, largest=False).indices)
    indices = torch.cat(chunks)
    # cdist's matrix-product form loses precision for close points: rank with it, then report (and order by)
    # exact distances
    distances, order = _exact_distances(points, indices).sort(dim=1)
    return distances, indices.gather(1, order)


def _exact_distances(points: Tensor, indices: Tensor) -> Tensor:
    xyz = points.detach()
    return (xyz[indices] - xyz[:, None, :]).norm(dim=-1)
