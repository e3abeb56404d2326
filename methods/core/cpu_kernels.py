"""Compiled (numba) kernels of the CPU rasterizer: projection, tile binning, and 3DGS / 2DGS compositing,
forward and backward. PyTorch glue lives in :mod:`.rasterize_cpu` and :mod:`.rasterize_cpu_2dgs`.

All jitted code is in this one module on purpose: numba's on-disk cache (``cache=True``, so the JIT compile
is paid once per machine) is invalidated only when the file defining a function changes, not when a helper
it inlines from another file does; one file keeps the cache exact.

Every kernel works on float64 NumPy arrays whatever the caller's dtype: one compiled specialisation per
kernel, scalar float64 arithmetic costs the same as float32 on a CPU, and the float64 tolerance tests
measure the algorithm rather than rounding. The heavy kernels release the GIL and take a share of the
work, ``worker`` of ``n_workers`` (every n-th tile for rasterization, a contiguous block of Gaussians
otherwise), writing into output arrays the caller allocated; :func:`.rasterize_cpu.run_workers` runs the
shares on a thread pool. (Plain threads instead of ``parallel=True``: numba's parallel compilation took
three times as long to JIT, and this way torch's thread count is the one knob; while a Gaussian method
trains, :func:`.rasterize_cpu.split_threads` keeps that count for the kernels and runs torch on one thread.)

Sections:

* Projection (as :mod:`.projection`, itself gsplat 1.5.3's ``ProjectionEWA3DGSFused.cu`` and
  ``Projection2DGSFused.cu``, step for step); the backward passes are the hand-derived vector-Jacobian
  products of those formulas, checked against PyTorch autograd of :mod:`.projection` in the tests.
  Gradients flow to means, quats and scales (not to the cameras); culled pairs get zero outputs and zero
  gradients.
* Binning, as gsplat's ``isect_tiles`` + ``isect_offset_encode`` with ``packed=False``: every visible
  Gaussian is listed in each 16x16 tile its bounding box [mean - radius, mean + radius] touches, and each
  tile's list is sorted front to back (by depth, ties by Gaussian index, as gsplat's stable radix sort of
  (camera, tile, depth) keys gives).
* 3DGS compositing, as ``RasterizeToPixels3DGSFwd.cu`` / ``...Bwd.cu``, one tile per parallel iteration.
  Forward: walk the tile's list front to back; alpha = min(0.999, o exp(-sigma)) with sigma =
  0.5 (a dx^2 + c dy^2) + b dx dy, (dx, dy) = mean - pixel centre; skip alpha < 1/255; a
  pixel is done at the first Gaussian that would take its transmittance T to <= 1e-4 (that one excluded),
  and the tile stops when all its pixels are done. Saved for backward: final T and the index of the last
  Gaussian composited, per pixel (nothing per pair). Backward: walk back to front from the last
  contributor, recovering T before each Gaussian by dividing by (1 - alpha) as the CUDA kernel does, with
  the closed-form compositing gradients. Per-Gaussian sums of one tile go to that intersection's row of an
  [M, F] buffer, which :func:`reduce_per_gaussian` adds per Gaussian in a fixed order: no two threads
  write the same memory and results do not depend on the thread count.
  Along a pixel row sigma is a parabola in x with curvature a, so exp(-sigma) needs no exp per pixel:
  from the span's first pixel, E(x + 1) = E(x) r with r <- r exp(-a) (forward differencing of the
  exponent), two exps per row and a relative error of a few 1e-16 over a 16-pixel row. The conic must be
  positive definite (the projection adds eps2d to the 2D covariance, so it always is; any other Gaussian
  is skipped), which also makes gsplat's "sigma < 0: skip" moot.
* 2DGS compositing, as ``RasterizeToPixels2DGSFwd.cu`` / ``...Bwd.cu``: per pixel and surfel the ray meets
  the surfel plane in homogeneous coordinates; with the rows u, v, w of the splat-to-pixel transform M,
  the planes h_u = x w - u and h_v = y w - v meet at c = h_u x h_v, whose (c_x / c_z, c_y / c_z) is the
  splat-space point. sigma = 0.5 min(g3, g2) with g3 = |c_xy / c_z|^2 and the low-pass
  g2 = 2 |mean2d - pixel|^2; pairs with c_z = 0 are skipped. On top of colours the kernel composites
  camera-space normals, gsplat's depth distortion (depth read from the last feature channel) and the
  median depth (the last surfel entered while T > 0.5). Along a pixel row h_v is fixed, so
  c = x (w x h_v) - (u x h_v) is linear in x: three multiply-adds per pixel in the forward, and the
  backward sums dL/dc over a row and applies the cross-product rule once per row.

Only the pixels where a Gaussian can reach alpha >= 1/255 are visited: for 3DGS sigma <= ln(255 o) is an
ellipse, whose rows and per-row spans are solved in closed form; for 2DGS the image of the splat disk (rows
from its dual conic, per-row spans from a quadratic in x) united with the low-pass disk, with the whole row or
tile whenever the image is not a bounded ellipse (or is within :data:`PARABOLIC_MARGIN` of a parabola, where
the near root of the quadratic is ill-conditioned; the roots come from the form without cancellation). Limits
get a relative and a sub-pixel slack, and the exact test still decides each pixel, so the result equals
visiting every pixel of the tile (``full_tile=True``, which the tests compare against) at a fraction of the
pairs.

A Gaussian's row set-up (the spans, the 2DGS ray planes, the 3DGS recurrence's two exps) is computed for a
fixed number of row slots at once (:data:`ROW_BLOCK`, or the whole tile), branch-free, in vector code; the pixel
loops stay scalar. (Pixel loops written as 8-lane blocks with masks did vectorize, but came out no faster
than the scalar ones for 3DGS and up to 1.5x slower for 2DGS: spans are 2 to 5 pixels on average.) In the
pixel loops, RGB + depth (:data:`UNROLLED_FEATURES`, what training renders; 2DGS adds its three normals) is
straight-line code with the Gaussian's features and feature gradients in registers; other feature counts loop.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

TILE_SIZE = 16
TILE_PIXELS = TILE_SIZE * TILE_SIZE
ROW_BLOCK = 8  # row slots a Gaussian's row set-up computes when it reaches no more rows of the tile (else all)
ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's: fainter contributions are skipped
MAX_ALPHA = 0.999  # gsplat clamps per-Gaussian alpha here (its CUDA kernels use 0.999, not 0.99)
MIN_TRANSMITTANCE = 1e-4  # a pixel is done before a Gaussian that would take T to <= this
# Feature count with a straight-line compositing path (RGB + depth, what training renders): the loop over a
# runtime count of features per Gaussian-pixel pair cost the 3DGS forward 8-20% and the backward 2-9%.
UNROLLED_FEATURES = 4

# LLVM may fuse multiply-adds and turn divisions by the same value into reciprocal multiplies; no
# assumptions about NaN/inf (fastmath's "nnan"/"ninf"), which would change gsplat's skip rules.
FASTMATH = {"contract", "arcp", "nsz"}
# error_model="numpy": a float division by zero gives inf or nan instead of numba's Python-style
# ZeroDivisionError, whose test and branch in every division kept LLVM from vectorizing the loops around it
# (and cost the 2DGS kernels 3-9%). No kernel divides by zero where the result is used: gsplat's skip rules
# come first. cache=True: the JIT compile is paid once per machine (see the module docstring).
KERNEL_OPTIONS = dict(cache=True, fastmath=FASTMATH, error_model="numpy")


@njit(**KERNEL_OPTIONS, inline="always")
def unrolled_features(feat, D):
    """A Gaussian's first seven feature values (D features, then 2DGS's three normals) as scalars for the pixel
    loops' straight-line path, taken when D == UNROLLED_FEATURES (zeros otherwise: that path is not taken)."""
    if D != UNROLLED_FEATURES:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    if feat.shape[0] == UNROLLED_FEATURES:  # 3DGS: RGB + depth
        return feat[0], feat[1], feat[2], feat[3], 0.0, 0.0, 0.0
    return feat[0], feat[1], feat[2], feat[3], feat[4], feat[5], feat[6]  # 2DGS: then its normals


@njit(cache=True)
def block_share(n, worker, n_workers):
    """[start, stop) of ``worker``'s contiguous share of n items."""
    return n * worker // n_workers, n * (worker + 1) // n_workers


# ----------------------------------------------------------------------------------------------------
# Prefetching
# ----------------------------------------------------------------------------------------------------

PREFETCH_AHEAD = 8  # items (intersections, ranks) ahead of the current one whose rows are fetched into the cache
CACHE_LINE_FLOATS = 8  # float64 values per 64-byte cache line


