"""Target images in canonical axes: `TargetImage`, `Target`, the axis mapping and direct region reads.

Axes come from metadata (OME-Zarr axes, Zarr v3 ``dimension_names``, xarray's
``_ARRAY_DIMENSIONS``, tif axes, an ``axes`` attribute) or from the caller. Without either, a
2D array is "yx" and a 3D one "zyx"; other arrays need explicit axes. Every image is presented
in canonical order: a subsequence of "czyx" (singleton time axes are dropped).
`segrank.io.targets` opens the files and stores these images come from.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

CANONICAL = "czyx"
# Letters accepted in user or metadata axes, mapped to canonical letters.
AXIS_ALIASES = {"t": "t", "c": "c", "s": "c", "z": "z", "y": "y", "x": "x", "q": "z", "i": "z"}


@dataclass(frozen=True)
class TargetImage:
    """One image or volume of a target.

    Attributes
    ----------
    name : str
        Unique within the target (file stem, or the array's name).
    data : dask.array.Array
        Lazy pixels, axes in canonical order.
    axes : str
        Subsequence of "czyx", e.g. "yx", "cyx", "zyx", "czyx".
    source : Path
        File or store the image comes from (for messages and cache keys).
    direct : DirectRegions or None
        The same pixels read straight from the stored array (no dask graph per read), when
        the image is a chunked store; ``direct[region]`` equals ``data[region]``.
    """

    name: str
    data: object
    axes: str
    source: Path = field(default=Path("."))
    direct: object = field(default=None, repr=False, compare=False)

    @property
    def spatial_axes(self) -> str:
        return "".join(a for a in self.axes if a in "zyx")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(s for s, a in zip(self.data.shape, self.axes) if a in "zyx")


@dataclass(frozen=True)
class Target:
    """Images of a target, in a stable (sorted) order."""

    source: Path
    images: tuple[TargetImage, ...]

    def __len__(self) -> int:
        return len(self.images)


def canonical_axes(axes: str, shape: Sequence[int], where: str) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """Map `axes` of an array of `shape` to canonical order.

    Returns
    -------
    axes : str
        Canonical axes.
    drop : tuple of int
        Positions of singleton time axes to remove.
    order : tuple of int
        Transpose (after dropping) that brings the rest into canonical order.
    """
    raw = axes.strip().lower()
    if len(raw) != len(shape):
        raise InputError(f"{where}: axes {axes!r} have {len(raw)} letters but the data has {len(shape)} dimensions {tuple(shape)}")
    letters = []
    for a in raw:
        if a not in AXIS_ALIASES:
            raise InputError(f"{where}: unknown axis {a!r} in {axes!r} (use letters from 'tczyx')")
        letters.append(AXIS_ALIASES[a])
    if len(set(letters)) != len(letters):
        raise InputError(f"{where}: axes {axes!r} repeat an axis")
    drop = []
    for i, a in enumerate(letters):
        if a == "t":
            if shape[i] != 1:
                raise InputError(f"{where}: a time axis of length {shape[i]} is not supported; pick one time point")
            drop.append(i)
    kept = [a for a in letters if a != "t"]
    if "y" not in kept or "x" not in kept:
        raise InputError(f"{where}: axes {axes!r} need both y and x")
    canon = "".join(a for a in CANONICAL if a in kept)
    order = tuple(kept.index(a) for a in canon)
    return canon, tuple(drop), order


def guess_axes(ndim: int, where: str) -> str:
    """Axes of an array without axis metadata: "yx" in 2D, "zyx" in 3D, else an InputError."""
    if ndim == 2:
        return "yx"
    if ndim == 3:
        return "zyx"
    raise InputError(f"{where}: a {ndim}D array without axis metadata; give its axes (e.g. --axes czyx)")


@dataclass(frozen=True)
class DirectRegions:
    """Regions of a stored array read straight from it, in the image's canonical axes.

    The dask array of a `TargetImage` builds and runs a small graph for every region read;
    blockwise prediction reads thousands of regions, so it reads through this instead.
    Picklable when `array` is (zarr arrays and the HDF5/N5 wrappers of `segrank.io.targets` are).

    Attributes
    ----------
    array : array-like
        The stored array (numpy-style basic indexing), in its own axis order.
    drop : tuple of int
        Axes of `array` fixed at index 0 (singleton time axes).
    order : tuple of int
        Canonical axis i is kept axis ``order[i]`` (the transpose applied to `data`).
    """

    array: object
    drop: tuple[int, ...]
    order: tuple[int, ...]

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        kept = [None] * len(self.order)
        for i, r in enumerate(region):
            kept[self.order[i]] = r
        kept_iter = iter(kept)
        index = tuple(0 if i in self.drop else next(kept_iter) for i in range(len(self.order) + len(self.drop)))
        part = np.asarray(self.array[index])
        return part.transpose(self.order) if self.order != tuple(range(len(self.order))) else part


def canonical_image(name: str, data, axes: str, source: Path, where: str, stored=None) -> TargetImage:
    """A `TargetImage` of lazy `data` with `axes`, in canonical order; `stored` (the array behind
    `data`, if chunked) becomes its `DirectRegions`."""
    import dask.array as da

    canon, drop, order = canonical_axes(axes, data.shape, where)
    if drop:
        data = data[tuple(0 if i in drop else slice(None) for i in range(data.ndim))]
    if order != tuple(range(len(order))):
        data = da.transpose(data, order)
    if any(s == 0 for s in data.shape):
        raise InputError(f"{where}: empty image of shape {tuple(data.shape)}")
    direct = DirectRegions(stored, tuple(drop), tuple(order)) if stored is not None else None
    return TargetImage(name, data, canon, Path(source), direct)


__all__ = [
    "AXIS_ALIASES",
    "CANONICAL",
    "DirectRegions",
    "Target",
    "TargetImage",
    "canonical_axes",
    "canonical_image",
    "guess_axes",
]
