"""Input normalisation with statistics of the whole image or volume, never of a tile.

Statistics come from every pixel of an image up to `MAX_SAMPLES` values per channel; above
that, from whole chunks of the source picked by the seeded rng (a deterministic subsample that
reads only a bounded amount of a huge volume). The result is an affine map per channel,
``x * scale + offset``, applied to each tile, so all tiles of an image agree exactly.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..models.description import Preprocessing
from ..perturb.seeds import rng

# Values per channel above which statistics come from a subsample of chunks (16 Mi values).
MAX_SAMPLES = 1 << 24


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine normalisation ``x * scale[c] + offset[c]``, in float32."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise a channel-first array (C, ...) to float32."""
        shape = (len(self.scale),) + (1,) * (x.ndim - 1)
        scale = np.asarray(self.scale, dtype=np.float32).reshape(shape)
        offset = np.asarray(self.offset, dtype=np.float32).reshape(shape)
        # the cast to float32 happens inside the multiplication (float32 loop: the same values
        # as casting first), one pass less over the tile
        out = np.multiply(x, scale, out=np.empty(x.shape, dtype=np.float32), dtype=np.float32, casting="unsafe")
        out += offset
        return out


@dataclass(frozen=True)
class ImageSample:
    """Values drawn from an image for its statistics, and a digest of what was read."""

    values: np.ndarray  # (C, n)
    complete: bool  # every pixel, or a subsample of chunks
    digest: str  # sha256 of the pixels read, with shape and dtype


def sample_image(data, *, max_samples: int = MAX_SAMPLES, read=None) -> ImageSample:
    """Pixels of a channel-first image (C, *spatial) for normalisation statistics.

    Small images are read whole. Larger ones contribute whole chunks (of the dask array, i.e.
    of the store) chosen without replacement by ``seeds.rng(0, "", "normalization", 0,
    "chunks")`` until about `max_samples` values per channel are read, so the same volume always
    gives the same statistics, whatever the tiling or scheduler.

    `read`, optional: a function region -> pixels of `data` (e.g. straight from the stored
    array, `predict.BlockSource`), used for a small image read whole instead of computing the
    dask array; it must give the same pixels.
    """
    import dask.array as da

    c = data.shape[0]
    spatial_size = math.prod(data.shape[1:])
    digest = hashlib.sha256(repr((tuple(data.shape), str(data.dtype))).encode())
    if spatial_size <= max_samples or not isinstance(data, da.Array):
        if read is not None:
            values = np.asarray(read((slice(None),) * data.ndim))
        else:
            values = np.asarray(data.compute(scheduler="sync") if isinstance(data, da.Array) else data)
        values = np.ascontiguousarray(values)
        digest.update(values.tobytes())
        return ImageSample(values.reshape(c, -1), True, digest.hexdigest())
    chunk_ids = list(itertools.product(*(range(len(ch)) for ch in data.chunks[1:])))
    sizes = [math.prod(ch[i] for ch, i in zip(data.chunks[1:], idx)) for idx in chunk_ids]
    mean_size = sum(sizes) / len(sizes)
    n_pick = min(len(chunk_ids), max(1, math.ceil(max_samples / mean_size)))
    pick = np.sort(rng(0, "", "normalization", 0, "chunks").choice(len(chunk_ids), size=n_pick, replace=False))
    starts = [np.concatenate([[0], np.cumsum(ch)]) for ch in data.chunks[1:]]
    parts = []
    for k in pick:
        idx = chunk_ids[k]
        region = (slice(None),) + tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, idx))
        block = np.ascontiguousarray(data[region].compute(scheduler="sync"))
        digest.update(repr(idx).encode())
        digest.update(block.tobytes())
        parts.append(block.reshape(c, -1))
    return ImageSample(np.concatenate(parts, axis=1), False, digest.hexdigest())


