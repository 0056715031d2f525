"""`segrank evaluate` and `segrank validate` end to end on tiny models with known quality."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from segrank.cli import main
from segrank.evaluate.performance import average_precision, foreground_f1

from model_factory import smooth_threshold_model, write_sidecar


def test_f1_and_ap_by_hand():
    truth = np.zeros((10, 10), np.uint16)
    truth[1:4, 1:4] = 1  # 9 px
    truth[6:9, 6:9] = 2  # 9 px
    pred = np.zeros_like(truth)
    pred[1:4, 1:4] = 5  # exact match
    pred[6:9, 6:8] = 7  # IoU 6/9 with object 2
    pred[0, 9] = 9  # false positive
    prob = (pred > 0).astype(np.float32)
    assert foreground_f1(prob, truth) == pytest.approx(2 * 15 / (16 + 18))
    # t = 0.50..0.65 (4 thresholds): TP 2, FP 1, FN 0 -> 2/3; t = 0.70..0.95 (6): TP 1 -> 1/(1+2+1) = 1/4.
    assert average_precision(truth, pred) == pytest.approx((4 * (2 / 3) + 6 * 0.25) / 10)
    assert average_precision(truth * 0, pred * 0) == 1.0 and average_precision(truth, pred * 0) == 0.0
    assert foreground_f1(prob * 0, truth * 0) == 1.0


def test_evaluate_then_validate(noise_bank, blob_target, tmp_path):
    write_sidecar(smooth_threshold_model(noise_bank / "dim.onnx", level=0.9))  # misses the dimmer edges
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(noise_bank), str(blob_target), "--labels", str(blob_target.parent / "labels"),
                               "--out", str(tmp_path / "perf")])
    assert res.exit_code == 0, res.output
    perf = json.loads((tmp_path / "perf" / "performance.json").read_text())["models"]
    scores = {r["name"]: r for r in perf}
    assert set(scores) == {"smooth", "sharp", "dim"}
    assert all(r["metric"] == "f1" and r["n_images"] == 6 for r in perf)
    assert scores["smooth"]["score"] > 0.9 and scores["sharp"]["score"] < scores["smooth"]["score"]

    res = runner.invoke(main, ["rank", str(noise_bank), str(blob_target), "--out", str(tmp_path / "rank"),
                               "--perturbation", "noise:0.1-0.2", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["validate", str(tmp_path / "rank" / "ranking.json"), str(tmp_path / "perf" / "performance.json"),
                               "--json", "--permutations", "500"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for key in ("kendall", "spearman", "pearson"):
        assert set(doc[key]) >= {"value", "p"}
    assert -1 <= doc["spearman"]["value"] <= 1 and doc["perturbation"] == "noise:0.1-0.2"

    # Two targets: mean and std over targets.
    res = runner.invoke(main, ["validate", *[str(tmp_path / "rank" / "ranking.json"), str(tmp_path / "perf" / "performance.json")] * 2,
                               "--json", "--permutations", "200"])
    doc2 = json.loads(res.stdout)
    assert doc2["spearman"]["value"] == pytest.approx(doc["spearman"]["value"]) and doc2["spearman"]["std"] == 0.0


def test_validate_reports_missing_model(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"models": [{"name": n, "score": s, "perturbation": "noise:0.1"}
                                                            for n, s in [("a", 0.9), ("b", 0.5), ("c", 0.3)]]}))
    (tmp_path / "p.json").write_text(json.dumps({"models": [{"name": "a", "score": 0.9}, {"name": "b", "score": 0.4}]}))
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "r.json"), str(tmp_path / "p.json")])
    assert res.exit_code == 2 and "no true score for c" in res.stderr


def test_evaluate_records_a_failing_model_and_goes_on(noise_bank, blob_target, tmp_path):
    from model_factory import nan_model

    write_sidecar(nan_model(noise_bank / "broken.onnx"))
    res = CliRunner().invoke(main, ["evaluate", str(noise_bank), str(blob_target), "--labels",
                                    str(blob_target.parent / "labels"), "--out", str(tmp_path / "perf")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "perf" / "performance.json").read_text())
    assert {r["name"] for r in doc["models"]} == {"smooth", "sharp"}
    failed = {(f["model"], f["stage"]) for f in doc["failures"]}
    assert failed == {("broken", "predict")} and all("NaN" in f["error"] for f in doc["failures"])
    assert len(doc["failures"]) == 6  # one per image; the run went on
