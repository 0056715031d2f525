"""In-memory prediction: one image or volume, block by block, into a numpy array.

Per block (see `blocks`): read the outer region that lies inside the image, normalise it with
statistics of the whole image (`normalize`), reflect-pad it to the fixed tile shape, apply the
optional perturbation (a function of global coordinates, so tiling never changes it), run the
model, apply its activation and keep the inner region (`steps`). A 2D model predicts a volume
slice-wise (slices as its batch), a 3D model natively. Reading the next block and writing the
last one overlap the model run (`pipeline`); results are the same one step at a time.
`to_store.predict_target` writes predictions into a Zarr store instead.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..models.description import Model
from .blocks import Blocking
from .normalize import Normalization
from .pipeline import groups, run_pipelined
from .prepared import KEEP_PIXELS_BYTES, PreparedImage, prepare_image
from .session import TileRunner, cached_session
from .steps import Perturb, check_tiles_per_run, finish_block, prepare_block, split_output, stack_prepared


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
    if session is None:
        session, _ = cached_session(model, device=device)
    prepared = prepare_image(model, image, axes=axes, session=session, tile=tile, halo=halo, batch=batch,
                             blocking=blocking, norm=normalization, keep_pixels=[KEEP_PIXELS_BYTES])
    return predict_prepared(prepared, session, perturb=perturb, dropout_mask=dropout_mask, overlap=overlap,
                            tiles_per_run=tiles_per_run)


def predict_prepared(
    image: PreparedImage,
    session,
    *,
    perturb: Perturb | None = None,
    dropout_mask: np.ndarray | None = None,
    overlap: bool = True,
    tiles_per_run: int = 1,
) -> np.ndarray:
    """Probabilities (C_out, *spatial) of a prepared image through `session` (see `predict_image`)."""
    model, where, slice_wise = image.model, image.where, image.slice_wise
    runner = TileRunner(model, session, session.get_providers()[0])
    out = np.empty((model.out_channels,) + tuple(image.data.shape[1:]), dtype=np.float32)
    read = image.source.reader()
    tiles_per_run = check_tiles_per_run(model, session, tiles_per_run, where)

    def prepare(group):
        return stack_prepared(model, [
            prepare_block(model, read, image.norm, block, slice_wise=slice_wise, perturb=perturb,
                          dropout_mask=dropout_mask)
            for block in group
        ])

    def finish(group, result):
        raw, tile_shape = result
        for block, part in zip(group, split_output(model, raw, len(group))):
            out[(slice(None),) + block.inner] = finish_block(model, part, block, tile_shape, slice_wise=slice_wise,
                                                             where=where)

    run_pipelined(groups(list(image.blocking), tiles_per_run), prepare,
                  lambda p: (runner(p.feed, p.mask), p.tile_shape), finish, overlap=overlap)
    return out


__all__ = ["predict_image", "predict_prepared"]
