"""Where the pixels of a block come from: the stored array, a dask array, or pixels already read."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# An image that dask holds as one chunk (a whole tif/png file) up to this size is read once per
# task instead of once per block.
WHOLE_READ_BYTES = 256 << 20


def read_region(data, region: tuple[slice, ...]) -> np.ndarray:
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
        return lambda region: read_region(data, region)


__all__ = ["BlockSource", "WHOLE_READ_BYTES", "read_region"]
