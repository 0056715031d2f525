"""rank(score="consensus"): unperturbed runs through the store, agreement per unit, resume, volumes."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from click.testing import CliRunner
from model_factory import nan_model, smooth_threshold_model, write_sidecar
from volume_factory import BLOCK, volume_bank, write_volume

import segrank.inference.predict as predict_module
from segrank.cli import main
from segrank.job import rank

KW = dict(progress=False, n_boot=50, report=False, device="cpu")


@pytest.fixture
def bank(noise_bank):
    """smooth and sharp agree on the blobs; two more near-copies of smooth make a majority; a
    model thresholding above every intensity (no foreground) disagrees with all of them."""
    write_sidecar(smooth_threshold_model(noise_bank / "smooth_b.onnx", level=0.45))
    write_sidecar(smooth_threshold_model(noise_bank / "smooth_c.onnx", level=0.55))
    write_sidecar(smooth_threshold_model(noise_bank / "high.onnx", level=50.0))  # predicts nothing
    return noise_bank


@pytest.fixture
def runs(monkeypatch):
    """Counts whole-image predictions, unperturbed or perturbed."""
    counts = Counter()
    real = predict_module.predict_prepared

    def counting(image, session, **kw):
        perturbed = kw.get("perturb") is not None or kw.get("dropout_mask") is not None
        counts["perturbed" if perturbed else "unperturbed"] += 1
        return real(image, session, **kw)

    monkeypatch.setattr(predict_module, "predict_prepared", counting)
    return counts


def _consensus(ranking) -> dict:
    return {r["name"]: r for r in ranking.rows if r["perturbation"] == "consensus"}


def test_consensus_runs_each_model_once_per_image_and_ranks_the_outlier_last(bank, blob_target, tmp_path, runs):
    ranking = rank(bank, blob_target, out=tmp_path / "run", score="consensus", **KW)
    rows = _consensus(ranking)
    assert set(rows) == {"smooth", "smooth_b", "smooth_c", "sharp", "high"}
    assert rows["high"]["rank"] == 5 and rows["smooth"]["rank"] <= 3
    assert all(r["estimator"] == "consensus" and r["metric"] == "ei" and r["n_scored"] == 6 for r in rows.values())
    assert runs == {"unperturbed": 5 * 6}  # no perturbed run at all
    assert not [r for r in ranking.rows if r["perturbation"] != "consensus"]
    doc = json.loads((tmp_path / "run" / "ranking.json").read_text())
    assert doc["consensus"]["models"] and len(doc["consensus"]["matrix"]) == 5
    assert doc["perturbations"] == [{"perturbation": "consensus", "ranking": [r["name"] for r in sorted(
        rows.values(), key=lambda r: r["rank"])], "top_two_separated": rows[min(rows, key=lambda n: rows[n]["rank"])][
        "top_two_separated"]}]
    assert (tmp_path / "run" / "predictions" / "zarr.json").exists()


def test_a_rerun_resumes_and_a_shared_cache_is_reused(bank, blob_target, tmp_path, runs):
    first = rank(bank, blob_target, out=tmp_path / "a", score="consensus", cache=tmp_path / "cache", **KW)
    runs.clear()
    again = rank(bank, blob_target, out=tmp_path / "a", score="consensus", cache=tmp_path / "cache", **KW)
    assert not runs and again.predictions == {"reused": 0, "computed": 0}  # every unit was done
    other = rank(bank, blob_target, out=tmp_path / "b", score="consensus", cache=tmp_path / "cache", **KW)
    assert not runs and other.predictions["computed"] == 0
    score = lambda r: [(x["name"], x["score"], x["ci_low"], x["p_best"]) for x in r.rows]  # noqa: E731
    assert score(first) == score(again) == score(other)
    lines = (tmp_path / "a" / "agreement.csv").read_text().splitlines()
    assert len(lines) == 1 + 6 * 15  # header, then 15 pairs (with self) per image, written once


def test_cte_and_consensus_are_ranked_each_on_their_own(bank, blob_target, tmp_path):
    ranking = rank(bank, blob_target, out=tmp_path / "run", score=["cte", "consensus"], perturbations=["noise:0.1"],
                   rounds=3, **KW)
    settings = {r["perturbation"] for r in ranking.rows}
    assert settings == {"noise:0.1", "consensus"}
    assert {r["estimator"] for r in ranking.rows} == {"cte", "consensus"}
    assert sorted(r["rank"] for r in ranking.rows if r["perturbation"] == "consensus") == [1, 2, 3, 4, 5]
    weights = [r["weight"] for r in ranking.rows if r["perturbation"] == "consensus"]
    assert len(set(weights)) > 1  # re-weighted


def test_a_failing_model_is_recorded_and_left_out_of_the_consensus(bank, blob_target, tmp_path):
    write_sidecar(nan_model(bank / "broken.onnx"))
    ranking = rank(bank, blob_target, out=tmp_path / "run", score="consensus", **KW)
    rows = _consensus(ranking)
    assert rows["broken"]["status"] == "failed" and rows["broken"]["rank"] is None and rows["broken"]["score"] is None
    assert {f["model"] for f in ranking.failures} == {"broken"}
    assert "broken" not in (tmp_path / "run" / "agreement.csv").read_text()


def test_volume_blocks_in_process_and_on_a_cluster_agree(tmp_path):
    bank = volume_bank(tmp_path, "3d")
    write_sidecar(smooth_threshold_model(bank / "smooth3d_b.onnx", ndim=3, size=3, level=0.45), axes="bczyx",
                  tiling={"multiple_of": [1, 1, 1], "minimum": [1, 1, 1], "halo": [2, 3, 3]})
    volume = write_volume(tmp_path / "vol.zarr")
    local = rank(bank, volume, out=tmp_path / "a", score="consensus", block=BLOCK, **KW)
    cluster = rank(bank, volume, out=tmp_path / "b", score="consensus", block=BLOCK, workers=2, **KW)
    assert all(r["n_units"] == 8 for r in local.rows)
    key = lambda r: sorted((x["name"], x["score"], x["relative_mask_size"]) for x in r.rows)  # noqa: E731
    assert key(local) == key(cluster)


def test_cli_score_option(bank, blob_target, tmp_path):
    res = CliRunner().invoke(main, ["rank", str(bank), str(blob_target), "--out", str(tmp_path / "run"),
                                    "--score", "consensus", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {r["perturbation"] for r in doc["models"]} == {"consensus"}
    res = CliRunner().invoke(main, ["rank", str(bank), str(blob_target), "--out", str(tmp_path / "x"),
                                    "--score", "votes", "--no-progress"])
    assert res.exit_code != 0 and "votes" in res.output


def test_report_shows_agreement_warnings_and_the_truth(bank, blob_target, tmp_path):
    from segrank.evaluate.job import evaluate

    perf = tmp_path / "perf"
    evaluate(bank, blob_target, labels=blob_target.parent / "labels", out=perf, device="cpu", progress=False)
    ranking = rank(bank, blob_target, out=tmp_path / "run", score=["cte", "consensus"], perturbations=["noise:0.1"],
                   truth=perf / "performance.json", progress=False, n_boot=50, device="cpu")
    doc = json.loads((tmp_path / "run" / "ranking.json").read_text())
    assert set(doc["truth"]) == {"noise:0.1", "consensus"}
    assert all(-1 <= t["spearman"] <= 1 and t["regret"] >= 0 for t in doc["truth"].values())
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Against the true ranking" in page and "Consensus (agreement with the bank)" in page
    assert (tmp_path / "run" / "agreement.png").stat().st_size > 1000
    firsts = {r["perturbation"]: r["name"] for r in ranking.rows if r["rank"] == 1}
    disagree = firsts["noise:0.1"] != firsts["consensus"]
    assert disagree == any("disagree on the best model" in w for w in doc["consensus"]["warnings"])


def test_labels_for_a_few_images_rank_by_their_true_score_without_more_inference(bank, blob_target, tmp_path, runs):
    import shutil

    from segrank.evaluate.job import evaluate

    few = tmp_path / "few"
    few.mkdir()
    for name in ("img1.tif", "img4.tif"):
        shutil.copy(blob_target.parent / "labels" / name, few / name)
    ranking = rank(bank, blob_target, out=tmp_path / "run", score="consensus", labels=few, **KW)
    assert runs == {"unperturbed": 5 * 6}  # the labelled images' predictions come from the store
    rows = {r["name"]: r for r in ranking.rows if r["perturbation"] == "labels"}
    assert all(r["n_units"] == 2 and r["metric"] == "f1" and r["estimator"] == "labels" for r in rows.values())
    # the mean F1 on the two images equals what evaluate finds on them
    sub = tmp_path / "sub"
    sub.mkdir()
    for name in ("img1.tif", "img4.tif"):
        shutil.copy(blob_target / name, sub / name)
    perf = evaluate(bank, sub, labels=few, out=tmp_path / "perf", device="cpu", progress=False)
    per_image = (tmp_path / "perf" / "performance_per_image.csv").read_text().splitlines()[1:]
    means = {}
    for line in per_image:
        model, _, _, score = line.split(",")
        means.setdefault(model, []).append(float(score))
    for name, r in rows.items():
        assert r["score"] == pytest.approx(sum(means[name]) / 2)
    assert len(perf) == 5
    assert rows["high"]["rank"] == 5
    runs.clear()
    again = rank(bank, blob_target, out=tmp_path / "run", score="consensus", labels=few, **KW)
    assert not runs and [r["score"] for r in again.rows] == [r["score"] for r in ranking.rows]
    with pytest.raises(Exception, match="no label file named like a target image"):
        rank(bank, blob_target, out=tmp_path / "x", score="consensus", labels=tmp_path / "perf", **KW)