@intrinsic
def _prefetch(typingctx, array, row, col):
    """Hint the CPU to fetch ``array[row, col]``'s cache line (LLVM's ``llvm.prefetch``: read, keep in all
    cache levels). Only a hint: it changes no value, never faults and may be ignored."""
    signature = types.void(array, row, col)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0])
        strides = [builder.extract_value(data.strides, axis) for axis in range(2)]
        offset = builder.add(builder.mul(args[1], strides[0]), builder.mul(args[2], strides[1]))
        byte = ir.IntType(8).as_pointer()
        address = builder.gep(builder.bitcast(data.data, byte), [offset])
        i32 = ir.IntType(32)
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte], ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32])
        )
        builder.call(prefetch, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return signature, codegen


@njit(cache=True)
def prefetch_row(array, row):
    """Fetch every cache line of ``array[row]`` (a C-contiguous [R, F] array) ahead of its use.

    The compositing kernels read per-Gaussian rows in tile-list order, a random walk through an array that
    outgrows the cache at 100k Gaussians; fetching a few intersections ahead overlaps those misses with the
    work on the current one."""
    for col in range(0, array.shape[1], CACHE_LINE_FLOATS):
        _prefetch(array, row, col)
    _prefetch(array, row, array.shape[1] - 1)  # the row may end in one more line than its length spans


@intrinsic
def _bits_to_float(typingctx, bits):
    """The float64 whose IEEE-754 bit pattern is the int64 ``bits`` (LLVM's ``bitcast``)."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


EXP_LIMIT = 708.0  # exp_inline's arguments are clamped to [-708, 708], where 2^n stays a normal number
LOG2_E = 1.4426950408889634
LN2_HIGH = 0.6931471803691238  # ln 2 split in two (fdlibm's): n ln 2 is exact in the high part for |n| < 2^20
LN2_LOW = 1.9082149292705877e-10
EXP_TAYLOR_ORDER = 13  # the Taylor remainder on |r| <= ln(2) / 2 is below 4e-18 relative


@njit(**KERNEL_OPTIONS, inline="always")
def exp_inline(x):
    """exp(x) for |x| <= 708 (clamped there), within a few 1e-16 relative of ``math.exp``; branch-free and
    inlined, so that LLVM vectorizes a loop that calls it (numba's ``math.exp`` is a libm call it cannot
    vectorize; the installed llvmlite has no vector math library). exp(x) = 2^n exp(r) with
    n = round(x / ln 2), |r| <= ln(2) / 2; exp(r) by its Taylor polynomial (Horner), 2^n built from its bits."""
    x = min(max(x, -EXP_LIMIT), EXP_LIMIT)
    n = math.floor(x * LOG2_E + 0.5)
    r = (x - n * LN2_HIGH) - n * LN2_LOW
    p = 1.0
    for k in range(EXP_TAYLOR_ORDER, 0, -1):  # unrolled by LLVM: constant trip count
        p = 1.0 + p * r / k
    return p * _bits_to_float((np.int64(n) + 1023) << 52)


# ----------------------------------------------------------------------------------------------------
# Binning (driven by rasterize_cpu.TileBins)
# ----------------------------------------------------------------------------------------------------


@njit(**KERNEL_OPTIONS)
def _tile_rect(mx, my, rx, ry, tile_w, tile_h):
    """Tiles [x0, x1) x [y0, y1) that the box [m - r, m + r] overlaps (gsplat's rounding and clamping)."""
    x0 = min(max(math.floor((mx - rx) / TILE_SIZE), 0), tile_w)
    x1 = min(max(math.ceil((mx + rx) / TILE_SIZE), 0), tile_w)
    y0 = min(max(math.floor((my - ry) / TILE_SIZE), 0), tile_h)
    y1 = min(max(math.ceil((my + ry) / TILE_SIZE), 0), tile_h)
    return int(x0), int(x1), int(y0), int(y1)


@njit(nogil=True, **KERNEL_OPTIONS)
def visible_rects(means2d, radii, depth_bits, tile_w, tile_h):
    """The visible (camera, Gaussian) ids c * N + g (both ``radii`` [C * N, 2] positive) in increasing order,
    their ``depth_bits`` (the float32 depth's bit pattern) and their tile rectangles [V, 4] (x0, x1, y0,
    y1): one sequential pass, so that later passes in depth order read one compact row per Gaussian."""
    V = 0
    for i in range(radii.shape[0]):
        V += radii[i, 0] > 0 and radii[i, 1] > 0
    ids, keys = np.empty(V, dtype=np.int64), np.empty(V, dtype=np.int64)
    rects = np.empty((V, 4), dtype=np.int32)
    V = 0
    for i in range(radii.shape[0]):
        if radii[i, 0] > 0 and radii[i, 1] > 0:
            ids[V], keys[V] = i, depth_bits[i]
            rects[V, 0], rects[V, 1], rects[V, 2], rects[V, 3] = _tile_rect(
                means2d[i, 0], means2d[i, 1], radii[i, 0], radii[i, 1], tile_w, tile_h
            )
            V += 1
    return ids, keys, rects


DEPTH_KEY_BITS = 32  # a depth key is a float32 bit pattern; a camera's share of positions fits the other 32 bits


@njit(nogil=True, cache=True)
def pack_depth_keys(keys, start, stop, packed):
    """``packed[k - start] = keys[k] << 32 | (k - start)`` for k in [start, stop): one unsigned 64-bit value per
    visible Gaussian whose order is (depth bits, position), unique, so any sort of them is the stable one."""
    for k in range(start, stop):
        packed[k - start] = (np.uint64(keys[k]) << np.uint64(DEPTH_KEY_BITS)) | np.uint64(k - start)


@njit(nogil=True, cache=True)
def unpack_depth_order(packed, start, positions, sorted_keys):
    """The inverse of :func:`pack_depth_keys` on the sorted values: positions (offset by ``start``) and keys."""
    low = np.uint64((1 << DEPTH_KEY_BITS) - 1)
    for k in range(packed.shape[0]):
        value = packed[k]
        positions[start + k] = np.int64(value & low) + start
        sorted_keys[start + k] = np.int64(value >> np.uint64(DEPTH_KEY_BITS))


@njit(nogil=True, **KERNEL_OPTIONS)
def count_tiles(ids, rects, perm, sorted_keys, tile_w, tile_h, n_per_camera, order, boxes, tiles_per_rank, hist,
                worker, n_workers):
    """First pass of the binning's counting sort, over ``worker``'s contiguous share of the depth order
    ``perm`` (positions into ``ids`` and ``rects``; a Gaussian's place in it is its rank). Per rank,
    its id into ``order`` [V], its tile rectangle and depth bits into ``boxes`` [V, 5] (x0, x1, y0, y1, bits)
    and its number of tiles into ``tiles_per_rank`` [V]; how many of the share land in each tile into
    ``hist[worker]`` [n_tiles]. This gather is the binning's one random access: everything after it runs
    through rank-ordered arrays."""
    tiles_per_camera = tile_w * tile_h
    start, stop = block_share(perm.shape[0], worker, n_workers)
    id_rows = ids.reshape(ids.shape[0], 1)  # a 2-D view, the shape _prefetch takes
    for k in range(start, stop):
        if k + PREFETCH_AHEAD < stop:
            ahead = perm[k + PREFETCH_AHEAD]
            _prefetch(rects, ahead, 0)
            _prefetch(id_rows, ahead, 0)
        v = perm[k]
        i = ids[v]
        x0, x1, y0, y1 = rects[v, 0], rects[v, 1], rects[v, 2], rects[v, 3]
        order[k] = i
        boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3], boxes[k, 4] = x0, x1, y0, y1, sorted_keys[k]
        tiles_per_rank[k] = (x1 - x0) * (y1 - y0)
        base = (i // n_per_camera) * tiles_per_camera
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                hist[worker, base + ty * tile_w + tx] += 1


@njit(nogil=True, **KERNEL_OPTIONS)
def fill_tiles(boxes, order, tile_w, tile_h, n_per_camera, rank_offsets, cursors, flatten_ids, slot_of, isect_ids,
               worker, n_workers):
    """Second pass: write ``worker``'s share into the tile lists from its own cursors ``cursors[worker]``
    [n_tiles] (where its entries of each tile begin). Shares are contiguous in depth order and earlier
    shares' entries come first in every tile, so each list is front to back (a stable counting sort).

    Fills ``flatten_ids`` [M] (c * N + g), ``slot_of`` [M] (for the k-th tile of rank r in
    row-major tile order, its position in the lists is ``slot_of[rank_offsets[r] + k]``, so that gradients
    can be summed per Gaussian) and gsplat's ``isect_ids`` [M]: camera and tile id in the high word, the
    float32 depth's bit pattern in the low word."""
    tiles_per_camera = tile_w * tile_h
    tile_bits = 0
    while (1 << tile_bits) <= tiles_per_camera:  # Python's int.bit_length()
        tile_bits += 1
    cursor = cursors[worker]
    start, stop = block_share(order.shape[0], worker, n_workers)
    for r in range(start, stop):
        i = order[r]
        cam = i // n_per_camera
        base = cam * tiles_per_camera
        x0, x1, y0, y1, bits = boxes[r, 0], boxes[r, 1], boxes[r, 2], boxes[r, 3], boxes[r, 4]
        k = rank_offsets[r]
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                local = ty * tile_w + tx
                slot = cursor[base + local]
                cursor[base + local] = slot + 1
                flatten_ids[slot] = i
                isect_ids[slot] = (((cam << tile_bits) | local) << 32) | bits
                slot_of[k] = slot
                k += 1


@njit(nogil=True, cache=True)
def pack_rows(sources, out, worker, n_workers):
    """out[i] = the concatenation of row i of each of ``sources`` (a tuple of [R, F_s] float64 arrays), in one
    pass over ``worker``'s contiguous block of ``out`` (NumPy's concatenate of narrow columns sweeps it once
    per source, on one thread)."""
    start, stop = block_share(out.shape[0], worker, n_workers)
    for i in range(start, stop):
        col = 0
        for src in sources:
            for f in range(src.shape[1]):
                out[i, col + f] = src[i, f]
            col += src.shape[1]


@njit(nogil=True, cache=True)
def scatter_columns(rows, order, outs, worker, n_workers):
    """outs[s][order[r]] = the s-th consecutive column block of rows[r], for ``worker``'s contiguous block of
    ranks r: per-rank gradient rows [V, F] to per-(camera, Gaussian) blocks [C * N, F_s] (zeroed, all
    float32 or all float64), converted to the caller's dtype in the same pass. Ranks are distinct (camera,
    Gaussian) ids, so workers never write the same row."""
    start, stop = block_share(order.shape[0], worker, n_workers)
    for r in range(start, stop):
        i = order[r]
        col = 0
        for out in outs:
            for f in range(out.shape[1]):
                out[i, f] = rows[r, col + f]
            col += out.shape[1]


# ----------------------------------------------------------------------------------------------------
# Gradient reduction
# ----------------------------------------------------------------------------------------------------


@njit(nogil=True, **KERNEL_OPTIONS)
def reduce_per_gaussian(per_isect, rank_offsets, slot_of, out, worker, n_workers):
    """Sum per-intersection gradient rows [M, F] into per-rank rows ``out`` [V, F] (any contents: each worker
    zeroes its share first).

    Each Gaussian sums its own tiles in a fixed (row-major tile) order, so the result does not depend on
    the thread count.
    """
    F = per_isect.shape[1]
    start, stop = block_share(out.shape[0], worker, n_workers)
    out[start:stop] = 0.0
    end = rank_offsets[stop]
    for r in range(start, stop):
        for k in range(rank_offsets[r], rank_offsets[r + 1]):
            if k + PREFETCH_AHEAD < end:
                prefetch_row(per_isect, slot_of[k + PREFETCH_AHEAD])
            slot = slot_of[k]
            for f in range(F):
                out[r, f] += per_isect[slot, f]


MAX_EXTENT_SIGMAS = 3.33  # gsplat's bounding-box half-size in standard deviations


@njit(**KERNEL_OPTIONS, inline="always")
def quaternion_rotation(quats, n):
    """The normalised wxyz quaternion of row n (w, x, y, z), its norm (at least F.normalize's eps 1e-12) and
    its rotation matrix, row by row (r00, r01, ..., r22): all scalars, so that the kernels keep them in
    registers (in small scratch matrices the projections ran 1.5-2x slower)."""
    q0, q1, q2, q3 = quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3]
    norm = max(math.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3), 1e-12)
    inv = 1.0 / norm
    w, x, y, z = q0 * inv, q1 * inv, q2 * inv, q3 * inv
    return (
        w, x, y, z, norm,
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )


