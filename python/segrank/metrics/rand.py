"""Scores from a contingency table: adapted Rand, variation of information, IoU matrix."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _metrics
from .contingency import ContingencyTable, contingency_table

__all__ = ["RandScores", "VIScores", "adapted_rand", "variation_of_information", "iou_matrix", "RAND_CONVENTIONS"]

RAND_CONVENTIONS = ("method", "skimage", "elf", "snemi3d")
VI_CONVENTIONS = ("method", "all")


class RandScores(NamedTuple):
    """Adapted Rand precision, recall and F-score (F = 1 - adapted Rand error)."""

    precision: float
    recall: float
    f: float


class VIScores(NamedTuple):
    """Conditional entropies in bits: split = H(test | reference), merge = H(reference | test)."""

    split: float
    merge: float


def _resolve_table(table_or_reference, test, table, exclude_boundary, threads, func) -> ContingencyTable:
    if table is not None:
        if table_or_reference is not None or test is not None:
            raise TypeError(f"{func}: pass either label images or table=, not both")
        first = table
    else:
        first = table_or_reference
    if isinstance(first, ContingencyTable):
        if test is not None:
            raise TypeError(f"{func}: a ContingencyTable comes alone, without a test image")
        return first
    if first is None or test is None:
        raise TypeError(f"{func}: pass a ContingencyTable, or reference and test label images")
    return contingency_table(first, test, exclude_boundary=exclude_boundary, threads=threads)


def adapted_rand(table_or_reference=None, test=None, *, table=None, convention="method",
                 exclude_boundary=False, threads=1) -> RandScores:
    """Adapted Rand precision, recall and F-score between two labellings.

    Parameters
    ----------
    table_or_reference : ContingencyTable or array_like of int
        A table from `contingency_table`, or the reference (unperturbed) label image.
    test : array_like of int, optional
        The test (perturbed) label image, when the first argument is an image.
    table : ContingencyTable, optional
        The table as a keyword, as in ``skimage.metrics.adapted_rand_error(table=...)``.
    convention : {'method', 'skimage', 'elf', 'snemi3d'}, optional
        Which pixels count, what background means and how pairs are counted (see Notes).
    exclude_boundary, threads
        Passed to `contingency_table` when images are given.

    Returns
    -------
    scores : RandScores
        ``(precision, recall, f)``; a component is NaN where the pair count it divides by is 0
        (e.g. no object larger than one pixel).

    Notes
    -----
    With n_ij the table, a_i its row sums (reference), b_j its column sums (test), and
    f(n) = n(n - 1) (pairs) or f(n) = n^2 (squares), over the counted clusters:

    .. math::

        P = \\frac{\\sum_{ij} f(n_{ij})}{\\sum_i f(a_i)}, \\quad
        R = \\frac{\\sum_{ij} f(n_{ij})}{\\sum_j f(b_j)}, \\quad
        F = \\frac{\\sum_{ij} f(n_{ij})}{\\tfrac12 \\sum_i f(a_i) + \\tfrac12 \\sum_j f(b_j)}
          = \\frac{2PR}{P + R}

    Conventions (precision and recall are always named as above, as skimage does; elf and
    the SNEMI3D script swap the two names, F is the same):

    - ``'method'`` (method.md): pixels where either labelling is foreground; background
      pixels there are singletons (f = 0); f(n) = n(n - 1). Equals
      ``skimage.metrics.adapted_rand_error(true, test, ignore_labels=())`` on those pixels
      after every background pixel gets a unique id.
    - ``'skimage'``: ``skimage.metrics.adapted_rand_error(true, test)`` with its defaults:
      pixels where the reference is foreground, test id 0 an ordinary label, n(n - 1).
    - ``'elf'``: ``elf.evaluation.rand_index(test, true)`` defaults (as funlib, waterz):
      every pixel, id 0 an ordinary label, n^2.
    - ``'snemi3d'``: the SNEMI3D challenge's definition: pixels where the reference is
      foreground, test background pixels singletons (each adds 1 to the joint and test sums), n^2.

    Sums are exact integers; only the final divisions are floating point.

    Examples
    --------
    >>> import numpy as np
    >>> u = np.array([[1, 1, 0], [2, 2, 0]])
    >>> p = np.array([[1, 1, 0], [1, 1, 0]])
    >>> adapted_rand(u, p)
    RandScores(precision=1.0, recall=0.3333333333333333, f=0.5)
    """
    if convention not in RAND_CONVENTIONS:
        raise ValueError(f"convention must be one of {RAND_CONVENTIONS}, got {convention!r}")
    t = _resolve_table(table_or_reference, test, table, exclude_boundary, threads, "adapted_rand")
    return RandScores(*_metrics.adapted_rand(*t._columns(), convention))


def variation_of_information(table_or_reference=None, test=None, *, table=None, convention="method",
                             exclude_boundary=False, threads=1) -> VIScores:
    """Variation of information between two labellings, as (split, merge).

    Parameters
    ----------
    table_or_reference : ContingencyTable or array_like of int
        A table from `contingency_table`, or the reference label image.
    test : array_like of int, optional
        The test label image, when the first argument is an image.
    table : ContingencyTable, optional
        The table as a keyword.
    convention : {'method', 'all'}, optional
        ``'method'``: pixels where either labelling is foreground, background pixels there
        singletons. ``'all'``: every pixel, id 0 an ordinary label (what
        ``skimage.metrics.variation_of_information`` and ``elf`` compute by default).
    exclude_boundary, threads
        Passed to `contingency_table` when images are given.

    Returns
    -------
    scores : VIScores
        ``(split, merge)`` in bits, NaN when no pixel counts.

    Notes
    -----
    With n counted pixels, n_ij the table and a_i, b_j its row and column sums,

    .. math::

        \\mathrm{split} = H(T \\mid R) = \\frac{1}{n}\\Big(\\sum_i a_i \\log_2 a_i
            - \\sum_{ij} n_{ij} \\log_2 n_{ij}\\Big), \\quad
        \\mathrm{merge} = H(R \\mid T) = \\frac{1}{n}\\Big(\\sum_j b_j \\log_2 b_j
            - \\sum_{ij} n_{ij} \\log_2 n_{ij}\\Big)

    Singletons contribute 0 to every sum. skimage returns the same pair, in this order.
    """
    if convention not in VI_CONVENTIONS:
        raise ValueError(f"convention must be one of {VI_CONVENTIONS}, got {convention!r}")
    t = _resolve_table(table_or_reference, test, table, exclude_boundary, threads, "variation_of_information")
    return VIScores(*_metrics.variation_of_information(*t._columns(), convention))


def iou_matrix(table: ContingencyTable, *, sparse=False):
    """Intersection over union of every pair of foreground objects.

    Parameters
    ----------
    table : ContingencyTable
    sparse : bool, optional
        Return a ``scipy.sparse.csr_array`` (only overlapping pairs stored) instead of a dense
        array, for volumes with many objects.

    Returns
    -------
    ref_ids : ndarray, shape (K,)
        Foreground reference ids (0 left out), in the table's order.
    test_ids : ndarray, shape (L,)
        Foreground test ids, sorted as unsigned 64-bit patterns.
    iou : ndarray of float64, shape (K, L), or csr_array
        ``iou[k, l]`` for ref_ids[k] and test_ids[l]; 0 where they do not overlap.

    Notes
    -----
    .. math:: \\mathrm{IoU}_{ij} = \\frac{n_{ij}}{a_i + b_j - n_{ij}}

    with the objects' sizes a_i, b_j from the whole table (pixels on background count). Objects
    without any overlap still get a row or column: they are misses for mAP.
    """
    if not isinstance(table, ContingencyTable):
        raise TypeError(f"iou_matrix needs a ContingencyTable, got {type(table).__name__}")
    ref_u64, test_u64, ri, ti, values = _metrics.iou(*table._columns())
    from .contingency import _from_u64

    ref_ids = _from_u64(ref_u64, table.ref_ids.dtype)
    test_ids = _from_u64(test_u64, table.test_ids.dtype)
    shape = (len(ref_ids), len(test_ids))
    if sparse:
        import scipy.sparse

        return ref_ids, test_ids, scipy.sparse.csr_array((values, (ri.astype(np.intp), ti.astype(np.intp))), shape=shape)
    dense = np.zeros(shape, np.float64)
    dense[ri.astype(np.intp), ti.astype(np.intp)] = values
    return ref_ids, test_ids, dense
