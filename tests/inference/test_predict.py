"""Blockwise prediction equals whole-image prediction when the halo covers the receptive field."""
from __future__ import annotations

import numpy as np
import pytest
from conv_nets import conv_model, reference_prediction

from segrank.errors import InputError
from segrank.inference.predict import predict_image
from segrank.inference.prepared import normalize_image
from segrank.io.targets import TargetImage
from segrank.models.description import Preprocessing, Tiling

RF = 2  # receptive radius of the default two-layer 3^n conv net


def _percentile_normalised(x: np.ndarray, low=1.0, high=99.8, eps=1e-6) -> np.ndarray:
    lo, hi = np.percentile(x, [low, high])
    return ((x.astype(np.float64) - lo) / (hi - lo + eps)).astype(np.float32)


def _image(shape, seed=0):
    gen = np.random.default_rng(seed)
    return gen.integers(0, 4000, size=shape).astype(np.uint16)


@pytest.mark.parametrize("shape", [(37, 53), (7, 5), (16, 33)])
def test_tiled_equals_whole_2d(tmp_path, shape):
    model = conv_model(tmp_path / "m.onnx", ndim=2)
    img = _image(shape)
    expected = reference_prediction(model, _percentile_normalised(img)[None], pad=RF + 1)
    tiled = predict_image(model, img, axes="yx", device="cpu", tile=12, halo=RF + 1)
    assert tiled.shape == (1,) + shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, expected, atol=1e-5, rtol=0)
    # one block holding the whole image gives the same answer
    whole = predict_image(model, img, axes="yx", device="cpu", tile=max(shape) + 2 * RF + 2, halo=RF + 1)
    np.testing.assert_allclose(whole, tiled, atol=1e-5, rtol=0)


def test_halo_smaller_than_receptive_field_shows_seams(tmp_path):
    # the control for the test above: without enough context the tiles disagree at their seams
    model = conv_model(tmp_path / "m.onnx", ndim=2)
    img = _image((37, 53))
    expected = reference_prediction(model, _percentile_normalised(img)[None], pad=RF + 1)
    seamy = predict_image(model, img, axes="yx", device="cpu", tile=12, halo=0)
    assert np.abs(seamy - expected).max() > 1e-3


@pytest.mark.parametrize("shape", [(13, 19, 23), (3, 6, 5)])
def test_tiled_equals_whole_3d(tmp_path, shape):
    model = conv_model(tmp_path / "m3.onnx", ndim=3, hidden=3)
    vol = _image(shape, seed=1)
    expected = reference_prediction(model, _percentile_normalised(vol)[None], pad=RF)
    tiled = predict_image(model, vol, axes="zyx", device="cpu", tile=8, halo=RF)
    assert tiled.shape == (1,) + shape
    np.testing.assert_allclose(tiled, expected, atol=1e-5, rtol=0)


def test_2d_model_on_volume_is_slice_wise(tmp_path):
    model = conv_model(tmp_path / "m.onnx", ndim=2, out_channels=2, activation="softmax")
    vol = _image((7, 21, 18), seed=2)
    norm = _percentile_normalised(vol)  # statistics of the whole volume, not per slice
    expected = np.stack([reference_prediction(model, norm[z][None], pad=RF) for z in range(vol.shape[0])], axis=1)
    got = predict_image(model, vol, axes="zyx", device="cpu", tile=(3, 10, 10), halo=RF)
    assert got.shape == (2, 7, 21, 18)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-5)


def test_channels_and_axes_order(tmp_path):
    model = conv_model(tmp_path / "m.onnx", ndim=2, in_channels=2, preprocessing=Preprocessing(kind="zero_mean_unit_variance"))
    img = _image((20, 17, 2), seed=3).astype(np.float32)  # y, x, c
    cf = np.moveaxis(img, -1, 0)
    norm = np.stack([(c - c.mean()) / (c.std() + 1e-6) for c in cf.astype(np.float64)]).astype(np.float32)
    expected = reference_prediction(model, norm, pad=RF)
    got = predict_image(model, img, axes="yxc", device="cpu", tile=10, halo=RF)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(normalize_image(model, img, axes="yxc"), norm, atol=1e-5)


def test_perturbation_sees_global_coordinates(tmp_path):
    model = conv_model(tmp_path / "m.onnx", ndim=2, activation="none", preprocessing=Preprocessing(kind="none"))
    img = _image((23, 29), seed=4).astype(np.float32) / 4000

    def field(ys, xs):
        return 0.3 * np.sin(0.7 * ys)[:, None] + 0.2 * np.cos(1.3 * xs)[None, :]

    def perturb(tile, origin):
        y0, x0 = origin
        ys = np.arange(y0, y0 + tile.shape[1])
        xs = np.arange(x0, x0 + tile.shape[2])
        return tile + field(ys, xs)[None].astype(np.float32)

    pad = RF
    padded = np.pad(img, pad, mode="reflect") + field(np.arange(-pad, 23 + pad), np.arange(-pad, 29 + pad))
    expected = reference_prediction(model, padded[None].astype(np.float32), pad=0, activation=False)
    expected = expected[:, pad:-pad, pad:-pad]
    for tile in (8, 16, 40):
        got = predict_image(model, img, axes="yx", device="cpu", tile=tile, halo=RF, perturb=perturb)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_dropout_mask_is_fed(tmp_path):
    model = conv_model(tmp_path / "g.onnx", ndim=2, dropout=True, hidden=4)
    img = _image((20, 20), seed=5)
    plain = predict_image(model, img, axes="yx", device="cpu", tile=16, halo=RF)
    expected = reference_prediction(model, _percentile_normalised(img)[None], pad=RF)
    np.testing.assert_allclose(plain, expected, atol=1e-5, rtol=0)
    mask = np.array([1, 0, 2, 0], np.float32).reshape(1, 4, 1, 1)
    dropped = predict_image(model, img, axes="yx", device="cpu", tile=16, halo=RF, dropout_mask=mask)
    assert np.abs(dropped - plain).max() > 1e-3
    again = predict_image(model, img, axes="yx", device="cpu", tile=16, halo=RF, dropout_mask=mask)
    np.testing.assert_array_equal(dropped, again)


def test_axes_mismatch_names_both(tmp_path):
    model3d = conv_model(tmp_path / "m3.onnx", ndim=3)
    img = TargetImage("cells", np.zeros((20, 20), np.uint8), "yx", tmp_path / "cells.tif")
    with pytest.raises(InputError) as err:
        predict_image(model3d, img, device="cpu")
    message = str(err.value)
    assert "'yx'" in message and "'bczyx'" in message and "cells.tif" in message and "\n" not in message
    model2c = conv_model(tmp_path / "m2c.onnx", ndim=2, in_channels=2)
    with pytest.raises(InputError, match="channel"):
        predict_image(model2c, np.zeros((20, 20), np.uint8), axes="yx", device="cpu")


def test_tile_must_honour_model_constraints(tmp_path):
    model = conv_model(tmp_path / "m.onnx", ndim=2, tiling=Tiling(multiple_of=(8, 8), minimum=(16, 16), halo=(4, 4)))
    img = _image((30, 30))
    with pytest.raises(InputError, match="multiples of"):
        predict_image(model, img, axes="yx", device="cpu", tile=20)
    # the default tile honours the constraints and the result still matches the reference
    expected = reference_prediction(model, _percentile_normalised(img)[None], pad=4)
    np.testing.assert_allclose(predict_image(model, img, axes="yx", device="cpu"), expected, atol=1e-5, rtol=0)