@njit(**KERNEL_OPTIONS, inline="always")
def quaternion_grad(g00, g01, g02, g10, g11, g12, g20, g21, g22, w, x, y, z, norm):
    """dL/dq (4 values) from dL/dR = G, through the normalisation q / |q| (w, x, y, z normalised)."""
    gw = 2 * (-z * g01 + y * g02 + z * g10 - x * g12 - y * g20 + x * g21)
    gx = 2 * (y * g01 + z * g02 + y * g10 - 2 * x * g11 - w * g12 + z * g20 + w * g21 - 2 * x * g22)
    gy = 2 * (-2 * y * g00 + x * g01 + w * g02 + x * g10 + z * g12 - w * g20 + z * g21 - 2 * y * g22)
    gz = 2 * (-2 * z * g00 - w * g01 + x * g02 + w * g10 - 2 * z * g11 + y * g12 + x * g20 + y * g21)
    dot = w * gw + x * gx + y * gy + z * gz
    return (gw - w * dot) / norm, (gx - x * dot) / norm, (gy - y * dot) / norm, (gz - z * dot) / norm


@njit(**KERNEL_OPTIONS)
def _rotmat(q, R):
    """Fill R [3, 3] from a wxyz quaternion; returns the normalised quaternion and the norm.

    The 3DGS projection's own copy of :func:`quaternion_rotation`'s formulas. With the projection in scalars,
    as the 2DGS one is (1.6-2x faster), the 3DGS kernels rounded some conics and mean gradients differently in
    their last bits, and training turned that into moves of up to 0.31 dB in FSGS's published rows. Keeping
    this function and :func:`_camera_covariance` with only the rest in scalars did not help: the difference is
    in how LLVM fuses the later expressions' multiply-adds. So the scratch-matrix form stays until the 3DGS
    projection is rewritten with its tables made again."""
    q0, q1, q2, q3 = np.float64(q[0]), np.float64(q[1]), np.float64(q[2]), np.float64(q[3])
    norm = math.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3)
    inv = 1.0 / max(norm, 1e-12)  # F.normalize's eps
    w, x, y, z = q0 * inv, q1 * inv, q2 * inv, q3 * inv
    R[0, 0] = 1 - 2 * (y * y + z * z)
    R[0, 1] = 2 * (x * y - w * z)
    R[0, 2] = 2 * (x * z + w * y)
    R[1, 0] = 2 * (x * y + w * z)
    R[1, 1] = 1 - 2 * (x * x + z * z)
    R[1, 2] = 2 * (y * z - w * x)
    R[2, 0] = 2 * (x * z - w * y)
    R[2, 1] = 2 * (y * z + w * x)
    R[2, 2] = 1 - 2 * (x * x + y * y)
    return w, x, y, z, max(norm, 1e-12)


@njit(**KERNEL_OPTIONS)
def _quat_grad(G, w, x, y, z, norm, out):
    """Add dL/dq to ``out`` [4], from dL/dR = G [3, 3] (:func:`quaternion_grad`)."""
    g0, g1, g2, g3 = quaternion_grad(G[0, 0], G[0, 1], G[0, 2], G[1, 0], G[1, 1], G[1, 2], G[2, 0], G[2, 1], G[2, 2],
                                     w, x, y, z, norm)
    out[0] += g0
    out[1] += g1
    out[2] += g2
    out[3] += g3


@njit(**KERNEL_OPTIONS)
def _inside_image(mx, my, rx, ry, width, height):
    return mx + rx > 0 and mx - rx < width and my + ry > 0 and my - ry < height


# ----------------------------------------------------------------------------------------------------
# Projection: 3D Gaussians (EWA splatting)
# ----------------------------------------------------------------------------------------------------


@njit(**KERNEL_OPTIONS)
def _camera_covariance(q, s, V, R, A, Sc):
    """Fill R = R(q), A = R_cw R S and Sc = A A^T; returns the normalised quaternion and its norm."""
    w, x, y, z, norm = _rotmat(q, R)
    for i in range(3):
        for j in range(3):
            A[i, j] = (V[i, 0] * R[0, j] + V[i, 1] * R[1, j] + V[i, 2] * R[2, j]) * s[j]
    for i in range(3):
        for j in range(3):
            Sc[i, j] = A[i, 0] * A[j, 0] + A[i, 1] * A[j, 1] + A[i, 2] * A[j, 2]
    return w, x, y, z, norm


@njit(**KERNEL_OPTIONS)
def _fov_limits(K, width, height):
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    return lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg


@njit(**KERNEL_OPTIONS, inline="always")
def store_projection(c, n, mx, my, c0, c1, c2, z, means2d, conics, depths, twins):
    """One (camera, Gaussian)'s projection into the float64 outputs and their twins (see :func:`project_3dgs_fwd`)."""
    means2d[c, n, 0], means2d[c, n, 1] = mx, my
    conics[c, n, 0], conics[c, n, 1], conics[c, n, 2] = c0, c1, c2
    depths[c, n] = z
    twins[0][c, n, 0], twins[0][c, n, 1] = mx, my
    twins[1][c, n, 0], twins[1][c, n, 1], twins[1][c, n, 2] = c0, c1, c2
    twins[2][c, n] = z


