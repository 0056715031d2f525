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

import os
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
        self._writers: dict[str, BlockWriter] = {}  # per array: opened arrays and codecs, reused by write_block

    def __getstate__(self):  # writers hold codecs and opened arrays: each process makes its own
        return dict(self.__dict__, _writers={})

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
        existing = self.existing(name)
        if existing is not None:
            same = (
                existing.attrs.get("segrank", {}).get("key") == key
                and tuple(existing.shape) == tuple(shape)
                and tuple(existing.chunks) == tuple(chunks)
            )
            if same and self.existing(f"{DONE_GROUP}/{name}") is not None:
                return False
        self._writers.pop(name, None)
        self._create(name, key=key, shape=shape, chunks=chunks, grid=grid, dimension_names=dimension_names,
                     attributes=attributes, dtype=dtype, overwrite=True)
        return True

    def open_or_create(self, name: str, *, key: str, shape: Sequence[int], chunks: Sequence[int], grid: Sequence[int],
                       dimension_names: Sequence[str], attributes: dict | None = None) -> set[tuple[int, ...]]:
        """The finished blocks of array `name`, created empty when missing; never overwritten.

        For arrays named by their content key, which several processes may fill at once: an
        array created meanwhile by another writer is simply used. An existing array of another
        shape or chunking cannot hold this key's content and is refused.
        """
        name = array_name(name)
        existing = self.existing(name)
        if existing is None or self.existing(f"{DONE_GROUP}/{name}") is None:
            try:
                self._create(name, key=key, shape=shape, chunks=chunks, grid=grid, dimension_names=dimension_names,
                             attributes=attributes, overwrite=False)
            except Exception:  # created meanwhile by another writer of the same key
                if self.existing(name) is None or self.existing(f"{DONE_GROUP}/{name}") is None:
                    raise
            return set()
        if tuple(existing.shape) != tuple(shape) or tuple(existing.chunks) != tuple(chunks):
            raise PredictionError(f"{self.path}/{name}: stored prediction of shape {existing.shape} and chunks "
                                  f"{existing.chunks}, expected {tuple(shape)} and {tuple(chunks)}; delete the folder")
        return self.done_blocks(name)

    def _create(self, name: str, *, key: str, shape, chunks, grid, dimension_names, attributes, overwrite: bool,
                dtype: str = "float32") -> None:
        """The data array and its done markers (data first: a marker never exists without it)."""
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
            overwrite=overwrite,
        )
        self.group.create_array(
            f"{DONE_GROUP}/{name}",
            shape=tuple(int(g) for g in grid),
            chunks=(1,) * len(grid),
            dtype="uint8",
            fill_value=0,
            attributes={"segrank": {"key": key, "meaning": "1 = block finished"}},
            overwrite=overwrite,
        )

    def existing(self, name: str):
        """The array `name` of the group, or None when there is none."""
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
        writer = self._writers.get(array_name(name))
        if writer is None or (array is not None and writer.array is not array):
            arr = array if array is not None else self.array(name, mode="r+")
            writer = self._writers[array_name(name)] = BlockWriter(arr, self._done_array(name), where=f"{self.path}/{array_name(name)}")
        writer.write(inner, index, values)

    def writer(self, name: str) -> "BlockWriter":
        """A writer of whole blocks of array `name`, each followed by its done marker."""
        return BlockWriter(self.array(name, mode="r+"), self._done_array(name), where=f"{self.path}/{array_name(name)}")

    def _done_array(self, name: str):
        import zarr

        return zarr.open_array(str(self.path), path=f"{DONE_GROUP}/{array_name(name)}", mode="r+")


