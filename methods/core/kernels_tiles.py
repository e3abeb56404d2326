"""Compiled (numba) tile binning and per-Gaussian gradient reduction shared by the CPU rasterizers.

Every kernel here and in :mod:`.kernels_projection`, :mod:`.kernels_3dgs` and :mod:`.kernels_2dgs` works
on float64 NumPy arrays whatever the caller's dtype: one compiled specialisation per kernel (so the
one-off JIT compile, cached on disk by ``cache=True``, is paid once), scalar float64 arithmetic costs
the same as float32 on a CPU, and the float64 tolerance tests measure the algorithm rather than
rounding. Kernels are parallel over tiles (rasterization) or Gaussians (projection, reductions) with
``numba.prange``; :func:`use_torch_threads` makes them use as many threads as PyTorch does.

Binning mirrors gsplat 1.5.3's ``isect_tiles`` + ``isect_offset_encode`` with ``packed=False``: every
visible Gaussian is listed in each 16x16 tile its bounding box [mean - radius, mean + radius] touches,
and each tile's list is sorted front to back (by depth, ties by Gaussian index, as gsplat's stable radix
sort of (camera, tile, depth) keys gives).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

TILE_SIZE = 16
TILE_PIXELS = TILE_SIZE * TILE_SIZE
ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's: fainter contributions are skipped
MAX_ALPHA = 0.999  # gsplat clamps per-Gaussian alpha here (its CUDA kernels use 0.999, not 0.99)
MIN_TRANSMITTANCE = 1e-4  # a pixel is done before a Gaussian that would take T to <= this

# LLVM may fuse multiply-adds and turn divisions by the same value into reciprocal multiplies; no
# assumptions about NaN/inf (fastmath's "nnan"/"ninf"), which would change gsplat's skip rules.
FASTMATH = {"contract", "arcp", "nsz"}


def use_torch_threads() -> None:
    """Run the next kernels on as many threads as PyTorch uses (capped at numba's pool size)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def as_f64(x: torch.Tensor) -> np.ndarray:
    """A contiguous float64 NumPy view/copy of a tensor, detached from autograd."""
    return np.ascontiguousarray(x.detach().to(torch.float64).numpy())


# ----------------------------------------------------------------------------------------------------
# Binning
# ----------------------------------------------------------------------------------------------------


@njit(cache=True, fastmath=FASTMATH)
def _tile_rect(mx, my, rx, ry, tile_w, tile_h):
    """Tiles [x0, x1) x [y0, y1) that the box [m - r, m + r] overlaps (gsplat's rounding and clamping)."""
    x0 = min(max(math.floor((mx - rx) / TILE_SIZE), 0), tile_w)
    x1 = min(max(math.ceil((mx + rx) / TILE_SIZE), 0), tile_w)
    y0 = min(max(math.floor((my - ry) / TILE_SIZE), 0), tile_h)
    y1 = min(max(math.ceil((my + ry) / TILE_SIZE), 0), tile_h)
    return int(x0), int(x1), int(y0), int(y1)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _tiles_per_gaussian(means2d, radii, tile_w, tile_h):
    """[C * N] number of tiles each (camera, Gaussian) touches; 0 where culled."""
    n = means2d.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        if radii[i, 0] > 0 and radii[i, 1] > 0:
            x0, x1, y0, y1 = _tile_rect(means2d[i, 0], means2d[i, 1], radii[i, 0], radii[i, 1], tile_w, tile_h)
            counts[i] = (x1 - x0) * (y1 - y0)
    return counts


@njit(cache=True)
def _scatter_to_tiles(means2d, radii, order, counts, gauss_offsets, n_per_camera, tile_w, tile_h):
    """Fill per-tile lists in depth order (a stable counting sort by tile).

    Returns ``tile_offsets`` [C * TH * TW + 1], ``flatten_ids`` [M] (c * N + g, tile-major, front to
    back) and ``slot_of`` [M]: for the k-th tile of Gaussian i (in row-major tile order), its position in
    ``flatten_ids`` is ``slot_of[gauss_offsets[i] + k]``, which lets gradients be reduced per Gaussian.
    """
    tiles_per_camera = tile_w * tile_h
    n_tiles = (means2d.shape[0] // n_per_camera) * tiles_per_camera if n_per_camera > 0 else 0
    tile_counts = np.zeros(n_tiles + 1, dtype=np.int64)
    for i in range(means2d.shape[0]):
        if counts[i] == 0:
            continue
        base = (i // n_per_camera) * tiles_per_camera
        x0, x1, y0, y1 = _tile_rect(means2d[i, 0], means2d[i, 1], radii[i, 0], radii[i, 1], tile_w, tile_h)
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                tile_counts[base + ty * tile_w + tx + 1] += 1
    tile_offsets = np.cumsum(tile_counts)
    cursor = tile_offsets[:-1].copy()
    n_isects = tile_offsets[-1]
    flatten_ids = np.empty(n_isects, dtype=np.int64)
    slot_of = np.empty(n_isects, dtype=np.int64)
    for i in order:  # (camera, depth) order: each tile's list comes out front to back
        if counts[i] == 0:
            continue
        base = (i // n_per_camera) * tiles_per_camera
        x0, x1, y0, y1 = _tile_rect(means2d[i, 0], means2d[i, 1], radii[i, 0], radii[i, 1], tile_w, tile_h)
        k = gauss_offsets[i]
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                t = base + ty * tile_w + tx
                slot = cursor[t]
                cursor[t] = slot + 1
                flatten_ids[slot] = i
                slot_of[k] = slot
                k += 1
    return tile_offsets, flatten_ids, slot_of


class TileBins:
    """Gaussian-tile intersections sorted by (camera, tile, depth), like gsplat's ``isect_tiles``.

    Arrays are NumPy int64: ``flatten_ids`` [M] (c * N + g), ``tile_offsets`` [C * TH * TW + 1] (tile t
    owns ``flatten_ids[tile_offsets[t]:tile_offsets[t + 1]]``), ``tiles_per_gauss`` [C * N],
    ``gauss_offsets`` [C * N + 1] and ``slot_of`` [M] (see :func:`_scatter_to_tiles`).
    """

    def __init__(self, means2d: np.ndarray, radii: np.ndarray, depths: np.ndarray, width: int, height: int):
        C, N = depths.shape
        self.n_cameras, self.n_gaussians = C, N
        self.tile_width = math.ceil(width / TILE_SIZE)
        self.tile_height = math.ceil(height / TILE_SIZE)
        means2d = means2d.reshape(C * N, 2)
        radii = radii.reshape(C * N, 2)
        self.tiles_per_gauss = _tiles_per_gaussian(means2d, radii, self.tile_width, self.tile_height)
        self.gauss_offsets = np.zeros(C * N + 1, dtype=np.int64)
        np.cumsum(self.tiles_per_gauss, out=self.gauss_offsets[1:])
        # front to back within each camera; stable, so equal depths keep Gaussian order (as gsplat)
        camera = np.repeat(np.arange(C, dtype=np.float64), N)
        order = np.lexsort((depths.reshape(-1), camera))
        self.tile_offsets, self.flatten_ids, self.slot_of = _scatter_to_tiles(
            means2d, radii, order, self.tiles_per_gauss, self.gauss_offsets, max(N, 1),
            self.tile_width, self.tile_height,
        )
        self._depths = depths

    @property
    def n_isects(self) -> int:
        return int(self.flatten_ids.shape[0])

    def info(self) -> dict:
        """gsplat's intersection keys for the ``info`` dict (torch tensors)."""
        C, N = self.n_cameras, self.n_gaussians
        flat = torch.from_numpy(self.flatten_ids)
        n_local = self.tile_width * self.tile_height
        tile = torch.repeat_interleave(
            torch.arange(C * n_local), torch.from_numpy(np.diff(self.tile_offsets))
        )
        # gsplat's 64-bit key: camera and tile id in the high word, the float32 depth bits in the low word
        tile_bits = n_local.bit_length()
        depth_bits = torch.from_numpy(self._depths.astype(np.float32).reshape(-1)).view(torch.int32)
        depth_bits = depth_bits[flat].long() & 0xFFFFFFFF
        isect_ids = (((tile // n_local) << tile_bits) | (tile % n_local)) << 32 | depth_bits
        offsets = torch.from_numpy(self.tile_offsets[:-1]).reshape(C, self.tile_height, self.tile_width)
        return {
            "tile_width": self.tile_width,
            "tile_height": self.tile_height,
            "tiles_per_gauss": torch.from_numpy(self.tiles_per_gauss).reshape(C, N).int(),
            "isect_ids": isect_ids,
            "flatten_ids": flat.int(),
            "isect_offsets": offsets.int(),
            "tile_size": TILE_SIZE,
        }


# ----------------------------------------------------------------------------------------------------
# Gradient reduction
# ----------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def reduce_per_gaussian(per_isect, gauss_offsets, slot_of):
    """Sum per-intersection gradient rows [M, F] into per-Gaussian rows [C * N, F].

    Each Gaussian sums its own tiles in a fixed (row-major tile) order, so the result does not depend on
    the thread count.
    """
    n = gauss_offsets.shape[0] - 1
    F = per_isect.shape[1]
    out = np.zeros((n, F), dtype=per_isect.dtype)
    for i in prange(n):
        for k in range(gauss_offsets[i], gauss_offsets[i + 1]):
            row = per_isect[slot_of[k]]
            for f in range(F):
                out[i, f] += row[f]
    return out
