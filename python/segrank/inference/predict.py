"""Blockwise prediction of images and volumes with ONNX Runtime, in memory or into a Zarr store.

Per block (see `blocks`): read the outer region that lies inside the image, normalise it with
statistics of the whole image (`normalize`), reflect-pad it to the fixed tile shape, apply the
optional perturbation (a function of global coordinates, so tiling never changes it), run the
model, apply its activation and keep the inner region. A 2D model predicts a volume
slice-wise (slices as its batch), a 3D model natively. `predict_image` returns an array;
`predict_target` writes every image of a target to a Zarr v3 store, block by block, under a
content-hash key, so a repeated or interrupted run only computes what is missing.

Speed: blocks go through three stages (`run_pipelined`): reading and normalising the next
block, and activating and storing the last one, run in threads while the model runs the
current one; stored inputs are read straight from Zarr/HDF5/N5 (`BlockSource`), not through a
dask graph per block, and an image whose statistics read every pixel is not read again (its
blocks are cut from those pixels, `KEEP_PIXELS_BYTES`); outputs are written chunk by chunk
without zarr's event loop (`io.zarr_store.BlockWriter`). Results are the same as one step at a
time (``overlap=False``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, PredictionError
from ..models.description import Model
from .blocks import Block, Blocking, choose_blocking
from .normalize import Normalization, normalization, sample_image
from .session import TileRunner, cached_session, default_threads, provider_note

Perturb = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
# Bump when a change alters stored predictions, so that old caches are not reused.
FORMAT_VERSION = 1
# Model fields that decide predicted values (the cache key ignores names, cards, paths).
PREDICTION_FIELDS = (
    "input_name", "output_name", "axes", "in_channels", "out_channels", "activation",
    "preprocessing", "dropout_input", "dropout_channels",
)
# Upper bound on dask tasks per run: beyond it, a task predicts several blocks in turn.
MAX_TASKS = 10_000
# Blocks per dask task, at most: a task overlaps reading the next block and writing the last
# one with the model run of the current one, so it should hold several; but not so many that
# the progress bar or the load balance across workers suffers.
BLOCKS_PER_TASK = 16
# An image that dask holds as one chunk (a whole tif/png file) up to this size is read once per
# task instead of once per block.
WHOLE_READ_BYTES = 256 << 20


# --- memory ---------------------------------------------------------------------------------

_MALLOC_TUNED = False
# Buffers from this size on are mmapped, so freeing one returns it to the OS at once.
MMAP_THRESHOLD = 1 << 20


def return_large_buffers() -> None:
    """Have glibc map buffers of 1 MiB and more on their own, so that freeing returns them.

    glibc raises its mmap threshold as large blocks are freed (up to 32 MiB), after which
    tile-sized buffers come from per-thread arenas that keep their high-water mark: peak RSS
    then grows by ~100 MB per dask thread (benchmarks/inference.py, memory part: 1051 ->
    625 MB with 4 threads). A fixed threshold stops that. Once per process; glibc only; an
    explicit ``MALLOC_MMAP_THRESHOLD_`` in the environment is left alone.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD)  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


# --- axes -------------------------------------------------------------------------------


def check_axes(model: Model, axes: str, shape: Sequence[int], *, where: str = "image") -> None:
    """Raise `InputError` (one line naming both axes) when an image cannot feed `model`.

    A 3D model needs a z axis; a 2D model takes 2D images and volumes (slice-wise); the
    channel count must match the model's input channels.
    """
    spatial = "".join(a for a in axes if a in "zyx")
    sizes = dict(zip(axes, shape))
    problem = None
    if model.ndim == 3 and len(spatial) < 3:
        problem = "the model is 3D and the image has no z axis"
    elif model.ndim not in (2, 3):
        problem = f"the model has {model.ndim} spatial axes"
    elif sizes.get("c", 1) != model.in_channels:
        problem = f"the image has {sizes.get('c', 1)} channel(s), the model takes {model.in_channels}"
    if problem:
        raise InputError(
            f"{where}: image axes {axes!r} (shape {tuple(shape)}) do not fit model {model.name!r} "
            f"with axes {model.axes!r}: {problem}; give the image's axes (e.g. --axes zyx)"
        )


