"""Scoring units: a 2D image is one unit; a volume is a fixed grid of scoring blocks."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Unit:
    """One scoring unit: an image, or a block (`region`) of a volume."""

    name: str
    image: str
    region: tuple[slice, ...] | None = None


def spatial(axes: str) -> str:
    """The spatial letters of `axes` ("yx" or "zyx")."""
    return "".join(a for a in axes if a in "zyx")


def image_units(name: str, shape: tuple[int, ...], spatial_axes: str, block: tuple[int, ...]) -> list[Unit]:
    """A 2D image is one unit; a volume is cut into a fixed grid of blocks (chosen without labels)."""
    from ..scoring.grid import block_name, block_regions

    if len(spatial_axes) < 3:
        return [Unit(name, name)]
    return [Unit(block_name(name, region), name, region) for region in block_regions(shape[-3:], block)]


def units_of(image, block: tuple[int, ...]) -> list[Unit]:
    """The units of a target image."""
    return image_units(image.name, image.data.shape, spatial(image.axes), block)


__all__ = ["Unit", "image_units", "spatial", "units_of"]
