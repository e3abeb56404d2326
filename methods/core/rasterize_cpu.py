"""CPU tile rasterizer for 3D Gaussians (the CPU twin of gsplat's ``rasterization``), on compiled kernels.

Pipeline, mirroring gsplat 1.5.3 with ``packed=False``, each stage a numba kernel wired into autograd:

1. :class:`ProjectGaussians3D`: EWA projection, culling and radii
   (:mod:`.cpu_kernels`, the same maths as :func:`.projection.project_gaussians_3d`).
2. :class:`TileBins`: every visible Gaussian is listed in each 16x16 tile its bounding
   box touches, front to back, exactly the order gsplat's ``isect_tiles`` produces.
3. :class:`RasterizeTiles3D`: per tile, front-to-back alpha compositing with gsplat's rules (alpha =
   min(0.999, o exp(-sigma)), contributions below 1/255 skipped, a pixel stops before the Gaussian that
   would take its transmittance to <= 1e-4); backward walks back to front from each pixel's last
   contributor, as gsplat's CUDA backward does (:mod:`.cpu_kernels`).

Memory, all float64 whatever the caller's dtype: a row per (camera, Gaussian) of its screen-space
parameters and features (6 + D values), per-pixel outputs and the per-pixel state backward needs (final T
and last contributor), the tile lists (3 int64 per Gaussian-tile intersection, about 12 per visible
Gaussian while binning) and, during backward, one gradient row per intersection (6 + D values) and one per
visible Gaussian; nothing per Gaussian-pixel pair. The Gaussian rows and the two gradient buffers are
reused across calls (:class:`ScratchPool`): fresh pages cost more than the work on them. Gradients reach means,
quats, scales, opacities and colours; with camera tensors that require grad the projection falls back to
the pure-PyTorch :func:`.projection.project_gaussians_3d` so that cameras get gradients too. ``means2d``
in ``info`` receives the screen-space gradient that gsplat's ``DefaultStrategy`` reads.

Why numba rather than a C++ extension: it installs as a wheel from the package registry like any other
dependency (no compiler or build step at install time, on any platform), its code is Python that the
tests exercise directly, it compiles through LLVM (clang's backend, so scalar loops come out as a C++
compiler's would) and caches to disk (a cold compile takes about 30 s of CPU once per machine, a cached
load about 1 s). What it lacks is explicit SIMD: the 3DGS compositing with a tile row's pixels as vector lanes
runs 2.6x slower from numba than the scalar kernels, and up to 1.8x faster when written in C with AVX-512
intrinsics (``tests/perf/bench_row_lanes.py``). Those C kernels are the ``lanes`` compositing (:mod:`.lanes`; RGB +
depth only), which renders use wherever the machine has AVX-512 and gcc (``GFBENCH_CPU_COMPOSITING``: ``auto``,
``spans``, ``lanes``); everything else, and 3DGS on other machines, runs the numba kernels.
``tests/perf/bench_rasterizer.py`` has the measured distance to the machine's limit and why.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from . import cpu_kernels as K
from . import lanes
from .projection import project_gaussians_3d, sh_to_colors

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_pool_lock = threading.Lock()


_kernel_threads: Optional[int] = None  # set by split_threads while it is active


def worker_count() -> int:
    """Threads the kernels use: those :func:`split_threads` kept for them while it is active, else as many as
    PyTorch uses."""
    return _kernel_threads or max(1, torch.get_num_threads())


@contextmanager
def split_threads(torch_threads: int) -> Iterator[None]:
    """Run PyTorch's own operations on ``torch_threads`` threads while the kernels keep the threads PyTorch
    had; both are restored on exit.

    A Gaussian method training on a small CPU does many small tensor operations (the rasterizer's glue, the
    loss, the optimizer) between kernel calls, and each of PyTorch's parallel regions hands work to the other
    OpenMP threads and waits for them. With PyTorch on one thread and the kernels still on every core, the
    3DGS, 2DGS and FSGS jobs of ``synthetic-masked`` ran 17-27% faster on 2 cores (10% with
    ``OMP_WAIT_POLICY=PASSIVE``) and gave the same rows (to 4e-15, where the scoring's float64 reductions
    follow the thread count): the kernels do not depend on the thread count, nor did these methods' torch
    operations. Heavy torch work inside (a depth or video model) should run under :func:`full_threads`.
    """
    global _kernel_threads
    saved_kernels, saved_torch = _kernel_threads, torch.get_num_threads()
    _kernel_threads = worker_count()
    torch.set_num_threads(max(1, int(torch_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(saved_torch)
        _kernel_threads = saved_kernels


@contextmanager
def full_threads() -> Iterator[None]:
    """Inside :func:`split_threads`, give PyTorch back the kernels' threads (for a model's inference);
    elsewhere a no-op."""
    if _kernel_threads is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(_kernel_threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _helpers(count: int) -> ThreadPoolExecutor:
    """A pool with at least ``count`` helper threads (the calling thread is the other worker)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < count:
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="gfbench-raster")
            _pool_size = count
        return _pool