@njit(nogil=True, **KERNEL_OPTIONS)
def project_3dgs_fwd(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near, far,
                     radius_clip, means2d, conics, depths, radii, twins, worker, n_workers):
    """Fill means2d [C, N, 2], conics [C, N, 3], depths [C, N], radii [C, N, 2] int32 (any contents: culled pairs
    get zeros), and ``twins``, a tuple of arrays shaped as the first three, with the same values in their own dtype
    (float32 for a float32 caller, as NumPy's astype rounds; or the same three arrays)."""
    C, N = viewmats.shape[0], means.shape[0]
    start, stop = block_share(C * N, worker, n_workers)
    if start >= stop:
        return
    R, A, Sc = np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3))  # scratch
    c, n = start // N, start % N - 1
    V, K = viewmats[c], Ks[c]
    lxp, lxn, lyp, lyn = _fov_limits(K, width, height)
    for _ in range(start, stop):
        n += 1  # (c, n) walks the share: no integer divisions, FOV limits once per camera (-19% here)
        if n == N:
            c, n = c + 1, 0
            V, K = viewmats[c], Ks[c]
            lxp, lxn, lyp, lyn = _fov_limits(K, width, height)
        store_projection(c, n, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, means2d, conics, depths, twins)
        radii[c, n, 0], radii[c, n, 1] = 0, 0
        x = V[0, 0] * means[n, 0] + V[0, 1] * means[n, 1] + V[0, 2] * means[n, 2] + V[0, 3]
        y = V[1, 0] * means[n, 0] + V[1, 1] * means[n, 1] + V[1, 2] * means[n, 2] + V[1, 3]
        z = V[2, 0] * means[n, 0] + V[2, 1] * means[n, 1] + V[2, 2] * means[n, 2] + V[2, 3]
        if not (z >= near and z <= far):
            continue
        o = np.float64(opacities[n])
        if not (o >= ALPHA_THRESHOLD):
            continue
        _camera_covariance(quats[n], scales[n], V, R, A, Sc)
        fx, fy = K[0, 0], K[1, 1]
        tx = z * min(max(x / z, -lxn), lxp)
        ty = z * min(max(y / z, -lyn), lyp)
        # J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]];  cov2d = J Sc J^T
        j00, j02 = fx / z, -fx * tx / (z * z)
        j11, j12 = fy / z, -fy * ty / (z * z)
        a = j00 * j00 * Sc[0, 0] + 2 * j00 * j02 * Sc[0, 2] + j02 * j02 * Sc[2, 2] + eps2d
        b = j00 * (j11 * Sc[0, 1] + j12 * Sc[0, 2]) + j02 * (j11 * Sc[2, 1] + j12 * Sc[2, 2])
        cc = j11 * j11 * Sc[1, 1] + 2 * j11 * j12 * Sc[1, 2] + j12 * j12 * Sc[2, 2] + eps2d
        det = a * cc - b * b
        if not (det > 0):
            continue
        extend = min(math.sqrt(2.0 * math.log(max(o, ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), MAX_EXTENT_SIGMAS)
        rx = math.ceil(extend * math.sqrt(max(a, 0.0)))
        ry = math.ceil(extend * math.sqrt(max(cc, 0.0)))
        if not (rx > radius_clip or ry > radius_clip):
            continue
        mx = fx * x / z + K[0, 2]
        my = fy * y / z + K[1, 2]
        if not _inside_image(mx, my, rx, ry, width, height):
            continue
        store_projection(c, n, mx, my, cc / det, -b / det, a / det, z, means2d, conics, depths, twins)
        radii[c, n, 0], radii[c, n, 1] = int(rx), int(ry)


@njit(**KERNEL_OPTIONS, inline="always")
def store_sums(n, gm, gq, gs, v_means, v_quats, v_scales):
    """Row n of the projections' gradient outputs from one Gaussian's float64 sums (converted to the outputs'
    dtype as NumPy's astype converts)."""
    for i in range(3):
        v_means[n, i] = gm[i]
        v_scales[n, i] = gs[i]
    for i in range(4):
        v_quats[n, i] = gq[i]


@njit(nogil=True, **KERNEL_OPTIONS)
def project_3dgs_bwd(means, quats, scales, viewmats, Ks, width, height, eps2d, radii, conics,
                     v_means2d, v_conics, v_depths, v_means, v_quats, v_scales, worker, n_workers):
    """Fill ``v_means`` [N, 3], ``v_quats`` [N, 4] and ``v_scales`` [N, 3] (any contents, float32 or float64) with
    dL/dmeans, dL/dquats and dL/dscales, summed over cameras in float64 and stored once in the arrays' dtype."""
    C, N = viewmats.shape[0], means.shape[0]
    start, stop = block_share(N, worker, n_workers)
    R, A, Sc, G, dA = np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3))
    gm, gq, gs = np.empty(3), np.empty(4), np.empty(3)  # one Gaussian's sums over cameras
    for n in range(start, stop):
        gm[:], gq[:], gs[:] = 0.0, 0.0, 0.0
        for c in range(C):
            if radii[c, n, 0] <= 0 or radii[c, n, 1] <= 0:
                continue
            V, K = viewmats[c], Ks[c]
            x = V[0, 0] * means[n, 0] + V[0, 1] * means[n, 1] + V[0, 2] * means[n, 2] + V[0, 3]
            y = V[1, 0] * means[n, 0] + V[1, 1] * means[n, 1] + V[1, 2] * means[n, 2] + V[1, 3]
            z = V[2, 0] * means[n, 0] + V[2, 1] * means[n, 1] + V[2, 2] * means[n, 2] + V[2, 3]
            w, qx, qy, qz, norm = _camera_covariance(quats[n], scales[n], V, R, A, Sc)
            fx, fy = K[0, 0], K[1, 1]
            lxp, lxn, lyp, lyn = _fov_limits(K, width, height)
            sx, sy = x / z, y / z
            x_free = sx >= -lxn and sx <= lxp  # the clamp passes gradient to x (else tx = z * limit)
            y_free = sy >= -lyn and sy <= lyp
            tx = z * min(max(sx, -lxn), lxp)
            ty = z * min(max(sy, -lyn), lyp)
            j00, j02 = fx / z, -fx * tx / (z * z)
            j11, j12 = fy / z, -fy * ty / (z * z)

            # conic = inverse(cov2d + eps2d I): dL/dcov2d = -conic Gs conic, Gs the symmetric dL/dconic
            c0, c1, c2 = conics[c, n, 0], conics[c, n, 1], conics[c, n, 2]
            g0, g1, g2 = v_conics[c, n, 0], 0.5 * v_conics[c, n, 1], v_conics[c, n, 2]
            # P = Gs conic
            p00, p01 = g0 * c0 + g1 * c1, g0 * c1 + g1 * c2
            p10, p11 = g1 * c0 + g2 * c1, g1 * c1 + g2 * c2
            v00 = -(c0 * p00 + c1 * p10)
            v01 = -(c0 * p01 + c1 * p11)
            v11 = -(c1 * p01 + c2 * p11)
            # cov2d = J Sc J^T: dL/dJ = 2 V2 J Sc, dL/dSc = J^T V2 J (V2 = [[v00, v01], [v01, v11]])
            # J Sc rows (J has zeros at [0, 1] and [1, 0])
            js00 = j00 * Sc[0, 0] + j02 * Sc[2, 0]
            js01 = j00 * Sc[0, 1] + j02 * Sc[2, 1]
            js02 = j00 * Sc[0, 2] + j02 * Sc[2, 2]
            js10 = j11 * Sc[1, 0] + j12 * Sc[2, 0]
            js11 = j11 * Sc[1, 1] + j12 * Sc[2, 1]
            js12 = j11 * Sc[1, 2] + j12 * Sc[2, 2]
            vj00 = 2 * (v00 * js00 + v01 * js10)
            vj02 = 2 * (v00 * js02 + v01 * js12)
            vj11 = 2 * (v01 * js01 + v11 * js11)
            vj12 = 2 * (v01 * js02 + v11 * js12)
            # dL/dSc = J^T V2 J, J columns: col0 = (j00, 0), col1 = (0, j11), col2 = (j02, j12)
            a0, a1 = v00 * j00, v01 * j00  # V2 col0 * j00
            b0, b1 = v01 * j11, v11 * j11  # V2 col1 * j11
            e0, e1 = v00 * j02 + v01 * j12, v01 * j02 + v11 * j12  # V2 J col2
            G[0, 0] = j00 * a0
            G[0, 1] = j00 * b0
            G[0, 2] = j00 * e0
            G[1, 0] = j11 * a1
            G[1, 1] = j11 * b1
            G[1, 2] = j11 * e1
            G[2, 0] = j02 * a0 + j12 * a1
            G[2, 1] = j02 * b0 + j12 * b1
            G[2, 2] = j02 * e0 + j12 * e1

            # position: means2d, depth, and the Jacobian's dependence on (x, y, z)
            vmx, vmy = v_means2d[c, n, 0], v_means2d[c, n, 1]
            vx = fx / z * vmx
            vy = fy / z * vmy
            vz = -(fx * x * vmx + fy * y * vmy) / (z * z) + v_depths[c, n]
            vz += -fx / (z * z) * vj00 + 2 * fx * tx / (z * z * z) * vj02
            vz += -fy / (z * z) * vj11 + 2 * fy * ty / (z * z * z) * vj12
            vtx = -fx / (z * z) * vj02
            vty = -fy / (z * z) * vj12
            if x_free:
                vx += vtx
            else:
                vz += min(max(sx, -lxn), lxp) * vtx
            if y_free:
                vy += vty
            else:
                vz += min(max(sy, -lyn), lyp) * vty
            for i in range(3):
                gm[i] += V[0, i] * vx + V[1, i] * vy + V[2, i] * vz

            # Sc = A A^T with A = R_cw R S: dL/dA = 2 G A (G symmetric); dL/d(R S) = R_cw^T dL/dA
            for i in range(3):
                for j in range(3):
                    dA[i, j] = 2 * (G[i, 0] * A[0, j] + G[i, 1] * A[1, j] + G[i, 2] * A[2, j])
            s = scales[n]
            for i in range(3):
                for j in range(3):
                    dRS = V[0, i] * dA[0, j] + V[1, i] * dA[1, j] + V[2, i] * dA[2, j]
                    gs[j] += dRS * R[i, j]
                    G[i, j] = dRS * s[j]  # G is now dL/dR
            _quat_grad(G, w, qx, qy, qz, norm, gq)
        store_sums(n, gm, gq, gs, v_means, v_quats, v_scales)


# ----------------------------------------------------------------------------------------------------
# Projection: 2D surfels
# ----------------------------------------------------------------------------------------------------


@njit(**KERNEL_OPTIONS, inline="always")
def surfel_transform(means, quats, scales, n, V, K):
    """Surfel n seen by a camera (world-to-camera V, intrinsics K): its normalised quaternion and norm (as
    :func:`quaternion_rotation`), Rc = R_cw R(q) row by row, its camera-space centre mu_c and the splat-to-pixel
    transform H = K [s_u t_u, s_v t_v, mu_c] row by row, all scalars."""
    w, qx, qy, qz, norm, r00, r01, r02, r10, r11, r12, r20, r21, r22 = quaternion_rotation(quats, n)
    s0, s1 = scales[n, 0], scales[n, 1]
    rc00 = V[0, 0] * r00 + V[0, 1] * r10 + V[0, 2] * r20
    rc01 = V[0, 0] * r01 + V[0, 1] * r11 + V[0, 2] * r21
    rc02 = V[0, 0] * r02 + V[0, 1] * r12 + V[0, 2] * r22
    rc10 = V[1, 0] * r00 + V[1, 1] * r10 + V[1, 2] * r20
    rc11 = V[1, 0] * r01 + V[1, 1] * r11 + V[1, 2] * r21
    rc12 = V[1, 0] * r02 + V[1, 1] * r12 + V[1, 2] * r22
    rc20 = V[2, 0] * r00 + V[2, 1] * r10 + V[2, 2] * r20
    rc21 = V[2, 0] * r01 + V[2, 1] * r11 + V[2, 2] * r21
    rc22 = V[2, 0] * r02 + V[2, 1] * r12 + V[2, 2] * r22
    m0, m1, m2 = means[n, 0], means[n, 1], means[n, 2]
    mc0 = V[0, 0] * m0 + V[0, 1] * m1 + V[0, 2] * m2 + V[0, 3]
    mc1 = V[1, 0] * m0 + V[1, 1] * m1 + V[1, 2] * m2 + V[1, 3]
    mc2 = V[2, 0] * m0 + V[2, 1] * m1 + V[2, 2] * m2 + V[2, 3]
    h00 = (K[0, 0] * rc00 + K[0, 1] * rc10 + K[0, 2] * rc20) * s0
    h01 = (K[0, 0] * rc01 + K[0, 1] * rc11 + K[0, 2] * rc21) * s1
    h02 = K[0, 0] * mc0 + K[0, 1] * mc1 + K[0, 2] * mc2
    h10 = (K[1, 0] * rc00 + K[1, 1] * rc10 + K[1, 2] * rc20) * s0
    h11 = (K[1, 0] * rc01 + K[1, 1] * rc11 + K[1, 2] * rc21) * s1
    h12 = K[1, 0] * mc0 + K[1, 1] * mc1 + K[1, 2] * mc2
    h20 = (K[2, 0] * rc00 + K[2, 1] * rc10 + K[2, 2] * rc20) * s0
    h21 = (K[2, 0] * rc01 + K[2, 1] * rc11 + K[2, 2] * rc21) * s1
    h22 = K[2, 0] * mc0 + K[2, 1] * mc1 + K[2, 2] * mc2
    return ((w, qx, qy, qz, norm), (rc00, rc01, rc02, rc10, rc11, rc12, rc20, rc21, rc22), (mc0, mc1, mc2),
            (h00, h01, h02, h10, h11, h12, h20, h21, h22))


