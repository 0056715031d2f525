"""segrank's paired bootstrap and permutation p-values equal scipy.stats' on the same draws.

segrank keeps its own (P(best) needs one resample shared by every model, units without a score
are dropped per resample, p-values count |stat| one-sidedly); these tests pin that the numbers
are the ones scipy.stats.bootstrap and scipy.stats.permutation_test give for the same draws.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from segrank.evaluate.correlation import _kendall, _pearson, _spearman, rank_agreement
from segrank.perturb.seeds import rng
from segrank.scoring.aggregate import aggregate


def test_bootstrap_interval_equals_scipy_percentile_bootstrap():
    gen = np.random.default_rng(1)
    scores = np.clip(gen.normal(0.7, 0.1, (12, 1)) + gen.normal(0, 0.15, (12, 60)), 0, 1)
    ours, _ = aggregate([f"m{i}" for i in range(12)], scores, n_boot=500, seed=3, label="x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((scores,), np.median, n_resamples=500, axis=-1, vectorized=True, method="percentile",
                              rng=rng(3, "bank", "bootstrap/x", 0, "bootstrap"))
    np.testing.assert_allclose([s.ci_low for s in ours], res.confidence_interval.low, atol=1e-12)
    np.testing.assert_allclose([s.ci_high for s in ours], res.confidence_interval.high, atol=1e-12)
    boot = res.bootstrap_distribution
    p_best = (boot == boot.max(axis=0)).mean(axis=1)  # no ties in continuous scores
    np.testing.assert_allclose([s.p_best for s in ours], p_best, atol=1e-12)


@pytest.mark.parametrize("n_models", [8, 12, 20])
def test_permutation_p_values_equal_scipy_pairings_test(n_models):
    gen = np.random.default_rng(n_models)
    true = gen.random(n_models)
    est = true + gen.normal(0, 0.3, n_models)
    ours = rank_agreement(est, true, n_permutations=2000, seed=0)
    for name, fn in (("kendall", _kendall), ("spearman", _spearman), ("pearson", _pearson)):
        res = stats.permutation_test(
            (true,), lambda y, axis=-1, fn=fn: np.abs(fn(est, np.atleast_2d(y))).reshape(np.shape(y)[:-1]),
            permutation_type="pairings", vectorized=True, n_resamples=2000, alternative="greater",
            rng=rng(0, "validate", name, 0, "permutation"))
        assert ours[name]["p"] == pytest.approx(res.pvalue, abs=1e-12), name