def percentiles(values: np.ndarray, q) -> np.ndarray:
    """``np.percentile(values, q)`` (linear method), from a histogram for 8/16-bit integers.

    Small integer pixels take a counting pass instead of numpy's partition of a copy of the
    whole sample (~25x faster for 16 Mi values); the result is the same float64, bit for bit:
    the two order statistics around each virtual index are found in the cumulative counts and
    interpolated exactly as numpy does (tests/inference compares them).
    """
    values = np.asarray(values)
    if values.dtype.kind not in "ui" or values.dtype.itemsize > 2 or values.size == 0:
        return np.percentile(values, q)
    flat = values.ravel()
    low = int(flat.min()) if values.dtype.kind == "i" else 0
    cum = np.cumsum(_counts(flat, low))
    n = flat.size
    quantiles = np.true_divide(np.asanyarray(q, dtype=np.float64), 100)
    virtual = (n - 1) * quantiles  # numpy's "linear" (Hyndman & Fan 7) virtual index
    previous = np.floor(virtual).astype(np.intp)
    nxt = np.minimum(previous + 1, n - 1)
    # the k-th smallest value (0-based) is the first value whose cumulative count exceeds k
    a = (np.searchsorted(cum, previous, side="right") + low).astype(values.dtype)
    b = (np.searchsorted(cum, nxt, side="right") + low).astype(values.dtype)
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype)
    diff = b - a  # b >= a: no wrap-around in unsigned types
    result = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=result, where=gamma >= 0.5, casting="unsafe", dtype=result.dtype)
    return result


# Values counted per step by `_counts`: its index buffer (8 bytes a value) stays in the cache.
COUNT_STEP = 1 << 16


def _counts(flat: np.ndarray, low: int) -> np.ndarray:
    """``np.bincount(flat - low)`` for 8/16-bit integers, in steps of `COUNT_STEP` values.

    `np.bincount` first converts its whole input to intp: for 16 Mi pixels a fresh 128 MiB
    array, whose page faults and memory traffic cost more than the counting (benchmarks/
    inference.py, 16x1024^2 volume: 0.2 s in the profile). One small reused buffer avoids both.
    """
    bins = 1 << (8 * flat.dtype.itemsize)
    counts = np.zeros(bins, dtype=np.int64)
    buf = np.empty(min(COUNT_STEP, flat.size), dtype=np.intp)
    for start in range(0, flat.size, COUNT_STEP):
        part = flat[start : start + COUNT_STEP]
        index = buf[: part.size]
        np.copyto(index, part, casting="unsafe")
        if low:
            index -= low
        counts += np.bincount(index, minlength=bins)
    return counts


def normalization(preprocessing: Preprocessing, sample: ImageSample | np.ndarray) -> Normalization:
    """The per-channel affine map of `preprocessing` for an image, from its sample.

    Notes
    -----
    percentile: scale = 1 / (P_high - P_low + eps), offset = -P_low * scale, with numpy's
    linear-interpolation percentiles of each channel.
    zero_mean_unit_variance: scale = 1 / (std + eps), offset = -mean * scale, with the image's
    mean and (population) std per channel unless the model fixes them.
    scale_linear: scale = gain, offset = offset. none: identity.
    """
    values = sample.values if isinstance(sample, ImageSample) else np.asarray(sample)
    n_channels = values.shape[0]
    kind, eps = preprocessing.kind, preprocessing.eps
    if kind == "none":
        return Normalization((1.0,) * n_channels, (0.0,) * n_channels)
    if kind == "scale_linear":
        return Normalization((float(preprocessing.gain),) * n_channels, (float(preprocessing.offset),) * n_channels)
    scales, offsets = [], []
    for ch in values:
        if kind == "percentile":
            low, high = percentiles(ch, [preprocessing.low, preprocessing.high])
            scale = 1.0 / (float(high) - float(low) + eps)
            scales.append(scale)
            offsets.append(-float(low) * scale)
        else:  # zero_mean_unit_variance
            mean = preprocessing.mean if preprocessing.mean is not None else float(np.mean(ch, dtype=np.float64))
            std = preprocessing.std if preprocessing.std is not None else float(np.std(ch, dtype=np.float64))
            scale = 1.0 / (std + eps)
            scales.append(scale)
            offsets.append(-mean * scale)
    return Normalization(tuple(scales), tuple(offsets))


__all__ = ["COUNT_STEP", "ImageSample", "MAX_SAMPLES", "Normalization", "normalization", "percentiles", "sample_image"]
