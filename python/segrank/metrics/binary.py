"""Binary consistency between two predictions: NHD, 1 - NHD and Effective Invariance."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .. import _metrics
from ._arrays import Mergeable, as_kernel_array, check_same_shape, check_threads

__all__ = ["BinaryCounts", "binary_consistency"]

EI_FRACTION_BITS: int = _metrics.EI_FRACTION_BITS
_EI_SCALE = 1 << EI_FRACTION_BITS


@dataclass(frozen=True)
class BinaryCounts(Mergeable):
    """Exact, mergeable counts behind the binary consistency scores of one image (or block).

    Attributes
    ----------
    n_and : int
        |A and B|, pixels foreground in both predictions.
    n_or : int
        |A or B|, pixels foreground in either (the union U).
    n_xor : int
        |A xor B| = n_or - n_and.
    ei_units : int
        The EI sum, sum over (A and B) of sqrt(p_u p_p), as an exact integer in units of
        2**-30 (each term rounded to that grid), so that sums over blocks and threads are exact.

    Notes
    -----
    Scores are NaN when |A or B| = 0 (no foreground in either prediction): such an image has no
    score. Test with ``counts.empty`` (or ``math.isnan``); never read NaN as 0 or 1.
    Counts of blocks merge with ``a + b`` or ``a.merge(b)``.
    """

    n_and: int = 0
    n_or: int = 0
    n_xor: int = 0
    ei_units: int = 0

    def __post_init__(self):
        if min(self.n_and, self.n_or, self.n_xor, self.ei_units) < 0 or self.n_and + self.n_xor != self.n_or:
            raise ValueError(f"inconsistent binary counts: {self}")

    @property
    def empty(self) -> bool:
        """True when neither prediction has foreground (|A or B| = 0): no score."""
        return self.n_or == 0

    @property
    def ei_sum(self) -> float:
        """Sum over (A and B) of sqrt(p_u p_p) (correctly rounded from the exact sum)."""
        return self.ei_units / _EI_SCALE

    @property
    def nhd(self) -> float:
        """Normalised Hamming distance |A xor B| / |A or B| (NaN when empty)."""
        return self.n_xor / self.n_or if self.n_or else math.nan

    @property
    def consistency(self) -> float:
        """1 - NHD = |A and B| / |A or B| = IoU(A, B) (NaN when empty)."""
        return self.n_and / self.n_or if self.n_or else math.nan

    @property
    def ei(self) -> float:
        """Effective Invariance: sum over (A and B) of sqrt(p_u p_p) / |A or B| (NaN when empty)."""
        return self.ei_units / _EI_SCALE / self.n_or if self.n_or else math.nan

    def merge(self, other: "BinaryCounts") -> "BinaryCounts":
        """Counts of the union of both pixel sets (blocks of one image, or images pooled)."""
        if not isinstance(other, BinaryCounts):
            raise TypeError(f"can only merge BinaryCounts, got {type(other).__name__}")
        return BinaryCounts(
            self.n_and + other.n_and,
            self.n_or + other.n_or,
            self.n_xor + other.n_xor,
            self.ei_units + other.ei_units,
        )



def binary_consistency(a, b, *, threshold=0.5, background=False, threads=1) -> BinaryCounts:
    """Count agreement between two binary predictions of the same image.

    Parameters
    ----------
    a, b : array_like, 1 to 3 axes, same shape and dtype
        The unperturbed (`a`) and perturbed (`b`) predictions. Probability maps (float16,
        float32, float64, or uint8 meaning p = v / 255) are thresholded; bool arrays are masks.
        Any layout works (C- or F-ordered, strided views) without copying.
    threshold : float or None, optional
        Foreground is ``p > threshold``. ``None`` means the inputs are masks of any integer
        dtype (nonzero = foreground, p = 1 there).
    background : bool, optional
        Score the background instead: A and B become their complements and p becomes 1 - p.
    threads : int, optional
        Threads for large arrays (above a few Mvoxel). Results do not depend on it.

    Returns
    -------
    counts : BinaryCounts
        ``.nhd``, ``.consistency``, ``.ei``, ``.n_or``...; NaN scores when ``.empty``.

    Raises
    ------
    TypeError
        Non-numeric input, dtypes that differ, or a threshold given for integer labels.
    ValueError
        Shapes that differ, more than three (non-unit) axes.

    Notes
    -----
    With U = A or B (pixels background in both are ignored):

    .. math::

        \\mathrm{NHD} = \\frac{|A \\oplus B|}{|U|}, \\qquad
        \\mathrm{consistency} = 1 - \\mathrm{NHD} = \\frac{|A \\cap B|}{|U|}, \\qquad
        \\mathrm{EI} = \\frac{1}{|U|} \\sum_{x \\in A \\cap B} \\sqrt{p_u(x)\\, p_p(x)}

    EI terms are computed in the input's precision (float32 for float16/float32, double for
    float64, exactly for uint8) and rounded to multiples of 2**-30 before an exact integer sum,
    so results are identical for any thread count or blocking. Probabilities outside [0, 1]
    give terms clamped to [0, 1]; NaN probabilities are background.

    Examples
    --------
    >>> import numpy as np
    >>> p_u = np.array([[0.9, 0.2], [0.7, 0.6]], dtype=np.float32)
    >>> p_p = np.array([[0.8, 0.6], [0.1, 0.7]], dtype=np.float32)
    >>> c = binary_consistency(p_u, p_p, threshold=0.5)
    >>> (c.n_and, c.n_or, c.nhd)
    (2, 4, 0.5)
    """
    a = as_kernel_array(a, "a")
    b = as_kernel_array(b, "b")
    if a.dtype != b.dtype:
        raise TypeError(f"a and b differ in dtype: {a.dtype} vs {b.dtype}")
    check_same_shape(a, b, "a", "b")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold):
            raise ValueError(f"threshold must be a number or None, got {threshold!r}")
        threshold = float(threshold)
    n_and, n_or, hi, lo = _metrics.binary_counts(a, b, threshold, bool(background), check_threads(threads))
    return BinaryCounts(n_and, n_or, n_or - n_and, (hi << 64) | lo)
