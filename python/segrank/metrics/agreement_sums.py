"""Agreement sums: the exact, mergeable counts and EI sums behind the agreement of a bank of models.

`PairwiseSums` holds them for every pair of models, `ConsensusSums` for each model against its
leave-one-out consensus; `segrank.metrics.agreement` computes them from probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import Mergeable

__all__ = ["ConsensusSums", "PairwiseSums"]


def _readonly(x, dtype, shape, name: str) -> np.ndarray:
    a = np.array(x, dtype=dtype, copy=True)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    a.setflags(write=False)
    return a


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, NaN where den == 0."""
    out = np.full(np.shape(den), np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


@dataclass(frozen=True, eq=False)
class PairwiseSums(Mergeable):
    """Exact counts and EI sums between every two models of a bank, over one unit (or block).

    Attributes
    ----------
    both : numpy.ndarray of int64, shape (n, n)
        ``both[i, j]`` = |A_i and A_j|, pixels foreground in models i and j; symmetric, the
        diagonal is |A_i|.
    ei : numpy.ndarray of float64, shape (n, n)
        ``ei[i, j]`` = sum over (A_i and A_j) of sqrt(q_i q_j); symmetric.

    Notes
    -----
    Sums of blocks merge with ``a + b`` (or ``a.merge(b)``, or ``sum(list_of_sums)``): counts
    exactly, EI sums to float64 rounding. Derived scores are NaN for a pair where neither model
    has foreground; the caller decides what that means (the consensus method reads both-empty as
    agreement 1). Arrays are read-only; equality compares them exactly.
    """

    both: np.ndarray
    ei: np.ndarray

    def __post_init__(self):
        both = np.asarray(self.both)
        if both.ndim != 2 or both.shape[0] != both.shape[1]:
            raise ValueError(f"both must be a square (n, n) array, got shape {both.shape}")
        both = _readonly(both, np.int64, both.shape, "both")
        ei = _readonly(self.ei, np.float64, both.shape, "ei")
        if (both < 0).any() or (ei < 0).any():
            raise ValueError("pairwise sums cannot be negative")
        object.__setattr__(self, "both", both)
        object.__setattr__(self, "ei", ei)

    @property
    def n_models(self) -> int:
        return self.both.shape[0]

    @property
    def fg(self) -> np.ndarray:
        """|A_i| per model (the diagonal of `both`), int64 of length n."""
        return self.both.diagonal().copy()

    def n_or(self) -> np.ndarray:
        """|A_i or A_j| = |A_i| + |A_j| - |A_i and A_j|, int64 (n, n)."""
        fg = self.fg
        return fg[:, None] + fg[None, :] - self.both

    def dice(self) -> np.ndarray:
        """Dice 2 |A_i and A_j| / (|A_i| + |A_j|), float64 (n, n); NaN where both are empty."""
        fg = self.fg
        return _ratio(2.0 * self.both, (fg[:, None] + fg[None, :]).astype(np.float64))

    def ei_form(self) -> np.ndarray:
        """EI-form sum over (A_i and A_j) of sqrt(q_i q_j) / |A_i or A_j|, float64 (n, n); NaN where both are empty."""
        return _ratio(self.ei, self.n_or().astype(np.float64))

    def merge(self, other: "PairwiseSums") -> "PairwiseSums":
        """Sums over the union of both pixel sets (blocks of one unit)."""
        if not isinstance(other, PairwiseSums):
            raise TypeError(f"can only merge PairwiseSums, got {type(other).__name__}")
        if other.n_models != self.n_models:
            raise ValueError(f"cannot merge sums of {self.n_models} and {other.n_models} models")
        return PairwiseSums(self.both + other.both, self.ei + other.ei)

    def __eq__(self, other):
        if not isinstance(other, PairwiseSums):
            return NotImplemented
        return np.array_equal(self.both, other.both) and np.array_equal(self.ei, other.ei)


@dataclass(frozen=True, eq=False)
class ConsensusSums(Mergeable):
    """Exact counts and EI sums of each model against its leave-one-out consensus, over one unit.

    Attributes
    ----------
    model_fg : numpy.ndarray of int64, shape (n,)
        |A_i|, the model's foreground.
    cons_fg : numpy.ndarray of int64, shape (n,)
        |C_i|, the foreground of the consensus of the other models.
    both : numpy.ndarray of int64, shape (n,)
        |A_i and C_i|.
    ei : numpy.ndarray of float64, shape (n,)
        Sum over (A_i and C_i) of sqrt(q_i c_i).

    Notes
    -----
    Merge blocks with ``a + b`` (counts exactly, EI sums to float64 rounding). Scores are NaN
    for a model when neither it nor its consensus has foreground (|A_i or C_i| = 0). That is
    agreement, not failure: the method scores such a unit 1 for that model, but this class
    leaves that choice to the caller (``np.nan_to_num(sums.dice(), nan=1.0)``).
    """

    model_fg: np.ndarray
    cons_fg: np.ndarray
    both: np.ndarray
    ei: np.ndarray

    def __post_init__(self):
        model_fg = np.asarray(self.model_fg)
        if model_fg.ndim != 1:
            raise ValueError(f"model_fg must be 1-d, got shape {model_fg.shape}")
        shape = model_fg.shape
        model_fg = _readonly(model_fg, np.int64, shape, "model_fg")
        cons_fg = _readonly(self.cons_fg, np.int64, shape, "cons_fg")
        both = _readonly(self.both, np.int64, shape, "both")
        ei = _readonly(self.ei, np.float64, shape, "ei")
        if (both < 0).any() or (both > model_fg).any() or (both > cons_fg).any() or (ei < 0).any():
            raise ValueError("inconsistent consensus sums: need 0 <= both <= model_fg, cons_fg and ei >= 0")
        for name, value in (("model_fg", model_fg), ("cons_fg", cons_fg), ("both", both), ("ei", ei)):
            object.__setattr__(self, name, value)

    @property
    def n_models(self) -> int:
        return self.model_fg.shape[0]

    def n_or(self) -> np.ndarray:
        """|A_i or C_i| per model, int64."""
        return self.model_fg + self.cons_fg - self.both

    def dice(self) -> np.ndarray:
        """2 |A_i and C_i| / (|A_i| + |C_i|) per model, float64; NaN where both are empty."""
        return _ratio(2.0 * self.both, (self.model_fg + self.cons_fg).astype(np.float64))

    def ei_form(self) -> np.ndarray:
        """Sum over (A_i and C_i) of sqrt(q_i c_i) / |A_i or C_i| per model, float64; NaN where both are empty."""
        return _ratio(self.ei, self.n_or().astype(np.float64))

    def merge(self, other: "ConsensusSums") -> "ConsensusSums":
        """Sums over the union of both pixel sets (blocks of one unit)."""
        if not isinstance(other, ConsensusSums):
            raise TypeError(f"can only merge ConsensusSums, got {type(other).__name__}")
        if other.n_models != self.n_models:
            raise ValueError(f"cannot merge sums of {self.n_models} and {other.n_models} models")
        return ConsensusSums(
            self.model_fg + other.model_fg,
            self.cons_fg + other.cons_fg,
            self.both + other.both,
            self.ei + other.ei,
        )

    def __eq__(self, other):
        if not isinstance(other, ConsensusSums):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in ("model_fg", "cons_fg", "both", "ei")
        )