def _channel_first(image, axes: str | None, model: Model):
    """(data as (C, *spatial), spatial axes, name, where) for a TargetImage or an array."""
    from ..io.targets import TargetImage, canonical_axes

    if isinstance(image, TargetImage):
        data, axes, name, where = image.data, image.axes, image.name, f"{image.source} [{image.name}]"
    else:
        data, name, where = image, "image", "image"
        if axes is None:
            if data.ndim == model.ndim:
                axes = model.spatial_axes
            elif data.ndim == model.ndim + 1 and data.shape[0] == model.in_channels:
                axes = "c" + model.spatial_axes
            elif data.ndim == 3 and model.ndim == 2:
                axes = "zyx"
            else:
                raise InputError(f"image of shape {tuple(data.shape)}: give its axes for model {model.name!r} ({model.axes!r})")
        canon, drop, order = canonical_axes(axes, data.shape, where)
        if drop:
            data = data[tuple(0 if i in drop else slice(None) for i in range(data.ndim))]
        data = data.transpose(order) if order != tuple(range(len(order))) else data
        axes = canon
    check_axes(model, axes, data.shape, where=where)
    if "c" not in axes:
        data = data[None]
    return data, "".join(a for a in axes if a in "zyx"), name, where


def _read(data, region: tuple[slice, ...]) -> np.ndarray:
    part = data[region]
    if hasattr(part, "compute"):
        part = part.compute(scheduler="sync")
    return np.asarray(part)


@dataclass(frozen=True)
class BlockSource:
    """Where the blocks of a channel-first image are read from (picklable).

    Regions come straight from the stored array when the image has one (`TargetImage.direct`:
    no dask graph per block), else from the (dask or numpy) array; an image held by dask in a
    single small chunk (a tif or png file) is read once per task and sliced, not re-read for
    every block.
    """

    data: object  # channel-first (C, *spatial)
    direct: object | None = None  # DirectRegions over the image's canonical axes
    add_channel: bool = False  # the image has no c axis: `direct` gives (*spatial)
    pixels: np.ndarray | None = None  # the whole image (C, *spatial), already read: blocks are cut from it

    @classmethod
    def of(cls, image, data, pixels: np.ndarray | None = None) -> BlockSource:
        from ..io.targets import TargetImage

        if isinstance(image, TargetImage) and image.direct is not None:
            return cls(data, image.direct, "c" not in image.axes, pixels)
        return cls(data, pixels=pixels)

    def with_pixels(self, pixels: np.ndarray | None) -> BlockSource:
        return dataclasses.replace(self, pixels=pixels)

    def reader(self) -> Callable[[tuple[slice, ...]], np.ndarray]:
        """A function region (C, *spatial slices) -> pixels, for one task (not shared by threads).

        The pixels it returns may be a view (of `pixels`): callers must not write to them.
        """
        if self.pixels is not None:
            return self.pixels.__getitem__
        if self.direct is not None:
            direct = self.direct
            if self.add_channel:
                return lambda region: direct[region[1:]][None]
            return direct.__getitem__
        data = self.data
        if hasattr(data, "compute") and all(n == 1 for n in data.numblocks) and data.nbytes <= WHOLE_READ_BYTES:
            whole: list[np.ndarray] = []

            def read_whole(region):
                if not whole:
                    whole.append(np.asarray(data.compute(scheduler="sync")))
                return whole[0][region]

            return read_whole
        return lambda region: _read(data, region)


# --- normalisation of the whole image ---------------------------------------------------


def image_normalization(model: Model, data) -> tuple[Normalization, str]:
    """Normalisation of a channel-first image for `model`, and a digest of the pixels used."""
    sample = sample_image(data)
    return normalization(model.preprocessing, sample), sample.digest


