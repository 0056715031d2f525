"""Contingency tables between two label arrays: exact pair counts, id 0 included, mergeable."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _metrics
from ._arrays import as_kernel_array, check_same_shape, check_threads

__all__ = ["ContingencyTable", "contingency_table"]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _to_u64(ids: np.ndarray) -> np.ndarray:
    # Signed ids become their sign-extended 64-bit pattern, the kernels' canonical form.
    if ids.dtype == np.uint64:
        return ids
    return ids.astype(np.int64).view(np.uint64) if ids.dtype.kind == "i" else ids.astype(np.uint64)


def _from_u64(ids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.uint64:
        return ids
    return ids.view(np.int64).astype(dtype) if dtype.kind == "i" else ids.astype(dtype)


@dataclass(frozen=True, eq=False)
class ContingencyTable:
    """Pixel counts n_ij for every (reference id i, test id j) pair that occurs.

    Attributes
    ----------
    ref_ids, test_ids : ndarray, shape (P,)
        The pair ids, in the dtypes of the labellings they came from. Id 0 (background) is
        included like any other. Sorted by (ref, test) as unsigned 64-bit patterns (so negative
        ids of signed dtypes come after the positive ones).
    counts : ndarray of uint64, shape (P,)
        Pixels per pair, all > 0.

    Notes
    -----
    The table keeps every pixel that was counted, background pairs included, as exact integers;
    each score applies its own foreground restriction from it (see `adapted_rand`). Tables of
    blocks or images merge exactly with ``t1 + t2`` or ``t1.merge(t2)`` when ids are globally
    consistent. The arrays are read-only.
    """

    ref_ids: np.ndarray
    test_ids: np.ndarray
    counts: np.ndarray

    def __post_init__(self):
        for name in ("ref_ids", "test_ids", "counts"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise ValueError(f"ContingencyTable.{name} must be a 1-d integer array, got {arr.dtype} {arr.shape}")
            object.__setattr__(self, name, _readonly(arr))
        if not (len(self.ref_ids) == len(self.test_ids) == len(self.counts)):
            raise ValueError("ContingencyTable columns differ in length")

    @classmethod
    def _from_kernel(cls, ref_u64, test_u64, counts, ref_dtype, test_dtype) -> "ContingencyTable":
        return cls(_from_u64(ref_u64, ref_dtype), _from_u64(test_u64, test_dtype), counts.astype(np.uint64, copy=False))

    def _columns(self):
        return _to_u64(self.ref_ids), _to_u64(self.test_ids), self.counts

    @property
    def n_pixels(self) -> int:
        """All pixels counted (background pairs included)."""
        return int(self.counts.sum(dtype=np.uint64))

    @property
    def n_foreground(self) -> int:
        """Pixels where either labelling is foreground (the pixels method.md's scores use)."""
        background = (self.ref_ids == 0) & (self.test_ids == 0)
        return int(self.counts[~background].sum(dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.counts)

    def row_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Reference ids and their sizes a_i (row sums), sorted like the table."""
        if len(self) == 0:
            return self.ref_ids.copy(), np.zeros(0, np.uint64)
        starts = np.flatnonzero(np.r_[True, self.ref_ids[1:] != self.ref_ids[:-1]])
        return self.ref_ids[starts], np.add.reduceat(self.counts, starts).astype(np.uint64)

    def col_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Test ids and their sizes b_j (column sums), sorted by id as unsigned 64-bit patterns."""
        u = _to_u64(self.test_ids)
        ids, inverse = np.unique(u, return_inverse=True)
        sizes = np.zeros(len(ids), np.uint64)
        np.add.at(sizes, inverse.ravel(), self.counts)
        return _from_u64(ids, self.test_ids.dtype), sizes

    def merge(self, other: "ContingencyTable") -> "ContingencyTable":
        """Exact sum of two tables (e.g. of two blocks of one volume)."""
        if not isinstance(other, ContingencyTable):
            raise TypeError(f"can only merge ContingencyTable, got {type(other).__name__}")
        if self.ref_ids.dtype != other.ref_ids.dtype or self.test_ids.dtype != other.test_ids.dtype:
            raise TypeError(
                "tables of different id dtypes: "
                f"({self.ref_ids.dtype}, {self.test_ids.dtype}) vs ({other.ref_ids.dtype}, {other.test_ids.dtype})"
            )
        r, t, c = _metrics.merge_tables(*self._columns(), *other._columns())
        return ContingencyTable._from_kernel(r, t, c, self.ref_ids.dtype, self.test_ids.dtype)

    def __add__(self, other):
        if not isinstance(other, ContingencyTable):
            return NotImplemented
        return self.merge(other)

    def __eq__(self, other):
        if not isinstance(other, ContingencyTable):
            return NotImplemented
        return (
            self.ref_ids.dtype == other.ref_ids.dtype
            and self.test_ids.dtype == other.test_ids.dtype
            and np.array_equal(self.ref_ids, other.ref_ids)
            and np.array_equal(self.test_ids, other.test_ids)
            and np.array_equal(self.counts, other.counts)
        )

    __hash__ = None

    def __repr__(self) -> str:
        return (
            f"ContingencyTable({len(self)} pairs, {self.n_pixels} pixels, "
            f"ids {self.ref_ids.dtype}/{self.test_ids.dtype})"
        )


def contingency_table(reference, test, *, exclude_boundary=False, halo=None, threads=1) -> ContingencyTable:
    """Count pixels for every pair of (reference, test) labels.

    Parameters
    ----------
    reference, test : array_like of int, 1 to 3 axes, same shape
        Label images: uint8/16/32/64 or int8/16/32/64 (bool as 0/1), each its own dtype; 0 is
        background. Any layout (C- or F-ordered, strided) is read without copying.
    exclude_boundary : bool, optional
        Leave out a one-pixel band at label transitions of the reference: pixels whose reference
        label differs from that of the next pixel along any axis.
    halo : int or sequence of int, optional
        Trailing context slices per axis (0 or 1; an int applies to every axis): the last slice
        of the arrays along that axis is not counted and serves only to decide the band of the
        slice before it. Gives block-wise tables that merge to the whole volume's table.
    threads : int, optional
        Threads for large arrays (above a few Mvoxel). Results do not depend on it.

    Returns
    -------
    table : ContingencyTable

    Raises
    ------
    TypeError
        Non-integer labels.
    ValueError
        Shapes that differ, more than three (non-unit) axes, a bad halo.

    Notes
    -----
    ``n_ij = |{x : reference(x) = i, test(x) = j}|`` over the counted pixels, id 0 included.
    The kernel counts label runs along rows (carried across rows) instead of single pixels, so
    its cost grows with the number of runs. Blocks tiling a volume, each given a one-slice
    halo on its high side along the axes where the volume goes on (``halo=1`` there), give
    tables whose merge equals the whole volume's table exactly, band included.

    Examples
    --------
    >>> import numpy as np
    >>> t = contingency_table(np.array([1, 1, 2, 0]), np.array([3, 3, 3, 0]))
    >>> t.ref_ids.tolist(), t.test_ids.tolist(), t.counts.tolist()
    ([0, 1, 2], [0, 3, 3], [1, 2, 1])
    """
    r = as_kernel_array(reference, "reference")
    t = as_kernel_array(test, "test")
    for arr, name in ((r, "reference"), (t, "test")):
        if arr.dtype.kind not in "biu":
            raise TypeError(f"{name} labels must be an integer array, got {arr.dtype}")
    check_same_shape(r, t, "reference", "test")
    if halo is None:
        halo_list = []
    elif isinstance(halo, (int, np.integer)):
        halo_list = [int(halo)] * r.ndim
    else:
        halo_list = [int(h) for h in halo]
    ref_u64, test_u64, counts = _metrics.contingency(r, t, bool(exclude_boundary), halo_list, check_threads(threads))
    return ContingencyTable._from_kernel(ref_u64, test_u64, counts, r.dtype if r.dtype != bool else np.uint8,
                                         t.dtype if t.dtype != bool else np.uint8)
