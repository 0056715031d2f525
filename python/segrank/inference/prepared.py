"""An image prepared for one model: channel-first data, normalisation, digest and blocking.

`prepare_image` is the one place where an image (a target's image or an array) is made ready
for a model; in-memory prediction, prediction into a store and the ranking job all use it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..models.description import Model
from .axes import channel_first
from .blocks import Blocking, choose_blocking
from .normalize import ImageSample, Normalization, normalization, sample_image
from .source import BlockSource, read_region

# An image whose statistics read all of its pixels (up to `normalize.MAX_SAMPLES` values per
# channel) keeps them, and its blocks are cut from them instead of read a second time; up to
# this many bytes of such images per call (predict_target: per run, all images together).
KEEP_PIXELS_BYTES = 256 << 20


@dataclass(frozen=True)
class PreparedImage:
    """One image as one model sees it, ready to be cut into blocks (picklable, no session).

    Attributes
    ----------
    model : Model
        The model, with its graph's fixed tile size when the graph has one.
    data : array
        The image channel-first, (C, *spatial), lazy (dask) or in memory.
    spatial_axes : str
        "yx" or "zyx".
    name, where : str
        The image's name, and how messages name it (source and name).
    origin : Path or None
        File or store the image comes from.
    source : BlockSource
        Where blocks are read from.
    norm : Normalization
        Of the whole image, for this model.
    blocking : Blocking
        The tiling of the whole image.
    digest : str
        sha256 of the pixels the statistics read; `complete` when that was every pixel.
    """

    model: Model
    data: object
    spatial_axes: str
    name: str
    where: str
    origin: Path | None
    source: BlockSource
    norm: Normalization
    blocking: Blocking
    digest: str
    complete: bool

    @property
    def slice_wise(self) -> bool:
        """A 2D model on a volume: slices are its batch."""
        return len(self.spatial_axes) > self.model.ndim

    @property
    def identity(self) -> str:
        """What identifies the input in a cache key: the pixels' digest when every pixel was
        read; for a volume sampled by chunks, also where it comes from (the sample alone might
        not tell two volumes apart)."""
        return self.digest if self.complete else f"{self.digest}|{self.origin}|{self.name}"


def prepare_image(
    model: Model,
    image,
    *,
    axes: str | None = None,
    session=None,
    pixels: np.ndarray | None = None,
    tile=None,
    halo=None,
    batch=None,
    blocking: Blocking | None = None,
    norm: Normalization | None = None,
    sample: ImageSample | None = None,
    keep_pixels: list[int] | None = None,
) -> PreparedImage:
    """Make `image` ready for `model`.

    Parameters
    ----------
    model : Model
    image : TargetImage or array
        An image of a target, or an array whose `axes` are given (or guessed, see
        `axes.channel_first`).
    axes : str, optional
        Axes of an array `image`.
    session : onnxruntime.InferenceSession, optional
        Read for the graph's fixed input sizes when the blocking is chosen here.
    pixels : ndarray, optional
        The TargetImage's pixels, already read (its axes): used instead of its lazy data.
    tile, halo, batch : optional
        See `blocks.choose_blocking`; ignored when `blocking` is given.
    blocking, norm, sample : optional
        Already known for this image (e.g. of a whole volume, shared by its scoring blocks);
        `sample` is the normalisation sample, shared by the models of a bank.
    keep_pixels : list of one int, optional
        A byte budget: when the statistics read every pixel and they fit, the pixels are kept
        for the blocks (and the budget lowered). None keeps nothing.
    """
    from ..io.targets import TargetImage

    target = image if isinstance(image, TargetImage) else None
    if target is not None and pixels is not None:
        where = f"{target.source} [{target.name}]"
        data, spatial_axes, _, _ = channel_first(pixels, target.axes, model, where=where)
        name, origin = target.name, target.source
        source = BlockSource(data)
    else:
        data, spatial_axes, name, where = channel_first(image, axes, model)
        origin = target.source if target is not None else None
        source = BlockSource.of(image, data)
    if blocking is None:
        model_c, blocking = blocking_for(model, session, data.shape[1:], tile, halo, batch, data)
    elif tuple(blocking.shape) != tuple(data.shape[1:]):
        raise InputError(f"{where}: blocking for shape {tuple(blocking.shape)} given for an image of spatial shape "
                         f"{tuple(data.shape[1:])}")
    else:
        model_c = model
    digest, complete = "", False
    if norm is None or sample is not None:
        if sample is None:
            sample = sample_image(data, read=source.reader() if source.pixels is None else None)
            if keep_pixels is not None and sample.complete and sample.values.nbytes <= keep_pixels[0]:
                keep_pixels[0] -= sample.values.nbytes
                source = source.with_pixels(sample.values.reshape(data.shape))
        if sample.values.dtype.kind == "f" and not np.isfinite(sample.values).all():
            raise InputError(f"{where}: NaN or infinite pixels in the image; segrank needs finite intensities")
        if norm is None:
            norm = normalization(model.preprocessing, sample)
        digest, complete = sample.digest, sample.complete
    if len(norm.scale) != data.shape[0]:
        raise InputError(f"{where}: normalization for {len(norm.scale)} channel(s) given for an image with {data.shape[0]}")
    return PreparedImage(model_c, data, spatial_axes, name, where, origin, source, norm, blocking, digest, complete)


def image_normalization(model: Model, data) -> tuple[Normalization, str]:
    """Normalisation of a channel-first image for `model`, and a digest of the pixels used."""
    sample = sample_image(data)
    return normalization(model.preprocessing, sample), sample.digest


def normalize_image(model: Model, image, *, axes: str | None = None) -> np.ndarray:
    """The whole image normalised as the model sees it, float32 (C, *spatial)."""
    data, _, _, _ = channel_first(image, axes, model)
    norm, _ = image_normalization(model, data)
    return norm.apply(read_region(data, (slice(None),) * data.ndim))


def graph_constraints(model: Model, session) -> tuple[Model, int | None]:
    """Fixed spatial sizes and batch size read from the ONNX input, when the description lacks them."""
    shape = None
    for inp in session.get_inputs() if session is not None else ():
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


def blocking_for(model: Model, session, spatial_shape, tile, halo, batch, data=None) -> tuple[Model, Blocking]:
    """(model with the graph's constraints, the default tiling of an image of `spatial_shape`)."""
    model_c, graph_batch = graph_constraints(model, session)
    if graph_batch is not None:
        batch = graph_batch
    elif batch is None and len(spatial_shape) > model.ndim and hasattr(data, "chunks") and "b" in model.axes:
        # slice-wise: as many slices per run as a source chunk holds (up to 16), so that each
        # input chunk is decoded once per column of blocks, not once per batch
        z_chunk = int(data.chunks[1][0])
        batch = z_chunk if 1 <= z_chunk <= 16 else None
    return model_c, choose_blocking(model_c, spatial_shape, tile=tile, halo=halo, batch=batch)


__all__ = [
    "KEEP_PIXELS_BYTES", "PreparedImage", "blocking_for", "graph_constraints", "image_normalization",
    "normalize_image", "prepare_image",
]