@njit(**KERNEL_OPTIONS, inline="always")
def store_surfel(c, n, m, rows, depth, normal, means2d, transforms, depths, normals):
    """One (camera, surfel)'s projection into :func:`project_2dgs_fwd`'s outputs (or their twins)."""
    means2d[c, n, 0], means2d[c, n, 1] = m
    for i in range(3):
        transforms[c, n, i, 0], transforms[c, n, i, 1], transforms[c, n, i, 2] = rows[i]
        normals[c, n, i] = normal[i]
    depths[c, n] = depth


@njit(nogil=True, **KERNEL_OPTIONS)
def project_2dgs_fwd(means, quats, scales, viewmats, Ks, width, height, near, far, radius_clip,
                     means2d, transforms, depths, normals, radii, twins, worker, n_workers):
    """Fill means2d [C, N, 2], ray_transforms [C, N, 3, 3], depths [C, N], normals [C, N, 3] and radii
    [C, N, 2] int32 (any contents: culled pairs get zeros), and ``twins`` (the first four's, as in
    :func:`project_3dgs_fwd`). Branch-free, every intermediate a scalar: 1.7x
    faster than early exits with scratch matrices (as :func:`project_3dgs_fwd` still has), the same values to
    the bit."""
    C, N = viewmats.shape[0], means.shape[0]
    start, stop = block_share(C * N, worker, n_workers)
    if start >= stop:
        return
    c, n = start // N, start % N - 1
    V, K = viewmats[c], Ks[c]
    for _ in range(start, stop):
        n += 1  # (c, n) walks the share without two integer divisions per surfel
        if n == N:
            c, n = c + 1, 0
            V, K = viewmats[c], Ks[c]
        # Rc = R_cw R(q); H = K [s_u t_u, s_v t_v, mu_c]
        (w, qx, qy, qz, norm), (rc00, rc01, rc02, rc10, rc11, rc12, rc20, rc21, rc22), (mc0, mc1, mc2), (
            h00, h01, h02, h10, h11, h12, h20, h21, h22) = surfel_transform(means, quats, scales, n, V, K)
        # bounding box of the 1-sigma ellipse in closed form, with signs (1, 1, -1)
        dist = h20 * h20 + h21 * h21 - h22 * h22
        mx = (h00 * h20 + h01 * h21 - h02 * h22) / dist
        my = (h10 * h20 + h11 * h21 - h12 * h22) / dist
        sx = (h00 * h00 + h01 * h01 - h02 * h02) / dist
        sy = (h10 * h10 + h11 * h11 - h12 * h12) / dist
        rx = math.ceil(MAX_EXTENT_SIGMAS * math.sqrt(max(mx * mx - sx, 1e-4)))
        ry = math.ceil(MAX_EXTENT_SIGMAS * math.sqrt(max(my * my - sy, 1e-4)))
        keep = (dist != 0 and mc2 > near and mc2 < far and (rx > radius_clip or ry > radius_clip)
                and _inside_image(mx, my, rx, ry, width, height))
        sign = 1.0 if -(rc02 * mc0 + rc12 * mc1 + rc22 * mc2) > 0 else -1.0  # facing the camera
        if not keep:
            sign = 0.0
        m = (mx, my) if keep else (0.0, 0.0)
        normal = (sign * rc02, sign * rc12, sign * rc22)
        rows = ((h00, h01, h02), (h10, h11, h12), (h20, h21, h22)) if keep else ((0.0, 0.0, 0.0),) * 3
        depth = mc2 if keep else 0.0
        store_surfel(c, n, m, rows, depth, normal, means2d, transforms, depths, normals)
        store_surfel(c, n, m, rows, depth, normal, twins[0], twins[1], twins[2], twins[3])
        radii[c, n, 0], radii[c, n, 1] = (int(rx), int(ry)) if keep else (0, 0)


@njit(nogil=True, **KERNEL_OPTIONS)
def project_2dgs_bwd(means, quats, scales, viewmats, Ks, radii, v_means2d, v_transforms, v_depths,
                     v_normals, v_means, v_quats, v_scales, worker, n_workers):
    """Fill ``v_means`` [N, 3], ``v_quats`` [N, 4] and ``v_scales`` [N, 3] as :func:`project_3dgs_bwd` does (the third
    scale gets none). Every intermediate a scalar: 1.8x faster than with scratch matrices (as
    :func:`project_3dgs_bwd` still has), the same values to the bit."""
    C, N = viewmats.shape[0], means.shape[0]
    start, stop = block_share(N, worker, n_workers)
    gm, gq, gs = np.empty(3), np.empty(4), np.empty(3)  # one surfel's sums over cameras
    for n in range(start, stop):
        gm[:], gq[:], gs[:] = 0.0, 0.0, 0.0
        for c in range(C):
            if radii[c, n, 0] <= 0 or radii[c, n, 1] <= 0:
                continue
            V, K = viewmats[c], Ks[c]
            # Rc = R_cw R(q); H = K [s_u t_u, s_v t_v, mu_c]
            (w, qx, qy, qz, norm), (rc00, rc01, rc02, rc10, rc11, rc12, rc20, rc21, rc22), (mc0, mc1, mc2), (
                h00, h01, h02, h10, h11, h12, h20, h21, h22) = surfel_transform(means, quats, scales, n, V, K)
            s0, s1 = scales[n, 0], scales[n, 1]
            vh00 = v_transforms[c, n, 0, 0]
            vh01 = v_transforms[c, n, 0, 1]
            vh02 = v_transforms[c, n, 0, 2]
            vh10 = v_transforms[c, n, 1, 0]
            vh11 = v_transforms[c, n, 1, 1]
            vh12 = v_transforms[c, n, 1, 2]
            vh20 = v_transforms[c, n, 2, 0]
            vh21 = v_transforms[c, n, 2, 1]
            vh22 = v_transforms[c, n, 2, 2]
            # means2d = (sum_k s_k H0k H2k, sum_k s_k H1k H2k) / dist, dist = sum_k s_k H2k^2, s = (1, 1, -1)
            dist = h20 * h20 + h21 * h21 - h22 * h22
            mx = (h00 * h20 + h01 * h21 - h02 * h22) / dist
            my = (h10 * h20 + h11 * h21 - h12 * h22) / dist
            vmx, vmy = v_means2d[c, n, 0], v_means2d[c, n, 1]
            vh00 += vmx * h20 / dist
            vh10 += vmy * h20 / dist
            vh20 += (vmx * h00 + vmy * h10 - 2 * (vmx * mx + vmy * my) * h20) / dist
            vh01 += vmx * h21 / dist
            vh11 += vmy * h21 / dist
            vh21 += (vmx * h01 + vmy * h11 - 2 * (vmx * mx + vmy * my) * h21) / dist
            vh02 += vmx * -1.0 * h22 / dist  # the third column's sign in dist and means2d (written so: same bits)
            vh12 += vmy * -1.0 * h22 / dist
            vh22 += (vmx * -1.0 * h02 + vmy * -1.0 * h12 - 2 * (vmx * mx + vmy * my) * -1.0 * h22) / dist
            # H = K WH: dL/dWH = K^T dL/dH
            vwh00 = K[0, 0] * vh00 + K[1, 0] * vh10 + K[2, 0] * vh20
            vwh01 = K[0, 0] * vh01 + K[1, 0] * vh11 + K[2, 0] * vh21
            vwh02 = K[0, 0] * vh02 + K[1, 0] * vh12 + K[2, 0] * vh22
            vwh10 = K[0, 1] * vh00 + K[1, 1] * vh10 + K[2, 1] * vh20
            vwh11 = K[0, 1] * vh01 + K[1, 1] * vh11 + K[2, 1] * vh21
            vwh12 = K[0, 1] * vh02 + K[1, 1] * vh12 + K[2, 1] * vh22
            vwh20 = K[0, 2] * vh00 + K[1, 2] * vh10 + K[2, 2] * vh20
            vwh21 = K[0, 2] * vh01 + K[1, 2] * vh11 + K[2, 2] * vh21
            vwh22 = K[0, 2] * vh02 + K[1, 2] * vh12 + K[2, 2] * vh22
            vrc00, vrc01 = vwh00 * s0, vwh01 * s1
            vrc10, vrc11 = vwh10 * s0, vwh11 * s1
            vrc20, vrc21 = vwh20 * s0, vwh21 * s1
            gs[0] += rc00 * vwh00 + rc10 * vwh10 + rc20 * vwh20
            gs[1] += rc01 * vwh01 + rc11 * vwh11 + rc21 * vwh21
            sign = 1.0 if -(rc02 * mc0 + rc12 * mc1 + rc22 * mc2) > 0 else -1.0  # facing the camera
            vrc02 = sign * v_normals[c, n, 0]
            vrc12 = sign * v_normals[c, n, 1]
            vrc22 = sign * v_normals[c, n, 2]
            vmc0, vmc1, vmc2 = vwh02, vwh12, vwh22 + v_depths[c, n]
            # Rc = R_cw R: dL/dR = R_cw^T dL/dRc
            gm[0] += V[0, 0] * vmc0 + V[1, 0] * vmc1 + V[2, 0] * vmc2
            gr00 = V[0, 0] * vrc00 + V[1, 0] * vrc10 + V[2, 0] * vrc20
            gr01 = V[0, 0] * vrc01 + V[1, 0] * vrc11 + V[2, 0] * vrc21
            gr02 = V[0, 0] * vrc02 + V[1, 0] * vrc12 + V[2, 0] * vrc22
            gm[1] += V[0, 1] * vmc0 + V[1, 1] * vmc1 + V[2, 1] * vmc2
            gr10 = V[0, 1] * vrc00 + V[1, 1] * vrc10 + V[2, 1] * vrc20
            gr11 = V[0, 1] * vrc01 + V[1, 1] * vrc11 + V[2, 1] * vrc21
            gr12 = V[0, 1] * vrc02 + V[1, 1] * vrc12 + V[2, 1] * vrc22
            gm[2] += V[0, 2] * vmc0 + V[1, 2] * vmc1 + V[2, 2] * vmc2
            gr20 = V[0, 2] * vrc00 + V[1, 2] * vrc10 + V[2, 2] * vrc20
            gr21 = V[0, 2] * vrc01 + V[1, 2] * vrc11 + V[2, 2] * vrc21
            gr22 = V[0, 2] * vrc02 + V[1, 2] * vrc12 + V[2, 2] * vrc22
            vq0, vq1, vq2, vq3 = quaternion_grad(gr00, gr01, gr02, gr10, gr11, gr12, gr20, gr21, gr22,
                                                 w, qx, qy, qz, norm)
            gq[0] += vq0
            gq[1] += vq1
            gq[2] += vq2
            gq[3] += vq3
        store_sums(n, gm, gq, gs, v_means, v_quats, v_scales)