# An image whose statistics read all of its pixels (up to `normalize.MAX_SAMPLES` values per
# channel) keeps them, and its blocks are cut from them instead of read a second time; up to
# this many bytes of such images per call (predict_target: per run, all images together).
KEEP_PIXELS_BYTES = 256 << 20


def _statistics(model: Model, data, source: BlockSource, budget: list[int] | None) -> tuple[Normalization, str, BlockSource]:
    """(normalisation, digest, source) of a channel-first image; the source holds the image's
    pixels when the statistics read all of them and they fit in ``budget[0]`` bytes (then
    taken from it). The pixels are read as the blocks would be (`source`), not through dask."""
    sample = sample_image(data, read=source.reader() if source.pixels is None else None)
    norm = normalization(model.preprocessing, sample)
    if budget is not None and sample.complete and sample.values.nbytes <= budget[0]:
        budget[0] -= sample.values.nbytes
        source = source.with_pixels(sample.values.reshape(data.shape))
    return norm, sample.digest, source


def normalize_image(model: Model, image, *, axes: str | None = None) -> np.ndarray:
    """The whole image normalised as the model sees it, float32 (C, *spatial)."""
    data, _, _, _ = _channel_first(image, axes, model)
    norm, _ = image_normalization(model, data)
    return norm.apply(_read(data, (slice(None),) * data.ndim))


# --- one block ----------------------------------------------------------------------------


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
class _Prepared:
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
) -> _Prepared:
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
    return _Prepared(feed, mask, tuple(tile.shape[1:]))


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
        model, lambda region: _read(data, region), norm, block,
        slice_wise=slice_wise, perturb=perturb, dropout_mask=dropout_mask,
    )
    raw = runner(prepared.feed, prepared.mask)
    return finish_block(model, raw, block, prepared.tile_shape, slice_wise=slice_wise, where=where)


def run_pipelined(items: Sequence, prepare: Callable, run: Callable, finish: Callable, *, overlap: bool = True) -> None:
    """``finish(item, run(prepare(item)))`` for every item, in order.

    With `overlap`, item i+1 is prepared (read, normalised) in one thread and item i-1 finished
    (activated, written) in another while item i runs, so reading and writing hide behind the
    model run instead of adding to it. At most three items are in flight: one prepared, one
    running, one being finished; `finish` calls happen one at a time, in item order. `run`
    should return only what `finish` needs, so that the model input is freed after the run.
    """
    items = list(items)
    if not overlap or len(items) < 2:
        for item in items:
            finish(item, run(prepare(item)))
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="segrank-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="segrank-write") as writer:
        ahead = reader.submit(prepare, items[0])
        writing = None
        try:
            for i, item in enumerate(items):
                prepared = ahead.result()
                ahead = reader.submit(prepare, items[i + 1]) if i + 1 < len(items) else None
                result = run(prepared)
                del prepared
                if writing is not None:
                    writing.result()  # bounds the outputs in flight to one; raises its error here
                writing = writer.submit(finish, item, result)
                del result
            writing.result()
        except BaseException:
            if ahead is not None:
                ahead.cancel()
            raise


def stack_prepared(model: Model, prepared: Sequence[_Prepared]) -> _Prepared:
    """Several blocks' inputs as one batch (along the model's b axis): one run for all."""
    if len(prepared) == 1:
        return prepared[0]
    axis = model.axes.index("b")
    feed = np.concatenate([p.feed for p in prepared], axis=axis)
    mask = None if prepared[0].mask is None else np.concatenate([p.mask for p in prepared], axis=0)
    return _Prepared(feed, mask, prepared[0].tile_shape)


def split_output(model: Model, raw: np.ndarray, n: int) -> list[np.ndarray]:
    """The per-block outputs of a batch of `n` blocks (inverse of `stack_prepared`)."""
    return [raw] if n == 1 else np.split(np.asarray(raw), n, axis=model.axes.index("b"))


