"""Racing: seeded stratified order, elimination, early stop, resume, and no race = the full ranking."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from model_factory import blob_image, smooth_threshold_model, write_sidecar

from segrank.io.targets import open_target
from segrank.job import rank
from segrank.job.race import RaceSettings, parse_budget, visiting_order

KW = dict(progress=False, n_boot=200, perturbations=["noise:0.1-0.2"], device="cpu", report=False)


@pytest.fixture
def many(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(16):
        tifffile.imwrite(folder / f"im{i:02d}.tif", blob_image(i, shape=(64, 64), n=4)[0])
    return folder


def _scores(ranking, setting=None):
    return {r["name"]: r for r in ranking.rows if setting is None or r["perturbation"] == setting}


def test_visiting_order_is_seeded_complete_and_stratified(tmp_path):
    from volume_factory import write_volume

    images = open_target(write_volume(tmp_path / "vol.zarr")).images
    order = visiting_order(images, (4, 12, 12), seed=0)
    names = [u.name for u in order]
    assert len(names) == len(set(names)) == 4 * 3 * 4
    assert names == [u.name for u in visiting_order(images, (4, 12, 12), seed=0)]
    assert names != [u.name for u in visiting_order(images, (4, 12, 12), seed=1)]
    octants = {tuple(2 * r.start // s for r, s in zip(u.region, (14, 36, 44))) for u in order[:8]}
    assert len(octants) == 8  # the first 8 units cover the 8 regions of the volume


def test_rounds_are_5_units_then_widen_on_large_targets():
    settings = RaceSettings(until_separated=True)
    assert {settings.round_size(84, v) for v in range(0, 84, 5)} == {5}  # small targets: every 5 units
    checkpoints = sorted(settings.checkpoints(1024))
    steps = np.diff(checkpoints)
    assert checkpoints[:10] == list(range(5, 55, 5))  # a 1,000-unit volume is judged after 5 units
    assert (np.diff(steps) >= 0).all() and steps.max() == 52  # widening, at most 5 % of the units
    assert RaceSettings(round_units=7).round_size(1024, 500) == 7


def test_no_model_is_eliminated_before_eliminate_from_units():
    from segrank.job.race import RaceState

    rng = np.random.default_rng(0)
    per_unit = np.vstack([0.9 + 0.01 * rng.standard_normal(6), 0.8 + 0.01 * rng.standard_normal(6),
                          0.7 + 0.01 * rng.standard_normal(6), 0.1 + 0.01 * rng.standard_normal(6)])
    for eliminate_from, expected in ((5, {"a", "b", "c"}), (7, {"a", "b", "c", "d"})):
        state = RaceState(list("abcd"), set("abcd"))
        state.visited = 6
        state.evaluate(per_unit, RaceSettings(keep_top=3, eliminate_from=eliminate_from), n_boot=200, seed=0)
        assert state.remaining == expected


def test_budget_parsing():
    assert parse_budget("0.25") == 0.25 and parse_budget("40") == 40.0 and parse_budget(None) is None
    assert RaceSettings(budget=0.25).budget_units(16) == 4 and RaceSettings(budget=40).budget_units(16) == 16
    with pytest.raises(Exception, match="--budget"):
        parse_budget("2.5")


def test_a_race_over_every_unit_without_elimination_is_the_full_ranking(noise_bank, many, tmp_path):
    full = rank(noise_bank, many, out=tmp_path / "full", **KW)
    raced = rank(noise_bank, many, out=tmp_path / "race", budget=1.0, keep_top=2, **KW)
    assert [(r["name"], r["score"]) for r in raced.rows] == [(r["name"], r["score"]) for r in full.rows]
    race = raced.race["cte"]
    assert race["stop"] == "complete" and race["units_visited"] == 16 and race["tasks"] == race["tasks_full_run"] == 32
    assert full.race is None


def test_a_model_that_cannot_make_the_top_is_eliminated_and_a_rerun_continues(noise_bank, many, tmp_path):
    write_sidecar(smooth_threshold_model(noise_bank / "smooth_b.onnx", level=0.45))
    common = dict(KW, keep_top=1)
    first = rank(noise_bank, many, out=tmp_path / "run", budget=0.5, **common)
    race = first.race["cte"]
    assert race["stop"] == "budget" and race["units_visited"] == 8 and race["tasks"] < race["tasks_full_run"]
    rows = _scores(first)
    assert rows["sharp"]["stopped"].startswith("eliminated at round") and rows["sharp"]["n_scored"] < 8
    assert [r["name"] for r in first.rows][-1] == "sharp" and rows["sharp"]["rank"] == 3
    doc = json.loads((tmp_path / "run" / "ranking.json").read_text())
    assert doc["race"]["cte"]["models"]["sharp"].startswith("eliminated")
    more = rank(noise_bank, many, out=tmp_path / "run", budget=1.0, **common)
    fresh = rank(noise_bank, many, out=tmp_path / "fresh", budget=1.0, **common)
    assert more.race["cte"]["tasks"] < fresh.race["cte"]["tasks"]  # the first 8 units were not redone
    assert [(r["name"], r["score"], r["stopped"]) for r in more.rows] == \
        [(r["name"], r["score"], r["stopped"]) for r in fresh.rows]


def test_until_separated_stops_once_the_leader_is_clear(noise_bank, many, tmp_path):
    raced = rank(noise_bank, many, out=tmp_path / "run", until_separated=True, keep_top=1, **KW)
    race = raced.race["cte"]
    assert race["stop"] == "separated" and race["units_visited"] < 16
    assert max(race["rounds"][-1]["p_best"].values()) >= 0.95 and raced.rows[0]["name"] == "smooth"


def test_the_consensus_races_and_an_eliminated_model_stays_in_the_pool_of_its_units(noise_bank, many, tmp_path):
    from segrank.job.rundir import RunDirectory
    from segrank.scoring.consensus import pairwise_scores, resolve_rounds, resolve_similarity, similarity_matrices

    write_sidecar(smooth_threshold_model(noise_bank / "smooth_b.onnx", level=0.45))
    write_sidecar(smooth_threshold_model(noise_bank / "blind.onnx", level=50.0))
    raced = rank(noise_bank, many, out=tmp_path / "run", score="consensus", budget=0.75, keep_top=2, **KW)
    race = raced.race["consensus"]
    rows = _scores(raced, "consensus")
    # tasks count inference (one model on one unit) as the full run's count does: 12 units, one
    # model eliminated on the way
    assert race["units_visited"] == 12 and race["tasks_full_run"] == 4 * 16 and race["tasks"] < 4 * 12
    assert rows["blind"]["stopped"].startswith("eliminated") and rows["blind"]["rank"] == 4
    remaining = [r for r in rows.values() if r["stopped"] == "budget"]
    assert len(remaining) >= 2 and all(r["n_scored"] == 12 for r in remaining)
    assert all(r["n_scored"] < 12 for r in rows.values() if r["stopped"].startswith("eliminated"))
    assert [r["rank"] for r in remaining] == list(range(1, len(remaining) + 1))
    # the eliminated model is in the pool of the units visited before it left, and of no other
    agreement = RunDirectory(tmp_path / "run").agreement.read()
    visited = list(dict.fromkeys(r["unit"] for r in agreement))
    with_blind = {r["unit"] for r in agreement if "blind" in (r["model"], r["other"])}
    assert len(visited) == 12 and 0 < len(with_blind) < 12
    # ... and counts there: the remaining models' scores are the consensus over each unit's pool
    names = raced.consensus["models"]
    assert "blind" in names
    ei = resolve_similarity("auto", "semantic")
    sim, _ = similarity_matrices(agreement, names, visited, ei)
    per_unit = pairwise_scores(sim, rounds=resolve_rounds(None, "semantic")).per_unit
    for r in remaining:
        assert r["score"] == pytest.approx(float(np.nanmedian(per_unit[names.index(r["name"])])), abs=1e-9)
    without = pairwise_scores(similarity_matrices(agreement, [n for n in names if n != "blind"], visited, ei)[0],
                              rounds=resolve_rounds(None, "semantic")).per_unit
    assert not np.allclose(per_unit[[names.index(r["name"]) for r in remaining]],
                           without[[[n for n in names if n != "blind"].index(r["name"]) for r in remaining]])
    # every round is decided on the score the job reports (re-weighted), not the plain consensus
    first = race["rounds"][0]
    sim, _ = similarity_matrices(agreement, names, visited[:first["units"]], ei)
    reported = pairwise_scores(sim, rounds=resolve_rounds(None, "semantic")).per_unit
    plain = pairwise_scores(sim).per_unit
    for name, score in first["score"].items():
        i = names.index(name)
        assert score == pytest.approx(float(np.nanmedian(reported[i])), abs=1e-9)
    assert not np.allclose(np.nanmedian(reported, axis=1), np.nanmedian(plain, axis=1))


def test_the_report_shows_the_race(noise_bank, many, tmp_path):
    raced = rank(noise_bank, many, out=tmp_path / "run", budget=0.75, keep_top=1, **dict(KW, report=True))
    assert (tmp_path / "run" / "race.png").stat().st_size > 1000
    assert "race" in (tmp_path / "run" / "report.html").read_text()
    assert raced.race["cte"]["rounds"]
