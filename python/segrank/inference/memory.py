"""Process memory: large buffers go back to the OS as soon as they are freed."""
from __future__ import annotations

import os

_MALLOC_TUNED = False
# Buffers from this size on are mmapped, so freeing one returns it to the OS at once.
MMAP_THRESHOLD = 1 << 20


def return_large_buffers() -> None:
    """Have glibc map buffers of 1 MiB and more on their own, so that freeing returns them.

    glibc raises its mmap threshold as large blocks are freed (up to 32 MiB), after which
    tile-sized buffers come from per-thread arenas that keep their high-water mark: peak RSS
    then grows by ~100 MB per dask thread (benchmarks/inference.py, memory part). A fixed
    threshold stops that. Once per process; glibc only; an
    explicit ``MALLOC_MMAP_THRESHOLD_`` in the environment is left alone.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD)  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


__all__ = ["MMAP_THRESHOLD", "return_large_buffers"]
