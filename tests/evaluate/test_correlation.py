import numpy as np
import pytest
from scipy import stats

from segrank.evaluate.correlation import rank_agreement, summarize


@pytest.mark.parametrize("seed", range(5))
def test_matches_scipy(seed):
    gen = np.random.default_rng(seed)
    est = gen.uniform(size=9)
    est[2] = est[5]  # a tie
    tru = est + 0.3 * gen.standard_normal(9)
    res = rank_agreement(list(est), tru, n_permutations=2000, seed=seed)
    assert res["kendall"]["value"] == pytest.approx(stats.kendalltau(est, tru).statistic, abs=1e-12)
    assert res["spearman"]["value"] == pytest.approx(stats.spearmanr(est, tru).statistic, abs=1e-12)
    assert res["pearson"]["value"] == pytest.approx(stats.pearsonr(est, tru).statistic, abs=1e-12)
    # Permutation p-values estimate the exact ones (scipy's exact Kendall p for n = 9 without ties is close).
    for key in ("kendall", "spearman", "pearson"):
        assert 0 < res[key]["p"] <= 1


def test_perfect_and_reversed():
    tru = [0.1, 0.5, 0.3, 0.9, 0.7]
    res = rank_agreement(tru, tru, n_permutations=5000)
    assert res["spearman"]["value"] == pytest.approx(1.0) and res["kendall"]["value"] == pytest.approx(1.0)
    assert res["spearman"]["p"] < 0.05 and res["regret"] == 0.0 and res["top1"]
    rev = rank_agreement([-t for t in tru], tru, n_permutations=500)
    assert rev["kendall"]["value"] == pytest.approx(-1.0)
    assert rev["regret"] == pytest.approx(0.9 - 0.1) and not rev["top1"]


def test_unscored_model_ranks_last_and_leaves_pearson():
    res = rank_agreement([0.9, 0.8, None, 0.7], [0.9, 0.8, 0.1, 0.7], n_permutations=200)
    assert res["spearman"]["value"] == pytest.approx(1.0)
    assert res["pearson"]["value"] == pytest.approx(1.0)


def test_summary():
    a = rank_agreement([1, 2, 3, 4], [1, 2, 3, 4], n_permutations=100)
    b = rank_agreement([1, 2, 3, 4], [4, 3, 2, 1], n_permutations=100)
    s = summarize({"t1": a, "t2": b})
    assert s["spearman"]["mean"] == pytest.approx(0.0) and s["spearman"]["std"] == pytest.approx(1.0)
    assert s["top1_rate"] == 0.5
