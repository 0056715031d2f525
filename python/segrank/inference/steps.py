"""The steps of one block: read and normalise its tile, run the model, activate and crop."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, PredictionError
from ..models.description import Model
from .blocks import Block
from .normalize import Normalization
from .session import TileRunner
from .source import read_region

Perturb = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


def _to_model(x: np.ndarray, letters: str, model_axes: str) -> np.ndarray:
    for a in [a for a in letters if a not in model_axes]:  # e.g. no batch axis: size 1
        x = x.squeeze(letters.index(a))
        letters = letters.replace(a, "")
    return np.ascontiguousarray(np.transpose(x, [letters.index(a) for a in model_axes]), dtype=np.float32)


def _from_model(y: np.ndarray, model_axes: str, letters: str) -> np.ndarray:
    if y.ndim != len(model_axes):
        raise PredictionError(f"output of {y.ndim} dimensions for axes {model_axes!r}")
    for a in letters:
        if a not in model_axes:
            y = y[None]
            model_axes = a + model_axes
    return np.transpose(y, [model_axes.index(a) for a in letters])


def activate(y: np.ndarray, activation: str) -> np.ndarray:
    """Probabilities from raw output (C, ...): sigmoid, softmax over C, or as is.

    Always a new C-contiguous float32 array (a crop of the output becomes contiguous); `y` is
    not changed. The activation runs in place on that copy, one vectorised numpy pass per step
    (``1 / (1 + exp(-y))``: ~4x faster than `scipy.special.expit`, which evaluates element by
    element; equal to it within a few float32 ulp); softmax is scipy's formula, in place.
    """
    out = np.empty(np.shape(y), dtype=np.float32)
    if activation == "sigmoid":
        np.negative(y, out=out, casting="unsafe")  # the copy (and the cast) is the first pass
        with np.errstate(over="ignore", under="ignore"):  # exp(-y) = inf for y < -88: 1 / inf = 0
            np.exp(out, out=out)
            np.add(out, 1, out=out)
            return np.reciprocal(out, out=out)
    np.copyto(out, y, casting="unsafe")
    if activation == "softmax":
        out -= out.max(axis=0, keepdims=True)
        np.exp(out, out=out)
        out /= out.sum(axis=0, keepdims=True)
    return out


@dataclass(frozen=True)
class TileInput:
    """A block's model input, ready to run."""

    feed: np.ndarray
    mask: np.ndarray | None
    tile_shape: tuple[int, ...]  # spatial shape of the outer tile (the expected output shape)


def prepare_block(
    model: Model,
    read: Callable[[tuple[slice, ...]], np.ndarray],
    norm: Normalization,
    block: Block,
    *,
    slice_wise: bool,
    perturb: Perturb | None = None,
    dropout_mask: np.ndarray | None = None,
) -> TileInput:
    """Read, reflect-pad, normalise and perturb one block's outer tile into the model's layout."""
    raw = read((slice(None),) + block.read)
    if any(p != (0, 0) for p in block.padding):
        # pad the raw pixels (1-2 bytes each), then normalise once: the same values as
        # normalising first (reflection copies pixels; the map is per pixel)
        raw = np.pad(raw, ((0, 0),) + block.padding, mode="reflect")
    tile = norm.apply(raw)
    if perturb is not None:
        shape = tile.shape
        tile = np.asarray(perturb(tile, block.origin), dtype=np.float32)
        if tile.shape != shape:
            raise PredictionError(f"perturbation changed the tile shape {shape} to {tile.shape}")
    letters = ("cb" if slice_wise else "bc") + model.spatial_axes
    x = tile if slice_wise else tile[None]  # (C, slices, y, x) or (1, C, *spatial)
    feed = _to_model(x, letters, model.axes)
    mask = None
    if model.dropout_input:
        batch = x.shape[letters.index("b")]
        channels = int(model.dropout_channels or 1)
        mask = np.ones((1, channels) + (1,) * model.ndim, np.float32) if dropout_mask is None else dropout_mask
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape[0] != batch:
            mask = np.broadcast_to(mask[:1], (batch,) + mask.shape[1:])
        mask = np.ascontiguousarray(mask)
    return TileInput(feed, mask, tuple(tile.shape[1:]))


def finish_block(
    model: Model, raw: np.ndarray, block: Block, tile_shape: tuple[int, ...], *, slice_wise: bool, where: str = "image"
) -> np.ndarray:
    """Probabilities (C_out, *inner shape) from the raw model output of one block."""
    y = _from_model(np.asarray(raw), model.axes, "cb" + model.spatial_axes)  # (C, b, *spatial)
    y = y if slice_wise else y[:, 0]
    if tuple(y.shape[1:]) != tuple(tile_shape):
        raise PredictionError(
            f"{model.name}: output spatial shape {tuple(y.shape[1:])} differs from the input tile {tuple(tile_shape)} "
            f"({where}); only same-size outputs are supported"
        )
    if y.shape[0] != model.out_channels:
        raise PredictionError(f"{model.name}: output has {y.shape[0]} channels, the description says {model.out_channels}")
    probs = activate(y[(slice(None),) + block.inner_in_outer], model.activation)
    if not np.isfinite(probs).all():
        raise PredictionError(f"{model.name}: NaN or infinite output in block {block.index} of {where}")
    return probs


def predict_block(
    model: Model,
    runner: TileRunner,
    data,
    norm: Normalization,
    block: Block,
    *,
    slice_wise: bool,
    perturb: Perturb | None = None,
    dropout_mask: np.ndarray | None = None,
    where: str = "image",
) -> np.ndarray:
    """Probabilities (C_out, *inner shape) of one block of a channel-first image."""
    prepared = prepare_block(
        model, lambda region: read_region(data, region), norm, block,
        slice_wise=slice_wise, perturb=perturb, dropout_mask=dropout_mask,
    )
    raw = runner(prepared.feed, prepared.mask)
    return finish_block(model, raw, block, prepared.tile_shape, slice_wise=slice_wise, where=where)


def stack_prepared(model: Model, prepared: Sequence[TileInput]) -> TileInput:
    """Several blocks' inputs as one batch (along the model's b axis): one run for all."""
    if len(prepared) == 1:
        return prepared[0]
    axis = model.axes.index("b")
    feed = np.concatenate([p.feed for p in prepared], axis=axis)
    mask = None if prepared[0].mask is None else np.concatenate([p.mask for p in prepared], axis=0)
    return TileInput(feed, mask, prepared[0].tile_shape)


def split_output(model: Model, raw: np.ndarray, n: int) -> list[np.ndarray]:
    """The per-block outputs of a batch of `n` blocks (inverse of `stack_prepared`)."""
    return [raw] if n == 1 else np.split(np.asarray(raw), n, axis=model.axes.index("b"))


def check_tiles_per_run(model: Model, session, tiles_per_run: int, where: str) -> int:
    tiles_per_run = int(tiles_per_run)
    if tiles_per_run < 1:
        raise InputError(f"{where}: tiles per run must be at least 1, got {tiles_per_run}")
    if tiles_per_run > 1:
        from .prepared import graph_constraints

        _, graph_batch = graph_constraints(model, session)
        if "b" not in model.axes or graph_batch is not None:
            raise InputError(
                f"{where}: model {model.name!r} takes a fixed batch ({model.axes!r}); it cannot run {tiles_per_run} tiles at once"
            )
    return tiles_per_run



__all__ = [
    "Perturb", "TileInput", "activate", "check_tiles_per_run", "finish_block", "predict_block", "prepare_block",
    "split_output", "stack_prepared",
]