def run_workers(kernel, *args, n_workers: Optional[int] = None) -> None:
    """Run ``kernel(*args, worker, n_workers)`` for every worker, on ``n_workers`` threads (default
    :func:`worker_count`). The kernels release the GIL and each fills its own share of the outputs."""
    n_workers = n_workers or worker_count()
    if n_workers == 1:
        kernel(*args, 0, 1)
        return
    others = [_helpers(n_workers - 1).submit(kernel, *args, worker, n_workers) for worker in range(1, n_workers)]
    kernel(*args, 0, n_workers)
    for future in others:
        future.result()


class ScratchPool:
    """Large scratch arrays kept for reuse across rasterizer calls.

    Fresh memory is not free: the OS maps and zeroes every page on first touch. On the 2-core development
    VM filling a fresh 45 MB array took 56 ms (its 2 MB transparent huge pages are faulted in through the
    hypervisor) against 3.5 ms for the same array filled again, and a 2DGS forward + backward at 300k
    Gaussians allocates about 160 MB of such scratch: the Gaussian rows, the per-intersection gradient rows
    and their per-Gaussian sums. Those are taken from here and given back when the backward is done.

    An array is never handed out twice before it is given back, so interleaved renders (several forwards
    before their backwards) each get their own; contents are whatever the last user left. At most ``keep``
    free buffers stay (the largest); the rest are released to the allocator."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._free: list[np.ndarray] = []  # flat uint8 buffers, smallest first
        self._lock = threading.Lock()

    def take(self, shape: tuple, dtype=np.float64) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            fits = [i for i, buffer in enumerate(self._free) if buffer.nbytes >= nbytes]
            buffer = self._free.pop(fits[0]) if fits else None
        if buffer is None:
            buffer = np.empty(max(nbytes, dtype.itemsize), dtype=np.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape)

    def give_back(self, array: np.ndarray) -> None:
        """Return an array from :meth:`take`; the caller must hold no other reference into it."""
        buffer = array.base
        if not (isinstance(buffer, np.ndarray) and buffer.dtype == np.uint8 and buffer.flags.owndata):
            raise ValueError("give_back takes arrays that ScratchPool.take returned")
        with self._lock:
            if any(held is buffer for held in self._free):
                raise ValueError("this array was already given back")
            self._free.append(buffer)
            self._free.sort(key=lambda held: held.nbytes)
            del self._free[: max(0, len(self._free) - self.keep)]

    @property
    def free_bytes(self) -> int:
        """Bytes held in free buffers."""
        with self._lock:
            return sum(buffer.nbytes for buffer in self._free)

    def clear(self) -> None:
        """Release every free buffer (e.g. after rendering at a size that will not come again)."""
        with self._lock:
            self._free.clear()


SCRATCH = ScratchPool()


def as_f64(x: torch.Tensor) -> np.ndarray:
    """A contiguous float64 NumPy copy (or view) of a tensor, detached from autograd.

    Conversions go through NumPy: single-threaded, so they never wait on torch's OpenMP team, which
    stalls badly when other work holds the cores."""
    return np.ascontiguousarray(x.detach().numpy(), dtype=np.float64)


def as_kernel_input(x: torch.Tensor) -> np.ndarray:
    """A contiguous NumPy view (or copy) of a float32 or float64 tensor in its own dtype, for the kernel arguments that
    may be either (other dtypes become float64): the kernels' arithmetic is float64 whatever they read, and
    float32 -> float64 is exact, so a kernel that reads float32 gives the bits it gives the float64 copy. That holds
    only as long as LLVM compiles both specializations' arithmetic alike, which it does for the 3DGS projection and
    for the 2DGS projection's output gradients but not for the 2DGS projection's parameters (their float32
    specialization rounded some transforms differently in the last bit): ``tests/test_rasterizer_cpu.py`` checks
    each argument passed this way. Saves a conversion per argument (at 300k Gaussians, 1-3 ms a render)."""
    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        return as_f64(x)
    return np.ascontiguousarray(x.numpy())


def line_aligned(shape: tuple, dtype=np.float64) -> np.ndarray:
    """An uninitialised NumPy array whose data begins on a 64-byte cache line, as PyTorch's CPU allocator places it (an
    array from np.empty begins 16 bytes off one): the lanes kernels stream whole lines into such images (see
    lanes_common.h's store_bytes)."""
    return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype).numpy()


