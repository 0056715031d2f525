"""Predictions into Zarr: aligned chunks, content-hash cache hits, resume after interruption."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conv_nets import conv_model

from segrank.errors import PredictionError
from segrank.inference.predict import predict_image
from segrank.inference.to_store import predict_target
from segrank.io.targets import open_target
from segrank.io.zarr_store import PredictionStore, check_aligned


def _volume(path: Path, shape=(5, 30, 27), seed=0) -> Path:
    data = np.random.default_rng(seed).integers(0, 255, size=shape).astype(np.uint8)
    arr = zarr.create_array(str(path), shape=shape, chunks=(2, 16, 16), dtype="uint8", dimension_names=["z", "y", "x"])
    arr[...] = data
    return path


@pytest.fixture
def model(tmp_path):
    return conv_model(tmp_path / "m.onnx", ndim=2, out_channels=2, activation="softmax")


def test_store_matches_in_memory_prediction(tmp_path, model):
    target = open_target(_volume(tmp_path / "vol.zarr"))
    summary = predict_target(model, target, tmp_path / "pred.zarr", tile=(2, 12, 12), halo=2, device="cpu", progress=False)
    pred = zarr.open_array(str(tmp_path / "pred.zarr"), path="vol", mode="r")
    assert pred.shape == (2, 5, 30, 27)
    assert pred.chunks == (2, 2, 8, 8)  # one chunk per inner block
    assert pred.metadata.dimension_names == ("c", "z", "y", "x")
    assert summary.n_blocks == 3 * 4 * 4 and summary.n_computed == summary.n_blocks and summary.n_reused == 0
    assert summary.provider == "CPUExecutionProvider"
    expected = predict_image(model, target.images[0], device="cpu", tile=(2, 12, 12), halo=2)
    np.testing.assert_array_equal(pred[...], expected)


def test_rerun_is_a_cache_hit_and_other_settings_recompute(tmp_path, model):
    target = open_target(_volume(tmp_path / "vol.zarr"))
    out = tmp_path / "pred.zarr"
    first = predict_target(model, target, out, tile=(2, 12, 12), halo=2, device="cpu", progress=False)
    before = zarr.open_array(str(out), path="vol")[...]
    again = predict_target(model, target, out, tile=(2, 12, 12), halo=2, device="cpu", progress=False)
    assert again.n_computed == 0 and again.n_reused == first.n_blocks
    assert again.images[0]["key"] == first.images[0]["key"]
    np.testing.assert_array_equal(zarr.open_array(str(out), path="vol")[...], before)
    other = predict_target(model, target, out, tile=(2, 16, 16), halo=2, device="cpu", progress=False)
    assert other.n_reused == 0 and other.n_computed == other.n_blocks
    assert other.images[0]["key"] != first.images[0]["key"]
    assert zarr.open_array(str(out), path="vol").chunks == (2, 2, 12, 12)
    # a different input is a different key too
    target2 = open_target(_volume(tmp_path / "vol2" / "vol.zarr", seed=1))
    changed = predict_target(model, target2, out, tile=(2, 16, 16), halo=2, device="cpu", progress=False)
    assert changed.n_reused == 0


class _FailAfter:
    """Identity perturbation that breaks after `n` tiles: an interrupted run."""

    def __init__(self, n):
        self.n = n
        self.calls = 0

    def __call__(self, tile, origin):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt("interrupted")
        return tile


def test_resume_after_interruption(tmp_path, model):
    target = open_target(_volume(tmp_path / "vol.zarr"))
    out = tmp_path / "pred.zarr"
    settings = dict(tile=(2, 12, 12), halo=2, device="cpu", progress=False, scheduler="sync", perturb_key="identity")
    with pytest.raises(KeyboardInterrupt):
        predict_target(model, target, out, perturb=_FailAfter(7), **settings)
    assert len(PredictionStore(out).done_blocks("vol")) == 7
    counter = _FailAfter(10**9)
    resumed = predict_target(model, target, out, perturb=counter, **settings)
    assert resumed.n_reused == 7 and resumed.n_computed == resumed.n_blocks - 7 == counter.calls
    expected = predict_image(model, target.images[0], device="cpu", tile=(2, 12, 12), halo=2)
    np.testing.assert_array_equal(zarr.open_array(str(out), path="vol")[...], expected)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from conv_nets import conv_model
    from segrank.inference.to_store import predict_target
    from segrank.io.targets import open_target

    def slow(tile, origin):
        time.sleep(float(sys.argv[1]))
        return tile

    model = conv_model({onnx!r}, ndim=2, out_channels=2, activation="softmax")
    s = predict_target(model, open_target({vol!r}), {out!r}, tile=(2, 12, 12), halo=2, device="cpu",
                       progress=False, perturb=slow, perturb_key="identity", scheduler="sync")
    print(s.n_computed, s.n_reused)
    """
)


