"""Axes: whether an image fits a model, and the image as (C, *spatial) in canonical order."""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError
from ..models.description import Model


def check_axes(model: Model, axes: str, shape: Sequence[int], *, where: str = "image") -> None:
    """Raise `InputError` (one line naming both axes) when an image cannot feed `model`.

    A 3D model needs a z axis; a 2D model takes 2D images and volumes (slice-wise); the
    channel count must match the model's input channels.
    """
    spatial = "".join(a for a in axes if a in "zyx")
    sizes = dict(zip(axes, shape))
    problem = hint = None
    if model.ndim == 3 and len(spatial) < 3:
        problem, hint = "the model is 3D and the image has no z axis", "if the image is a volume, give its axes (--axes zyx)"
    elif model.ndim not in (2, 3):
        problem, hint = f"the model has {model.ndim} spatial axes", "only 2D and 3D models are supported"
    elif sizes.get("c", 1) != model.in_channels:
        problem = f"the image has {sizes.get('c', 1)} channel(s), the model takes {model.in_channels}"
        hint = (f"convert the images to {model.in_channels} channel(s), or give --axes if that axis is not channels "
                "(e.g. --axes zyx for a stack of slices)")
    if problem:
        raise InputError(
            f"{where}: image axes {axes!r} (shape {tuple(shape)}) do not fit model {model.name!r} "
            f"with axes {model.axes!r}: {problem}; {hint}"
        )


def channel_first(image, axes: str | None, model: Model, *, where: str = "image"):
    """(data as (C, *spatial), spatial axes, name, where) for a TargetImage or an array (which
    messages call `where`)."""
    from ..io.targets import TargetImage, canonical_axes

    if isinstance(image, TargetImage):
        data, axes, name, where = image.data, image.axes, image.name, f"{image.source} [{image.name}]"
    else:
        data, name = image, "image"
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


__all__ = ["channel_first", "check_axes"]