def kernel_output(shape: tuple, dtype: torch.dtype) -> np.ndarray:
    """An uninitialised array for a kernel that writes float32 or float64 (the projections' gradients, the lanes
    kernels' images): in ``dtype`` where it is one of those, so that the kernel's stores convert as :func:`to_torch`
    would, else float64 (pass it through :func:`to_torch`); line-aligned (:func:`line_aligned`)."""
    return line_aligned(shape, np.float32 if dtype == torch.float32 else np.float64)


def kernel_images(*grads: Tensor) -> list[np.ndarray]:
    """Output-gradient images for the lanes kernels, which read float32 or float64: contiguous NumPy views (or
    copies) in their own dtype where all are float32 or all float64, else float64 copies."""
    if len({g.dtype for g in grads}) == 1 and grads[0].dtype in (torch.float32, torch.float64):
        return [np.ascontiguousarray(g.detach().numpy()) for g in grads]
    return [as_f64(g) for g in grads]


def output_twins(outputs: tuple, dtype: torch.dtype) -> tuple:
    """For kernels that write their float64 outputs and a twin of each in the caller's dtype (the projections): new
    float32 arrays shaped as ``outputs`` for a float32 caller, else ``outputs`` themselves (written twice)."""
    if dtype == torch.float32:
        return tuple(np.empty(x.shape, dtype=np.float32) for x in outputs)
    return tuple(outputs)


def to_torch(x: np.ndarray, dtype: torch.dtype) -> Tensor:
    """A kernel output as a tensor of the caller's dtype: shared where it has that dtype already, else converted by
    NumPy (see :func:`as_f64`) into a C-contiguous copy."""
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    if x.dtype == np_dtype:
        return torch.from_numpy(x)
    return torch.from_numpy(x.astype(np_dtype, order="C"))


# ----------------------------------------------------------------------------------------------------
# Tile binning
# ----------------------------------------------------------------------------------------------------


