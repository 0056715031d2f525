"""`segrank compare`: every file format, JSON keys, and one-line errors naming the file."""
from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from segrank.cli import main
from segrank.metrics import adapted_rand, binary_consistency, variation_of_information

KEYS = ["nhd_distance", "ei", "rand_precision", "rand_recall", "rand_f", "vi_split", "vi_merge"]


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    a = np.zeros((40, 50), np.uint16)
    for k in range(1, 9):
        y, x = rng.integers(0, 34), rng.integers(0, 44)
        a[y:y + 6, x:x + 6] = k
    b = a.copy()
    b[:, 1:] = a[:, :-1]  # boundaries shifted by one pixel
    b[b == 3] = 2         # one merge
    return a, b


def write(path, data):
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, data)
    elif suffix == ".tif":
        tifffile.imwrite(path, data)
    elif suffix == ".png":
        iio.imwrite(path, data)
    elif suffix == ".zarr":
        z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=data.shape)
        z[...] = data
    return str(path)


def run(*args):
    return CliRunner().invoke(main, ["compare", *args])


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".png", ".zarr"])
def test_all_metrics_on_labels_in_every_format(tmp_path, labels, suffix):
    a, b = labels
    if suffix == ".png":
        a, b = a.astype(np.uint8), b.astype(np.uint8)
    pa, pb = write(tmp_path / f"a{suffix}", a), write(tmp_path / f"b{suffix}", b)
    result = run(pa, pb, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert list(scores) == KEYS
    counts = binary_consistency(a != 0, b != 0)
    rand, vi = adapted_rand(a, b), variation_of_information(a, b)
    assert scores["nhd_distance"] == pytest.approx(counts.nhd)
    assert scores["ei"] == pytest.approx(counts.consistency)  # masks: p = 1
    assert [scores[k] for k in KEYS[2:5]] == pytest.approx(list(rand))
    assert [scores[k] for k in KEYS[5:]] == pytest.approx(list(vi))
    assert 0 < scores["rand_f"] < 1


def test_probabilities_and_single_metrics(tmp_path):
    rng = np.random.default_rng(1)
    pu = rng.random((30, 30), dtype=np.float32)
    pp = np.clip(pu + 0.1 * rng.standard_normal((30, 30)).astype(np.float32), 0, 1)
    fa, fb = write(tmp_path / "u.npy", pu), write(tmp_path / "p.tif", pp)
    counts = binary_consistency(pu, pp, threshold=0.4)
    result = run(fa, fb, "--metric", "nhd", "--threshold", "0.4", "--json")
    assert json.loads(result.output) == {"nhd_distance": pytest.approx(counts.nhd)}  # distance: 0 = the same
    result = run(fa, fb, "--metric", "ei", "--threshold", "0.4", "--json")
    assert json.loads(result.output) == {"ei": pytest.approx(counts.ei)}
    result = run(fa, fb, "--json")  # rand and vi are undefined on probabilities: null
    scores = json.loads(result.output)
    assert list(scores) == KEYS and scores["rand_f"] is None and scores["vi_split"] is None
    text = run(fa, fb)
    assert text.exit_code == 0 and "rand_f" in text.output and "n/a" in text.output


def test_empty_foreground_gives_null(tmp_path):
    z = np.zeros((8, 8), np.uint8)
    scores = json.loads(run(write(tmp_path / "a.npy", z), write(tmp_path / "b.npy", z), "--json").output)
    assert all(scores[k] is None for k in KEYS)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: (d / "missing.npy", None), "no such file"),
        (lambda d: (d / "bad.npy", b"not a numpy file"), "cannot read"),
        (lambda d: (d / "bad.tif", b"II*\x00garbage"), "holds no image"),
        (lambda d: (d / "a.txt", b"1 2 3"), "unsupported file type"),
    ],
)
def test_bad_file_is_one_line_naming_it(tmp_path, labels, make, words):
    path, content = make(tmp_path)
    if content is not None:
        path.write_bytes(content)
    good = write(tmp_path / "good.npy", labels[0])
    result = run(str(path), good)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0]


def test_shape_mismatch_and_rand_on_probabilities(tmp_path, labels):
    a = write(tmp_path / "a.npy", labels[0])
    b = write(tmp_path / "b.npy", labels[0][:-1])
    result = run(a, b)
    assert result.exit_code == 2 and "differ in shape" in result.output
    p = write(tmp_path / "p.npy", np.zeros(labels[0].shape, np.float32))
    result = run(p, a, "--metric", "rand")
    assert result.exit_code == 2 and "p.npy" in result.output and "integer label" in result.output
