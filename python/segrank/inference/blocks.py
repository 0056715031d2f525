"""The one blocking scheme: how an image or volume is cut into model-sized tiles and put back.

Vocabulary (bioimage.io's): a block's **inner** region is the part of the image it owns and
writes; its **halo** is the context added on each side so that the inner region sees all of its
receptive field; **outer** = inner grown by the halo, always of the fixed tile shape the model
is fed (so memory stays flat, also on GPU); the part of outer that lies outside the image is
**padding**, filled by reflecting the image at its border. Inner regions tile the image without
overlap, and each is exactly one chunk of the output store, so parallel writes never share a
chunk. Prediction, scoring and caching all use this scheme.

All shapes and slices here are spatial, in the image's axis order (z, y, x).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import InputError
from ..models.description import Model

# Default tile (outer) edge when neither the user nor the model fixes one: large enough that the
# halo is a small share of the work, small enough for a modest GPU (2D) or CPU memory (3D).
DEFAULT_TILE_2D = 512
DEFAULT_TILE_3D = 96
# Default halo per side when the model declares none.
DEFAULT_HALO = 16
# Slices fed to a 2D model per run when it predicts a volume slice-wise (its batch size).
DEFAULT_SLICE_BATCH = 4


@dataclass(frozen=True)
class Block:
    """One block: where it reads, what it pads and which part of its prediction it keeps.

    Attributes
    ----------
    index : tuple of int
        Position in the block grid.
    inner : tuple of slice
        The image region this block owns (and writes), in image coordinates.
    outer : tuple of slice
        Inner grown by the halo and extended to the tile shape; may reach outside the image.
    read : tuple of slice
        Outer clipped to the image: what is read from the source.
    padding : tuple of (int, int)
        Pixels before and after `read` on each axis that lie outside the image (reflect-filled).
    """

    index: tuple[int, ...]
    inner: tuple[slice, ...]
    outer: tuple[slice, ...]
    read: tuple[slice, ...]
    padding: tuple[tuple[int, int], ...]

    @property
    def origin(self) -> tuple[int, ...]:
        """Global coordinate of the outer tile's first pixel (negative inside padding)."""
        return tuple(s.start for s in self.outer)

    @property
    def inner_in_outer(self) -> tuple[slice, ...]:
        """Slices that crop the inner region out of the outer tile's prediction."""
        return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(self.inner, self.outer))