class BlockWriter:
    """Writes whole-chunk blocks of one prediction array, each followed by its done marker.

    On a local store whose arrays have a plain codec chain (little-endian bytes, then at most
    one Blosc or Zstd compressor, as `PredictionStore` and the scoring cache create them), a
    block is encoded here with that codec's numcodecs implementation and stored as one file,
    atomically (temporary file, then rename; as zarr's LocalStore does), and its marker after
    it. This skips zarr's event loop: a write there hands the block to the loop's thread and
    to two more worker threads (encode, file write) and copies it into a chunk buffer, which
    costs more than the encoding itself for tile-sized blocks (benchmarks/inference.py).
    Any other layout (another store or codec, a block that is not exactly one chunk) goes
    through zarr, data and marker in one call into its event loop. Readers see the same values
    either way; an edge block is padded with the fill value to the full chunk, as zarr does.
    """

    def __init__(self, array, done, *, where: str):
        self.array, self.done, self.where = array, done, where
        self._data = _direct_encoder(array)
        marker = _direct_encoder(done)
        self._marker_bytes = None
        if self._data is not None and marker is not None:
            self._marker_bytes = marker[1](np.ones(tuple(done.chunks), dtype=done.dtype))
            self._marker_root = marker[0]

    def write(self, inner: Sequence[slice], index: Sequence[int], values: np.ndarray) -> None:
        """Store `values` (C, *inner), then mark block `index` finished."""
        check_aligned(self.array, inner, where=self.where)
        marker = tuple(int(i) for i in index)
        if self._marker_bytes is not None:
            chunk = self._chunk(inner, values)
            if chunk is not None:
                coords, data = chunk
                root, encode = self._data
                _put_file(root / self.array.metadata.encode_chunk_key(coords), encode(data))  # data first
                _put_file(self._marker_root / self.done.metadata.encode_chunk_key(marker), self._marker_bytes)
                return
        self._write_zarr(inner, marker, values)

    def _chunk(self, inner: Sequence[slice], values: np.ndarray):
        """(chunk coordinates, full-chunk array) when `values` is exactly one chunk; else None."""
        arr = self.array
        chunks, shape = tuple(arr.chunks), tuple(arr.shape)
        values = np.asarray(values)
        spans = [(0, shape[0])] + [(s.start, s.stop) for s in inner]
        if values.ndim != len(shape) or any(s.step not in (None, 1) for s in inner):
            return None
        coords = []
        for (start, stop), c, n, v in zip(spans, chunks, shape, values.shape):
            if start % c or stop - start != v or stop != min(start + c, n):
                return None
            coords.append(start // c)
        data = np.ascontiguousarray(values, dtype=arr.dtype)
        if data.shape != chunks:  # an edge chunk: stored full size, the rest is fill value
            full = np.empty(chunks, dtype=arr.dtype)
            full[tuple(slice(0, v) for v in data.shape)] = data
            for axis, (v, c) in enumerate(zip(data.shape, chunks)):
                if v < c:
                    full[(slice(None),) * axis + (slice(v, None),)] = arr.fill_value
            data = full
        return tuple(coords), data

    def _write_zarr(self, inner: Sequence[slice], marker: tuple[int, ...], values: np.ndarray) -> None:
        from zarr.core.sync import sync

        selection = (slice(None),) + tuple(inner)
        array, done = self.array, self.done

        async def store():
            await array.async_array.setitem(selection, values)
            await done.async_array.setitem(marker, np.uint8(1))

        sync(store())


def _direct_encoder(array):
    """(folder of the array, numpy chunk -> stored bytes) when `BlockWriter` can write `array`'s
    chunks itself (local store, bytes codec + at most one Blosc/Zstd compressor); else None."""
    import sys

    try:
        from numcodecs import Blosc, Zstd
        from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
        from zarr.storage import LocalStore

        store_path = array.store_path
        store = store_path.store
        codecs = tuple(array.metadata.codecs)
        if not isinstance(store, LocalStore) or store.read_only or array.metadata.zarr_format != 3:
            return None
        first, rest = codecs[0], codecs[1:]
        endian = getattr(getattr(first, "endian", None), "value", None)
        if not isinstance(first, BytesCodec) or endian not in (None, sys.byteorder) or len(rest) > 1:
            return None
        codec = rest[0] if rest else None
        if codec is None:
            compress = None
        elif isinstance(codec, BloscCodec):
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[getattr(codec.shuffle, "value", codec.shuffle)]
            compress = Blosc(cname=getattr(codec.cname, "value", codec.cname), clevel=int(codec.clevel), shuffle=shuffle,
                             blocksize=int(codec.blocksize or 0), typesize=codec.typesize)
        elif isinstance(codec, ZstdCodec):
            compress = Zstd(level=int(codec.level), checksum=bool(codec.checksum))
        else:
            return None
        root = Path(store.root) / store_path.path if store_path.path else Path(store.root)
    except Exception:  # another zarr/numcodecs layout: let zarr write
        return None

    def encode(chunk: np.ndarray) -> bytes:
        raw = np.ascontiguousarray(chunk)
        return raw.tobytes() if compress is None else compress.encode(raw)

    return root, encode


def _put_file(path: Path, data) -> None:
    """Write `data` to `path` atomically: a temporary file beside it, then a rename."""
    import uuid

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


__all__ = ["BlockWriter", "DONE_GROUP", "PredictionStore", "array_name", "check_aligned"]