def test_kill_and_restart_finishes_without_redoing(tmp_path, model):
    vol = _volume(tmp_path / "vol.zarr")
    out = tmp_path / "pred.zarr"
    script = tmp_path / "run.py"
    script.write_text(
        KILL_SCRIPT.format(tests=str(Path(__file__).parent), onnx=str(tmp_path / "k.onnx"), vol=str(vol), out=str(out))
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), "0.2"], env=env, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if (out / "_done" / "vol").exists():
            done = len(PredictionStore(out).done_blocks("vol"))
            if done >= 3:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done < 48, "the run should have been killed part-way"
    finished = len(PredictionStore(out).done_blocks("vol"))
    rerun = subprocess.run([sys.executable, str(script), "0"], env=env, stdout=subprocess.PIPE, check=True, text=True)
    computed, reused = map(int, rerun.stdout.split())
    assert reused == finished and computed == 48 - finished
    target = open_target(vol)
    expected = predict_image(model.with_(path=tmp_path / "k.onnx"), target.images[0], device="cpu", tile=(2, 12, 12), halo=2)
    np.testing.assert_array_equal(zarr.open_array(str(out), path="vol")[...], expected)


def test_unaligned_writes_are_refused(tmp_path):
    arr = zarr.create_array(str(tmp_path / "p.zarr"), shape=(1, 20, 20), chunks=(1, 8, 8), dtype="float32")
    check_aligned(arr, (slice(8, 16), slice(16, 20)), where="p")  # whole chunks, edge chunk cut by the shape
    with pytest.raises(PredictionError, match="not aligned"):
        check_aligned(arr, (slice(4, 12), slice(0, 8)), where="p")
    with pytest.raises(PredictionError, match="not aligned"):
        check_aligned(arr, (slice(0, 8), slice(0, 12)), where="p")


def test_threaded_and_local_cluster_agree(tmp_path, model):
    target = open_target(_volume(tmp_path / "vol.zarr", shape=(2, 20, 20)))
    a = predict_target(model, target, tmp_path / "a.zarr", tile=(2, 14, 14), halo=2, device="cpu", progress=False, workers=2)
    b = predict_target(
        model, target, tmp_path / "b.zarr", tile=(2, 14, 14), halo=2, device="cpu", progress=False, scheduler="local", workers=2
    )
    assert a.n_computed == b.n_computed == 4  # grid 1 x 2 x 2
    assert a.images[0]["key"] == b.images[0]["key"]
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "a.zarr"), path="vol")[...], zarr.open_array(str(tmp_path / "b.zarr"), path="vol")[...]
    )


def test_folder_of_images_gets_one_array_each(tmp_path, model):
    folder = tmp_path / "imgs"
    folder.mkdir()
    gen = np.random.default_rng(3)
    for name, shape in (("a", (20, 31)), ("b", (9, 12))):
        tifffile.imwrite(folder / f"{name}.tif", gen.integers(0, 255, size=shape).astype(np.uint8))
    summary = predict_target(model, folder, tmp_path / "p.zarr", tile=16, halo=2, device="cpu", progress=False)
    assert [i["image"] for i in summary.images] == ["a", "b"]
    target = open_target(folder)
    for im in target.images:
        got = zarr.open_array(str(tmp_path / "p.zarr"), path=im.name)[...]
        np.testing.assert_array_equal(got, predict_image(model, im, device="cpu", tile=16, halo=2))


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
