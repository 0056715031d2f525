"""pairwise_agreement and consensus_agreement against plain-numpy references: shapes, dtypes, layouts, merging."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segrank.metrics import (
    ConsensusSums,
    PairwiseSums,
    binary_consistency,
    consensus_agreement,
    pairwise_agreement,
    set_simd_level,
    simd_level,
)

SETTINGS = settings(max_examples=40, deadline=None)
BEST_SIMD = simd_level()
SIMD_LEVELS = ["portable"] if BEST_SIMD == "portable" else ["portable", "avx2"]
RTOL = 1e-12


# ------------------------------------------------------------------------------------------------
# Plain references: one model, one pair at a time, in float64.
def clamp(p) -> np.ndarray:
    """q = min(max(p, 0), 1) in float64, NaN read as 0."""
    q = np.asarray(p, dtype=np.float64)
    q = np.where(np.isnan(q), 0.0, q)
    return np.minimum(np.maximum(q, 0.0), 1.0)


def pairwise_reference(probs, threshold):
    n = probs.shape[0]
    q = [clamp(probs[i]) for i in range(n)]
    a = [qi > threshold for qi in q]
    both = np.zeros((n, n), np.int64)
    ei = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            m = a[i] & a[j]
            both[i, j] = np.count_nonzero(m)
            ei[i, j] = np.sum(np.sqrt(q[i][m] * q[j][m]))
    return both, ei


def consensus_reference(probs, weights, threshold, shift=0.0):
    """Sums against c_i = sum_{j != i} w_j q_j / sum_{j != i} w_j; C_i = c_i > threshold + shift."""
    n = probs.shape[0]
    q = [clamp(probs[i]) for i in range(n)]
    out = {k: np.zeros(n, np.int64) for k in ("model_fg", "cons_fg", "both")}
    out["ei"] = np.zeros(n)
    for i in range(n):
        num = np.zeros(probs.shape[1:])
        den = 0.0
        for j in range(n):
            if j != i:
                num = num + weights[j] * q[j]
                den += weights[j]
        c = num / den
        a = q[i] > threshold
        cc = c > threshold + shift
        out["model_fg"][i] = np.count_nonzero(a)
        out["cons_fg"][i] = np.count_nonzero(cc)
        out["both"][i] = np.count_nonzero(a & cc)
        out["ei"][i] = np.sum(np.sqrt(q[i][a & cc] * c[a & cc]))
    return out


def has_consensus(weights) -> bool:
    w = np.asarray(weights, dtype=float)
    return all(np.sum(np.delete(w, i)) > 0 for i in range(len(w)))


# ------------------------------------------------------------------------------------------------
def random_bank(rng, n, shape, dtype, dirty=False):
    p = rng.random((n, *shape))
    if n and p.size:
        # structure: a shared object most models see, so that agreement is not only chance
        blob = rng.random(shape) < 0.4
        p = np.where(blob, 0.35 + 0.65 * p, 0.65 * p)
        p[rng.random(p.shape) < 0.05] = 0.5
        p[rng.random(p.shape) < 0.03] = 1.0
        p[rng.random(p.shape) < 0.03] = 0.0
        p[:, rng.random(shape) < 0.05] = 0.0  # background in every model
        if dirty:  # outside [0, 1] and NaN: read as clip(p, 0, 1), NaN as 0
            p[rng.random(p.shape) < 0.03] = np.nan
            p[rng.random(p.shape) < 0.03] = 1.7
            p[rng.random(p.shape) < 0.03] = -0.2
            p[rng.random(p.shape) < 0.01] = np.inf
    return p.astype(dtype)


def layout(x, how):
    """The same values as the stack `x` (n, *spatial) in another memory layout."""
    if how == "C":
        return np.ascontiguousarray(x)
    if how == "F":  # the model axis fastest
        return np.asfortranarray(x)
    if how == "strided":  # every other element of a larger array, on every axis
        big = np.zeros(tuple(2 * s + 1 for s in x.shape), x.dtype)
        big[tuple(slice(None, 2 * s, 2) for s in x.shape)] = x
        return big[tuple(slice(None, 2 * s, 2) for s in x.shape)]
    if how == "reversed":  # negative strides
        return np.ascontiguousarray(x[:, ::-1])[:, ::-1]
    if how == "sliced":  # a window of a larger array
        big = np.full(tuple(s + 3 for s in x.shape), 0.9, x.dtype)
        window = (slice(1, 1 + x.shape[0]),) + tuple(slice(2, 2 + s) for s in x.shape[1:])
        big[window] = x
        return big[window]
    if how == "transposed":  # spatial axes in reversed memory order
        perm = (0,) + tuple(range(x.ndim - 1, 0, -1))
        return np.ascontiguousarray(x.transpose(perm)).transpose(perm)
    raise ValueError(how)


LAYOUTS = ["C", "F", "strided", "reversed", "sliced", "transposed"]
# tiny (sizes 0 and 1 included) and larger than a few kernel chunks (256 pixels)
shapes = st.one_of(
    st.tuples(st.integers(0, 700)),
    st.tuples(st.integers(250, 1500)),
    st.tuples(st.integers(0, 25), st.integers(0, 45)),
    st.tuples(st.integers(10, 40), st.integers(20, 70)),
    st.tuples(st.integers(0, 4), st.integers(0, 9), st.integers(0, 13)),
    st.tuples(st.integers(2, 6), st.integers(5, 12), st.integers(9, 30)),
)
thresholds = st.sampled_from([0.5, 0.5, 0.3, 0.0, 0.999, 0.75])
weight_values = st.sampled_from([0.0, 0.0, 1.0, 1.0, 0.5, 2.0, 3.7, 1e-3, 1e3])


def with_simd(level, fn):
    set_simd_level(level)
    try:
        return fn()
    finally:
        set_simd_level(BEST_SIMD)


def check_pairwise(s: PairwiseSums, probs, threshold):
    both, ei = pairwise_reference(probs, threshold)
    assert isinstance(s, PairwiseSums)
    assert s.both.dtype == np.int64 and s.ei.dtype == np.float64
    np.testing.assert_array_equal(s.both, both)
    np.testing.assert_allclose(s.ei, ei, rtol=RTOL, atol=1e-300)


def check_consensus(s: ConsensusSums, probs, weights, threshold, tol=1e-12):
    """Counts exact, except pixels whose consensus lies within `tol` of the threshold: they may
    fall on either side (rounding), so the sums must lie between those with all such pixels out
    and all in."""
    lo = consensus_reference(probs, weights, threshold, shift=+tol)
    hi = consensus_reference(probs, weights, threshold, shift=-tol)
    assert isinstance(s, ConsensusSums)
    np.testing.assert_array_equal(s.model_fg, lo["model_fg"])
    for k in ("cons_fg", "both"):
        got = getattr(s, k)
        assert (lo[k] <= got).all() and (got <= hi[k]).all(), (k, got, lo[k], hi[k])
    slack = RTOL * hi["ei"] + 1e-300
    assert (s.ei >= lo["ei"] - slack).all() and (s.ei <= hi["ei"] + slack).all(), (s.ei, lo["ei"], hi["ei"])
    if all(np.array_equal(lo[k], hi[k]) for k in ("cons_fg", "both")):
        np.testing.assert_allclose(s.ei, lo["ei"], rtol=RTOL, atol=1e-300)


# ------------------------------------------------------------------------------------------------
@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 8),
    shape=shapes,
    dtype=st.sampled_from([np.float32, np.float64]),
    how=st.sampled_from(LAYOUTS),
    threshold=thresholds,
    dirty=st.booleans(),
    simd=st.sampled_from(SIMD_LEVELS),
)
def test_pairwise_matches_reference(seed, n, shape, dtype, how, threshold, dirty, simd):
    probs = random_bank(np.random.default_rng(seed), n, shape, dtype, dirty)
    x = layout(probs, how)
    s = with_simd(simd, lambda: pairwise_agreement(x, threshold=threshold))
    check_pairwise(s, probs, threshold)
    np.testing.assert_array_equal(s.both, s.both.T)
    np.testing.assert_array_equal(s.ei, s.ei.T)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 8),
    shape=shapes,
    dtype=st.sampled_from([np.float32, np.float64]),
    how=st.sampled_from(LAYOUTS),
    threshold=thresholds,
    dirty=st.booleans(),
    simd=st.sampled_from(SIMD_LEVELS),
    data=st.data(),
)
def test_consensus_matches_reference(seed, n, shape, dtype, how, threshold, dirty, simd, data):
    weights = data.draw(st.lists(weight_values, min_size=n, max_size=n))
    probs = random_bank(np.random.default_rng(seed), n, shape, dtype, dirty)
    x = layout(probs, how)
    if not has_consensus(weights):
        with pytest.raises(ValueError, match="no consensus"):
            consensus_agreement(x, weights, threshold=threshold)
        return
    s = with_simd(simd, lambda: consensus_agreement(x, weights, threshold=threshold))
    check_consensus(s, probs, weights, threshold)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 8),
    shape=shapes,
    dtype=st.sampled_from([np.float32, np.float64]),
    how=st.sampled_from(LAYOUTS),
    threshold=thresholds,
    dirty=st.booleans(),
    data=st.data(),
)
def test_blas_form_matches_reference(seed, n, shape, dtype, how, threshold, dirty, data):
    weights = data.draw(st.lists(weight_values, min_size=n, max_size=n).filter(has_consensus))
    probs = random_bank(np.random.default_rng(seed), n, shape, dtype, dirty)
    x = layout(probs, how)
    check_pairwise(pairwise_agreement(x, threshold=threshold, method="blas"), probs, threshold)
    check_consensus(consensus_agreement(x, weights, threshold=threshold, method="blas"), probs, weights, threshold)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 8),
    shape=shapes,
    dtype=st.sampled_from([np.float32, np.float64]),
    threshold=thresholds,
    data=st.data(),
)
def test_simd_paths_agree_exactly(seed, n, shape, dtype, threshold, data):
    weights = data.draw(st.lists(weight_values, min_size=n, max_size=n).filter(has_consensus))
    x = random_bank(np.random.default_rng(seed), n, shape, dtype, dirty=True)
    runs = [
        with_simd(level, lambda: (pairwise_agreement(x, threshold=threshold), consensus_agreement(x, weights)))
        for level in SIMD_LEVELS
    ]
    for other in runs[1:]:
        assert other[0] == runs[0][0]
        assert other[1] == runs[0][1]


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 8),
    shape=shapes,
    dtype=st.sampled_from([np.float32, np.float64]),
    threshold=thresholds,
    method=st.sampled_from(["kernel", "blas"]),
    data=st.data(),
)
def test_merge_of_halves_equals_whole(seed, n, shape, dtype, threshold, method, data):
    weights = data.draw(st.lists(weight_values, min_size=n, max_size=n).filter(has_consensus))
    axis = data.draw(st.integers(1, len(shape)))
    cut = data.draw(st.integers(0, shape[axis - 1]))
    x = random_bank(np.random.default_rng(seed), n, shape, dtype)
    halves = np.split(x, [cut], axis=axis)

    whole = pairwise_agreement(x, threshold=threshold, method=method)
    merged = sum(pairwise_agreement(h, threshold=threshold, method=method) for h in halves)
    np.testing.assert_array_equal(merged.both, whole.both)
    np.testing.assert_allclose(merged.ei, whole.ei, rtol=RTOL, atol=1e-300)

    whole_c = consensus_agreement(x, weights, threshold=threshold, method=method)
    parts = [consensus_agreement(h, weights, threshold=threshold, method=method) for h in halves]
    merged_c = parts[0] + parts[1]
    np.testing.assert_array_equal(merged_c.model_fg, whole_c.model_fg)
    if method == "kernel":  # the kernel computes every pixel's consensus alike, wherever it is
        for k in ("cons_fg", "both"):
            np.testing.assert_array_equal(getattr(merged_c, k), getattr(whole_c, k))
    else:  # BLAS may round a matmul differently for another width: only near-ties may move
        lo = consensus_reference(x, weights, threshold, shift=+1e-12)
        hi = consensus_reference(x, weights, threshold, shift=-1e-12)
        for k in ("cons_fg", "both"):
            assert (np.abs(getattr(merged_c, k) - getattr(whole_c, k)) <= hi[k] - lo[k]).all()
        if not np.array_equal(merged_c.both, whole_c.both):
            return  # a near-tie pixel moved: its EI term moves with it
    np.testing.assert_allclose(merged_c.ei, whole_c.ei, rtol=RTOL, atol=1e-300)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), shape=shapes, threshold=thresholds)
def test_pair_matches_binary_consistency(seed, shape, threshold):
    x = random_bank(np.random.default_rng(seed), 2, shape, np.float32)
    s = pairwise_agreement(x, threshold=threshold)
    b = binary_consistency(x[0], x[1], threshold=threshold)
    assert s.both[0, 1] == b.n_and
    assert s.n_or()[0, 1] == b.n_or
    # binary_consistency rounds each EI term to 2**-30 (and takes sqrt in float32)
    assert abs(s.ei[0, 1] - b.ei_sum) <= 1e-6 * max(1, b.n_and)


# ------------------------------------------------------------------------------------------------
P3 = np.array([[0.9, 0.8, 0.1, 0.0], [0.7, 0.3, 0.1, 0.0], [0.6, 0.9, 0.8, 0.0]], dtype=np.float32)


def test_hand_computed_pairwise():
    s = pairwise_agreement(P3)
    assert s.both.tolist() == [[2, 1, 2], [1, 1, 1], [2, 1, 3]]
    assert s.fg.tolist() == [2, 1, 3]
    assert s.n_or().tolist() == [[2, 2, 3], [2, 1, 3], [3, 3, 3]]
    q = P3.astype(np.float64)
    assert s.ei[0, 2] == pytest.approx(np.sqrt(q[0, 0] * q[2, 0]) + np.sqrt(q[0, 1] * q[2, 1]), rel=1e-15)
    assert s.dice()[0, 2] == pytest.approx(0.8)
    assert s.dice()[1, 1] == 1.0
    assert s.ei_form()[0, 1] == pytest.approx(np.sqrt(q[0, 0] * q[1, 0]) / 2, rel=1e-15)


def test_hand_computed_consensus():
    s = consensus_agreement(P3, [1.0, 1.0, 2.0])
    q = P3.astype(np.float64)
    # c_0 = (q1 + 2 q2) / 3 = [0.633, 0.7, 0.567, 0]; c_1 = (q0 + 2 q2) / 3 = [0.7, 0.867, 0.567, 0];
    # c_2 = (q0 + q1) / 2 = [0.8, 0.55, 0.1, 0]
    assert s.model_fg.tolist() == [2, 1, 3]
    assert s.cons_fg.tolist() == [3, 3, 2]
    assert s.both.tolist() == [2, 1, 2]
    c0 = (q[1] + 2 * q[2]) / 3
    assert s.ei[0] == pytest.approx(np.sqrt(q[0, 0] * c0[0]) + np.sqrt(q[0, 1] * c0[1]), rel=1e-14)
    assert s.dice().tolist() == pytest.approx([0.8, 0.5, 0.8])
    assert s.ei_form()[1] == pytest.approx(np.sqrt(q[1, 0] * (q[0, 0] + 2 * q[2, 0]) / 3) / 3, rel=1e-14)


def test_empty_units_give_nan_scores():
    x = np.zeros((3, 5, 4), np.float32)
    s = pairwise_agreement(x)
    assert (s.both == 0).all() and (s.ei == 0).all()
    assert np.isnan(s.dice()).all() and np.isnan(s.ei_form()).all()
    c = consensus_agreement(x, [1, 1, 1])
    assert np.isnan(c.dice()).all() and np.isnan(c.ei_form()).all()
    # the method's reading of both-empty is the caller's: agreement 1
    assert np.nan_to_num(c.dice(), nan=1.0).tolist() == [1.0, 1.0, 1.0]
    for shape in [(3, 0), (3, 0, 7), (3, 4, 0, 2)]:
        z = np.zeros(shape, np.float64)
        assert pairwise_agreement(z) == PairwiseSums(np.zeros((3, 3), np.int64), np.zeros((3, 3)))
        assert consensus_agreement(z, [1, 2, 3]).n_models == 3
    assert pairwise_agreement(np.zeros((0, 5), np.float32)).n_models == 0


def test_model_empty_consensus_not():
    x = np.array([[0.0, 0.0], [0.9, 0.8], [0.9, 0.7]])
    c = consensus_agreement(x, [1, 1, 1])
    assert c.dice()[0] == 0.0 and c.ei_form()[0] == 0.0
    assert c.cons_fg[0] == 2


def test_weights_define_the_consensus():
    # model 0 against the others: with weight only on model 2, c_0 = q_2 exactly
    x = np.random.default_rng(1).random((3, 64))
    c = consensus_agreement(x, [5.0, 0.0, 1.0])
    a0, a2 = x[0] > 0.5, x[2] > 0.5
    assert c.cons_fg[0] == np.count_nonzero(a2)
    assert c.both[0] == np.count_nonzero(a0 & a2)
    assert c.ei[0] == pytest.approx(np.sum(np.sqrt(x[0] * x[2])[a0 & a2]), rel=1e-14)


def test_dominant_weight_gives_no_cancellation():
    # c_0 = q_1 exactly; a subtraction (S - w_0 q_0) / (W - w_0) would lose ~1e-4 here
    x = np.random.default_rng(2).random((3, 500))
    c = consensus_agreement(x, [1e12, 1.0, 0.0])
    a0, a1 = x[0] > 0.5, x[1] > 0.5
    assert c.cons_fg[0] == np.count_nonzero(a1)
    assert c.ei[0] == pytest.approx(np.sum(np.sqrt(x[0] * x[1])[a0 & a1]), rel=1e-14)


def test_threshold_is_strict_like_binary():
    x = np.array([[0.5, 0.5000001, 0.4], [0.5, 0.6, 0.5]], dtype=np.float32)
    assert pairwise_agreement(x).fg.tolist() == [1, 1]
    c = consensus_agreement(x, [1, 1])  # c_0 = q_1, c_1 = q_0
    assert c.cons_fg.tolist() == [1, 1]
    # a consensus exactly at the threshold is background: c_0 = [(1 + 0) / 2, (0.5 + 0.5) / 2],
    # c_1 = [0.25, 0.5], c_2 = [0.75, 0.5]
    y = np.array([[0.5, 0.5], [1.0, 0.5], [0.0, 0.5]])
    for method in ("kernel", "blas"):
        for level in SIMD_LEVELS:
            c = with_simd(level, lambda m=method: consensus_agreement(y, [1, 1, 1], method=m))
            assert c.cons_fg.tolist() == [0, 0, 1]


def test_inputs_accepted():
    x = np.random.default_rng(3).random((4, 6, 7))
    ref = pairwise_agreement(x)
    assert pairwise_agreement([m for m in x]) == ref  # a list of same-shaped models
    assert pairwise_agreement(x.astype(np.float16)) == pairwise_agreement(x.astype(np.float16).astype(np.float32))
    assert pairwise_agreement(x.astype(">f8")) == ref  # big-endian copied
    assert pairwise_agreement(x, threshold=np.float32(0.5)) == ref


def test_bad_inputs():
    x = np.random.default_rng(4).random((3, 8)).astype(np.float32)
    with pytest.raises(TypeError, match="float"):
        pairwise_agreement(x > 0.5)
    with pytest.raises(TypeError, match="float"):
        consensus_agreement((x * 255).astype(np.uint8), [1, 1, 1])
    with pytest.raises(ValueError, match="axes"):
        pairwise_agreement(x[0])
    with pytest.raises(ValueError, match="axes"):
        pairwise_agreement(np.zeros((2, 2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="threshold"):
        pairwise_agreement(x, threshold=float("nan"))
    with pytest.raises(ValueError, match="method"):
        pairwise_agreement(x, method="gpu")
    with pytest.raises(ValueError, match="at least two"):
        consensus_agreement(x[:1], [1.0])
    with pytest.raises(ValueError, match="one entry per model"):
        consensus_agreement(x, [1.0, 1.0])
    for bad in ([1.0, -1.0, 1.0], [1.0, float("nan"), 1.0], [1.0, float("inf"), 1.0]):
        with pytest.raises(ValueError, match="finite"):
            consensus_agreement(x, bad)
    with pytest.raises(ValueError, match=r"model\(s\) \[1\] have no consensus"):
        consensus_agreement(x, [0.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="no consensus"):
        consensus_agreement(x, [0.0, 0.0, 0.0], method="blas")
    with pytest.raises(ValueError, match="overflows"):
        consensus_agreement(x, [1e308, 1e308, 1e308])


def test_kernel_checks_without_the_wrapper():
    from segrank import _metrics

    x = np.random.default_rng(5).random((3, 8))
    with pytest.raises(ValueError, match="no consensus"):
        _metrics.consensus_agreement(x, [0.0, 1.0, 0.0], 0.5)
    with pytest.raises(ValueError, match="one weight per model"):
        _metrics.consensus_agreement(x, [1.0], 0.5)
    with pytest.raises(TypeError, match="float32 or float64"):
        _metrics.pairwise_agreement(x.astype(np.float16), 0.5)
    with pytest.raises(ValueError, match="1 to 3 spatial axes"):
        _metrics.pairwise_agreement(x[0], 0.5)


def test_sums_are_frozen_mergeable_values():
    x = np.random.default_rng(6).random((3, 10))
    s = pairwise_agreement(x)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.both = s.both
    with pytest.raises(ValueError):
        s.both[0, 0] = 1  # read-only
    assert sum([s, s]) == s + s
    assert (s + s).both.tolist() == (2 * s.both).tolist()
    with pytest.raises(ValueError, match="models"):
        s + pairwise_agreement(x[:2])
    with pytest.raises(TypeError):
        s + 1
    c = consensus_agreement(x, [1, 1, 1])
    assert sum([c, c, c]).model_fg.tolist() == (3 * c.model_fg).tolist()
    with pytest.raises(TypeError):
        c.merge(s)
    with pytest.raises(ValueError, match="inconsistent"):
        ConsensusSums([1], [1], [2], [0.0])
    with pytest.raises(ValueError, match="square"):
        PairwiseSums(np.zeros((2, 3), np.int64), np.zeros((2, 3)))
