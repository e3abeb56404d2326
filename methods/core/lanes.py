"""The ``lanes`` compositing of 3D Gaussians and 2D surfels: ``lanes_3dgs.c`` and ``lanes_2dgs.c`` (with
``lanes_common.h``) built for this machine and loaded through ctypes.

$GFBENCH_CPU_COMPOSITING chooses the CPU rasterizer's compositing, for 3DGS and 2DGS alike: ``auto`` (the default) takes
``lanes`` where this machine can build and run them (AVX-512 and gcc) and ``spans`` elsewhere; ``spans`` and ``lanes``
force one (``lanes`` where it cannot run is an error). ``spans`` are the numba kernels of :mod:`.cpu_kernels`, which
visit each row's span of pixels; the lanes kernels run a tile row's 16 pixels as two 8-lane float64 AVX-512 vectors. On
one thread (``tests/perf/bench_compositing.py``) the 3DGS lanes kernels were 1.24-1.85x (forward) and 1.43-2.05x
(backward) as fast as the spans kernels, the 2DGS ones 1.26-1.84x and 1.30-2.15x: the more pixels per Gaussian, the
more. Their float64 results agree with the spans kernels' to about 1e-13 relative, not to the bit; what reaches PyTorch
is float32. Training can turn a last-bit difference into a visible one, as it does between CPUs, so each record names
the compositing its job ran (``cpu_compositing``, beside ``host``). The caller's images (colours, alpha, normals,
distortion, median depth, and their gradients) are written and read in its dtype, float32 or float64, converted as
NumPy converts (at 960x540 that spared 7-14 ms of conversions a forward + backward); the state the backward reads stays
float64. The kernels run with denormals flushed to zero
(alpha times T can underflow, and denormal arithmetic is slow): an input below 2.2e-308 in magnitude reads as zero
(a 2DGS ray-plane point with such a c_z is skipped as c_z = 0), where the spans kernels would use it.

Why C with intrinsics and not numba: the same lane layout from numba (``bench_row_lanes.py``'s ``lanes64``) ran
2.6x slower than the spans kernels, LLVM leaving the short per-row loops poorly vectorized. Why built on first use
rather than at install: the kernels need AVX-512 and ``-march=native`` (the machine that runs them is the one that
compiles them, as numba's JIT does), and the package stays installable without a compiler; where there is no gcc
or no AVX-512, asking for ``lanes`` is an error that says so, and ``spans`` is always there.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

SOURCES = tuple(Path(__file__).with_name(name) for name in ("lanes_common.h", "lanes_3dgs.c", "lanes_2dgs.c"))
ENV = "GFBENCH_CPU_COMPOSITING"
CHOICES = ("auto", "spans", "lanes")
FEATURES = 4  # the kernels composite RGB + depth only (2DGS: and its normals); other counts use the spans kernels
TILE_SIZE = 16  # lanes_common.h's TILE: its per-tile arrays are this size, as cpu_kernels' tiles must be
REQUIRED_CPU_FEATURES = ("avx512f",)
ROW_3DGS = 6 + FEATURES  # mean (2), conic (3), opacity, features
ROW_2DGS = 12 + FEATURES + 3  # mean (2), M (9), opacity, features, normals
COMPILE_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")


class LanesUnavailable(RuntimeError):
    """The lanes kernels cannot run on this machine (the message says why)."""


def compositing() -> str:
    """The 3DGS compositing asked for by $GFBENCH_CPU_COMPOSITING: ``auto`` (default), ``spans`` or ``lanes``."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"${ENV} must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


def active() -> str:
    """The compositing renders use now: ``lanes`` or ``spans`` (``auto`` resolved; an error when ``lanes`` is
    asked for and cannot run)."""
    choice = compositing()
    if choice == "spans":
        return "spans"
    try:
        library()
    except LanesUnavailable:
        if choice == "lanes":
            raise
        return "spans"
    return "lanes"


def composite(feature_count: int) -> bool:
    """Whether a render with ``feature_count`` features composites on the lanes kernels now: RGB + depth (what they
    composite) and the compositing resolving to ``lanes``."""
    return feature_count == FEATURES and active() == "lanes"


@contextmanager
def using(choice: str) -> Iterator[None]:
    """$GFBENCH_CPU_COMPOSITING set to ``choice`` inside the block (a job runs with the compositing its record
    names, whatever the worker process's environment says), restored after."""
    if choice not in CHOICES:
        raise ValueError(f"compositing must be one of {', '.join(CHOICES)}, got {choice!r}")
    saved = os.environ.get(ENV)
    os.environ[ENV] = choice
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved


def require(choice: str) -> None:
    """Fail now, with the reason, when ``choice`` is ``lanes`` and the lanes kernels cannot be built or run here
    (before any training: a run planned with them must not fall over mid-way); ``auto`` and ``spans`` always
    run."""
    if choice == "lanes":
        library()


def cache_dir() -> Path:
    """Where built kernels are kept: $XDG_CACHE_HOME/gfbench/kernels (default ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gfbench" / "kernels"


def missing_requirement() -> Optional[str]:
    """Why the lanes kernels cannot be built or run here, or None."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    absent = [name for name in REQUIRED_CPU_FEATURES if not features.get(name)]
    if absent:
        return f"this CPU ({llvm.get_host_cpu_name()}) lacks {', '.join(absent)}"
    if shutil.which("gcc") is None:
        return "there is no gcc on PATH to build methods/core/lanes_*.c"
    return None


_library: Optional[ctypes.CDLL] = None
_unavailable: Optional[str] = None  # why the kernels could not be had, once found out
_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """The built kernels (built once per source and CPU, then loaded from :func:`cache_dir`), or
    :class:`LanesUnavailable` with the reason."""
    global _library, _unavailable
    with _lock:
        if _library is None and _unavailable is None:
            reason = missing_requirement()
            try:
                if reason is None:
                    _library = _declare(ctypes.CDLL(str(_built())))
            except (OSError, RuntimeError) as exc:  # RuntimeError: LanesUnavailable, or no home for the cache
                reason = f"{type(exc).__name__}: {exc}"
            if reason is not None:
                _unavailable = f"{ENV}=lanes needs AVX-512 and gcc: {reason}; use {ENV}=spans (or auto)"
        if _library is None:
            raise LanesUnavailable(_unavailable)
        return _library