def _check_tiles_per_run(model: Model, session, tiles_per_run: int, where: str) -> int:
    tiles_per_run = int(tiles_per_run)
    if tiles_per_run < 1:
        raise InputError(f"{where}: tiles per run must be at least 1, got {tiles_per_run}")
    if tiles_per_run > 1:
        _, graph_batch = _graph_constraints(model, session)
        if "b" not in model.axes or graph_batch is not None:
            raise InputError(
                f"{where}: model {model.name!r} takes a fixed batch ({model.axes!r}); it cannot run {tiles_per_run} tiles at once"
            )
    return tiles_per_run


def _groups(items: Sequence, size: int, key: Callable = lambda item: None) -> list[list]:
    """Consecutive runs of up to `size` items with the same key."""
    groups: list[list] = []
    for item in items:
        if groups and len(groups[-1]) < size and key(groups[-1][0]) == key(item):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _graph_constraints(model: Model, session) -> tuple[Model, int | None]:
    """Fixed spatial sizes and batch size read from the ONNX input, when the description lacks them."""
    shape = None
    for inp in session.get_inputs():
        if inp.name == model.input_name:
            shape = inp.shape
    if shape is None or len(shape) != len(model.axes):
        return model, None
    sizes = dict(zip(model.axes, shape))
    batch = sizes.get("b") if isinstance(sizes.get("b"), int) and sizes.get("b") > 0 else None
    fixed = tuple(sizes.get(a) for a in model.spatial_axes)
    if model.tiling.fixed is None and all(isinstance(s, int) and s > 0 for s in fixed):
        model = model.with_(tiling=dataclasses.replace(model.tiling, fixed=fixed))
    return model, batch


def _blocking_for(model: Model, session, spatial_shape, tile, halo, batch, data=None) -> tuple[Model, Blocking]:
    model_c, graph_batch = _graph_constraints(model, session)
    if graph_batch is not None:
        batch = graph_batch
    elif batch is None and len(spatial_shape) > model.ndim and hasattr(data, "chunks") and "b" in model.axes:
        # slice-wise: as many slices per run as a source chunk holds (up to 16), so that each
        # input chunk is decoded once per column of blocks, not once per batch
        z_chunk = int(data.chunks[1][0])
        batch = z_chunk if 1 <= z_chunk <= 16 else None
    return model_c, choose_blocking(model_c, spatial_shape, tile=tile, halo=halo, batch=batch)


# --- in memory ------------------------------------------------------------------------------


