"""Agreement across a bank of models: pairwise and leave-one-out consensus sums of one unit, by kernel or BLAS.

The result types, mergeable over blocks, are in `segrank.metrics.agreement_sums` (importable from here too).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _metrics
from .agreement_sums import ConsensusSums, PairwiseSums

__all__ = ["PairwiseSums", "ConsensusSums", "pairwise_agreement", "consensus_agreement"]

_METHODS = ("kernel", "blas")
_BLAS_CHUNK = 1 << 16  # pixels per matmul in the BLAS form: bounded memory, cache-sized operands


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
