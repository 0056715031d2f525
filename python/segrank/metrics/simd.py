"""Which SIMD code path the C++ kernels use (chosen at run time from the CPU)."""
from __future__ import annotations

from .. import _metrics

__all__ = ["simd_level", "set_simd_level"]


def simd_level() -> str:
    """The kernels' code path now: ``'avx2'`` (x86-64 with AVX2) or ``'portable'``."""
    return _metrics.simd_level()


def set_simd_level(level: str) -> str:
    """Choose ``'portable'`` or ``'avx2'`` (for tests and benchmarks; both give identical results).

    A level the CPU lacks falls back to the best one it has. Returns the level now in use.
    Not safe while kernels run in other threads.
    """
    return _metrics.set_simd_level(level)
