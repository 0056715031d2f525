"""Agreement with the bank: per-unit pairwise rows, similarity matrices, re-weighting, groups."""
from __future__ import annotations

import numpy as np
import pytest

from segrank.scoring.consensus import (
    agreement_groups, majority_share, pairwise_scores, resolve_similarity, similarity_matrices, unit_agreement_rows,
)

A = np.array([[0.9, 0.9, 0.1, 0.1]], np.float32)
B = np.array([[0.8, 0.1, 0.1, 0.1]], np.float32)
C = np.array([[0.1, 0.1, 0.1, 0.1]], np.float32)  # predicts nothing


def test_rows_hold_the_counts_and_sums_of_every_pair():
    rows = unit_agreement_rows("u", ["a", "b", "c"], [A, B, C])
    by_pair = {(r["model"], r["other"]): r for r in rows}
    assert len(rows) == 6  # 3 pairs and 3 models with themselves
    assert by_pair[("a", "a")]["n_both"] == 2 and by_pair[("b", "b")]["n_both"] == 1
    ab = by_pair[("a", "b")]
    assert (ab["n_both"], ab["n_union"]) == (1, 2)
    assert float(ab["ei_sum"]) == pytest.approx(np.sqrt(0.9 * 0.8))
    assert (by_pair[("c", "c")]["n_both"], by_pair[("b", "c")]["n_union"]) == (0, 1)


def test_similarities_by_hand_and_empty_pairs_agree():
    rows = unit_agreement_rows("u", ["a", "b", "c"], [A, B, C])
    dice, size = similarity_matrices(rows, ["a", "b", "c"], ["u"], "dice")
    assert dice[0, 0, 1] == dice[0, 1, 0] == pytest.approx(2 * 1 / (2 + 1))
    assert dice[0, 1, 2] == 0.0 and dice[0, 2, 2] == 1.0  # c alone: both empty with itself
    ei, _ = similarity_matrices(rows, ["a", "b", "c"], ["u"], "ei")
    assert ei[0, 0, 1] == pytest.approx(np.sqrt(0.72) / 2)
    np.testing.assert_array_equal(size[0], [2, 1, 0])
    # a model without rows for a unit has no similarity there
    missing, _ = similarity_matrices(rows, ["a", "b", "zz"], ["u", "v"], "dice")
    assert np.isnan(missing[0, 2]).all() and np.isnan(missing[1]).all()


def test_instance_rows_hold_the_pairwise_map():
    la = np.array([[1, 1, 0, 2, 2]])
    lb = np.array([[1, 1, 0, 0, 0]])
    rows = unit_agreement_rows("u", ["a", "b"], [la > 0, lb > 0], labels=[la, lb])
    m, _ = similarity_matrices(rows, ["a", "b"], ["u"], "map")
    assert m[0, 0, 1] == pytest.approx(0.5)  # one of two objects matched at every IoU threshold


def test_scores_are_weighted_means_of_the_other_models():
    rng = np.random.default_rng(0)
    n, u = 5, 7
    sim = rng.uniform(0.3, 1, (u, n, n))
    sim = (sim + sim.transpose(0, 2, 1)) / 2
    sim[:, np.arange(n), np.arange(n)] = 1
    plain = pairwise_scores(sim, rounds=0)
    expected = (sim.sum(axis=2) - 1) / (n - 1)
    np.testing.assert_allclose(plain.per_unit, expected.T)
    assert (plain.weights == 1).all()
    weighted = pairwise_scores(sim, rounds=3)
    s = np.median(weighted.per_unit, axis=1)
    w = weighted.weights
    assert w.argmax() != w.argmin() and np.all(w > 0)
    # the last round's scores use the weights it reports
    manual = np.array([[sum(w[j] * sim[k, i, j] for j in range(n) if j != i) / sum(w[j] for j in range(n) if j != i)
                        for k in range(u)] for i in range(n)])
    np.testing.assert_allclose(weighted.per_unit, manual)
    assert np.isfinite(s).all()


def test_a_model_missing_a_unit_has_no_score_there_and_others_ignore_it():
    sim = np.ones((2, 3, 3))
    sim[1, 2, :] = sim[1, :, 2] = np.nan  # model 2 failed on unit 1
    res = pairwise_scores(sim, rounds=2)
    assert np.isnan(res.per_unit[2, 1]) and np.isfinite(res.per_unit[:2, 1]).all()


def test_two_camps_are_two_groups_and_no_majority_is_flagged():
    n = 6
    m = np.full((n, n), 0.2)
    m[:3, :3] = m[3:, 3:] = 0.9
    np.fill_diagonal(m, 1)
    groups = agreement_groups(m)
    assert len(set(groups[:3])) == 1 and len(set(groups[3:])) == 1 and groups[0] != groups[3]
    assert majority_share(groups) == 0.5
    m2 = m.copy()
    m2[:5, :5] = 0.9
    np.fill_diagonal(m2, 1)
    assert majority_share(agreement_groups(m2)) == pytest.approx(5 / 6)


def test_similarity_by_task():
    assert resolve_similarity("auto", "instance") == "map" and resolve_similarity("auto", "semantic") == "ei"
    with pytest.raises(ValueError, match="unknown similarity"):
        resolve_similarity("iou", "semantic")
