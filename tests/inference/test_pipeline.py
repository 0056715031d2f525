"""The fast path gives the same predictions: overlapped stages, direct reads, histogram percentiles."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile
import zarr
from conv_nets import conv_model

from segrank.errors import PredictionError
from segrank.inference.normalize import percentiles
from segrank.inference.pipeline import run_pipelined
from segrank.inference.predict import predict_image
from segrank.inference.to_store import predict_target
from segrank.io import targets
from segrank.io.targets import open_target
from segrank.models.description import Preprocessing

RF = 2


def _volume(path, shape=(5, 30, 27), chunks=(2, 16, 16), seed=0):
    data = np.random.default_rng(seed).integers(0, 255, size=shape).astype(np.uint8)
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint8", dimension_names=["z", "y", "x"])
    arr[...] = data
    return path


def test_run_pipelined_keeps_order_and_bounds_items_in_flight():
    lock = threading.Lock()
    in_flight, most, finished = [0], [0], []

    def prepare(i):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        return i * 10

    def finish(i, result):
        finished.append((i, result))
        with lock:
            in_flight[0] -= 1

    run_pipelined(range(40), prepare, lambda p: p + 1, finish)
    assert finished == [(i, i * 10 + 1) for i in range(40)]
    assert 1 <= most[0] <= 3  # one prepared, one running, one being finished
    finished.clear()
    run_pipelined(range(5), prepare, lambda p: p + 1, finish, overlap=False)
    assert finished == [(i, i * 10 + 1) for i in range(5)]


@pytest.mark.parametrize("stage", ["prepare", "run", "finish"])
def test_run_pipelined_raises_errors_of_every_stage(stage):
    def fail(name, i):
        if name == stage and i == 3:
            raise ValueError(f"{name} {i}")

    finished = []

    def prepare(i):
        fail("prepare", i)
        return i

    def run(i):
        fail("run", i)
        return i

    def finish(i, result):
        fail("finish", i)
        finished.append(i)

    with pytest.raises(ValueError, match=f"{stage} 3"):
        run_pipelined(range(10), prepare, run, finish)
    assert finished == [0, 1, 2]  # nothing after the failed item is finished


def test_overlap_gives_identical_predictions(tmp_path):
    model = conv_model(tmp_path / "g.onnx", ndim=2, dropout=True, hidden=4)
    vol = np.random.default_rng(1).integers(0, 4000, size=(7, 33, 29)).astype(np.uint16)
    mask = np.array([1, 0, 2, 0], np.float32).reshape(1, 4, 1, 1)

    def perturb(tile, origin):  # a function of global coordinates: tiling must not matter
        z0, y0, x0 = origin
        zs = np.arange(z0, z0 + tile.shape[1])[:, None, None]
        ys = np.arange(y0, y0 + tile.shape[2])[None, :, None]
        return tile + np.float32(0.01) * np.sin(zs + 0.3 * ys + 0.7 * np.arange(x0, x0 + tile.shape[3])).astype(np.float32)

    options = dict(axes="zyx", device="cpu", tile=(3, 12, 12), halo=RF, perturb=perturb, dropout_mask=mask)
    stepwise = predict_image(model, vol, overlap=False, **options)
    overlapped = predict_image(model, vol, overlap=True, **options)
    np.testing.assert_array_equal(overlapped, stepwise)
    # and the store gets the same values either way
    target = open_target(_volume(tmp_path / "vol.zarr"))
    for overlap in (False, True):
        predict_target(model, target, tmp_path / f"p{overlap}.zarr", tile=(2, 12, 12), halo=RF, device="cpu",
                       progress=False, dropout_mask=mask, workers=1, overlap=overlap)
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "pTrue.zarr"), path="vol")[...],
        zarr.open_array(str(tmp_path / "pFalse.zarr"), path="vol")[...],
    )


def test_pipeline_reports_a_bad_output(tmp_path):
    model = conv_model(tmp_path / "m.onnx", ndim=2, out_channels=2, activation="softmax")
    wrong = model.with_(out_channels=3)  # the description disagrees with the graph
    img = np.random.default_rng(0).integers(0, 255, size=(40, 40)).astype(np.uint8)
    with pytest.raises(PredictionError, match="3"):
        predict_image(wrong, img, axes="yx", device="cpu", tile=12, halo=RF)


def test_tasks_run_across_images_of_a_folder(tmp_path):
    model = conv_model(tmp_path / "m.onnx", ndim=2, out_channels=2, activation="softmax")
    folder = tmp_path / "imgs"
    folder.mkdir()
    gen = np.random.default_rng(3)
    for i in range(5):  # single-block images: a task of several blocks spans images
        tifffile.imwrite(folder / f"im{i}.tif", gen.integers(0, 255, size=(8 + i, 12)).astype(np.uint8))
    summary = predict_target(model, folder, tmp_path / "p.zarr", tile=16, halo=RF, device="cpu", progress=False, workers=1)
    assert summary.n_computed == 5
    for im in open_target(folder).images:
        got = zarr.open_array(str(tmp_path / "p.zarr"), path=im.name)[...]
        np.testing.assert_array_equal(got, predict_image(model, im, device="cpu", tile=16, halo=RF))


@pytest.mark.parametrize("keep", [True, False])
def test_whole_file_image_is_read_once_per_task(tmp_path, monkeypatch, keep):
    from segrank.inference import predict as predict_module
    from segrank.inference import to_store

    if not keep:  # no budget for keeping the pixels read for the statistics
        monkeypatch.setattr(predict_module, "KEEP_PIXELS_BYTES", 0)
        monkeypatch.setattr(to_store, "KEEP_PIXELS_BYTES", 0)
    reads = []
    original = targets._read_tif

    def counting(path):
        reads.append(path)
        return original(path)

    monkeypatch.setattr(targets, "_read_tif", counting)
    img = np.random.default_rng(0).integers(0, 255, size=(50, 50)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img)
    model = conv_model(tmp_path / "m.onnx", ndim=2)
    image = open_target(tmp_path / "a.tif").images[0]
    summary = predict_target(model, image, tmp_path / "p.zarr", tile=16, halo=RF, device="cpu", progress=False,
                             scheduler="sync")
    assert summary.n_computed == 25  # 5 x 5 blocks of inner 12
    if keep:  # the statistics read every pixel: the blocks are cut from those
        assert len(reads) == 1
    else:
        assert 1 < len(reads) <= 3  # statistics once, then once per task (2 tasks), not once per block
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "p.zarr"), path="a")[...],
        predict_image(model, img, axes="yx", device="cpu", tile=16, halo=RF),
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int8])
def test_histogram_percentiles_equal_numpy_bit_for_bit(dtype):
    gen = np.random.default_rng(int(np.dtype(dtype).itemsize * 10 + np.dtype(dtype).kind.encode()[0]))
    info = np.iinfo(dtype)
    for _ in range(300):
        lo, hi = sorted(gen.integers(info.min, info.max + 1, size=2))
        x = gen.integers(lo, hi + 1, size=int(gen.integers(1, 3000))).astype(dtype)
        q = [0.0, 1.0, 99.8, 100.0, 50.0] + list(gen.uniform(0, 100, size=4))
        expected = np.percentile(x, q)
        got = percentiles(x, q)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_percentile_normalisation_uses_whole_image_statistics(tmp_path):
    # end to end through `normalization`: same scale/offset as numpy's percentiles would give
    from segrank.inference.normalize import normalization

    x = np.random.default_rng(2).integers(0, 4096, size=(1, 300)).astype(np.uint16)
    norm = normalization(Preprocessing(kind="percentile", low=1.0, high=99.8), x)
    lo, hi = np.percentile(x[0], [1.0, 99.8])
    scale = 1.0 / (float(hi) - float(lo) + 1e-6)
    assert norm.scale == (scale,) and norm.offset == (-float(lo) * scale,)


def test_batched_tiles_equal_one_tile_per_run(tmp_path):
    model = conv_model(tmp_path / "m.onnx", ndim=2, out_channels=2, activation="softmax")
    img = np.random.default_rng(6).integers(0, 4000, size=(45, 38)).astype(np.uint16)
    single = predict_image(model, img, axes="yx", device="cpu", tile=12, halo=RF)
    for k in (2, 3, 100):  # 3 does not divide the 20 blocks; 100 = all of them in one run
        np.testing.assert_allclose(predict_image(model, img, axes="yx", device="cpu", tile=12, halo=RF, tiles_per_run=k),
                                   single, atol=1e-6, rtol=0)
    # slice-wise: each tile is a batch of slices already; tiles stack behind each other
    vol = np.random.default_rng(7).integers(0, 4000, size=(7, 21, 18)).astype(np.uint16)
    one = predict_image(model, vol, axes="zyx", device="cpu", tile=(3, 10, 10), halo=RF)
    np.testing.assert_allclose(predict_image(model, vol, axes="zyx", device="cpu", tile=(3, 10, 10), halo=RF, tiles_per_run=4),
                               one, atol=1e-6, rtol=0)
    target = open_target(_volume(tmp_path / "vol.zarr"))
    for k in (1, 4):
        predict_target(model, target, tmp_path / f"p{k}.zarr", tile=(2, 12, 12), halo=RF, device="cpu", progress=False,
                       tiles_per_run=k)
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "p4.zarr"), path="vol")[...],
                               zarr.open_array(str(tmp_path / "p1.zarr"), path="vol")[...], atol=1e-6, rtol=0)


def test_batched_tiles_need_a_free_batch_axis(tmp_path):
    from segrank.errors import InputError

    model = conv_model(tmp_path / "f.onnx", ndim=2, fixed_batch=1)
    img = np.zeros((30, 30), np.uint8)
    predict_image(model, img, axes="yx", device="cpu", tile=12, halo=RF)  # one tile per run: fine
    with pytest.raises(InputError, match="fixed batch"):
        predict_image(model, img, axes="yx", device="cpu", tile=12, halo=RF, tiles_per_run=2)


def test_tiles_per_run_is_in_the_cache_key_only_when_batched(tmp_path):
    model = conv_model(tmp_path / "m.onnx", ndim=2)
    target = open_target(_volume(tmp_path / "vol.zarr", shape=(2, 20, 20)))
    out = tmp_path / "p.zarr"
    settings = dict(tile=(2, 12, 12), halo=RF, device="cpu", progress=False)
    first = predict_target(model, target, out, **settings)
    same = predict_target(model, target, out, tiles_per_run=1, **settings)
    assert same.n_reused == first.n_blocks and same.images[0]["key"] == first.images[0]["key"]
    batched = predict_target(model, target, out, tiles_per_run=2, **settings)
    assert batched.n_computed == first.n_blocks and batched.images[0]["key"] != first.images[0]["key"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_activation_in_place_equals_scipy(dtype):
    from scipy.special import expit, softmax

    from segrank.inference.steps import activate

    gen = np.random.default_rng(4)
    y = (gen.normal(0, 30, size=(3, 40, 50))).astype(dtype)
    y[0, 0, :6] = [-1e4 if dtype != np.float16 else -6e4, 6e4, 0, -88.5, -103.0, np.inf]
    before = y.copy()
    crop = y[:, 3:37, 5:45]  # a crop of the output, as finish_block passes it
    with np.errstate(all="raise"):  # no over/underflow warnings escape
        sig = activate(crop, "sigmoid")
    assert sig.dtype == np.float32 and sig.flags.c_contiguous
    np.testing.assert_array_equal(y, before)  # the model output is not changed
    ref = expit(np.asarray(crop, dtype=np.float32))
    np.testing.assert_allclose(sig, ref, rtol=1e-6, atol=0)  # a few float32 ulp, zeros where expit is zero
    full = activate(y, "sigmoid")
    assert full[0, 0, 0] == 0.0 and full[0, 0, 1] == 1.0 and full[0, 0, 2] == 0.5 and full[0, 0, 5] == 1.0
    finite = np.where(np.isfinite(y), y, 0).astype(dtype)
    np.testing.assert_array_equal(activate(finite, "softmax"), softmax(finite.astype(np.float32), axis=0).astype(np.float32))
    np.testing.assert_array_equal(activate(crop, "none"), np.asarray(crop, dtype=np.float32))


def test_percentile_counts_in_steps_equal_numpy(monkeypatch):
    from segrank.inference import normalize

    monkeypatch.setattr(normalize, "COUNT_STEP", 7)  # many steps and a short last one
    gen = np.random.default_rng(5)
    for dtype in (np.uint8, np.int8, np.uint16, np.int16):
        info = np.iinfo(dtype)
        x = gen.integers(info.min, info.max + 1, size=1000).astype(dtype)
        q = [0.0, 1.0, 33.3, 99.8, 100.0]
        np.testing.assert_array_equal(percentiles(x, q), np.percentile(x, q))


def test_statistics_read_straight_from_the_store_give_the_same_digest(tmp_path):
    # the pixels for the statistics come through the block reader (no dask graph); the digest
    # (part of every prediction key) is the same as reading them through dask
    from segrank.inference.normalize import sample_image
    from segrank.inference.axes import channel_first as _channel_first
    from segrank.inference.source import BlockSource

    data = np.random.default_rng(7).integers(0, 255, size=(6, 33, 29)).astype(np.uint8)
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape, chunks=(2, 16, 16), dtype="uint8",
                            dimension_names=["z", "y", "x"])
    arr[...] = data
    model = conv_model(tmp_path / "m.onnx", ndim=2)
    image = open_target(tmp_path / "v.zarr").images[0]
    assert image.direct is not None
    cf, _, _, _ = _channel_first(image, None, model)
    direct = sample_image(cf, read=BlockSource.of(image, cf).reader())
    through_dask = sample_image(cf)
    assert direct.digest == through_dask.digest and direct.complete
    np.testing.assert_array_equal(direct.values, through_dask.values)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64])
def test_normalization_casts_inside_the_multiplication_bit_for_bit(dtype):
    from segrank.inference.normalize import Normalization

    norm = Normalization((0.0123456789, 3.3), (-0.2, 1e-3))
    gen = np.random.default_rng(8)
    if np.dtype(dtype).kind == "f":
        x = gen.normal(0, 1e4, size=(2, 33, 17)).astype(dtype)
    else:
        x = gen.integers(0, np.iinfo(dtype).max, size=(2, 33, 17), dtype=dtype)
    x = x[:, 1:, ::2]  # not contiguous
    expected = x.astype(np.float32)  # cast first, then scale and shift in float32 (as before)
    expected *= np.asarray(norm.scale, np.float32).reshape(2, 1, 1)
    expected += np.asarray(norm.offset, np.float32).reshape(2, 1, 1)
    got = norm.apply(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
