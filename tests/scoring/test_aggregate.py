import numpy as np
import pytest

from segrank.scoring.aggregate import aggregate, ranking_order


def test_median_interval_and_order():
    gen = np.random.default_rng(0)
    good = 0.9 + 0.02 * gen.standard_normal(40)
    bad = 0.6 + 0.02 * gen.standard_normal(40)
    scores = np.stack([bad, good, np.full(40, np.nan)])
    res, p_sep = aggregate(["bad", "good", "empty"], scores, n_boot=500, seed=1)
    assert res[0].score == np.median(bad) and res[1].score == np.median(good)
    assert res[1].ci_low <= res[1].score <= res[1].ci_high
    assert [res[i].name for i in ranking_order(res)] == ["good", "bad", "empty"]
    assert res[1].p_best > 0.99 and res[2].p_best == 0.0
    assert res[2].score is None and res[2].n_scored == 0 and res[2].n_units == 40
    assert p_sep > 0.99
    again, _ = aggregate(["bad", "good", "empty"], scores, n_boot=500, seed=1)
    assert again == res


def test_indistinguishable_top_two():
    gen = np.random.default_rng(2)
    a = gen.uniform(0.5, 1.0, 15)
    b = a[gen.permutation(15)]  # the same values: no way to tell them apart
    res, p_sep = aggregate(["a", "b"], np.stack([a, b]), n_boot=400)
    assert p_sep < 0.95
    assert abs(res[0].p_best + res[1].p_best - 1) < 1e-9


def test_unscored_units_are_skipped_not_zero():
    scores = np.array([[0.8, np.nan, 0.9], [0.1, 0.1, np.nan]])
    res, _ = aggregate(["x", "y"], scores, n_boot=50)
    assert res[0].score == pytest.approx(0.85) and res[0].n_scored == 2
    assert res[1].score == 0.1


def test_ties_break_by_name():
    res, _ = aggregate(["b", "a"], np.array([[0.5], [0.5]]), n_boot=10)
    assert [res[i].name for i in ranking_order(res)] == ["a", "b"]