def predict_image(
    model: Model,
    image,
    *,
    axes: str | None = None,
    session=None,
    device: str = "auto",
    tile: int | Sequence[int] | None = None,
    halo: int | Sequence[int] | None = None,
    batch: int | None = None,
    perturb: Perturb | None = None,
    dropout_mask: np.ndarray | None = None,
    normalization: Normalization | None = None,
    blocking: Blocking | None = None,
    overlap: bool = True,
    tiles_per_run: int = 1,
) -> np.ndarray:
    """Predict one image or volume block by block.

    Parameters
    ----------
    model : Model
    image : TargetImage or array
        An image of a target, or a numpy/dask array whose `axes` are given (or guessed: the
        model's spatial axes, with a leading "c" when it has the model's channel count).
    axes : str, optional
        Axes of an array `image` (ignored for a TargetImage).
    session : onnxruntime.InferenceSession, optional
        Reused when given; else this process's cached session on `device`.
    tile, halo, batch :
        See `segrank.inference.blocks.choose_blocking`.
    perturb : callable, optional
        ``perturb(tile, origin) -> tile`` applied after normalisation to each (C, *tile)
        input including its halo and padding; `origin` is the global coordinate of the tile's
        first pixel (negative inside padding).
    dropout_mask : array, optional
        Fed to the model's dropout-mask input; all ones when omitted.
    normalization : Normalization, optional
        The image's normalisation, when already known (e.g. computed once from the whole lazy
        volume and shared by every block of it); default: computed from `image`.
    blocking : Blocking, optional
        The tiling to use, when already chosen (its shape must be the image's spatial shape);
        it overrides `tile`, `halo` and `batch`.
    overlap : bool
        Read the next block and store the last one in threads while the model runs the
        current one (default); False does one step at a time. Results are identical.
    tiles_per_run : int
        Blocks stacked along the model's batch axis into one run (default 1); more keeps a
        GPU busier. Needs a graph whose batch size is not fixed.

    Returns
    -------
    ndarray, float32, shape (C_out, *spatial)
        Probabilities after the model's activation, in the image's geometry.
    """
    data, spatial_axes, name, where = _channel_first(image, axes, model)
    if session is None:
        session, provider = cached_session(model, device=device)
    else:
        provider = session.get_providers()[0]
    runner = TileRunner(model, session, provider)
    if blocking is None:
        model_c, blocking = _blocking_for(model, session, data.shape[1:], tile, halo, batch, data)
    elif tuple(blocking.shape) != tuple(data.shape[1:]):
        raise InputError(f"{where}: blocking for shape {tuple(blocking.shape)} given for an image of spatial shape {tuple(data.shape[1:])}")
    else:
        model_c = model
    source = BlockSource.of(image, data)
    if normalization is not None:
        norm = normalization
    else:
        norm, _, source = _statistics(model, data, source, [KEEP_PIXELS_BYTES])
    if len(norm.scale) != data.shape[0]:
        raise InputError(f"{where}: normalization for {len(norm.scale)} channel(s) given for an image with {data.shape[0]}")
    out = np.empty((model.out_channels,) + tuple(data.shape[1:]), dtype=np.float32)
    slice_wise = len(spatial_axes) > model.ndim
    read = source.reader()

    tiles_per_run = _check_tiles_per_run(model_c, session, tiles_per_run, where)

    def prepare(group):
        return stack_prepared(model_c, [
            prepare_block(model_c, read, norm, block, slice_wise=slice_wise, perturb=perturb, dropout_mask=dropout_mask)
            for block in group
        ])

    def finish(group, result):
        raw, tile_shape = result
        for block, part in zip(group, split_output(model_c, raw, len(group))):
            out[(slice(None),) + block.inner] = finish_block(model_c, part, block, tile_shape, slice_wise=slice_wise, where=where)

    run_pipelined(_groups(list(blocking), tiles_per_run), prepare, lambda p: (runner(p.feed, p.mask), p.tile_shape),
                  finish, overlap=overlap)
    return out


# --- into a Zarr store, resumable ---------------------------------------------------------------

_FILE_DIGESTS: dict[tuple, str] = {}


