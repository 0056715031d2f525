"""Prediction into a store (`segrank predict`): equal to in-memory prediction, cache hits, resume, kill, schedulers."""
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

from segrank.inference.predict import predict_image
from segrank.inference.to_store import predict_target
from segrank.io.targets import open_target
from segrank.io.zarr_store import PredictionStore


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
        KILL_SCRIPT.format(tests=str(Path(__file__).parents[1]), onnx=str(tmp_path / "k.onnx"), vol=str(vol), out=str(out))
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