def _built() -> Path:
    import llvmlite.binding as llvm

    # -march=native: the library is this CPU's (its name and features) and this gcc's, as well as this source's
    features = llvm.get_host_cpu_features()
    compiler = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    identity = [*(source.read_text() for source in SOURCES), " ".join(COMPILE_FLAGS), llvm.get_host_cpu_name(),
                compiler, " ".join(sorted(name for name, on in features.items() if on))]
    key = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]
    target = cache_dir() / f"lanes-{llvm.get_host_cpu_name()}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        compiled = [str(source) for source in SOURCES if source.suffix == ".c"]
        result = subprocess.run(["gcc", *COMPILE_FLAGS, "-o", str(built), *compiled, "-lm"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise LanesUnavailable(f"gcc could not build {', '.join(compiled)}: {result.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: concurrent processes see the old state or the whole library
    return target


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    P, I = ctypes.c_void_p, ctypes.c_int64  # noqa: N806 (pointer, integer: the C signatures, letter by letter)
    head = [P, P, P, I, I, I, I, I, P]  # params, tile_offsets, flatten_ids, tiles, image size, the rules
    # then each kernel's arrays and io_f32 in its C order, then worker and n_workers
    for kernel, args in (("lanes_3dgs_fwd", [P, P, P, P, I]), ("lanes_3dgs_bwd", [P, P, P, P, I, P]),
                         ("lanes_2dgs_fwd", [P] * 9 + [I]), ("lanes_2dgs_bwd", [P] * 9 + [I, P])):
        getattr(lib, kernel).argtypes = head + args + [I, I]
        getattr(lib, kernel).restype = None
    return lib


def _pointer(array, dtype) -> Optional[int]:
    """The data pointer of a C-contiguous array of ``dtype`` (anything else would be read wrongly by the kernels); None
    (NULL) for None."""
    if array is None:
        return None
    if array.dtype != np.dtype(dtype) or not array.flags.c_contiguous:
        raise ValueError(f"the lanes kernels take C-contiguous {np.dtype(dtype)} arrays, got {array.dtype} "
                         f"{'contiguous' if array.flags.c_contiguous else 'strided'} of shape {array.shape}")
    return array.ctypes.data


def _holding(kernel, arrays: tuple):
    """``kernel`` as a callable that keeps ``arrays`` alive as long as it is referenced: the kernels get raw
    pointers, and a worker thread may still be writing after the caller's frame is gone (an interrupt while it
    waits for the workers)."""

    def call(*args):
        return kernel(*args)

    call.arrays = arrays
    return call


def _check_shape(name: str, array, shape: tuple) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"lanes kernels: {name} has shape {tuple(array.shape)}, expected {tuple(shape)}")


def _tiles(params, bins, width: int, height: int, row_width: int) -> tuple:
    from . import cpu_kernels as K

    if K.TILE_SIZE != TILE_SIZE:
        raise ValueError(f"the lanes kernels take {TILE_SIZE}-pixel tiles; cpu_kernels bins {K.TILE_SIZE}")
    if params.ndim != 2 or params.shape[1] != row_width:
        raise ValueError(f"the lanes kernels composite {FEATURES} features (rows of {row_width}), "
                         f"got rows of {params.shape[1]}")
    if bins.n_tiles != bins.n_cameras * bins.tile_width * bins.tile_height:
        raise ValueError(f"lanes kernels: {bins.n_tiles} tiles for {bins.n_cameras} cameras of "
                         f"{bins.tile_width} x {bins.tile_height}")
    offsets, ids = bins.tile_offsets, bins.flatten_ids
    if len(offsets) != bins.n_tiles + 1 or offsets[0] != 0 or offsets[-1] != len(ids) or len(ids) != bins.n_isects:
        end = offsets[-1] if len(offsets) else None
        raise ValueError(f"lanes kernels: tile offsets ({len(offsets)}, ending at {end}) do not fit {bins.n_tiles} "
                         f"tiles and {len(ids)} intersections")
    return (_pointer(params, np.float64), _pointer(bins.tile_offsets, np.int64), _pointer(bins.flatten_ids, np.int64),
            bins.n_tiles, bins.tile_width, bins.tile_height, width, height)


def rules() -> np.ndarray:
    """lanes_common.h's Rules, in its field order, from cpu_kernels (where the numbers live)."""
    from . import cpu_kernels as K

    return np.array([K.MAX_ALPHA, K.ALPHA_THRESHOLD, K.MIN_TRANSMITTANCE, K.SPAN_MARGIN, K.PIXEL_MARGIN,
                     K.LOWPASS_INV_SQUARE, K.PARABOLIC_MARGIN], dtype=np.float64)


def io_flag(**images) -> int:
    """The kernels' ``io_f32`` for the images a caller reads or writes (keyword: name): 1 where all are float32, 0
    where all are float64."""
    dtypes = {np.dtype(image.dtype) for image in images.values()}
    if dtypes == {np.dtype(np.float32)}:
        return 1
    if dtypes == {np.dtype(np.float64)}:
        return 0
    described = ", ".join(f"{name} {image.dtype}" for name, image in images.items())
    raise ValueError(f"the lanes kernels read and write the caller's images all in float32 or all in float64, got "
                     f"{described}")


def _run(kernel, params, bins, width: int, height: int, row_width: int, args: tuple, run_workers) -> None:
    """Check each (name, array or None, shape, dtype) of ``args``, then run ``kernel`` on ``run_workers``'s threads with
    the tiles, the rules and the arrays' pointers (NULL for None) in that order; an int among ``args`` is passed as
    it is."""
    arrays = [arg for arg in args if not isinstance(arg, int) and arg[1] is not None]
    for name, array, shape, _ in arrays:
        _check_shape(name, array, shape)
    tiles = _tiles(params, bins, width, height, row_width)
    values = rules()
    passed = [arg if isinstance(arg, int) else _pointer(arg[1], arg[3]) for arg in args]
    call = _holding(kernel, (params, bins, values, *(array for _, array, _, _ in arrays)))
    run_workers(call, *tiles, values.ctypes.data, *passed)


def forward(params, bins, width: int, height: int, colors, T_final, last, run_workers, T_out=None) -> None:
    """Fill colors [C, H, W, 4], T_final [C, H, W] (float64) and last [C, H, W] as
    :func:`.cpu_kernels.rasterize_3dgs_fwd` does, on ``run_workers``'s threads (:func:`.rasterize_cpu.run_workers`).
    ``colors`` may be float32 (the caller's dtype: written as NumPy's astype would convert); then ``T_out`` [C, H, W]
    float32 gets T_final's float32 copy."""
    image = (bins.n_cameras, height, width)
    io_f32 = io_flag(colors=colors, **({} if T_out is None else {"T_out": T_out}))
    if io_f32 and T_out is None:
        raise ValueError("lanes kernels: a float32 forward writes T_out too")
    io = np.float32 if io_f32 else np.float64
    args = (("colors", colors, (*image, FEATURES), io), ("T_final", T_final, image, np.float64),
            ("last", last, image, np.int64), ("T_out", T_out, image, np.float32), io_f32)
    _run(library().lanes_3dgs_fwd, params, bins, width, height, ROW_3DGS, args, run_workers)


def backward(params, bins, width: int, height: int, T_final, last, v_colors, v_T, per_isect, run_workers) -> None:
    """Fill per_isect [M, 10] as :func:`.cpu_kernels.rasterize_3dgs_bwd` does, from the forward's T_final and
    last and the output gradients v_colors [C, H, W, 4] and v_T [C, H, W] (both float32 or both float64), on
    ``run_workers``'s threads."""
    image = (bins.n_cameras, height, width)
    io_f32 = io_flag(v_colors=v_colors, v_T=v_T)
    io = np.float32 if io_f32 else np.float64
    args = (("T_final", T_final, image, np.float64), ("last", last, image, np.int64),
            ("v_colors", v_colors, (*image, FEATURES), io), ("v_T", v_T, image, io), io_f32,
            ("per_isect", per_isect, (bins.n_isects, ROW_3DGS), np.float64))
    _run(library().lanes_3dgs_bwd, params, bins, width, height, ROW_3DGS, args, run_workers)


def forward_2dgs(params, bins, width: int, height: int, features, normals, T_final, distort, median, last,
                 median_idx, depth_total, run_workers, T_out=None) -> None:
    """Fill features [C, H, W, 4], normals [C, H, W, 3], T_final, distort, median, last and median_idx [C, H, W] as
    :func:`.cpu_kernels.rasterize_2dgs_fwd` does, and depth_total [C, H, W] (float64: the features' depth channel,
    which :func:`backward_2dgs` reads), on ``run_workers``'s threads. ``features``, ``normals``, ``distort`` and
    ``median`` may be float32 (all four); then ``T_out`` [C, H, W] float32 gets T_final's float32 copy."""
    image = (bins.n_cameras, height, width)
    outputs = dict(features=features, normals=normals, distort=distort, median=median)
    io_f32 = io_flag(**outputs, **({} if T_out is None else {"T_out": T_out}))
    if io_f32 and T_out is None:
        raise ValueError("lanes kernels: a float32 forward writes T_out too")
    io = np.float32 if io_f32 else np.float64
    args = (("features", features, (*image, FEATURES), io), ("normals", normals, (*image, 3), io),
            ("T_final", T_final, image, np.float64), ("distort", distort, image, io), ("median", median, image, io),
            ("last", last, image, np.int64), ("median_idx", median_idx, image, np.int64),
            ("depth_total", depth_total, image, np.float64), ("T_out", T_out, image, np.float32), io_f32)
    _run(library().lanes_2dgs_fwd, params, bins, width, height, ROW_2DGS, args, run_workers)


def backward_2dgs(params, bins, width: int, height: int, T_final, last, median_idx, depth_total, v_features,
                  v_normals, v_T, v_distort, v_median, per_isect, run_workers) -> None:
    """Fill per_isect [M, 19] as :func:`.cpu_kernels.rasterize_2dgs_bwd` does, from the forward's T_final, last,
    median_idx and depth_total [C, H, W] and the output gradients v_features [C, H, W, 4], v_normals [C, H, W, 3],
    v_T, v_distort and v_median [C, H, W] (all float32 or all float64), on ``run_workers``'s threads."""
    image = (bins.n_cameras, height, width)
    io_f32 = io_flag(v_features=v_features, v_normals=v_normals, v_T=v_T, v_distort=v_distort, v_median=v_median)
    io = np.float32 if io_f32 else np.float64
    args = (("T_final", T_final, image, np.float64), ("last", last, image, np.int64),
            ("median_idx", median_idx, image, np.int64), ("depth_total", depth_total, image, np.float64),
            ("v_features", v_features, (*image, FEATURES), io), ("v_normals", v_normals, (*image, 3), io),
            ("v_T", v_T, image, io), ("v_distort", v_distort, image, io), ("v_median", v_median, image, io), io_f32,
            ("per_isect", per_isect, (bins.n_isects, ROW_2DGS), np.float64))
    _run(library().lanes_2dgs_bwd, params, bins, width, height, ROW_2DGS, args, run_workers)
