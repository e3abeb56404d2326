"""Process-wide memory settings for CPU training and rendering."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h) and the values retain_freed_memory sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
RETAIN_TRIM_BYTES = 2**31 - 1  # mallopt takes a C int: keep up to 2 GiB of free heap top
RETAIN_MMAP_BYTES = (512 << 20, 32 << 20)  # blocks below this come from the heap; older glibc caps it at 32 MiB


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation instead of returning it to the OS.

    A process-wide setting, for an application to make once: ``gfbench`` makes it at start-up, and so do its
    Ray workers and the rasterizer benchmark. Returns whether it took effect (False where libc has no
    ``mallopt``, or when $GFBENCH_RETAIN_FREED_MEMORY is 0).

    By default glibc hands large freed blocks back (``mmap`` blocks at once, the heap's top beyond a
    threshold), so the next render's arrays are fresh pages that the OS maps and zeroes on first touch. Only
    the arrays in the rasterizer's :class:`.rasterize_cpu.ScratchPool` escape that; the binning's lists and the
    projection's gradients do not, and at 300k Gaussians the kernels that write them ran up to twice as slow
    on the thread that drew the fresh pages (9-20% of a forward + backward, averaged over renders). The cost:
    the process keeps its peak heap mapped (its peak memory does not change)."""
    if os.environ.get("GFBENCH_RETAIN_FREED_MEMORY", "1").strip() == "0":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    if not mallopt(M_TRIM_THRESHOLD, RETAIN_TRIM_BYTES):
        return False
    return any(mallopt(M_MMAP_THRESHOLD, size) for size in RETAIN_MMAP_BYTES)