# ----------------------------------------------------------------------------------------------------
# 3DGS compositing
# ----------------------------------------------------------------------------------------------------

N_GEOM_3D = 6  # per-Gaussian row: mean x, mean y, conic a, b, c, opacity; then the D features
SPAN_MARGIN = 1e-6  # relative slack on the ellipse's sigma bound, so rounding never shrinks a span
PIXEL_MARGIN = 1e-3  # and slack in pixels on the solved row and column limits
# A surfel's image whose leading quadratic coefficient is within this fraction of its terms' magnitude is taken as
# unbounded (whole rows / tiles): near a parabola the near root loses its digits to cancellation.
PARABOLIC_MARGIN = 1e-9


@njit(**KERNEL_OPTIONS)
def tile_origin(tile, tile_w, tile_h, width, height):
    """Camera index, first pixel (x0, y0) and one-past-last pixel (x1, y1) of a global tile id."""
    per_camera = tile_w * tile_h
    cam = tile // per_camera
    local = tile - cam * per_camera
    x0 = (local % tile_w) * TILE_SIZE
    y0 = (local // tile_w) * TILE_SIZE
    return cam, x0, y0, min(x0 + TILE_SIZE, width), min(y0 + TILE_SIZE, height)


@njit(**KERNEL_OPTIONS)
def sigma_bound(o):
    """Largest sigma at which o exp(-sigma) can still reach 1/255 (negative: never), with slack."""
    if o < ALPHA_THRESHOLD:
        return -1.0
    s = math.log(o / ALPHA_THRESHOLD)
    return s + SPAN_MARGIN * (1.0 + s)


@njit(**KERNEL_OPTIONS)
def positive_definite(a, b, c):
    """Whether the conic (a, b, c) is positive definite: the projection only makes such (its 2D covariance
    has eps2d added), and the kernels skip any other Gaussian rather than handle sigma < 0."""
    return a > 0 and a * c - b * b > 0


@njit(**KERNEL_OPTIONS)
def ellipse_rows(mx, my, a, b, c, smax, y0, y1, full_tile):
    """Rows [lo, hi) of the tile that the ellipse sigma <= smax reaches."""
    if full_tile:
        return y0, y1
    ey = math.sqrt(2.0 * smax * a / (a * c - b * b))  # max |dy| on the ellipse
    return pixel_range(my - ey, my + ey, y0, y1)


@njit(**KERNEL_OPTIONS)
def pixel_range(lo_f, hi_f, start, stop):
    """Pixels [lo, hi) within [start, stop) whose centre (index + 0.5) lies in [lo_f, hi_f], with slack. The limits
    are clamped to [start - 1, stop + 1] first, so that a huge one never overflows the integer conversion."""
    lo_f = min(max(lo_f, start - 1.0), stop + 1.0)
    hi_f = min(max(hi_f, start - 1.0), stop + 1.0)
    lo = max(start, int(math.ceil(lo_f - 0.5 - PIXEL_MARGIN)))
    hi = min(stop, int(math.floor(hi_f - 0.5 + PIXEL_MARGIN)) + 1)
    return lo, max(lo, hi)


@njit(**KERNEL_OPTIONS, inline="always")  # numba-level inlining: a call per Gaussian cost 3-8%
def ellipse_row_setup(mx, my, a, b, c, ha, smax, ylo, n_rows, x0, x1, full_tile, spans, starts):
    """For the rows from ylo on (index i = y - ylo): the columns [lo, hi) where sigma <= smax can hold into
    ``spans[:, i]``, and exp(-sigma) at the span's first pixel and the ratio to the next (the row
    recurrence's start) into ``starts[:, i]``; ``spans`` and ``starts`` are [2, TILE_SIZE].

    A fixed number of row slots is computed, branch-free, whether the Gaussian reaches them or not (the
    caller reads only its ``n_rows`` rows): LLVM then runs the rows' square roots, divisions and exps as
    vectors (:func:`exp_inline`), which made the 3DGS kernels 8-21% faster than a scalar loop over just the
    Gaussian's rows (five on average) with libm's exp. That number is ROW_BLOCK when the Gaussian reaches at
    most that many rows, else TILE_SIZE: small images have few rows per intersection (1.6 at 300k Gaussians
    on 256x160), and 8 slots instead of 16 made the 3DGS kernels 8-20% faster there, 2DGS 3-11% (same bits). The
    loop body stays written out here: moved into an inline helper, LLVM no longer vectorized it. An empty
    span leaves a finite, unused start."""
    det = a * c - b * b
    for i in range(ROW_BLOCK if n_rows <= ROW_BLOCK else TILE_SIZE):
        dy = my - (ylo + i + 0.5)
        # 0.5 a dx^2 + b dy dx + 0.5 c dy^2 <= smax  <=>  (a dx + b dy)^2 <= 2 a smax - det dy^2
        disc = 2.0 * a * smax - det * dy * dy
        half = math.sqrt(max(disc, 0.0)) / a
        centre = mx + b * dy / a  # pixel x at the row's sigma minimum (dx = mx - x = -b dy / a)
        lo, hi = pixel_range(centre - half, centre + half, x0, x1)
        if full_tile:
            lo, hi = x0, x1
        elif disc < 0:
            lo, hi = x0, x0
        spans[0, i], spans[1, i] = lo, hi
        dx = mx - (lo + 0.5)
        row_b = b * dy
        starts[0, i] = exp_inline(-(0.5 * c * dy * dy + dx * (ha * dx + row_b)))  # exp(-sigma) at lo
        starts[1, i] = exp_inline(a * dx + row_b - ha)  # E(lo + 1) / E(lo)


@njit(nogil=True, **KERNEL_OPTIONS)
def rasterize_3dgs_fwd(params, tile_offsets, flatten_ids, tile_w, tile_h, full_tile, colors, T_final, last,
                       pairs, worker, n_workers):
    """Fill colours [C, H, W, D], final transmittance [C, H, W], last composited index [C, H, W] (into
    ``flatten_ids``, -1 if none) and, per tile, the Gaussian-pixel pairs evaluated and the Gaussian-rows
    set up [n_tiles, 2] (the work counts behind the benchmark's compute bound)."""
    D = params.shape[1] - N_GEOM_3D
    height, width = T_final.shape[1], T_final.shape[2]
    n_tiles = tile_offsets.shape[0] - 1
    for tile in range(worker, n_tiles, n_workers):
        cam, x0, y0, x1, y1 = tile_origin(tile, tile_w, tile_h, width, height)
        T = np.ones(TILE_PIXELS)
        acc = np.zeros((TILE_PIXELS, D))
        last_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        spans = np.empty((2, TILE_SIZE), dtype=np.int64)
        starts = np.empty((2, TILE_SIZE))
        n_live = (x1 - x0) * (y1 - y0)
        n_pairs = n_rows = 0
        end = tile_offsets[tile + 1]
        for j in range(tile_offsets[tile], end):
            if n_live == 0:
                break
            if j + PREFETCH_AHEAD < end:
                prefetch_row(params, flatten_ids[j + PREFETCH_AHEAD])
            g = params[flatten_ids[j]]
            mx, my, a, b, c, o = g[0], g[1], g[2], g[3], g[4], g[5]
            smax = sigma_bound(o)
            if smax < 0 or not positive_definite(a, b, c):
                continue
            feat = g[N_GEOM_3D:]
            f0, f1, f2, f3, _, _, _ = unrolled_features(feat, D)
            ha = 0.5 * a
            q = math.exp(-a)  # the ratio E(x + 1) / E(x) shrinks by this factor per pixel
            ylo, yhi = ellipse_rows(mx, my, a, b, c, smax, y0, y1, full_tile)
            n_rows += yhi - ylo
            ellipse_row_setup(mx, my, a, b, c, ha, smax, ylo, yhi - ylo, x0, x1, full_tile, spans, starts)
            for y in range(ylo, yhi):
                i = y - ylo
                xlo, xhi = spans[0, i], spans[1, i]
                if xlo >= xhi:
                    continue
                p0 = (y - y0) * TILE_SIZE - x0
                E, r = starts[0, i], starts[1, i]
                for x in range(xlo, xhi):
                    p = p0 + x
                    Ex = E
                    E *= r
                    r *= q
                    Tp = T[p]
                    if Tp < 0:  # done: T is kept negated
                        continue
                    n_pairs += 1
                    alpha = min(MAX_ALPHA, o * Ex)
                    if alpha < ALPHA_THRESHOLD:
                        continue
                    next_T = Tp * (1.0 - alpha)
                    if next_T <= MIN_TRANSMITTANCE:
                        T[p] = -Tp
                        n_live -= 1
                        continue
                    vis = alpha * Tp
                    if D == UNROLLED_FEATURES:
                        acc[p, 0] += vis * f0
                        acc[p, 1] += vis * f1
                        acc[p, 2] += vis * f2
                        acc[p, 3] += vis * f3
                    else:
                        for k in range(D):
                            acc[p, k] += vis * feat[k]
                    last_t[p] = j
                    T[p] = next_T
        pairs[tile, 0] = n_pairs
        pairs[tile, 1] = n_rows
        for y in range(y0, y1):
            for x in range(x0, x1):
                p = (y - y0) * TILE_SIZE + (x - x0)
                T_final[cam, y, x] = abs(T[p])
                last[cam, y, x] = last_t[p]
                for k in range(D):
                    colors[cam, y, x, k] = acc[p, k]


@njit(nogil=True, **KERNEL_OPTIONS)
def rasterize_3dgs_bwd(params, tile_offsets, flatten_ids, tile_w, tile_h, full_tile, T_final, last, v_colors,
                       v_T, per_isect, worker, n_workers):
    """Fill per-intersection gradient rows ``per_isect`` [M, 6 + D] (any contents; each tile zeroes its rows):
    dL/d(mean x, mean y, conic a, b, c, opacity, features). ``v_colors`` [C, H, W, D] and ``v_T`` [C, H, W]
    are the gradients of the forward's outputs."""
    D = params.shape[1] - N_GEOM_3D
    height, width = T_final.shape[1], T_final.shape[2]
    n_tiles = tile_offsets.shape[0] - 1
    for tile in range(worker, n_tiles, n_workers):
        start, end = tile_offsets[tile], tile_offsets[tile + 1]
        per_isect[start:end] = 0.0  # rows of the Gaussians this tile skips or never reaches stay zero
        if start == end:
            continue
        cam, x0, y0, x1, y1 = tile_origin(tile, tile_w, tile_h, width, height)
        T = np.ones(TILE_PIXELS)
        later = np.zeros(TILE_PIXELS)  # dL/dT_final T_final + sum over later Gaussians of w dL/dw
        last_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        g_out = np.zeros((TILE_PIXELS, D))
        spans = np.empty((2, TILE_SIZE), dtype=np.int64)
        starts = np.empty((2, TILE_SIZE))
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
        grad = np.zeros(N_GEOM_3D + D)
        for j in range(newest, start - 1, -1):
            if j - PREFETCH_AHEAD >= start:
                prefetch_row(params, flatten_ids[j - PREFETCH_AHEAD])
            g = params[flatten_ids[j]]
            mx, my, a, b, c, o = g[0], g[1], g[2], g[3], g[4], g[5]
            smax = sigma_bound(o)
            if smax < 0 or not positive_definite(a, b, c):
                continue
            grad[:] = 0.0
            feat = g[N_GEOM_3D:]
            f0, f1, f2, f3, _, _, _ = unrolled_features(feat, D)
            v_f0 = v_f1 = v_f2 = v_f3 = 0.0  # dL/dfeatures in registers on the unrolled path
            # geometry gradients in registers: dL/dsigma summed per row as sum v, sum v d, sum v d^2 (d = dx),
            # then chained through sigma = 0.5 a d^2 + b d dy + 0.5 c dy^2 once per row
            v_mx = v_my = v_a = v_b = v_c = v_o = 0.0
            ha = 0.5 * a
            q = math.exp(-a)
            ylo, yhi = ellipse_rows(mx, my, a, b, c, smax, y0, y1, full_tile)
            ellipse_row_setup(mx, my, a, b, c, ha, smax, ylo, yhi - ylo, x0, x1, full_tile, spans, starts)
            for y in range(ylo, yhi):
                i = y - ylo
                xlo, xhi = spans[0, i], spans[1, i]
                if xlo >= xhi:
                    continue
                dy = my - (y + 0.5)
                p0 = (y - y0) * TILE_SIZE - x0
                dx = mx - (xlo + 0.5)
                vis, r = starts[0, i], starts[1, i]
                s0 = s1 = s2 = 0.0
                for x in range(xlo, xhi):
                    p = p0 + x
                    e = vis
                    d = dx
                    vis *= r
                    r *= q
                    dx -= 1.0
                    if j > last_t[p]:
                        continue
                    alpha = min(MAX_ALPHA, o * e)
                    if alpha < ALPHA_THRESHOLD:
                        continue
                    inv_one_minus = 1.0 / (1.0 - alpha)
                    T_k = T[p] * inv_one_minus  # transmittance in front of this Gaussian
                    w = alpha * T_k
                    if D == UNROLLED_FEATURES:
                        o0, o1, o2, o3 = g_out[p, 0], g_out[p, 1], g_out[p, 2], g_out[p, 3]
                        qf = f0 * o0 + f1 * o1 + f2 * o2 + f3 * o3  # dL/dw = feature . dL/dcolour
                        v_f0 += w * o0
                        v_f1 += w * o1
                        v_f2 += w * o2
                        v_f3 += w * o3
                    else:
                        qf = 0.0
                        for k in range(D):
                            qf += feat[k] * g_out[p, k]
                            grad[N_GEOM_3D + k] += w * g_out[p, k]
                    v_alpha = T_k * qf - later[p] * inv_one_minus
                    if o * e <= MAX_ALPHA:  # clamped alphas pass no gradient (gsplat)
                        v_o += e * v_alpha
                        v_sigma = -alpha * v_alpha
                        s0 += v_sigma
                        s1 += v_sigma * d
                        s2 += v_sigma * d * d
                    later[p] += w * qf
                    T[p] = T_k
                v_mx += a * s1 + b * dy * s0
                v_my += b * s1 + c * dy * s0
                v_a += 0.5 * s2
                v_b += dy * s1
                v_c += 0.5 * dy * dy * s0
            grad[0], grad[1], grad[2], grad[3], grad[4], grad[5] = v_mx, v_my, v_a, v_b, v_c, v_o
            if D == UNROLLED_FEATURES:
                grad[N_GEOM_3D:N_GEOM_3D + UNROLLED_FEATURES] = v_f0, v_f1, v_f2, v_f3
            for f in range(N_GEOM_3D + D):
                per_isect[j, f] = grad[f]


# ----------------------------------------------------------------------------------------------------
# 2DGS compositing
# ----------------------------------------------------------------------------------------------------

N_GEOM_2D = 12  # per-surfel row: mean x, mean y, M (9, row-major), opacity; then D features, then 3 normals
LOWPASS_INV_SQUARE = 2.0  # gsplat's FILTER_INV_SQUARE_2DGS


@njit(**KERNEL_OPTIONS)
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
    bound = PARABOLIC_MARGIN * (r2 * (g[8] * g[8] + g[9] * g[9]) + g[10] * g[10])
    if not (c22 < -bound and disc >= 0):
        return y0, y1  # not a bounded ellipse (or nearly a parabola): every row
    # the roots of c22 k^2 - 2 c12 k + c11 in the form without cancellation: q / c22 and c11 / q
    q = c12 + math.copysign(math.sqrt(disc), c12)
    k1, k2 = (q / c22, c11 / q) if q != 0 else (0.0, 0.0)
    return pixel_range(min(lo_f, min(k1, k2)), max(hi_f, max(k1, k2)), y0, y1)


@njit(**KERNEL_OPTIONS)
def row_planes(g, py):
    """a = w x h_v and b = u x h_v for the row at pixel centre py (h_v = py w - v): c = x a - b."""
    ux, uy, uz = g[2], g[3], g[4]
    wx, wy, wz = g[8], g[9], g[10]
    hx, hy, hz = py * wx - g[5], py * wy - g[6], py * wz - g[7]
    ax, ay, az = wy * hz - wz * hy, wz * hx - wx * hz, wx * hy - wy * hx
    bx, by, bz = uy * hz - uz * hy, uz * hx - ux * hz, ux * hy - uy * hx
    return ax, ay, az, bx, by, bz, hx, hy, hz


@njit(**KERNEL_OPTIONS, inline="always")  # numba-level inlining: a call per Gaussian cost 3-8%
def surfel_row_setup(g, smax, ylo, n_rows, x0, x1, full_tile, planes, spans):
    """For the rows from ylo on (index r = y - ylo): their :func:`row_planes` into ``planes[:, r]`` (a, b, h;
    [9, TILE_SIZE]) and into ``spans[:, r]`` ([2, TILE_SIZE]) the columns [lo, hi) where min(g3, g2) <= 2 smax
    can hold: the union of the splat disk's image and the low-pass disk on that row, the whole row where the
    image is not a bounded ellipse, nothing where neither reaches it.

    As :func:`ellipse_row_setup`: ROW_BLOCK or TILE_SIZE row slots (the first ``n_rows`` used), branch-free
    (the cases are selects), so that LLVM computes the rows as vectors; the caller reads only the surfel's
    rows. LLVM may turn the two divisions by 2A into a reciprocal multiply, which moves a limit by its last bit
    at most: the limits' slack absorbs that, and the pixels evaluated are the same as with the scalar form
    (bit-identical renders)."""
    mx, my = g[0], g[1]
    r2 = 2.0 * smax
    for r in range(ROW_BLOCK if n_rows <= ROW_BLOCK else TILE_SIZE):
        py = ylo + r + 0.5
        dy = my - py
        ax, ay, az, bx, by, bz, hx, hy, hz = row_planes(g, py)
        planes[0, r], planes[1, r], planes[2, r] = ax, ay, az
        planes[3, r], planes[4, r], planes[5, r] = bx, by, bz
        planes[6, r], planes[7, r], planes[8, r] = hx, hy, hz
        # the splat disk's image on this row: |c_xy|^2 - r2 c_z^2 <= 0, a quadratic A x^2 + B x + C
        A = ax * ax + ay * ay - r2 * az * az
        B = -2.0 * (ax * bx + ay * by - r2 * az * bz)
        C = bx * bx + by * by - r2 * bz * bz
        disc = B * B - 4.0 * A * C
        have_splat = disc >= 0
        root = math.sqrt(max(disc, 0.0))
        lo_f = (-B - root) / (2.0 * A) if have_splat else 1e300
        hi_f = (-B + root) / (2.0 * A) if have_splat else -1e300
        rem = smax - dy * dy  # the low-pass disk on this row: dx^2 <= smax - dy^2
        half = math.sqrt(max(rem, 0.0))
        if rem >= 0:
            lo_f, hi_f = min(lo_f, mx - half), max(hi_f, mx + half)
        lo, hi = pixel_range(lo_f, hi_f, x0, x1)
        if full_tile or not (A > PARABOLIC_MARGIN * (ax * ax + ay * ay + r2 * az * az)):  # unbounded: whole row
            lo, hi = x0, x1
        elif rem < 0 and not have_splat:
            lo, hi = x0, x0
        spans[0, r], spans[1, r] = lo, hi


@njit(nogil=True, **KERNEL_OPTIONS)
def rasterize_2dgs_fwd(params, tile_offsets, flatten_ids, tile_w, tile_h, full_tile, features, normals,
                       T_final, distort, median, last, median_idx, pairs, worker, n_workers):
    """Fill features [C, H, W, D], normals [C, H, W, 3], final T, distortion, median depth (each
    [C, H, W]), the last composited index and the median's index [C, H, W] (into ``flatten_ids``, -1 if
    none) and the pairs evaluated and rows set up per tile [n_tiles, 2]."""
    D = params.shape[1] - N_GEOM_2D - 3
    height, width = T_final.shape[1], T_final.shape[2]
    n_tiles = tile_offsets.shape[0] - 1
    for tile in range(worker, n_tiles, n_workers):
        cam, x0, y0, x1, y1 = tile_origin(tile, tile_w, tile_h, width, height)
        T = np.ones(TILE_PIXELS)
        acc = np.zeros((TILE_PIXELS, D + 3))
        dist_t = np.zeros(TILE_PIXELS)
        wd = np.zeros(TILE_PIXELS)  # sum of w * depth so far
        med_t = np.zeros(TILE_PIXELS)
        last_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        med_idx_t = np.full(TILE_PIXELS, -1, dtype=np.int64)
        planes = np.empty((9, TILE_SIZE))
        spans = np.empty((2, TILE_SIZE), dtype=np.int64)
        n_live = (x1 - x0) * (y1 - y0)
        n_pairs = n_rows = 0
        end = tile_offsets[tile + 1]
        for j in range(tile_offsets[tile], end):
            if n_live == 0:
                break
            if j + PREFETCH_AHEAD < end:
                prefetch_row(params, flatten_ids[j + PREFETCH_AHEAD])
            g = params[flatten_ids[j]]
            mx, my, o = g[0], g[1], g[11]
            depth = g[N_GEOM_2D + D - 1]
            smax = sigma_bound(o)
            if smax < 0:
                continue
            feat = g[N_GEOM_2D:]  # D features, then 3 normals
            f0, f1, f2, f3, f4, f5, f6 = unrolled_features(feat, D)
            ylo, yhi = surfel_rows(g, smax, y0, y1, full_tile)
            n_rows += yhi - ylo
            surfel_row_setup(g, smax, ylo, yhi - ylo, x0, x1, full_tile, planes, spans)
            for y in range(ylo, yhi):
                r = y - ylo
                xlo, xhi = spans[0, r], spans[1, r]
                if xlo >= xhi:
                    continue
                py = y + 0.5
                dy = my - py
                row_g2 = LOWPASS_INV_SQUARE * dy * dy
                ax, ay, az = planes[0, r], planes[1, r], planes[2, r]
                bx, by, bz = planes[3, r], planes[4, r], planes[5, r]
                p0 = (y - y0) * TILE_SIZE - x0
                for x in range(xlo, xhi):
                    p = p0 + x
                    Tp = T[p]
                    if Tp < 0:  # done: T is kept negated
                        continue
                    n_pairs += 1
                    px = x + 0.5
                    cz = px * az - bz
                    if cz == 0:
                        continue
                    cx = px * ax - bx
                    cy = px * ay - by
                    g3 = (cx * cx + cy * cy) / (cz * cz)
                    dx = mx - px
                    g2 = LOWPASS_INV_SQUARE * dx * dx + row_g2
                    sigma = 0.5 * min(g3, g2)
                    if sigma > smax or sigma < 0:  # alpha < 1/255 for sure: skip the exp
                        continue
                    alpha = min(MAX_ALPHA, o * math.exp(-sigma))
                    if alpha < ALPHA_THRESHOLD:
                        continue
                    next_T = Tp * (1.0 - alpha)
                    if next_T <= MIN_TRANSMITTANCE:
                        T[p] = -Tp
                        n_live -= 1
                        continue
                    vis = alpha * Tp
                    if D == UNROLLED_FEATURES:
                        acc[p, 0] += vis * f0
                        acc[p, 1] += vis * f1
                        acc[p, 2] += vis * f2
                        acc[p, 3] += vis * f3
                        acc[p, 4] += vis * f4
                        acc[p, 5] += vis * f5
                        acc[p, 6] += vis * f6
                    else:
                        for k in range(D + 3):
                            acc[p, k] += vis * feat[k]
                    dist_t[p] += 2.0 * (vis * depth * (1.0 - Tp) - vis * wd[p])
                    wd[p] += vis * depth
                    if Tp > 0.5:
                        med_t[p] = depth
                        med_idx_t[p] = j
                    last_t[p] = j
                    T[p] = next_T
        pairs[tile, 0] = n_pairs
        pairs[tile, 1] = n_rows
        for y in range(y0, y1):
            for x in range(x0, x1):
                p = (y - y0) * TILE_SIZE + (x - x0)
                for k in range(D):
                    features[cam, y, x, k] = acc[p, k]
                for k in range(3):
                    normals[cam, y, x, k] = acc[p, D + k]
                T_final[cam, y, x] = abs(T[p])
                distort[cam, y, x] = dist_t[p]
                median[cam, y, x] = med_t[p]
                last[cam, y, x] = last_t[p]
                median_idx[cam, y, x] = med_idx_t[p]


@njit(nogil=True, **KERNEL_OPTIONS)
def rasterize_2dgs_bwd(params, tile_offsets, flatten_ids, tile_w, tile_h, full_tile, T_final, last,
                       median_idx, depth_total, v_features, v_normals, v_T, v_distort, v_median, per_isect,
                       worker, n_workers):
    """Fill per-intersection gradient rows ``per_isect`` [M, 12 + D + 3] (any contents; each tile zeroes its
    rows) in the layout of ``params``. ``depth_total`` [C, H, W] is the forward's sum of w * depth (its last
    feature channel)."""
    D = params.shape[1] - N_GEOM_2D - 3
    F = params.shape[1]
    height, width = T_final.shape[1], T_final.shape[2]
    n_tiles = tile_offsets.shape[0] - 1
    for tile in range(worker, n_tiles, n_workers):
        start, end = tile_offsets[tile], tile_offsets[tile + 1]
        per_isect[start:end] = 0.0  # rows of the Gaussians this tile skips or never reaches stay zero
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
        planes = np.empty((9, TILE_SIZE))
        spans = np.empty((2, TILE_SIZE), dtype=np.int64)
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
            if j - PREFETCH_AHEAD >= start:
                prefetch_row(params, flatten_ids[j - PREFETCH_AHEAD])
            g = params[flatten_ids[j]]
            mx, my, o = g[0], g[1], g[11]
            depth = g[N_GEOM_2D + D - 1]
            smax = sigma_bound(o)
            if smax < 0:
                continue
            grad[:] = 0.0
            feat = g[N_GEOM_2D:]
            f0, f1, f2, f3, f4, f5, f6 = unrolled_features(feat, D)
            v_f0 = v_f1 = v_f2 = v_f3 = v_f4 = v_f5 = v_f6 = 0.0  # dL/dfeatures, normals on the unrolled path
            ylo, yhi = surfel_rows(g, smax, y0, y1, full_tile)
            surfel_row_setup(g, smax, ylo, yhi - ylo, x0, x1, full_tile, planes, spans)
            for y in range(ylo, yhi):
                r = y - ylo
                xlo, xhi = spans[0, r], spans[1, r]
                if xlo >= xhi:
                    continue
                py = y + 0.5
                dy = my - py
                ax, ay, az = planes[0, r], planes[1, r], planes[2, r]
                bx, by, bz = planes[3, r], planes[4, r], planes[5, r]
                hx, hy, hz = planes[6, r], planes[7, r], planes[8, r]
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
                    if sigma > smax or sigma < 0:
                        continue
                    vis = math.exp(-sigma)
                    alpha = min(MAX_ALPHA, o * vis)
                    if alpha < ALPHA_THRESHOLD:
                        continue
                    inv_one_minus = 1.0 / (1.0 - alpha)
                    T_k = T[p] * inv_one_minus
                    w = alpha * T_k
                    # distortion D = sum_i 2 w_i (d_i (1 - T_i) - A_i), A_i = sum_{j<i} w_j d_j
                    after = T[p] - Tf[p]  # sum of w over later surfels
                    front_wd = wd_total[p] - behind_wd[p] - w * depth
                    dD_dw = 2.0 * (depth * (1.0 - T_k) - front_wd + behind_wd[p] - depth * after)
                    v_depth = g_dist[p] * 2.0 * w * ((1.0 - T_k) - after)
                    if D == UNROLLED_FEATURES:
                        o0, o1, o2, o3 = g_out[p, 0], g_out[p, 1], g_out[p, 2], g_out[p, 3]
                        o4, o5, o6 = g_out[p, 4], g_out[p, 5], g_out[p, 6]
                        q = f0 * o0 + f1 * o1 + f2 * o2 + f3 * o3 + f4 * o4 + f5 * o5 + f6 * o6
                        v_f0 += w * o0
                        v_f1 += w * o1
                        v_f2 += w * o2
                        v_f3 += w * o3
                        v_f4 += w * o4
                        v_f5 += w * o5
                        v_f6 += w * o6
                        v_f3 += v_depth  # the depth channel, in the order of the loop below
                        if j == med_t[p]:
                            v_f3 += g_med[p]
                    else:
                        q = 0.0
                        for k in range(D + 3):
                            q += feat[k] * g_out[p, k]
                            grad[N_GEOM_2D + k] += w * g_out[p, k]
                        grad[N_GEOM_2D + D - 1] += v_depth
                        if j == med_t[p]:
                            grad[N_GEOM_2D + D - 1] += g_med[p]
                    v_w = q + g_dist[p] * dD_dw
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
            if D == UNROLLED_FEATURES:
                grad[N_GEOM_2D:N_GEOM_2D + UNROLLED_FEATURES + 3] = v_f0, v_f1, v_f2, v_f3, v_f4, v_f5, v_f6
            for f in range(F):
                per_isect[j, f] = grad[f]
