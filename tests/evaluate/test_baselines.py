"""Baselines: confidence, entropy, LEEP and CCFV on tiny cases with hand-computed answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg

from segrank.evaluate.baselines import (
    baseline_rows,
    baselines,
    ccfv,
    class_probabilities,
    feature_tensor,
    feature_variety,
    gaussian_wasserstein,
    leep,
    mean_entropy,
    mean_max_probability,
    model_baselines,
)
from segrank.evaluate.job import validate
from segrank.io.targets import open_target
from segrank.models import load_model

from model_factory import bottleneck_model, smooth_threshold_model, write_sidecar


def test_class_probabilities():
    p = np.array([[[0.9, 0.2]]], np.float32)
    two = class_probabilities(p, activation="sigmoid")
    np.testing.assert_allclose(two[:, 0], [[0.1, 0.8], [0.9, 0.2]], atol=1e-7)
    soft = np.array([[0.2], [0.5], [0.3]])
    np.testing.assert_array_equal(class_probabilities(soft, activation="softmax"), soft)
    # the foreground channel of a two-head sigmoid model
    heads = np.array([[0.3], [0.6]])
    np.testing.assert_allclose(class_probabilities(heads, foreground_channel=1)[:, 0], [0.4, 0.6])


def test_confidence_and_entropy_by_hand():
    probs = class_probabilities(np.array([[0.9, 0.2, 0.5]]))
    assert mean_max_probability(probs) == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    # p = 0.5 has entropy log 2, p = 1 has 0 (0 log 0 = 0)
    assert mean_entropy(class_probabilities(np.array([[0.5, 1.0]]))) == pytest.approx(math.log(2) / 2)
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert mean_entropy(class_probabilities(np.array([[0.9, 0.1]]))) == pytest.approx(h)


def test_leep_by_hand():
    # P(y,z) = [[.4,.1],[.2,.3]], P(z) = [.6,.4], P(y|z) = [[2/3,1/4],[1/3,3/4]];
    # sample 1: .8*2/3 + .2*1/4 = 7/12; sample 2: .4*1/3 + .6*3/4 = 7/12.
    theta = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert leep(theta, np.array([0, 1])) == pytest.approx(math.log(7 / 12))
    # a model that names the labels exactly: P(y|z) = identity, LEEP = 0
    assert leep(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), np.array([0, 0, 1])) == pytest.approx(0.0)
    # an uninformative model scores -H(y)
    y = np.array([0, 0, 0, 1])
    assert leep(np.full((4, 2), 0.5), y) == pytest.approx((3 * math.log(0.75) + math.log(0.25)) / 4)
    with pytest.raises(ValueError):
        leep(theta, np.array([0, 1, 1]))


def test_gaussian_wasserstein_by_hand():
    # 1D: means 1 and 6, variances 2 and 8 -> sqrt(25 + (sqrt 2 - sqrt 8)^2) = sqrt(27)
    assert gaussian_wasserstein([[0.0], [2.0]], [[4.0], [8.0]], ridge=0) == pytest.approx(math.sqrt(27))
    a = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])  # mean 0, cov diag(2/3, 8/3)
    b = 2 * a + np.array([3.0, 4.0])  # mean (3, 4), cov diag(8/3, 32/3)
    expected = math.sqrt(25 + (math.sqrt(8 / 3) - math.sqrt(2 / 3)) ** 2 + (math.sqrt(32 / 3) - math.sqrt(8 / 3)) ** 2)
    assert gaussian_wasserstein(a, b, ridge=0) == pytest.approx(expected)
    assert gaussian_wasserstein(a, a) == pytest.approx(0.0, abs=1e-6)


def test_gaussian_wasserstein_matches_the_product_form():
    """tr (S1^1/2 S2 S1^1/2)^1/2 == tr (S1 S2)^1/2 (the authors' form, via scipy's sqrtm)."""
    gen = np.random.default_rng(3)
    f1 = gen.normal(size=(50, 4)) @ gen.normal(size=(4, 4))
    f2 = gen.normal(size=(60, 4)) @ gen.normal(size=(4, 4)) + 1.0
    s1, s2 = np.cov(f1.T), np.cov(f2.T)
    d2 = np.sum((f1.mean(0) - f2.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2)))
    assert gaussian_wasserstein(f1, f2, ridge=0) == pytest.approx(math.sqrt(d2), rel=1e-6)


def test_feature_variety_by_hand():
    assert feature_variety(np.array([[0.0, 0.0], [3.0, 4.0]]), eps=0) == pytest.approx(0.2)
    three = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])  # distances 5, 4, 3
    assert feature_variety(three, eps=0) == pytest.approx((1 / 5 + 1 / 4 + 1 / 3) / 3)


def test_ccfv_by_hand():
    a = {0: np.array([[-1.0], [1.0]]), 1: np.array([[0.0], [2.0]])}  # all features: mean 0.5
    b = {0: np.array([[10.0], [12.0]]), 1: np.array([[4.0], [8.0]])}  # all features: mean 8.5
    # W = W2 of the foreground classes = sqrt(27); V = 1 / |0.5 - 8.5| = 1/8
    assert ccfv([a, b], eps=0) == pytest.approx(math.log((1 / 8) / math.sqrt(27)), rel=1e-6)
    # closer foreground features (more consistent) raise the score
    b_close = {0: b[0], 1: np.array([[1.0], [3.0]])}
    assert ccfv([a, b_close], eps=0) > ccfv([a, b], eps=0)
    # foreground in one image only: no consistency term
    assert ccfv([a, {0: b[0]}]) is None


def test_baseline_rows_orientation():
    rows = baseline_rows({"m1": {"confidence": 0.7, "entropy": -0.2, "leep": None, "ccfv": None, "n_images": 2},
                          "m2": {"confidence": 0.9, "entropy": -0.5, "leep": None, "ccfv": None, "n_images": 2}})
    by = {(r["perturbation"], r["name"]): r["rank"] for r in rows}
    assert by[("baseline:confidence", "m2")] == 1 and by[("baseline:entropy", "m1")] == 1
    assert not any(r["perturbation"] == "baseline:leep" for r in rows)


@pytest.fixture
def feature_bank(tmp_path):
    bank = tmp_path / "fbank"
    bank.mkdir()
    write_sidecar(bottleneck_model(bank / "unet.onnx", weights=np.full(4, 2.0), bias=-1.0))
    return bank


def test_feature_tensor_and_probe_output(feature_bank, blob_target):
    """auto picks the upsampled decoder tensor; the probe's first channel is the model's output."""
    from segrank.evaluate.baselines import feature_model
    from segrank.inference.predict import predict_image
    from segrank.inference.steps import activate

    model = load_model(feature_bank / "unet.onnx")
    name, channels = feature_tensor(model)
    assert (name, channels) == ("up", 4)
    image = open_target(blob_target).images[0]
    probe = feature_model(model, name, channels, feature_bank)
    raw = predict_image(probe, image)
    assert raw.shape[0] == 5
    np.testing.assert_allclose(activate(raw[:1], "sigmoid"), predict_image(model, image), atol=1e-5)
    # logits = sum_c 2 * feature_c - 1 (weights 2, bias -1)
    np.testing.assert_allclose(raw[0], 2 * raw[1:].sum(axis=0) - 1, atol=1e-4)
    with pytest.raises(Exception, match="no full-resolution"):
        feature_tensor(model, "bottleneck")  # half resolution


def test_model_baselines_order_models(noise_bank, blob_target, feature_bank):
    """A model that segments the blobs beats one that misses their dim edges on LEEP."""
    write_sidecar(smooth_threshold_model(noise_bank / "dim.onnx", level=0.9))
    images = list(open_target(blob_target).images)
    from segrank.evaluate.job import _read_labels

    labels = {im.name: _read_labels(blob_target.parent / "labels" / f"{im.name}.tif") for im in images}
    good, _ = model_baselines(load_model(noise_bank / "smooth.onnx"), images, labels=labels, pixels=500, device="cpu")
    dim, _ = model_baselines(load_model(noise_bank / "dim.onnx"), images, labels=labels, pixels=500, device="cpu")
    assert good["leep"] > dim["leep"] and good["leep"] > -0.1
    assert good["ccfv"] is None and "ccfv_error" in good  # no decoder tensor in a 3-node graph
    free, per_image = model_baselines(load_model(noise_bank / "smooth.onnx"), images, device="cpu")
    assert free["leep"] is None and free["confidence"] == pytest.approx(good["confidence"])
    assert len(per_image) == len(images) and 0.5 <= free["confidence"] <= 1 and free["entropy"] <= 0
    unet, _ = model_baselines(load_model(feature_bank / "unet.onnx"), images, labels=labels, pixels=300, device="cpu")
    assert unet["ccfv"] is not None and math.isfinite(unet["ccfv"])


def test_baselines_job_feeds_validate(noise_bank, blob_target, tmp_path):
    write_sidecar(smooth_threshold_model(noise_bank / "dim.onnx", level=0.9))
    labels = blob_target.parent / "labels"
    rows = baselines(noise_bank, blob_target, labels=labels, out=tmp_path / "b", pixels=300, device="cpu", progress=False)
    doc = json.loads((tmp_path / "b" / "baselines.json").read_text())
    assert doc["models"] == rows
    assert {r["perturbation"] for r in rows} == {"baseline:confidence", "baseline:entropy", "baseline:leep"}
    perf = {"models": [{"name": n, "score": s, "metric": "f1", "n_images": 6}
                       for n, s in (("smooth", 0.95), ("sharp", 0.5), ("dim", 0.7))]}
    (tmp_path / "perf.json").write_text(json.dumps(perf))
    result = validate([(tmp_path / "b" / "baselines.json", tmp_path / "perf.json")], n_permutations=200)
    assert set(result["by_perturbation"]) == {"baseline:confidence", "baseline:entropy", "baseline:leep"}
    assert (tmp_path / "b" / "baselines_per_image.csv").read_text().count("\n") == 1 + 3 * 6


def test_cli_evaluate_baselines_then_validate_two_targets(noise_bank, blob_target, tmp_path):
    from click.testing import CliRunner

    from segrank.cli import main

    write_sidecar(smooth_threshold_model(noise_bank / "dim.onnx", level=0.9))
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(noise_bank), str(blob_target), "--labels", str(blob_target.parent / "labels"),
                               "--out", str(tmp_path / "e"), "--device", "cpu", "--baselines"])
    assert res.exit_code == 0, res.output
    pair = [str(tmp_path / "e" / "baselines.json"), str(tmp_path / "e" / "performance.json")]
    res = runner.invoke(main, ["validate", *pair, *pair, "--permutations", "200"])
    assert res.exit_code == 0, res.output
    assert "perturbation baseline:leep:" in res.output and "regret" in res.output and "top-1" in res.output
