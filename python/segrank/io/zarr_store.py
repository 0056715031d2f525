"""Prediction stores: a Zarr v3 group with one array per target image, written block by block.

Each array's chunks are exactly the inner blocks of the blocking that filled it, so every
block writes whole chunks of its own and parallel writers never share one (a write that is
not chunk-aligned is refused: it would race with a neighbour's). Beside each array, a small
uint8 array ``_done/<name>`` with one one-element chunk per block records the blocks that
are finished; a block is marked only after its data is written, so a killed run leaves no
half-written block marked. Each array carries the content-hash key of everything that
determined its values; opening it under another key starts it afresh, under the same key
resumes it.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, PredictionError

DONE_GROUP = "_done"


def array_name(image_name: str) -> str:
    """A Zarr node name for an image name (no slashes, no leading dot or underscore)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", image_name).lstrip("._") or "image"
    return name


def _list_prefix(store, prefix: str) -> list[str]:
    from zarr.core.sync import sync

    async def collect():
        return [k async for k in store.list_prefix(prefix)]

    return sync(collect())


class PredictionStore:
    """A Zarr v3 group of prediction arrays with per-block completion markers.

    Parameters
    ----------
    path : str or Path
        Folder of the group (created if missing).
    """

    def __init__(self, path):
        import zarr

        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is not a Zarr folder")
        if self.path.exists() and any(self.path.iterdir()):
            if not (self.path / "zarr.json").exists():
                raise InputError(f"{self.path}: exists and is not a Zarr v3 group; choose another --out")
        try:
            self.group = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        except Exception as err:
            raise InputError(f"{self.path}: cannot open as a Zarr v3 group ({err})") from None

    def prepare(
        self,
        name: str,
        *,
        key: str,
        shape: Sequence[int],
        chunks: Sequence[int],
        grid: Sequence[int],
        dimension_names: Sequence[str],
        attributes: dict | None = None,
        dtype: str = "float32",
    ) -> bool:
        """Make sure array `name` exists for `key`; True when it was (re)created empty.

        An existing array with the same key, shape and chunks is kept with its finished
        blocks; any other is replaced, since its values belong to other inputs or settings.
        """
        name = array_name(name)
        existing = self._existing(name)
        if existing is not None:
            same = (
                existing.attrs.get("segrank", {}).get("key") == key
                and tuple(existing.shape) == tuple(shape)
                and tuple(existing.chunks) == tuple(chunks)
            )
            if same and self._existing(f"{DONE_GROUP}/{name}") is not None:
                return False
        from zarr.codecs import BloscCodec

        self.group.create_array(
            name,
            shape=tuple(int(s) for s in shape),
            chunks=tuple(int(c) for c in chunks),
            dtype=dtype,
            # lz4 with byte shuffle: compresses probability maps at least as well as the default
            # zstd, in ~60 % of the time (benchmarks/inference.py: writing is on the hot path)
            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            fill_value=0,
            dimension_names=list(dimension_names),
            attributes={"segrank": dict(attributes or {}, key=key)},
            overwrite=True,
        )
        self.group.create_array(
            f"{DONE_GROUP}/{name}",
            shape=tuple(int(g) for g in grid),
            chunks=(1,) * len(grid),
            dtype="uint8",
            fill_value=0,
            attributes={"segrank": {"key": key, "meaning": "1 = block finished"}},
            overwrite=True,
        )
        return True

    def _existing(self, name: str):
        import zarr

        try:
            node = zarr.open_array(str(self.path), path=name, mode="r")
        except Exception:  # missing (FileNotFoundError/KeyError/NodeNotFound, by zarr version)
            return None
        return node

    def array(self, name: str, mode: str = "r"):
        import zarr

        return zarr.open_array(str(self.path), path=array_name(name), mode=mode)

    def done_blocks(self, name: str) -> set[tuple[int, ...]]:
        """Grid indices of the finished blocks of array `name`."""
        prefix = f"{DONE_GROUP}/{array_name(name)}/c/"
        done = set()
        for k in _list_prefix(self.group.store, prefix):
            parts = k[len(prefix):].split("/")
            if all(p.isdigit() for p in parts):
                done.add(tuple(int(p) for p in parts))
        return done

    def write_block(self, name: str, inner: Sequence[slice], index: Sequence[int], values: np.ndarray, *, array=None) -> None:
        """Write one block's values (C, *inner) and then mark it finished."""
        arr = array if array is not None else self.array(name, mode="r+")
        write_and_mark(arr, self._done_array(name), inner, index, values, where=f"{self.path}/{array_name(name)}")

    def _done_array(self, name: str):
        import zarr

        return zarr.open_array(str(self.path), path=f"{DONE_GROUP}/{array_name(name)}", mode="r+")


def write_and_mark(array, done, inner: Sequence[slice], index: Sequence[int], values: np.ndarray, *, where: str) -> None:
    """Write one block's values (C, *inner) to `array`, then set ``done[index] = 1``.

    Both happen in one call into zarr's event loop (awaited in that order, so a block is
    never marked before its data is stored): each call hands work to zarr's IO thread and
    back, which costs milliseconds per call on a busy machine.
    """
    from zarr.core.sync import sync

    check_aligned(array, inner, where=where)
    selection = (slice(None),) + tuple(inner)
    marker = tuple(int(i) for i in index)

    async def store():
        await array.async_array.setitem(selection, values)
        await done.async_array.setitem(marker, np.uint8(1))

    sync(store())


def check_aligned(array, inner: Sequence[slice], *, where: str) -> None:
    """Refuse a write that does not cover whole chunks: it would race with a neighbour's."""
    spatial_chunks = array.chunks[1:]
    spatial_shape = array.shape[1:]
    for s, c, n in zip(inner, spatial_chunks, spatial_shape):
        if s.start % c or (s.stop % c and s.stop != n):
            raise PredictionError(
                f"{where}: write {tuple((x.start, x.stop) for x in inner)} is not aligned to the chunks "
                f"{tuple(spatial_chunks)}; unaligned parallel writes corrupt data"
            )


__all__ = ["DONE_GROUP", "PredictionStore", "array_name", "check_aligned", "write_and_mark"]