@dataclass(frozen=True)
class Blocking:
    """A grid of blocks over an image of spatial `shape`.

    `tile` is the outer (model input) shape, `halo` the context per side; the inner block
    shape is ``tile - 2 * halo``. Edge blocks keep the full tile shape: their inner region is
    cut at the image border and the rest of the tile is padding.
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    halo: tuple[int, ...]

    def __post_init__(self):
        if not (len(self.shape) == len(self.tile) == len(self.halo)):
            raise ValueError(f"shape {self.shape}, tile {self.tile} and halo {self.halo} differ in length")
        if any(h < 0 for h in self.halo) or any(i < 1 for i in self.inner):
            raise ValueError(f"tile {self.tile} leaves no inner region with halo {self.halo}")

    @property
    def inner(self) -> tuple[int, ...]:
        """Inner block shape: the output chunk shape."""
        return tuple(t - 2 * h for t, h in zip(self.tile, self.halo))

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / i) for s, i in zip(self.shape, self.inner))

    def __len__(self) -> int:
        return math.prod(self.grid)

    def __iter__(self) -> Iterator[Block]:
        for index in itertools.product(*(range(g) for g in self.grid)):
            yield self.block(index)

    def indices(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(g) for g in self.grid)))

    def block(self, index: Sequence[int]) -> Block:
        index = tuple(int(i) for i in index)
        inner, outer, read, padding = [], [], [], []
        for i, size, step, tile, halo in zip(index, self.shape, self.inner, self.tile, self.halo):
            start = i * step
            if not 0 <= start < size:
                raise IndexError(f"block index {index} outside the grid {self.grid}")
            inner.append(slice(start, min(start + step, size)))
            o0, o1 = start - halo, start - halo + tile
            outer.append(slice(o0, o1))
            r0, r1 = max(o0, 0), min(o1, size)
            read.append(slice(r0, r1))
            padding.append((r0 - o0, o1 - r1))
        return Block(index, tuple(inner), tuple(outer), tuple(read), tuple(padding))


def _as_tuple(value, n: int, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise InputError(f"{what} {value} has {len(value)} values; expected 1 or {n}")
    return value


def _smallest_valid(size: int, minimum: int, multiple: int) -> int:
    size = max(size, minimum, 1)
    return size if multiple <= 1 else math.ceil(size / multiple) * multiple


def choose_blocking(
    model: Model,
    shape: Sequence[int],
    *,
    tile: int | Sequence[int] | None = None,
    halo: int | Sequence[int] | None = None,
    batch: int | None = None,
) -> Blocking:
    """The blocking used to predict an image of spatial `shape` with `model`.

    Parameters
    ----------
    model : Model
        Its `tiling` gives the constraints (fixed, minimum, multiple_of) and default halo.
    shape : sequence of int
        Spatial shape of the image (y, x) or (z, y, x).
    tile : int or sequence of int, optional
        Outer tile shape over the model's spatial axes (one value = every axis). For a 2D
        model on a volume a leading value may give the slices per run. Must honour the model's
        constraints. Default: the model's fixed shape, else the smallest valid tile that
        covers the image, with its halo, in as many blocks as tiles of 512 (2D) / 96 (3D) need.
    halo : int or sequence of int, optional
        Context per side. Default: the model's halo, else 16.
    batch : int, optional
        Slices per run for a 2D model on a volume (default 4, or 1 for a model without a
        batch axis).

    Returns
    -------
    Blocking
        For a 2D model on a volume the z axis has halo 0 and the batch as tile size.
    """
    shape = tuple(int(s) for s in shape)
    nd = model.ndim
    extra = len(shape) - nd
    if extra not in (0, 1) or (extra == 1 and nd != 2):
        raise InputError(
            f"an image of spatial shape {shape} does not fit model {model.name!r} with axes {model.axes!r}"
        )
    spatial = shape[extra:]
    constraints = model.tiling
    minimum = _as_tuple(constraints.minimum or None, nd, "minimum") or (1,) * nd
    multiple = _as_tuple(constraints.multiple_of or None, nd, "multiple_of") or (1,) * nd
    fixed = _as_tuple(constraints.fixed, nd, "fixed tile")

    given = tile
    if given is not None and not isinstance(given, int) and len(tuple(given)) == nd + extra and extra:
        given = tuple(given)
        batch, given = int(given[0]), given[1:]
    halo_t = _as_tuple(halo, nd, "halo")
    if halo_t is None:
        halo_t = _as_tuple(constraints.halo or None, nd, "halo") or (DEFAULT_HALO,) * nd
    tile_t = _as_tuple(given, nd, "tile")

    if tile_t is not None:
        for t, mn, mu, fx in zip(tile_t, minimum, multiple, fixed or (None,) * nd):
            if fx is not None and t != fx:
                raise InputError(f"tile {tile_t}: model {model.name!r} only accepts the tile {fixed}")
            if t < mn or (mu > 1 and t % mu):
                raise InputError(
                    f"tile {tile_t}: model {model.name!r} needs tiles >= {minimum} and multiples of {multiple}"
                )
    elif fixed is not None:
        tile_t = fixed
    else:
        default = DEFAULT_TILE_2D if nd == 2 else DEFAULT_TILE_3D
        tiles = []
        for s, h, mn, mu in zip(spatial, halo_t, minimum, multiple):
            # grow the default when the halo leaves too little inner region
            largest = max(default, 2 * h + max(2 * h, 16))
            # as many blocks as the largest tile needs, then the smallest tile for that many:
            # a 1024 image gets 3 x 358 instead of 3 x 512 (mostly padding) with halo 8
            n = math.ceil(s / (largest - 2 * h))
            tiles.append(_smallest_valid(math.ceil(s / n) + 2 * h, mn, mu))
        tile_t = tuple(tiles)
    for t, h in zip(tile_t, halo_t):
        if t - 2 * h < 1:
            raise InputError(f"tile {tile_t} leaves no inner region with halo {halo_t} (model {model.name!r})")
    if extra:
        if batch is None:
            batch = DEFAULT_SLICE_BATCH if "b" in model.axes else 1
        batch = max(1, min(int(batch), shape[0]))
        if "b" not in model.axes and batch != 1:
            raise InputError(f"model {model.name!r} has no batch axis; it predicts one slice per run")
        return Blocking(shape, (batch,) + tile_t, (0,) + halo_t)
    return Blocking(shape, tile_t, halo_t)


__all__ = ["Block", "Blocking", "choose_blocking", "DEFAULT_HALO", "DEFAULT_TILE_2D", "DEFAULT_TILE_3D"]
