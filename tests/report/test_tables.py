"""ranking.json / ranking.csv and the terminal table."""
from __future__ import annotations

import csv
import json

from segrank.report.tables import RANKING_FIELDS, format_table, write_ranking_csv, write_ranking_json

ROWS = [
    {"name": "a", "rank": 1, "score": 0.91, "ci_low": 0.88, "ci_high": 0.93, "p_best": 0.97, "n_images": 4,
     "n_units": 6, "n_scored": 6, "perturbation": "noise:0.1", "metric": "nhd", "provider": "CPU", "status": "ok",
     "top_two_separated": True},
    {"name": "bb", "rank": 2, "score": None, "ci_low": None, "ci_high": None, "p_best": 0.0, "n_images": 4,
     "n_units": 6, "n_scored": 0, "perturbation": "noise:0.1", "metric": "nhd", "provider": "CPU",
     "status": "predicts no foreground", "top_two_separated": None},
]


def test_json_is_written_whole_and_csv_has_the_fixed_columns_first(tmp_path):
    write_ranking_json({"models": ROWS}, tmp_path / "ranking.json")
    assert json.loads((tmp_path / "ranking.json").read_text())["models"] == ROWS
    assert not list(tmp_path.glob("*.tmp"))
    write_ranking_csv(ROWS, tmp_path / "ranking.csv")
    with (tmp_path / "ranking.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames[: len(RANKING_FIELDS)]) == RANKING_FIELDS
        assert [r["name"] for r in reader] == ["a", "bb"]


def test_table_shows_scores_intervals_and_status():
    text = format_table(ROWS)
    assert "perturbation noise:0.1, metric nhd: score = 1 - NHD; higher = more consistent" in text
    assert "0.9100" in text and "[0.880, 0.930]" in text
    assert "(predicts no foreground)" in text and "6/6" in text and "0/6" in text
    assert "cannot be told apart" not in text
    assert "cannot be told apart" in format_table([dict(ROWS[0], top_two_separated=False), ROWS[1]])


def test_too_few_units_for_intervals_say_so_and_failed_models_have_no_rank():
    few = [dict(r, n_units=2, ci_low=None, ci_high=None, p_best=None, top_two_separated=None) for r in ROWS]
    failed = dict(ROWS[1], name="broken", rank=None, status="failed", score=None)
    text = format_table(few + [failed])
    assert "intervals and p_best need at least 5 units" in text and "smaller --block" in text
    assert "n/a" in text and "cannot be told apart" not in text
    line = next(line for line in text.splitlines() if "broken" in line)
    assert line.split()[0] == "-" and "(failed)" in line