def file_sha256(path) -> str:
    """sha256 of a file, remembered per (path, size, mtime)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def prediction_key(
    model: Model,
    input_digest: str,
    norm: Normalization,
    blocking: Blocking,
    *,
    perturb_key: str | None = None,
    seed: int | None = None,
    dropout_mask: np.ndarray | None = None,
    tiles_per_run: int = 1,
) -> str:
    """Content hash of everything that decides a prediction's values.

    The model file's bytes and its description (activation, preprocessing, ...), the input
    pixels (all of them for images up to `normalize.MAX_SAMPLES` values per channel, the
    sampled chunks for larger volumes), the normalisation, tile and halo, the perturbation
    identity and seed, and the dropout mask, and the tiles per run when above one (a batched
    run may round differently on some providers). The device is left out on purpose:
    providers agree to rounding.
    """
    description = {f: getattr(model, f) for f in PREDICTION_FIELDS}
    payload = {
        "format": FORMAT_VERSION,
        "model_file": file_sha256(model.path),
        "model": {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in description.items()},
        "input": input_digest,
        "normalization": [list(norm.scale), list(norm.offset)],
        "tile": list(blocking.tile),
        "halo": list(blocking.halo),
        "perturbation": perturb_key,
        "seed": seed,
        "dropout_mask": None
        if dropout_mask is None
        else hashlib.sha256(np.ascontiguousarray(dropout_mask, dtype=np.float32).tobytes() + repr(np.shape(dropout_mask)).encode()).hexdigest(),
    }
    if tiles_per_run != 1:  # absent by default: keys of unbatched runs stay as they were
        payload["tiles_per_run"] = int(tiles_per_run)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class _ImageJob:
    """Everything a worker needs to predict blocks of one image (picklable; no session)."""

    model: Model
    source: BlockSource
    norm: Normalization
    blocking: Blocking
    slice_wise: bool
    store: str
    array: str
    device: str
    threads: int | None
    perturb: Perturb | None
    dropout_mask: np.ndarray | None
    where: str
    overlap: bool = True
    tiles_per_run: int = 1


@dataclass(frozen=True)
class _TaskResult:
    blocks: int
    provider: str


class _JobState:
    """Per task and image: the session, reader and opened output arrays (never pickled)."""

    def __init__(self, job: _ImageJob):
        import zarr

        from ..io.zarr_store import DONE_GROUP, BlockWriter

        session, self.provider = cached_session(job.model, device=job.device, threads=job.threads)
        self.runner = TileRunner(job.model, session, self.provider)
        self.read = job.source.reader()
        self.arr = zarr.open_array(job.store, path=job.array, mode="r+")
        self.done = zarr.open_array(job.store, path=f"{DONE_GROUP}/{job.array}", mode="r+")
        self.writer = BlockWriter(self.arr, self.done, where=f"{job.store}/{job.array}")


def _run_blocks(items: list[tuple[int, tuple[int, ...]]], *jobs: _ImageJob, progress: Callable | None = None) -> _TaskResult:
    """Predict and store blocks ``(job number, grid index)`` of one or more images, overlapped."""
    return_large_buffers()  # in this worker's process (a LocalCluster worker, or here)
    states: dict[int, _JobState] = {}

    def state(k: int) -> _JobState:
        if k not in states:  # first from the reader thread; later threads only look it up
            states.clear()  # one image's reader and arrays at a time (items are grouped by image)
            states[k] = _JobState(jobs[k])
        return states[k]

    def prepare(group):  # consecutive blocks of one image, one model run
        k = group[0][0]
        job, st = jobs[k], state(k)
        blocks = [job.blocking.block(index) for _, index in group]
        prepared = stack_prepared(job.model, [
            prepare_block(job.model, st.read, job.norm, block, slice_wise=job.slice_wise,
                          perturb=job.perturb, dropout_mask=job.dropout_mask)
            for block in blocks
        ])
        return st, blocks, prepared

    def run(p):
        st, blocks, prepared = p
        return st, blocks, prepared.tile_shape, st.runner(prepared.feed, prepared.mask)

    def finish(group, result):
        job = jobs[group[0][0]]
        st, blocks, tile_shape, raw = result
        for (_, index), block, part in zip(group, blocks, split_output(job.model, raw, len(group))):
            values = finish_block(job.model, part, block, tile_shape, slice_wise=job.slice_wise, where=job.where)
            st.writer.write(block.inner, index, values)  # data, then marker
            if progress is not None:
                progress(1)

    groups = [g for k, job in enumerate(jobs) for g in _groups([i for i in items if i[0] == k], job.tiles_per_run)]
    run_pipelined(groups, prepare, run, finish, overlap=all(j.overlap for j in jobs))
    providers = {cached_session(j.model, device=j.device, threads=j.threads)[1] for j in jobs}
    return _TaskResult(len(items), ",".join(sorted(providers)))


@dataclass(frozen=True)
class PredictionSummary:
    """What `predict_target` did."""

    out: Path
    provider: str
    n_blocks: int
    n_computed: int
    n_reused: int
    seconds: float
    images: tuple[dict, ...]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["images"] = list(self.images)
        return d


def predict_target(
    model: Model,
    target,
    out,
    *,
    tile: int | Sequence[int] | None = None,
    halo: int | Sequence[int] | None = None,
    batch: int | None = None,
    device: str = "auto",
    perturb: Perturb | None = None,
    perturb_key: str | None = None,
    seed: int | None = None,
    dropout_mask: np.ndarray | None = None,
    scheduler: str = "threads",
    workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    overlap: bool = True,
    tiles_per_run: int = 1,
) -> PredictionSummary:
    """Predict every image of `target` into the Zarr v3 store `out`, resuming finished blocks.

    Parameters
    ----------
    model : Model
    target : Target, TargetImage or path
        Opened with `segrank.io.targets.open_target` when a path.
    out : path
        Zarr v3 group; one float32 array (C, *spatial) per image, chunks = inner blocks.
    tile, halo, batch :
        See `segrank.inference.blocks.choose_blocking`.
    device : {"auto", "cpu", "cuda"}
    perturb, perturb_key, seed :
        An optional perturbation (see `predict_image`); `perturb_key` names it (with `seed`)
        in the cache key and is required with `perturb`.
    dropout_mask : array, optional
    scheduler : str
        "threads" (dask's threaded scheduler, default), "sync", "local" (a LocalCluster of
        `workers` processes) or a dask.distributed scheduler address.
    workers : int, optional
        Threads (threaded scheduler, default: the cores, at most 4) or worker processes
        (LocalCluster, likewise).
    threads : int, optional
        ONNX Runtime intra-op threads per session (default: the cores divided among the
        workers; on an existing scheduler, ONNX Runtime's default).
    progress : bool
        tqdm bar of blocks done / total on stderr.
    overlap : bool
        Each task reads its next block and writes its last one in threads while the model
        runs (default); False does one step at a time. Results are identical.
    tiles_per_run : int
        Blocks of an image stacked into one model run (see `predict_image`).

    Returns
    -------
    PredictionSummary
        Blocks computed and reused, provider, per-image keys.

    Notes
    -----
    Each array's key is `prediction_key`; a rerun under the same key skips every block marked
    finished, a different key (other model, input, settings) replaces the array.
    """
    import dask
    from tqdm import tqdm

    from ..io.targets import Target, TargetImage, open_target
    from ..io.zarr_store import PredictionStore, array_name

    if perturb is not None and perturb_key is None:
        raise ValueError("perturb_key is required with perturb: it names the perturbation in the cache key")
    if isinstance(target, (str, Path)):
        target = open_target(target)
    images = list(target.images) if isinstance(target, Target) else [target]
    if not all(isinstance(im, TargetImage) for im in images):
        raise TypeError("target must be a path, a Target or a TargetImage")
    names = [array_name(im.name) for im in images]
    if len(set(names)) != len(names):
        raise InputError(f"{getattr(target, 'source', out)}: image names collide in the store: {names}")

    start = time.perf_counter()
    distributed = scheduler not in ("threads", "sync")
    n_workers = workers or (1 if scheduler == "sync" else min(4, default_threads(1)))
    if threads is None and scheduler in ("threads", "sync", "local"):
        threads = default_threads(n_workers)
    # One session here: it fails loudly for --device cuda before any work is scheduled, tells
    # the provider, and (threaded scheduler) is the very session the tasks share.
    session, provider = cached_session(model, device=device, threads=threads)
    note = provider_note(provider, device)
    if note and progress:
        print(note, file=sys.stderr)
    store = PredictionStore(out)

    jobs: list[tuple[_ImageJob, list[tuple[int, ...]]]] = []
    infos, n_blocks, n_reused = [], 0, 0
    # pixels read for the statistics are kept for the blocks (in this process only: a cluster
    # would get them inside the task graph)
    budget = None if distributed else [KEEP_PIXELS_BYTES]
    for im, name in zip(images, names):
        data, spatial_axes, _, where = _channel_first(im, None, model)
        model_c, blocking = _blocking_for(model, session, data.shape[1:], tile, halo, batch, data)
        norm, digest, source = _statistics(model, data, BlockSource.of(im, data), budget)
        key = prediction_key(model, digest, norm, blocking, perturb_key=perturb_key, seed=seed, dropout_mask=dropout_mask,
                             tiles_per_run=tiles_per_run)
        fresh = store.prepare(
            name,
            key=key,
            shape=(model.out_channels,) + tuple(data.shape[1:]),
            chunks=(model.out_channels,) + blocking.inner,
            grid=blocking.grid,
            dimension_names=["c"] + list(spatial_axes),
            attributes={
                "model": model.name,
                "image": im.name,
                "source": str(im.source),
                "activation": model.activation,
                "tile": list(blocking.tile),
                "halo": list(blocking.halo),
                "perturbation": perturb_key,
                "seed": seed,
            },
        )
        done = set() if fresh else store.done_blocks(name)
        pending = [i for i in blocking.indices() if i not in done]
        n_blocks += len(blocking)
        n_reused += len(blocking) - len(pending)
        infos.append({"image": im.name, "array": name, "key": key, "blocks": len(blocking), "reused": len(blocking) - len(pending)})
        job = _ImageJob(
            model_c, source, norm, blocking, len(spatial_axes) > model.ndim, str(store.path), name,
            device, threads, perturb, dropout_mask, where, overlap,
            _check_tiles_per_run(model_c, session, tiles_per_run, where),
        )
        jobs.append((job, pending))

    # Tasks take runs of consecutive blocks (across images, for folders of small images): each
    # task overlaps reads and writes with its model runs; enough tasks to balance the workers.
    items = [(k, index) for k, (_, pending) in enumerate(jobs) for index in pending]
    n_pending = len(items)
    per_task = max(math.ceil(n_pending / MAX_TASKS), min(BLOCKS_PER_TASK, math.ceil(n_pending / (2 * n_workers))), 1)
    # one graph node per image, never unpacked; named, so that dask does not hash kept pixels
    job_nodes = [dask.delayed(job, traverse=False, name=f"segrank-image-{k}-{info['key'][:16]}")
                 for k, ((job, _), info) in enumerate(zip(jobs, infos))]
    local_bar = None if distributed else (lambda n: bar.update(n))
    tasks = []
    for i in range(0, n_pending, per_task):
        chunk = items[i : i + per_task]
        used = sorted({k for k, _ in chunk})
        renumber = {k: j for j, k in enumerate(used)}
        tasks.append(dask.delayed(_run_blocks, pure=False)(
            [(renumber[k], index) for k, index in chunk], *[job_nodes[k] for k in used], progress=local_bar,
        ))

    providers = {provider}
    bar = tqdm(total=n_blocks, initial=n_reused, unit="block", desc=f"predict {model.name}", file=sys.stderr, disable=not progress, smoothing=0.1)
    try:
        if not tasks:
            pass
        elif distributed:
            providers = _run_distributed(tasks, scheduler, n_workers, bar)
        else:
            results = dask.compute(*tasks, scheduler=scheduler, num_workers=n_workers)  # bar: per block
            providers = {r.provider for r in results} or providers
    finally:
        bar.close()
    return PredictionSummary(
        out=store.path,
        provider=",".join(sorted(providers)),
        n_blocks=n_blocks,
        n_computed=n_pending,
        n_reused=n_reused,
        seconds=time.perf_counter() - start,
        images=tuple(infos),
    )


def _run_distributed(tasks, scheduler: str, workers: int, bar) -> set[str]:
    from distributed import Client, LocalCluster, as_completed

    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        cluster, client = None, Client(scheduler)
    try:
        futures = client.compute(tasks)
        providers = set()
        for future in as_completed(futures):
            result = future.result()
            bar.update(result.blocks)
            providers.add(result.provider)
        return providers
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = [
    "PredictionSummary",
    "activate",
    "check_axes",
    "normalize_image",
    "predict_block",
    "predict_image",
    "predict_target",
    "prediction_key",
    "prepare_block",
    "finish_block",
    "split_output",
    "stack_prepared",
    "run_pipelined",
    "BlockSource",
]
