"""Array checks shared by the metric wrappers: turn user input into arrays the C++ kernels take
without copying, or raise a TypeError / ValueError that names the problem."""
from __future__ import annotations

import numpy as np


def as_kernel_array(x, name: str) -> np.ndarray:
    """Return `x` as a numpy array the kernels accept (no copy for ordinary numpy arrays).

    Copies only where the kernels cannot read the memory as it is: non-native byte order or
    misaligned data. Leading unit axes beyond three are dropped (e.g. a (1, 1, Y, X) output).
    """
    if isinstance(x, np.ndarray):
        a = x
    else:
        try:
            a = np.asarray(x)
        except Exception as exc:  # e.g. ragged nested lists
            raise TypeError(f"{name} cannot be read as an array: {exc}") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name} must have 1 to 3 axes, got a scalar")
    while a.ndim > 3 and 1 in a.shape[: a.ndim - 3]:
        a = a.squeeze(axis=a.shape.index(1))
    if a.ndim > 3:
        raise ValueError(f"{name} must have 1 to 3 axes (unit axes aside), got shape {a.shape}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not a.flags.aligned:
        a = a.copy()  # a fresh allocation is aligned
    return a


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} differ in shape: {a.shape} vs {b.shape}")


def check_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


class Mergeable:
    """``a + b`` merges two sums of the same type (`merge`); ``sum(list_of_sums)`` starts from 0."""

    def __add__(self, other):
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other):
        # lets sum(list_of_sums) start from 0
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented
