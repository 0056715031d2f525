"""The prediction store: aligned whole-chunk writes, data before marker, the direct block writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from segrank.errors import PredictionError
from segrank.io.zarr_store import PredictionStore, check_aligned


def _volume(path: Path, shape=(5, 30, 27), seed=0) -> Path:
    data = np.random.default_rng(seed).integers(0, 255, size=shape).astype(np.uint8)
    arr = zarr.create_array(str(path), shape=shape, chunks=(2, 16, 16), dtype="uint8", dimension_names=["z", "y", "x"])
    arr[...] = data
    return path


def test_unaligned_writes_are_refused(tmp_path):
    arr = zarr.create_array(str(tmp_path / "p.zarr"), shape=(1, 20, 20), chunks=(1, 8, 8), dtype="float32")
    check_aligned(arr, (slice(8, 16), slice(16, 20)), where="p")  # whole chunks, edge chunk cut by the shape
    with pytest.raises(PredictionError, match="not aligned"):
        check_aligned(arr, (slice(4, 12), slice(0, 8)), where="p")
    with pytest.raises(PredictionError, match="not aligned"):
        check_aligned(arr, (slice(0, 8), slice(0, 12)), where="p")


def test_block_writer_stores_data_then_marker(tmp_path):
    from segrank.io.zarr_store import BlockWriter

    store = PredictionStore(tmp_path / "p.zarr")
    store.prepare("im", key="k", shape=(1, 20, 20), chunks=(1, 8, 8), grid=(3, 3), dimension_names=["c", "y", "x"])
    arr, done = store.array("im", mode="r+"), store._done_array("im")
    values = np.arange(32, dtype=np.float32).reshape(1, 8, 4)
    writer = BlockWriter(arr, done, where="p")
    writer.write((slice(8, 16), slice(16, 20)), (1, 2), values)
    np.testing.assert_array_equal(arr[:, 8:16, 16:20], values)
    assert store.done_blocks("im") == {(1, 2)}
    with pytest.raises(PredictionError, match="not aligned"):
        writer.write((slice(4, 12), slice(0, 8)), (0, 0), values)
    assert store.done_blocks("im") == {(1, 2)}  # a refused write marks nothing


@pytest.mark.parametrize("compressor", ["prepared", "zstd", "none"])
def test_block_writer_writes_chunks_itself_and_zarr_reads_them(tmp_path, monkeypatch, compressor):
    # the direct path (numcodecs + one file per chunk, no zarr event loop) stores what zarr reads
    # back exactly, edge chunks (padded to the full chunk) included, and marks each block after it
    from zarr.codecs import BloscCodec

    from segrank.io.zarr_store import BlockWriter

    store = PredictionStore(tmp_path / "p.zarr")
    if compressor == "prepared":  # as predict_target creates it: Blosc lz4 + shuffle
        store.prepare("im", key="k", shape=(2, 20, 19), chunks=(2, 8, 8), grid=(3, 3), dimension_names=["c", "y", "x"])
        arr = store.array("im", mode="r+")
        assert isinstance(arr.metadata.codecs[-1], BloscCodec)
    else:  # as the scoring cache creates it (zarr's default zstd), or uncompressed
        kw = {} if compressor == "zstd" else {"compressors": None}
        arr = store.group.create_array("im", shape=(2, 20, 19), chunks=(2, 8, 8), dtype="float32", fill_value=0, **kw)
        store.group.create_array("_done/im", shape=(3, 3), chunks=(1, 1), dtype="uint8", fill_value=0, **kw)
    done = store._done_array("im")
    writer = BlockWriter(arr, done, where="p")

    def refuse(*args, **kwargs):
        raise AssertionError("went through zarr")

    monkeypatch.setattr(writer, "_write_zarr", refuse)
    gen = np.random.default_rng(0)
    expected = np.zeros((2, 20, 19), np.float32)
    for i, j in [(0, 0), (2, 2), (1, 2), (2, 0), (0, 1)]:  # interior, corner and edge blocks
        inner = (slice(8 * i, min(8 * i + 8, 20)), slice(8 * j, min(8 * j + 8, 19)))
        values = gen.normal(size=(2, inner[0].stop - inner[0].start, inner[1].stop - inner[1].start)).astype(np.float32)
        writer.write(inner, (i, j), values)
        expected[(slice(None),) + inner] = values
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"), path="im")[...], expected)
    assert store.done_blocks("im") == {(0, 0), (2, 2), (1, 2), (2, 0), (0, 1)}
    assert np.asarray(zarr.open_array(str(tmp_path / "p.zarr"), path="_done/im")[...]).sum() == 5
    assert not list((tmp_path / "p.zarr").rglob("*.partial"))  # temporary files renamed into place


def test_block_writer_falls_back_to_zarr(tmp_path):
    # a write of two chunks at once, or an array the writer does not handle itself (sharded),
    # goes through zarr: same values, same markers
    from segrank.io.zarr_store import BlockWriter

    store = PredictionStore(tmp_path / "p.zarr")
    store.prepare("im", key="k", shape=(1, 16, 16), chunks=(1, 8, 8), grid=(2, 2), dimension_names=["c", "y", "x"])
    writer = BlockWriter(store.array("im", mode="r+"), store._done_array("im"), where="p")
    values = np.arange(128, dtype=np.float32).reshape(1, 8, 16)
    writer.write((slice(0, 8), slice(0, 16)), (0, 0), values)
    np.testing.assert_array_equal(store.array("im")[:, :8, :], values)
    assert store.done_blocks("im") == {(0, 0)}

    sharded = store.group.create_array("sh", shape=(1, 16, 16), chunks=(1, 8, 8), shards=(1, 16, 16), dtype="float32")
    done = store.group.create_array("_done/sh", shape=(2, 2), chunks=(1, 1), dtype="uint8", fill_value=0)
    writer = BlockWriter(sharded, done, where="p")
    assert writer._marker_bytes is None
    writer.write((slice(8, 16), slice(0, 8)), (1, 0), values[:, :, :8])
    np.testing.assert_array_equal(store.array("sh")[:, 8:, :8], values[:, :, :8])
    assert store.done_blocks("sh") == {(1, 0)}


def test_write_block_reuses_its_writer(tmp_path):
    store = PredictionStore(tmp_path / "p.zarr")
    store.prepare("im", key="k", shape=(1, 16, 16), chunks=(1, 8, 8), grid=(2, 2), dimension_names=["c", "y", "x"])
    store.write_block("im", (slice(0, 8), slice(0, 8)), (0, 0), np.ones((1, 8, 8), np.float32))
    writer = store._writers["im"]
    store.write_block("im", (slice(0, 8), slice(8, 16)), (0, 1), np.full((1, 8, 8), 2, np.float32))
    assert store._writers["im"] is writer
    assert store.done_blocks("im") == {(0, 0), (0, 1)}
    np.testing.assert_array_equal(store.array("im")[0, :8, :], np.repeat([1.0, 2.0], 8)[None].repeat(8, 0))
    # re-created arrays get a new writer (the old one's array is gone)
    store.prepare("im", key="other", shape=(1, 16, 16), chunks=(1, 8, 8), grid=(2, 2), dimension_names=["c", "y", "x"])
    assert "im" not in store._writers
    import pickle

    assert pickle.loads(pickle.dumps(store))._writers == {}
