"""End to end: `segrank rank` on tiny models whose consistency is known by construction."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from segrank.cli import main
from segrank.job import rank

from model_factory import nan_model, smooth_threshold_model, write_sidecar


def _scores(ranking, perturbation=None):
    return {r["name"]: r for r in ranking.rows if perturbation is None or r["perturbation"] == perturbation}


def test_noise_consistent_model_ranks_first(noise_bank, blob_target, tmp_path):
    ranking = rank(noise_bank, blob_target, out=tmp_path / "run", perturbations=["noise:0.1-0.2"], progress=False, n_boot=200)
    rows = _scores(ranking)
    assert rows["smooth"]["rank"] == 1 and rows["sharp"]["rank"] == 2
    assert rows["smooth"]["score"] > rows["sharp"]["score"] + 0.2
    assert rows["smooth"]["n_scored"] == 6 and rows["smooth"]["metric"] == "nhd"
    doc = json.loads((tmp_path / "run" / "ranking.json").read_text())
    assert {"models", "settings", "segrank_version"} <= set(doc)
    for key in ("name", "rank", "score", "ci_low", "ci_high", "p_best", "n_images", "n_scored", "perturbation", "metric", "provider"):
        assert key in doc["models"][0]
    for name in ("ranking.csv", "per_image.csv", "report.html", "ranking.png", "score_distributions.png", "examples.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_dropout_redundant_model_ranks_first(dropout_bank, blob_target, tmp_path):
    ranking = rank(dropout_bank, blob_target, out=tmp_path / "run", perturbations=["dropout:0.2"], progress=False, n_boot=200)
    rows = _scores(ranking)
    # Equal channel weights with exact ceil(pC) dropping and 1/(1-p) rescaling: identical output.
    assert rows["redundant"]["score"] == pytest.approx(1.0, abs=1e-6)
    assert rows["fragile"]["score"] < 0.9
    assert rows["redundant"]["rank"] == 1


def test_default_perturbation_is_dropout_when_possible(dropout_bank, noise_bank, blob_target, tmp_path):
    # the default score is consensus (issue 14); this is CTE's own default perturbation
    r1 = rank(dropout_bank, blob_target, out=tmp_path / "a", progress=False, n_boot=50, report=False, score="cte")
    assert {r["perturbation"] for r in r1.rows} == {"dropout:0.2"}
    r2 = rank(noise_bank, blob_target, out=tmp_path / "b", progress=False, n_boot=50, report=False, score="cte")
    assert {r["perturbation"] for r in r2.rows} == {"noise:0.1-0.2"}


def test_same_seed_same_scores_and_resume(noise_bank, blob_target, tmp_path):
    kw = dict(perturbations=["noise:0.1-0.2", "gamma:1.1-1.2"], repeats=2, progress=False, n_boot=100, report=False)
    first = rank(noise_bank, blob_target, out=tmp_path / "one", **kw)
    second = rank(noise_bank, blob_target, out=tmp_path / "two", **kw)
    assert first.rows == second.rows
    other_seed = rank(noise_bank, blob_target, out=tmp_path / "three", seed=1, **kw)
    assert [r["score"] for r in other_seed.rows] != [r["score"] for r in first.rows]

    # Interrupt: keep only the first rows of per_image.csv, then rerun: the result is the same
    # and rows already written are not recomputed.
    per_image = tmp_path / "one" / "per_image.csv"
    lines = per_image.read_text().splitlines()
    per_image.write_text("\n".join(lines[:5]) + "\n")
    kept = lines[1:5]
    resumed = rank(noise_bank, blob_target, out=tmp_path / "one", **kw)
    assert resumed.rows == first.rows
    after = per_image.read_text().splitlines()
    assert after[1:5] == kept and len(after) == len(lines)


def test_resume_refuses_other_settings(noise_bank, blob_target, tmp_path):
    rank(noise_bank, blob_target, out=tmp_path / "run", perturbations=["noise:0.1-0.2"], progress=False, n_boot=10, report=False)
    with pytest.raises(Exception, match="other settings"):
        rank(noise_bank, blob_target, out=tmp_path / "run", perturbations=["noise:0.2-0.3"], progress=False, report=False)


def test_max_images_is_a_seeded_subset(noise_bank, blob_target, tmp_path):
    a = rank(noise_bank, blob_target, out=tmp_path / "a", perturbations=["noise:0.1"], max_images=3, progress=False, report=False)
    b = rank(noise_bank, blob_target, out=tmp_path / "b", perturbations=["noise:0.1"], max_images=3, progress=False, report=False)
    assert a.settings["units"] == b.settings["units"] and len(a.settings["units"]) == 3
    assert all(r["n_images"] == 3 for r in a.rows)


def test_failing_model_is_recorded_and_others_ranked(noise_bank, blob_target, tmp_path):
    write_sidecar(nan_model(noise_bank / "broken.onnx"))
    ranking = rank(noise_bank, blob_target, out=tmp_path / "run", perturbations=["noise:0.1-0.2"], progress=False, n_boot=50)
    rows = _scores(ranking)
    assert rows["broken"]["status"] == "failed" and rows["broken"]["rank"] is None  # issue 13: failed models get no rank
    assert rows["smooth"]["rank"] == 1
    assert any(f["model"] == "broken" and "NaN" in f["error"] for f in ranking.failures)
    doc = json.loads((tmp_path / "run" / "ranking.json").read_text())
    assert doc["failures"]


def test_model_predicting_no_foreground_ranks_last(noise_bank, blob_target, tmp_path):
    # A threshold above every normalised intensity: nothing is ever foreground.
    write_sidecar(smooth_threshold_model(noise_bank / "blind.onnx", level=50.0))
    ranking = rank(noise_bank, blob_target, out=tmp_path / "run", perturbations=["noise:0.1-0.2"], progress=False, n_boot=50)
    rows = _scores(ranking)
    assert rows["blind"]["score"] is None and rows["blind"]["status"] == "predicts no foreground"
    assert rows["blind"]["rank"] == 3 and rows["blind"]["n_scored"] == 0


def test_instance_models_use_rand(blob_target, tmp_path):
    bank = tmp_path / "ibank"
    bank.mkdir()
    post = {"kind": "components", "threshold": 0.5, "min_size": 4}
    write_sidecar(smooth_threshold_model(bank / "smooth.onnx"), task="instance", postprocessing=post)
    write_sidecar(smooth_threshold_model(bank / "small_window.onnx", size=1, level=0.1), task="instance", postprocessing=post)
    ranking = rank(bank, blob_target, out=tmp_path / "run", perturbations=["noise:0.15-0.2"], progress=False, n_boot=50)
    rows = _scores(ranking)
    assert {r["metric"] for r in rows.values()} == {"rand"}
    assert rows["smooth"]["rank"] == 1 and rows["smooth"]["score"] > rows["small_window"]["score"]


def test_volume_is_scored_per_block(tmp_path):
    bank = tmp_path / "vbank"
    bank.mkdir()
    write_sidecar(smooth_threshold_model(bank / "smooth3d.onnx", ndim=3, size=3), axes="bczyx",
                  tiling={"multiple_of": [1, 1, 1], "minimum": [1, 1, 1], "halo": [2, 4, 4]})
    gen = np.random.default_rng(0)
    vol = np.zeros((20, 40, 40), np.uint8)
    vol[4:16, 8:30, 10:32] = 200
    vol = (vol + gen.integers(0, 10, vol.shape)).astype(np.uint8)
    target = tmp_path / "vol.tif"
    tifffile.imwrite(target, vol)
    ranking = rank(bank, target, out=tmp_path / "run", axes="zyx", perturbations=["noise:0.05-0.1"], block=(10, 20, 20),
                   progress=False, n_boot=50, report=False)
    row = ranking.rows[0]
    assert row["n_units"] == 8 and row["n_images"] == 1
    with open(tmp_path / "run" / "per_image.csv") as f:
        assert len(list(csv.DictReader(f))) == 8


def test_cli_table_and_json(noise_bank, blob_target, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["rank", str(noise_bank), str(blob_target), "--out", str(tmp_path / "run"),
                               "--perturbation", "noise:0.1-0.2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "smooth" in res.output and "sharp" in res.output
    res = runner.invoke(main, ["rank", str(noise_bank), str(blob_target), "--out", str(tmp_path / "run"),
                               "--perturbation", "noise:0.1-0.2", "--no-progress", "--json"])
    doc = json.loads(res.stdout)
    assert doc["models"][0]["name"] == "smooth"


def test_cli_error_is_one_line(noise_bank, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["rank", str(noise_bank), str(empty), "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "segrank: error:" in res.stderr and str(empty) in res.stderr


def test_same_scores_on_a_two_worker_cluster(noise_bank, blob_target, tmp_path):
    kw = dict(perturbations=["noise:0.1-0.2"], progress=False, n_boot=100, report=False)
    local = rank(noise_bank, blob_target, out=tmp_path / "local", **kw)
    cluster = rank(noise_bank, blob_target, out=tmp_path / "cluster", workers=2, **kw)
    assert [(r["name"], r["score"]) for r in cluster.rows] == [(r["name"], r["score"]) for r in local.rows]


def test_public_api_is_the_function(noise_bank, blob_target, tmp_path):
    import segrank
    import segrank.job  # importing the module must not shadow the function

    result = segrank.rank(noise_bank, blob_target, out=tmp_path / "run", perturbations=["noise:0.1"], progress=False,
                          n_boot=20, report=False)
    assert callable(segrank.rank) and result.rows[0]["name"] == "smooth"


def test_model_without_grey_box_rewrite_fails_under_dropout_only(noise_bank, dropout_bank, blob_target, tmp_path):
    import shutil

    for f in ("redundant.onnx", "redundant.yaml"):  # one rewritable model beside two that are not
        shutil.copy(dropout_bank / f, noise_bank / f)
    ranking = rank(noise_bank, blob_target, out=tmp_path / "run", perturbations=["dropout:0.2", "noise:0.1-0.2"],
                   progress=False, n_boot=50, report=False)
    dropout = _scores(ranking, "dropout:0.2")
    assert dropout["redundant"]["rank"] == 1 and dropout["redundant"]["status"] == "ok"
    assert {dropout[n]["status"] for n in ("smooth", "sharp")} == {"failed"}
    assert {f["model"] for f in ranking.failures if f["stage"] == "greybox"} == {"smooth", "sharp"}
    noise = _scores(ranking, "noise:0.1-0.2")
    assert all(r["status"] == "ok" for r in noise.values()) and noise["smooth"]["rank"] < noise["sharp"]["rank"]


def test_default_score_is_consensus_unless_perturbations_are_given(noise_bank, blob_target, tmp_path):
    plain = rank(noise_bank, blob_target, out=tmp_path / "a", progress=False, n_boot=50, report=False)
    assert {r["perturbation"] for r in plain.rows} == {"consensus"} and plain.rows[0]["metric"] == "ei"
    given = rank(noise_bank, blob_target, out=tmp_path / "b", progress=False, n_boot=50, report=False,
                 perturbations=["noise:0.1"])
    assert {r["perturbation"] for r in given.rows} == {"noise:0.1"}


def test_public_api_is_complete_and_typed():
    import importlib.resources
    import warnings

    import segrank

    assert set(dir(segrank)) == set(segrank.__all__)
    for name in segrank.__all__:
        assert getattr(segrank, name) is not None, name
    assert segrank.predict_target.__name__ == "predict_target" and segrank.predict_image.__name__ == "predict_image"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert segrank.predict is segrank.predict_image  # the old name keeps working, with a warning
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert importlib.resources.files("segrank").joinpath("py.typed").is_file()
