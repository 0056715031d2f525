"""Agreement across a bank of models: pairwise and leave-one-out consensus sums per unit, mergeable over blocks."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .. import _metrics

__all__ = ["PairwiseSums", "ConsensusSums", "pairwise_agreement", "consensus_agreement"]

_METHODS = ("kernel", "blas")
_BLAS_CHUNK = 1 << 16  # pixels per matmul in the BLAS form: bounded memory, cache-sized operands


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
class PairwiseSums:
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

    def __add__(self, other):
        if not isinstance(other, PairwiseSums):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other):
        # lets sum(list_of_sums) start from 0
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def __eq__(self, other):
        if not isinstance(other, PairwiseSums):
            return NotImplemented
        return np.array_equal(self.both, other.both) and np.array_equal(self.ei, other.ei)


@dataclass(frozen=True, eq=False)
class ConsensusSums:
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

    def __add__(self, other):
        if not isinstance(other, ConsensusSums):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def __eq__(self, other):
        if not isinstance(other, ConsensusSums):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in ("model_fg", "cons_fg", "both", "ei")
        )


# ------------------------------------------------------------------------------------------------
def _as_bank(probs) -> np.ndarray:
    """probs as a float32/float64 array of shape (n, *spatial) the kernels read without copying."""
    if isinstance(probs, np.ndarray):
        a = probs
    else:
        try:
            a = np.asarray(probs)
        except Exception as exc:  # e.g. models of different shapes
            raise TypeError(f"probs cannot be read as an array: {exc}") from None
    if a.dtype.kind != "f":
        raise TypeError(f"probs must hold float probabilities (float32 or float64), got dtype {a.dtype}")
    if a.ndim < 2 or a.ndim > 4:
        raise ValueError(f"probs must have shape (n_models, *spatial) with 1 to 3 spatial axes, got shape {a.shape}")
    if a.dtype.itemsize < 4:
        a = a.astype(np.float32)  # float16: exact
    elif a.dtype.itemsize > 8:
        raise TypeError(f"probs must be float32 or float64, got dtype {a.dtype}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not a.flags.aligned:
        a = a.copy()
    return a


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    return float(threshold)


def _check_method(method) -> str:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    return method


def _check_weights(weights, n: int) -> np.ndarray:
    try:
        w = np.array(weights, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"weights cannot be read as numbers: {exc}") from None
    if w.shape != (n,):
        raise ValueError(f"weights must have one entry per model, shape ({n},), got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    with np.errstate(over="ignore"):
        total = float(np.sum(w))
    if not math.isfinite(total):
        raise ValueError("weights are too large: their sum overflows")
    positive = w > 0
    others = np.count_nonzero(positive) - positive  # positive weights among the other models
    if (others == 0).any():
        bad = np.flatnonzero(others == 0).tolist()
        raise ValueError(f"model(s) {bad} have no consensus: every other model has weight 0")
    return w


def _clamped_chunks(bank: np.ndarray):
    """Yield (n, k) float64 blocks of q = clip(p, 0, 1), NaN read as 0, over the flattened pixels."""
    n = bank.shape[0]
    flat = bank.reshape(n, -1)
    for start in range(0, flat.shape[1], _BLAS_CHUNK):
        q = flat[:, start : start + _BLAS_CHUNK].astype(np.float64)
        np.nan_to_num(q, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(q, 0.0, 1.0, out=q)
        yield q


def _pairwise_blas(bank: np.ndarray, threshold: float) -> PairwiseSums:
    """The BLAS form: per chunk, masks M (0/1 float64) give M @ M.T (exact counts) and
    S = sqrt(q) M gives S @ S.T."""
    n = bank.shape[0]
    both = np.zeros((n, n), np.int64)
    ei = np.zeros((n, n))
    if n == 0:
        return PairwiseSums(both, ei)
    for q in _clamped_chunks(bank):
        mask = (q > threshold).astype(np.float64)
        both += np.rint(mask @ mask.T).astype(np.int64)  # integers < 2**53: exact
        s = np.sqrt(q, out=q)
        s *= mask
        ei += s @ s.T
    return PairwiseSums(both, ei)


def _consensus_blas(bank: np.ndarray, w: np.ndarray, threshold: float) -> ConsensusSums:
    """The BLAS form: numerators of every leave-one-out mean at once, as (w_j off the diagonal) @ q."""
    n = bank.shape[0]
    others = np.where(np.eye(n, dtype=bool), 0.0, w[None, :])
    den = others.sum(axis=1)
    sums = [np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)]
    for q in _clamped_chunks(bank):
        c = others @ q
        c /= den[:, None]
        a = q > threshold
        cc = c > threshold
        ac = a & cc
        sums[0] += np.count_nonzero(a, axis=1)
        sums[1] += np.count_nonzero(cc, axis=1)
        sums[2] += np.count_nonzero(ac, axis=1)
        q *= c
        np.sqrt(q, out=q)
        q[~ac] = 0.0
        sums[3] += q.sum(axis=1)
    return ConsensusSums(*sums)


# ------------------------------------------------------------------------------------------------
def pairwise_agreement(probs, *, threshold=0.5, method="kernel") -> PairwiseSums:
    """Count the agreement between every two models of a bank on one unit (image or block).

    Parameters
    ----------
    probs : array_like, shape (n, *spatial), float32 or float64
        Foreground probabilities of n models over the same 1 to 3 spatial axes (float16 is
        widened to float32). Any layout works (C- or F-ordered, strided views) without copying.
    threshold : float, optional
        Model i's foreground is A_i = q_i > threshold (strict, as `binary_consistency`).
    method : {'kernel', 'blas'}, optional
        ``'kernel'``: the C++ kernel (one pass, single-threaded, GIL released).
        ``'blas'``: numpy matmuls of masks and sqrt-probabilities over blocks of pixels (uses
        BLAS's threads). Both give the same counts and EI sums to rounding.

    Returns
    -------
    sums : PairwiseSums
        ``.both`` (n, n) int64, ``.ei`` (n, n) float64; ``.dice()``, ``.ei_form()``.

    Raises
    ------
    TypeError
        probs not floating point.
    ValueError
        probs with fewer than 2 or more than 4 axes, a NaN threshold, an unknown method.

    Notes
    -----
    Probabilities are read as q = min(max(p, 0), 1) in float64, NaN as 0; for thresholds in
    [0, 1) the masks are exactly those of ``p > threshold``. With A_i = q_i > threshold:

    .. math::

        \\mathrm{both}_{ij} = |A_i \\cap A_j|, \\qquad
        \\mathrm{ei}_{ij} = \\sum_{x \\in A_i \\cap A_j} \\sqrt{q_i(x)\\, q_j(x)}

    ``dice()`` is 2 both / (|A_i| + |A_j|) and ``ei_form()`` is ei / |A_i or A_j|, NaN where
    both models are empty. Sums are linear over pixels: score a volume block by block and add
    the sums; a weighted mean over j of either score can be formed afterwards.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.8, 0.1], [0.7, 0.3, 0.1], [0.6, 0.9, 0.8]], dtype=np.float32)
    >>> s = pairwise_agreement(p)
    >>> s.both.tolist()
    [[2, 1, 2], [1, 1, 1], [2, 1, 3]]
    >>> float(s.dice()[0, 2])
    0.8
    """
    threshold = _check_threshold(threshold)
    method = _check_method(method)
    bank = _as_bank(probs)
    if method == "blas":
        return _pairwise_blas(bank, threshold)
    both, ei = _metrics.pairwise_agreement(bank, threshold)
    return PairwiseSums(both, ei)


def consensus_agreement(probs, weights, *, threshold=0.5, method="kernel") -> ConsensusSums:
    """Count each model's agreement with the weighted mean of the other models on one unit.

    Parameters
    ----------
    probs : array_like, shape (n, *spatial), float32 or float64, n >= 2
        Foreground probabilities of n models over the same 1 to 3 spatial axes (float16 is
        widened to float32). Any layout works without copying.
    weights : array_like of float, shape (n,)
        Model weights w_j, finite and >= 0. Every model needs a positive weight among the
        others (its consensus is undefined otherwise: ValueError).
    threshold : float, optional
        A_i = q_i > threshold and C_i = c_i > threshold (strict, as `binary_consistency`).
    method : {'kernel', 'blas'}, optional
        ``'kernel'``: the C++ kernel (one pass, single-threaded, GIL released).
        ``'blas'``: numpy, every consensus numerator at once by a matmul, over blocks of pixels.

    Returns
    -------
    sums : ConsensusSums
        ``.model_fg``, ``.cons_fg``, ``.both`` (int64) and ``.ei`` (float64), length n;
        ``.dice()``, ``.ei_form()``.

    Raises
    ------
    TypeError
        probs not floating point, weights not numbers.
    ValueError
        Fewer than two models, weights of the wrong length, negative, infinite or NaN, a model
        whose other models all have weight 0, a NaN threshold, an unknown method.

    Notes
    -----
    Probabilities are read as q = min(max(p, 0), 1) in float64, NaN as 0. Model i's
    leave-one-out consensus and the sums are

    .. math::

        c_i = \\frac{\\sum_{j \\ne i} w_j q_j}{\\sum_{j \\ne i} w_j}, \\quad
        C_i = c_i > t, \\quad
        \\mathrm{ei}_i = \\sum_{x \\in A_i \\cap C_i} \\sqrt{q_i(x)\\, c_i(x)}

    with ``model_fg`` = |A_i|, ``cons_fg`` = |C_i|, ``both`` = |A_i and C_i|. ``dice()`` is
    2 both / (|A_i| + |C_i|) and ``ei_form()`` is ei / |A_i or C_i|; both are NaN where model
    and consensus are both empty, which the consensus method reads as agreement 1 (left to the
    caller). The kernel forms c_i in double from prefix and suffix sums of w_j q_j (no
    subtraction, so a dominant weight causes no cancellation) times 1 / sum_{j != i} w_j; a
    pixel whose c_i lies within rounding (~1e-15) of the threshold may fall on either side
    depending on ``method``.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.8, 0.1], [0.7, 0.3, 0.1], [0.6, 0.9, 0.8]], dtype=np.float32)
    >>> s = consensus_agreement(p, [1.0, 1.0, 1.0])
    >>> s.cons_fg.tolist(), s.both.tolist()
    ([2, 2, 2], [2, 1, 2])
    """
    threshold = _check_threshold(threshold)
    method = _check_method(method)
    bank = _as_bank(probs)
    n = bank.shape[0]
    if n < 2:
        raise ValueError(f"a consensus needs at least two models, got {n}")
    w = _check_weights(weights, n)
    if method == "blas":
        return _consensus_blas(bank, w, threshold)
    model_fg, cons_fg, both, ei = _metrics.consensus_agreement(bank, w, threshold)
    return ConsensusSums(model_fg, cons_fg, both, ei)