def front_to_back(
    ids: np.ndarray, keys: np.ndarray, n_cameras: int, n_per_camera: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions into ``ids`` [V] (increasing (camera, Gaussian) ids c * N + g) by camera, then ``keys`` (float32
    depth bits, below 2^32: depths of visible Gaussians are positive, so their bits sort as integers), then
    position, i.e. Gaussian index: the order of gsplat's stable radix sort of (camera, tile, depth bits) keys.
    Returns the positions and the keys in that order.

    Each camera's (key, position) pairs are packed into unique 64-bit integers and sorted by NumPy, whose
    ``sort`` dispatches to SIMD sorting networks where the CPU has them (x86-simd-sort): 2x faster than the
    hand-written 4-pass radix sort it replaced (270k visible Gaussians: 4.1 -> 2.1 ms), with the same order."""
    V = ids.shape[0]
    bounds = np.searchsorted(ids, np.arange(n_cameras + 1, dtype=np.int64) * n_per_camera).tolist()
    positions, sorted_keys = np.empty(V, dtype=np.int64), np.empty(V, dtype=np.int64)
    packed = np.empty(V, dtype=np.uint64)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop - start >= 1 << (64 - K.DEPTH_KEY_BITS):
            raise ValueError(f"one camera sees {stop - start} Gaussians; the depth sort takes fewer than 2^32")
        share = packed[start:stop]
        K.pack_depth_keys(keys, start, stop, share)
        share.sort()
        K.unpack_depth_order(share, start, positions, sorted_keys)
    return positions, sorted_keys


class TileBins:
    """Gaussian-tile intersections sorted by (camera, tile, depth), like gsplat's ``isect_tiles``.

    The visible (camera, Gaussian) ids in front-to-back order are ``order`` [V]; a Gaussian's position
    there is its rank. Binning gathers compact per-Gaussian rows once in that order (its one random access)
    and works on rank-ordered arrays from then on, which stay in cache (at 300k Gaussians binning by
    Gaussian id was dominated by cache misses and took twice as long). The compositing kernels read per-Gaussian rows
    by id: gathering them into rank order cost more than the misses it saved.

    Arrays are NumPy int64: ``flatten_ids`` [M] (c * N + g), ``tile_offsets`` [C * TH * TW + 1] (tile t owns
    ``flatten_ids[tile_offsets[t]:tile_offsets[t + 1]]``), ``tiles_per_rank`` [V], ``rank_offsets`` [V + 1],
    ``slot_of`` [M] and ``isect_ids`` [M] (see :func:`.cpu_kernels.fill_tiles`).
    """

    def __init__(self, means2d: np.ndarray, radii: np.ndarray, depths: np.ndarray, width: int, height: int):
        C, N = depths.shape
        self.n_cameras, self.n_gaussians = C, N
        self.tile_width = math.ceil(width / K.TILE_SIZE)
        self.tile_height = math.ceil(height / K.TILE_SIZE)
        n_tiles = C * self.tile_width * self.tile_height
        means2d, radii = means2d.reshape(C * N, 2), radii.reshape(C * N, 2)
        depth_bits = depths.reshape(-1).astype(np.float32).view(np.uint32).astype(np.int64)
        ids, keys, rects = K.visible_rects(means2d, radii, depth_bits, self.tile_width, self.tile_height)
        perm, sorted_keys = front_to_back(ids, keys, C, max(N, 1))
        V = perm.shape[0]

        # a counting sort by tile over the depth order, each worker taking a contiguous share of it
        n_workers = worker_count()
        self.order, boxes = np.empty(V, dtype=np.int64), np.empty((V, 5), dtype=np.int64)
        self.tiles_per_rank = np.empty(V, dtype=np.int64)
        hist = np.zeros((n_workers, n_tiles), dtype=np.int64)
        tiles = (self.tile_width, self.tile_height, max(N, 1))
        run_workers(K.count_tiles, ids, rects, perm, sorted_keys, *tiles, self.order, boxes, self.tiles_per_rank, hist,
                    n_workers=n_workers)
        self.rank_offsets = np.zeros(V + 1, dtype=np.int64)
        np.cumsum(self.tiles_per_rank, out=self.rank_offsets[1:])
        self.tile_offsets = np.zeros(n_tiles + 1, dtype=np.int64)
        np.cumsum(hist.sum(axis=0), out=self.tile_offsets[1:])
        cursors = self.tile_offsets[:-1] + np.cumsum(hist, axis=0) - hist  # where each worker starts per tile
        M = int(self.tile_offsets[-1])
        self.flatten_ids, self.slot_of = np.empty(M, dtype=np.int64), np.empty(M, dtype=np.int64)
        self.isect_ids = np.empty(M, dtype=np.int64)
        run_workers(K.fill_tiles, boxes, self.order, *tiles, self.rank_offsets, cursors, self.flatten_ids,
                    self.slot_of, self.isect_ids, n_workers=n_workers)
        self.pairs_evaluated = self.rows_evaluated = 0  # set by the forward rasterization (record_work)

    def record_work(self, pairs: Optional[np.ndarray]) -> None:
        """The forward's Gaussian-pixel pairs evaluated and Gaussian-rows set up, from its per-tile counts [n_tiles,
        2]; None where the kernels did not count them (the lanes kernels), rather than a 0 that reads as no work."""
        if pairs is None:
            self.pairs_evaluated = self.rows_evaluated = None
        else:
            self.pairs_evaluated, self.rows_evaluated = (int(v) for v in pairs.sum(axis=0))

    @property
    def n_isects(self) -> int:
        return int(self.flatten_ids.shape[0])

    @property
    def n_tiles(self) -> int:
        return int(self.tile_offsets.shape[0] - 1)

    def per_rank(self, per_isect: np.ndarray) -> np.ndarray:
        """Sum per-intersection rows [M, F] into per-rank rows [V, F] (from :data:`SCRATCH`: give it back)."""
        out = SCRATCH.take((self.order.shape[0], per_isect.shape[1]))
        run_workers(K.reduce_per_gaussian, per_isect, self.rank_offsets, self.slot_of, out)
        return out

    def to_gaussians(self, rows: np.ndarray, shapes: list[tuple], dtype: torch.dtype) -> list[Tensor]:
        """Per-rank rows [V, F] -> tensors of the given [C, N, ...] shapes (consecutive column blocks of
        ``rows``) in ``dtype``, zero for the Gaussians no camera sees."""
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        widths = [int(np.prod(shape[2:], dtype=np.int64)) for shape in shapes]
        blocks = tuple(np.zeros((self.n_cameras * self.n_gaussians, width), dtype=np_dtype) for width in widths)
        run_workers(K.scatter_columns, rows, self.order, blocks)
        return [torch.from_numpy(block.reshape(shape)) for block, shape in zip(blocks, shapes)]

    def info(self) -> dict:
        """gsplat's intersection keys for the ``info`` dict (torch tensors)."""
        C, N = self.n_cameras, self.n_gaussians
        offsets = self.tile_offsets[:-1].astype(np.int32).reshape(C, self.tile_height, self.tile_width)
        tiles_per_gauss = np.zeros(C * N, dtype=np.int32)
        tiles_per_gauss[self.order] = self.tiles_per_rank
        return {
            "tile_width": self.tile_width,
            "tile_height": self.tile_height,
            "tiles_per_gauss": torch.from_numpy(tiles_per_gauss.reshape(C, N)),
            "isect_ids": torch.from_numpy(self.isect_ids),
            "flatten_ids": torch.from_numpy(self.flatten_ids.astype(np.int32)),
            "isect_offsets": torch.from_numpy(offsets),
            "tile_size": K.TILE_SIZE,
        }


# ----------------------------------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------------------------------


def _cameras_need_grad(viewmats: Tensor, Ks: Tensor) -> bool:
    return torch.is_grad_enabled() and (viewmats.requires_grad or Ks.requires_grad)


class ProjectGaussians3D(torch.autograd.Function):
    """(means, quats, scales, opacities, cameras) -> means2d [C, N, 2], conics [C, N, 3], depths [C, N],
    radii [C, N, 2] int32. The float64 outputs also go into ``host`` for the later stages."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near, far, clip, host):
        inputs = [*(as_kernel_input(t) for t in (means, quats, scales, opacities)), as_f64(viewmats), as_f64(Ks)]
        C, N = viewmats.shape[0], means.shape[0]
        shapes = ((C, N, 2), (C, N, 3), (C, N))
        means2d, conics, depths = (np.empty(shape) for shape in shapes)
        twins = output_twins((means2d, conics, depths), means.dtype)
        radii = np.empty((C, N, 2), dtype=np.int32)
        run_workers(K.project_3dgs_fwd, *inputs, width, height, eps2d, near, far, clip, means2d, conics, depths,
                    radii, twins)
        host.update(means2d=means2d, conics=conics, depths=depths, radii=radii)
        ctx.inputs = inputs[:3] + inputs[4:]
        ctx.shape = (width, height, eps2d)
        ctx.radii, ctx.conics = radii, conics
        out = (*(to_torch(twin, means.dtype) for twin in twins), torch.from_numpy(radii))
        ctx.mark_non_differentiable(out[3])
        return out

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):
        means, quats, scales, viewmats, Ks = ctx.inputs
        width, height, eps2d = ctx.shape
        N = means.shape[0]
        v_means, v_quats, v_scales = (kernel_output((N, k), v_means2d.dtype) for k in (3, 4, 3))
        run_workers(
            K.project_3dgs_bwd, means, quats, scales, viewmats, Ks, width, height, eps2d, ctx.radii, ctx.conics,
            *(as_kernel_input(g) for g in (v_means2d, v_conics, v_depths)), v_means, v_quats, v_scales,
        )
        grads = [to_torch(g, v_means2d.dtype) for g in (v_means, v_quats, v_scales)]
        return (*grads, None, None, None, None, None, None, None, None, None, None)


@dataclass
class Projected3D:
    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    host: dict  # float64 NumPy twins of the above (filled by the kernel path, else converted on demand)


def project_3d(means, quats, scales, opacities, viewmats, Ks, width, height, *, eps2d, near_plane, far_plane,
               radius_clip) -> Projected3D:
    """Projection through the compiled kernel, or plain PyTorch when the cameras need gradients."""
    if _cameras_need_grad(viewmats, Ks):
        proj = project_gaussians_3d(
            means, quats, scales, opacities, viewmats, Ks, width, height,
            eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
        )
        out = (proj.means2d, proj.conics, proj.depths, proj.radii)
        host = dict(zip(("means2d", "conics", "depths"), (as_f64(t) for t in out[:3])), radii=proj.radii.numpy())
        return Projected3D(*out, host=host)
    host: dict = {}
    out = ProjectGaussians3D.apply(
        means, quats, scales, opacities, viewmats, Ks, width, height, float(eps2d), float(near_plane),
        float(far_plane), float(radius_clip), host,
    )
    return Projected3D(*out, host=host)


def bin_tiles(proj, width: int, height: int) -> TileBins:
    """Tile lists of a projection (3DGS or 2DGS)."""
    return TileBins(proj.host["means2d"], proj.host["radii"], proj.host["depths"], width, height)


# ----------------------------------------------------------------------------------------------------
# Rasterization
# ----------------------------------------------------------------------------------------------------


def gaussian_rows(*per_camera: Tensor | np.ndarray) -> np.ndarray:
    """Concatenate [C, N, ...] (or [C, N]) tensors / float64 arrays into one float64 row per (camera,
    Gaussian), in an array from :data:`SCRATCH` (the backward gives it back)."""
    cols = [x if isinstance(x, np.ndarray) else as_f64(x) for x in per_camera]
    cols = tuple(np.ascontiguousarray(x.reshape(x.shape[0] * x.shape[1], math.prod(x.shape[2:]))) for x in cols)
    rows = SCRATCH.take((cols[0].shape[0], sum(x.shape[1] for x in cols)))
    run_workers(K.pack_rows, cols, rows)
    return rows


def grad_will_flow(*inputs: Tensor) -> bool:
    """Whether autograd records a function applied now to ``inputs`` (inside ``forward`` grad mode is
    always off, so the caller asks)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs)


