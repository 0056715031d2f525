"""The scoring grid of a volume: fixed blocks (units) and a tiling of the whole volume that nests in them.

A volume is cut into **scoring blocks**, a fixed grid of `block`-shaped regions chosen from the
volume's shape alone (never from labels). The prediction tiles of the whole volume are chosen so
that, when the model allows, their inner regions nest in the scoring blocks (`scoring_blocking`),
so that no tile is predicted twice and every block's probabilities equal those of predicting
the whole volume at once.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from ..errors import InputError
from ..inference.blocks import Block, Blocking, choose_blocking
from ..models.description import Model

Region = tuple[slice, ...]


# --- the grid of scoring blocks ---------------------------------------------------------------


def block_regions(shape: Sequence[int], block: Sequence[int]) -> list[Region]:
    """A fixed grid of `block`-shaped regions over a volume of spatial `shape` (z, y, x).

    Regions at the far borders are cut at the volume's edge. The grid depends on the shape
    only: never on labels, models or predictions.
    """
    shape, block = tuple(int(s) for s in shape[-3:]), tuple(int(b) for b in block[-3:])
    if len(block) != 3 or any(b < 1 for b in block):
        raise InputError(f"scoring block {block}: expected three positive sizes (z, y, x)")
    steps = [range(0, s, b) for s, b in zip(shape, block)]
    return [
        tuple(slice(o, min(o + b, s)) for o, b, s in zip(corner, block, shape))
        for corner in itertools.product(*steps)
    ]


def block_name(image: str, region: Region) -> str:
    """The unit name of a block, e.g. ``vol[0:64,0:256,0:256]`` (also its dropout seed)."""
    return f"{image}[" + ",".join(f"{r.start}:{r.stop}" for r in region) + "]"


# --- the whole volume's tiling ----------------------------------------------------------------


def _per_axis(value, n: int, default: int) -> tuple[int, ...]:
    if not value:
        return (default,) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


def nested_tile(model: Model, base: Blocking, block: Sequence[int], *, slice_wise: bool,
                fixed_batch: bool = False) -> tuple[int, ...] | None:
    """An outer tile shape close to `base`'s whose inner regions nest in the scoring blocks.

    When the inner tile divides the scoring block along every axis, no tile straddles two blocks
    and no tile is predicted twice. Returns None when `base` already nests, or when the
    model's constraints (minimum, multiple_of) admit no nesting tile near it.
    """
    nd = model.ndim
    minimum = _per_axis(model.tiling.minimum, nd, 1)
    multiple = _per_axis(model.tiling.multiple_of, nd, 1)
    extra = len(base.shape) - nd
    tile = list(base.tile)
    changed = False
    for axis, (b, s, t, h) in enumerate(zip(block[-len(base.shape):], base.shape, base.tile, base.halo)):
        inner = t - 2 * h
        if b >= s or (inner <= b and b % inner == 0):
            continue  # one block along this axis, or already nested
        if slice_wise and axis == 0:
            if fixed_batch:  # the graph takes exactly this many slices per run
                continue
            # slices per run: the largest divisor of the block depth up to the chosen batch
            tile[0] = max(d for d in range(1, min(inner, b) + 1) if b % d == 0)
            changed = True
            continue
        mn, mu = minimum[axis - extra], multiple[axis - extra]
        found = None
        # from the base inner size downwards: a few more tiles per block, never much smaller ones
        for n in range(max(1, math.ceil(b / inner)), b + 1):
            if b % n:
                continue
            cand = b // n + 2 * h
            if b // n < max(1, inner // 4):
                break
            if cand >= mn and (mu <= 1 or cand % mu == 0):
                found = cand
                break
        if found is None:
            return None
        tile[axis] = found
        changed = True
    return tuple(tile) if changed else None


def scoring_blocking(
    model: Model,
    session,
    data,
    block: Sequence[int],
    *,
    tile=None,
    halo=None,
    batch=None,
) -> tuple[Model, Blocking]:
    """The tiling of the whole volume used to score it, shared by every scoring block.

    Parameters
    ----------
    model : Model
    session : onnxruntime.InferenceSession
        Read for fixed input sizes of the graph.
    data : array (C, z, y, x)
        The channel-first volume (lazy); its shape and chunks decide the default tiling.
    block : sequence of int
        Scoring block shape (z, y, x).
    tile, halo, batch : optional
        As for `inference.blocks.choose_blocking`; a tile given here is used as is.

    Returns
    -------
    model : Model
        With the graph's fixed tile, when it has one.
    blocking : Blocking
        `predict_image`'s default tiling, with the tile adjusted (when the model allows) so that
        inner tiles nest in scoring blocks. Predicting the whole volume with this blocking and
        scoring it block by block give identical probabilities.
    """
    from ..inference.prepared import blocking_for, graph_constraints

    spatial = tuple(int(s) for s in data.shape[1:])
    model_c, base = blocking_for(model, session, spatial, tile, halo, batch, data)
    if tile is not None or model_c.tiling.fixed is not None:
        return model_c, base
    slice_wise = len(spatial) > model.ndim
    fixed_batch = batch is not None or graph_constraints(model, session)[1] is not None
    nested = nested_tile(model_c, base, block, slice_wise=slice_wise, fixed_batch=fixed_batch)
    if nested is None:
        return model_c, base
    try:
        return model_c, choose_blocking(model_c, spatial, tile=nested, halo=base.halo[len(spatial) - model.ndim:])
    except InputError:
        return model_c, base


def tiles_in(blocking: Blocking, region: Region) -> list[Block]:
    """The prediction tiles of `blocking` whose inner region overlaps `region`."""
    ranges = [
        range(r.start // step, min(g, -(-r.stop // step)))
        for r, step, g in zip(region, blocking.inner, blocking.grid)
    ]
    return [blocking.block(index) for index in itertools.product(*ranges)]


def overlap(inner: Region, region: Region) -> tuple[Region, Region] | None:
    """(slices in the tile's inner prediction, slices in the region) of their overlap."""
    lo = [max(a.start, b.start) for a, b in zip(inner, region)]
    hi = [min(a.stop, b.stop) for a, b in zip(inner, region)]
    if any(l >= h for l, h in zip(lo, hi)):
        return None
    in_tile = tuple(slice(l - a.start, h - a.start) for l, h, a in zip(lo, hi, inner))
    in_region = tuple(slice(l - b.start, h - b.start) for l, h, b in zip(lo, hi, region))
    return in_tile, in_region


__all__ = ["Region", "block_name", "block_regions", "nested_tile", "overlap", "scoring_blocking", "tiles_in"]
