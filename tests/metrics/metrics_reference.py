"""Plain-numpy references for the metric kernels, and helpers to run the libraries
(skimage, elf) on inputs they can take."""
from __future__ import annotations

import numpy as np

LABEL_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64)
PROB_DTYPES = (np.float16, np.float32, np.float64, np.uint8)


def as_u64(ids: np.ndarray) -> np.ndarray:
    """Canonical 64-bit patterns: signed ids sign-extended."""
    ids = np.asarray(ids)
    return ids.astype(np.int64).view(np.uint64) if ids.dtype.kind == "i" else ids.astype(np.uint64)


def table_numpy(ref: np.ndarray, test: np.ndarray, keep: np.ndarray | None = None):
    """(ref_ids, test_ids, counts) as uint64, sorted, by np.unique over stacked pixel pairs."""
    r, t = as_u64(ref).ravel(), as_u64(test).ravel()
    if keep is not None:
        r, t = r[keep.ravel()], t[keep.ravel()]
    if r.size == 0:
        z = np.zeros(0, np.uint64)
        return z, z, z
    pairs, counts = np.unique(np.stack([r, t], axis=1), axis=0, return_counts=True)
    return pairs[:, 0], pairs[:, 1], counts.astype(np.uint64)


def band_numpy(ref: np.ndarray) -> np.ndarray:
    """Pixels whose reference label differs from the next pixel's along any axis."""
    band = np.zeros(ref.shape, bool)
    for ax in range(ref.ndim):
        lo = [slice(None)] * ref.ndim
        hi = [slice(None)] * ref.ndim
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        band[tuple(lo)] |= ref[tuple(lo)] != ref[tuple(hi)]
    return band


def binary_numpy(a, b, threshold=0.5, background=False, masks=False):
    """(n_and, n_or, ei_units) with the kernels' exact term rule, in numpy."""
    a, b = np.asarray(a), np.asarray(b)
    if masks or a.dtype == bool:
        fa, fb = a != 0, b != 0
    elif a.dtype == np.uint8:
        fa, fb = a / 255.0 > threshold, b / 255.0 > threshold
    else:
        fa = a.astype(np.float64) > threshold
        fb = b.astype(np.float64) > threshold
    if background:
        fa, fb = ~fa, ~fb
    both = fa & fb
    n_and, n_or = int(both.sum()), int((fa | fb).sum())
    if masks or a.dtype == bool:
        return n_and, n_or, n_and << 30
    u, p = a[both], b[both]
    if a.dtype == np.uint8:
        u, p = u.astype(np.int64), p.astype(np.int64)
        w = (255 - u) * (255 - p) if background else u * p
        units = np.rint(np.sqrt(w.astype(np.float64)) / 255.0 * 2.0**30).astype(np.int64)
        return n_and, n_or, int(units.sum())
    work = np.float64 if a.dtype == np.float64 else np.float32
    u, p = u.astype(work), p.astype(work)
    if background:
        u, p = work(1) - u, work(1) - p
    with np.errstate(invalid="ignore"):
        s = np.sqrt(u * p)
    s = np.where(s > 0, s, work(0))
    s = np.where(s < 1, s, work(1))
    units = np.rint(s * work(2.0**30)).astype(np.int64)
    return n_and, n_or, int(units.sum())


def ei_plain(a, b, threshold=0.5):
    """EI sum the textbook way, in float64 (for a tolerance check of the fixed-point sum)."""
    a64 = a.astype(np.float64) / (255.0 if a.dtype == np.uint8 else 1.0)
    b64 = b.astype(np.float64) / (255.0 if b.dtype == np.uint8 else 1.0)
    both = (a64 > threshold) & (b64 > threshold)
    return float(np.sqrt(a64[both] * b64[both]).sum())


def relabel(x: np.ndarray) -> np.ndarray:
    """Same partition with small non-negative int64 ids; 0 stays 0 (for skimage's sparse tables)."""
    flat = np.asarray(x).ravel()
    _, inverse = np.unique(flat, return_inverse=True)
    out = inverse.reshape(flat.shape).astype(np.int64) + 1
    out[flat == 0] = 0
    return out.reshape(np.shape(x))


def unique_background(x: np.ndarray, where: np.ndarray, start: int) -> np.ndarray:
    """Give every background pixel in `where` its own id, from `start` on (method.md's trick)."""
    out = x.copy()
    sel = (out == 0) & where
    out[sel] = start + np.arange(int(sel.sum()))
    return out