def keep_rows_for_backward(ctx, params: np.ndarray, backward_follows: bool) -> None:
    """Save the forward's Gaussian rows for the backward, or give them back to :data:`SCRATCH` at once when
    no backward will run (a no-grad render)."""
    ctx.params = params if backward_follows else None
    if not backward_follows:
        SCRATCH.give_back(params)


def take_saved_rows(ctx) -> np.ndarray:
    """The forward's Gaussian rows, which the backward gives back to :data:`SCRATCH` when it is done: a
    second backward through the same graph (``retain_graph=True``) is refused rather than reading rows
    another render may have reused."""
    params, ctx.params = ctx.params, None
    if params is None:
        raise RuntimeError("the CPU rasterizer's backward runs once per forward (retain_graph=True is not supported)")
    return params


class RasterizeTiles3D(torch.autograd.Function):
    """(means2d, conics, opacities [C, N], features [C, N, D]) -> colours [C, H, W, D] and final
    transmittance [C, H, W, 1], with no background. ``host`` may hold float64 twins of means2d and conics
    (the projection's), which then spare a conversion."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, bins: TileBins, width: int, height: int, host=None,
                backward_follows=True):
        host = host or {}
        params = gaussian_rows(host.get("means2d", means2d), host.get("conics", conics), opacities, features)
        C, D = bins.n_cameras, features.shape[-1]
        image = (C, height, width)
        T, T_out = line_aligned(image), None  # T_out: T in the caller's float32, where the lanes kernels write it
        last, pairs = line_aligned(image, np.int64), np.zeros((bins.n_tiles, 2), dtype=np.int64)
        ctx.lanes = lanes.composite(D)
        if ctx.lanes:  # in the caller's dtype where it is float32 (no conversion after)
            colors = kernel_output((*image, D), means2d.dtype)
            T_out = line_aligned(image, np.float32) if colors.dtype == np.float32 else None
            lanes.forward(params, bins, width, height, colors, T, last, run_workers, T_out)
        else:
            colors = np.empty((*image, D))
            run_workers(
                K.rasterize_3dgs_fwd, params, bins.tile_offsets, bins.flatten_ids, bins.tile_width,
                bins.tile_height, False, colors, T, last, pairs,
            )
        ctx.bins, ctx.T, ctx.last, ctx.size = bins, T, last, (width, height)
        keep_rows_for_backward(ctx, params, backward_follows)
        ctx.shapes = [tuple(t.shape) for t in (means2d, conics, opacities, features)]
        bins.record_work(None if ctx.lanes else pairs)  # the lanes kernels do not count their work
        return to_torch(colors, means2d.dtype), to_torch((T if T_out is None else T_out)[..., None], means2d.dtype)

    @staticmethod
    def backward(ctx, v_colors, v_T):
        bins, params = ctx.bins, take_saved_rows(ctx)
        per_isect = SCRATCH.take((bins.n_isects, params.shape[1]))
        if ctx.lanes:  # the forward's kernels, whatever $GFBENCH_CPU_COMPOSITING says now
            lanes.backward(params, bins, *ctx.size, ctx.T, ctx.last, *kernel_images(v_colors, v_T[..., 0]), per_isect,
                           run_workers)
        else:
            run_workers(
                K.rasterize_3dgs_bwd, params, bins.tile_offsets, bins.flatten_ids, bins.tile_width,
                bins.tile_height, False, ctx.T, ctx.last, as_f64(v_colors), as_f64(v_T[..., 0]), per_isect,
            )
        rows = bins.per_rank(per_isect)
        grads = bins.to_gaussians(rows, ctx.shapes, v_colors.dtype)
        for scratch in (params, per_isect, rows):
            SCRATCH.give_back(scratch)
        return (*grads, None, None, None, None, None)


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
    proj = project_3d(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
    )
    opac = opacities[None, :].expand(C, N)
    features = camera_colors(colors, sh_degree, means, viewmats)
    features, backgrounds = add_depth_channel(features, proj.depths, render_mode, backgrounds)
    bins = bin_tiles(proj, width, height)
    render, T = RasterizeTiles3D.apply(
        proj.means2d, proj.conics, opac, features, bins, width, height, proj.host,
        grad_will_flow(proj.means2d, proj.conics, opac, features),
    )
    alphas = 1.0 - T
    render = finish_render(render, alphas, backgrounds, render_mode)
    info = {
        "batch_ids": None,
        "conics": proj.conics,
        "n_batches": 1,
        **tile_info(proj, opac, bins, width, height),
    }
    return render, alphas, info


def tile_info(proj, opacities: Tensor, bins: TileBins, width: int, height: int) -> dict:
    """The ``info`` keys gsplat returns for both Gaussian kinds (what its strategies read)."""
    return {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "opacities": opacities,
        **bins.info(),
        "width": width,
        "height": height,
        "n_cameras": opacities.shape[0],
    }
