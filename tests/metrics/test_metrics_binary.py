"""binary_consistency against a plain-numpy reference: every dtype, 2D/3D, any layout."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.metrics_reference import PROB_DTYPES, binary_numpy, ei_plain
from segrank.metrics import BinaryCounts, binary_consistency, set_simd_level, simd_level

SETTINGS = settings(max_examples=40, deadline=None)


def random_probabilities(rng, shape, dtype):
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    p = rng.random(shape)
    # some values exactly at usual thresholds, some exact 0 and 1
    p[rng.random(shape) < 0.05] = 0.5
    p[rng.random(shape) < 0.02] = 1.0
    p[rng.random(shape) < 0.02] = 0.0
    return p.astype(dtype)


def layout(x, how):
    """The same values as `x` in another memory layout (views, no copies where possible)."""
    if how == "C":
        return np.ascontiguousarray(x)
    if how == "F":
        return np.asfortranarray(x)
    if how == "strided":  # every other element of a larger array
        big = np.zeros(tuple(2 * s for s in x.shape), x.dtype)
        big[tuple(slice(None, None, 2) for _ in x.shape)] = x
        return big[tuple(slice(None, None, 2) for _ in x.shape)]
    if how == "reversed":  # negative strides
        return np.ascontiguousarray(x[::-1])[::-1]
    raise ValueError(how)


shapes = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(0, 70)),
    st.tuples(st.integers(0, 6), st.integers(0, 20), st.integers(0, 35)),
)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=shapes,
    dtype=st.sampled_from(PROB_DTYPES),
    how=st.sampled_from(["C", "F", "strided", "reversed"]),
    threshold=st.sampled_from([0.5, 0.3, 0.7, 0.0, 0.999]),
    background=st.booleans(),
)
def test_probabilities_match_numpy(seed, shape, dtype, how, threshold, background):
    rng = np.random.default_rng(seed)
    a = random_probabilities(rng, shape, dtype)
    b = random_probabilities(rng, shape, dtype)
    same = rng.random(shape) < 0.5  # predictions agree on about half the pixels
    b[same] = a[same]
    a_l, b_l = layout(a, how), layout(b, how)
    c = binary_consistency(a_l, b_l, threshold=threshold, background=background)
    n_and, n_or, units = binary_numpy(a, b, threshold, background)
    assert (c.n_and, c.n_or, c.n_xor, c.ei_units) == (n_and, n_or, n_or - n_and, units)
    if not background and n_or:
        assert c.ei_sum == pytest.approx(ei_plain(a, b, threshold), rel=2e-6, abs=1e-6)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=shapes,
    dtype=st.sampled_from([np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int32, np.int64]),
    how=st.sampled_from(["C", "F", "strided"]),
    background=st.booleans(),
)
def test_masks_match_numpy(seed, shape, dtype, how, background):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        a, b = rng.random(shape) < 0.3, rng.random(shape) < 0.3
    else:
        top = np.iinfo(dtype).max
        a = np.where(rng.random(shape) < 0.3, rng.integers(1, 5, shape), 0).astype(dtype)
        b = np.where(rng.random(shape) < 0.3, top, 0).astype(dtype)  # ids near the dtype maximum
    threshold = 0.5 if dtype == np.bool_ else None
    c = binary_consistency(layout(a, how), layout(b, how), threshold=threshold, background=background)
    assert (c.n_and, c.n_or, c.ei_units) == binary_numpy(a, b, background=background, masks=True)
    if c.n_or:
        assert c.ei == pytest.approx(c.consistency)  # p = 1 on masks


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(PROB_DTYPES), ndim=st.sampled_from([2, 3]),
       cuts=st.lists(st.integers(0, 30), min_size=1, max_size=4))
def test_blocks_merge_exactly(seed, dtype, ndim, cuts):
    rng = np.random.default_rng(seed)
    shape = (30, 17, 9)[:ndim] if ndim == 3 else (30, 47)
    a, b = random_probabilities(rng, shape, dtype), random_probabilities(rng, shape, dtype)
    whole = binary_consistency(a, b)
    edges = sorted({0, 30, *cuts})
    parts = [binary_consistency(a[s:e], b[s:e]) for s, e in zip(edges[:-1], edges[1:])]
    assert sum(parts) == whole
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert merged == whole


@pytest.mark.parametrize("dtype", PROB_DTYPES)
def test_threads_and_simd_paths_agree(dtype):
    rng = np.random.default_rng(1)
    shape = (70, 300, 250)  # 5.25 Mvoxel: two threads engage
    a = random_probabilities(rng, shape, dtype)
    b = a.copy()
    flip = rng.random(shape) < 0.1
    b[flip] = random_probabilities(rng, int(flip.sum()), dtype)
    one = binary_consistency(a, b)
    assert binary_consistency(a, b, threads=2) == one
    assert binary_consistency(a, b, threads=7) == one
    best = simd_level()
    try:
        set_simd_level("portable")
        assert binary_consistency(a, b) == one
        assert binary_consistency(a.T, b.T) == one
    finally:
        set_simd_level(best)


def test_hand_computed_example():
    pu = np.array([[0.9, 0.2], [0.7, 0.6]], np.float32)
    pp = np.array([[0.8, 0.6], [0.1, 0.7]], np.float32)
    c = binary_consistency(pu, pp, threshold=0.5)
    assert (c.n_and, c.n_or, c.n_xor) == (2, 4, 2)
    assert c.nhd == 0.5 and c.consistency == 0.5
    assert c.ei == pytest.approx((math.sqrt(0.9 * 0.8) + math.sqrt(0.6 * 0.7)) / 4, rel=1e-6)


def test_empty_union_is_nan_and_flagged():
    z = np.zeros((5, 5), np.float32)
    c = binary_consistency(z, z)
    assert c.empty and c.n_or == 0
    assert math.isnan(c.nhd) and math.isnan(c.consistency) and math.isnan(c.ei)
    e = binary_consistency(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert e.empty
    one = np.zeros((5, 5), np.float32)
    one[2, 2] = 1
    c1 = binary_consistency(one, one)
    assert (c1.n_and, c1.n_or, c1.nhd, c1.ei) == (1, 1, 0.0, 1.0)


def test_counts_are_frozen_and_picklable():
    c = binary_consistency(np.ones(4, bool), np.array([1, 0, 1, 0], bool))
    with pytest.raises(AttributeError):
        c.n_and = 3
    assert pickle.loads(pickle.dumps(c)) == c
    with pytest.raises(ValueError):
        BinaryCounts(n_and=3, n_or=2, n_xor=0, ei_units=0)


def test_lists_and_unit_axes_are_accepted():
    c = binary_consistency([[0.9, 0.1]], [[0.8, 0.7]])
    assert (c.n_and, c.n_or) == (1, 2)
    a = np.random.default_rng(0).random((1, 1, 8, 9)).astype(np.float32)
    assert binary_consistency(a, a).n_or == int((a > 0.5).sum())
    big_endian = a.astype(">f4")
    assert binary_consistency(big_endian, big_endian) == binary_consistency(a, a)


@pytest.mark.parametrize(
    "a, b, kwargs, error, words",
    [
        (np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float64), {}, TypeError, "dtype"),
        (np.zeros((3, 3), np.float32), np.zeros((3, 4), np.float32), {}, ValueError, "shape"),
        (np.array(["a", "b"]), np.array(["a", "b"]), {}, TypeError, "numeric"),
        (np.array([object(), 1]), np.array([object(), 1]), {}, TypeError, "numeric"),
        (np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)), {}, ValueError, "axes"),
        (np.float32(0.5), np.float32(0.5), {}, ValueError, "scalar"),
        (np.zeros(4, np.uint16), np.zeros(4, np.uint16), {}, TypeError, "threshold=None"),
        (np.zeros(4, np.float32), np.zeros(4, np.float32), {"threshold": None}, TypeError, "threshold"),
        (np.zeros(4, np.float32), np.zeros(4, np.float32), {"threshold": float("nan")}, ValueError, "threshold"),
        (np.zeros(4, np.float32), np.zeros(4, np.float32), {"threads": 0}, ValueError, "threads"),
        (np.zeros(4, np.complex64), np.zeros(4, np.complex64), {}, TypeError, "numeric"),
        ("not an array", "x", {}, TypeError, "numeric"),
    ],
)
def test_bad_input_raises_clear_errors(a, b, kwargs, error, words):
    with pytest.raises(error, match=words):
        binary_consistency(a, b, **kwargs)


def test_bindings_reject_bad_input_without_crashing():
    from segrank import _metrics

    with pytest.raises(TypeError, match="numpy array"):
        _metrics.binary_counts([1, 2], np.zeros(2), 0.5, False, 1)
    with pytest.raises(TypeError, match="dtype"):
        _metrics.binary_counts(np.zeros(2, np.float32), np.zeros(2, np.float64), 0.5, False, 1)
    with pytest.raises(ValueError, match="shape"):
        _metrics.binary_counts(np.zeros(2, np.float32), np.zeros(3, np.float32), 0.5, False, 1)
    with pytest.raises(TypeError, match="byte order"):
        x = np.zeros(3, ">f4")
        _metrics.binary_counts(x, x, 0.5, False, 1)
    raw = np.zeros(17, np.uint8)[1:].view(np.float32)  # misaligned float32 view
    if not raw.flags.aligned:
        with pytest.raises(ValueError, match="aligned"):
            _metrics.binary_counts(raw, raw, 0.5, False, 1)
        assert binary_consistency(raw, raw).n_or == 0  # the wrapper copies instead


def test_concurrent_calls_from_python_threads():
    # The bindings release the GIL while counting: calls from several threads run side by side
    # and each gets its own exact result.
    from concurrent.futures import ThreadPoolExecutor

    from segrank.metrics import contingency_table

    rng = np.random.default_rng(5)
    pairs = [(rng.random((300, 400), dtype=np.float32), rng.random((300, 400), dtype=np.float32)) for _ in range(6)]
    labels = [(rng.integers(0, 50, (300, 400)).astype(np.uint32),) * 2 for _ in range(3)]
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda ab: binary_consistency(*ab), pairs))
        tables = list(pool.map(lambda rt: contingency_table(*rt), labels))
    assert counts == [binary_consistency(a, b) for a, b in pairs]
    assert tables == [contingency_table(r, t) for r, t in labels]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("background", [False, True])
def test_float_kernel_block_edges_and_odd_values(dtype, background):
    # The float kernels work in blocks of 1024 pixels and pack the pixels of A and B before the
    # sqrt: lengths around block edges, runs of foreground and out-of-range values (negative,
    # above 1, NaN, inf) must give exactly the reference units on every SIMD path.
    rng = np.random.default_rng(7)
    for n in (7, 8, 1023, 1024, 1025, 2047, 2048 + 9, 5 * 1024 + 13):
        a = random_probabilities(rng, n, np.float64)
        a[np.repeat(rng.random(n // 16 + 1) < 0.5, 16)[:n]] += 0.5  # runs of foreground
        b = np.clip(a + 0.2 * (rng.random(n) - 0.5), -0.1, 1.2)
        odd = rng.random(n) < 0.02
        b[odd] = rng.choice([-0.5, 1.5, np.nan, np.inf, -np.inf], int(odd.sum()))
        a, b = a.astype(dtype), b.astype(dtype)
        ref = binary_numpy(a, b, 0.5, background)
        best = simd_level()
        try:
            for level in ("portable", best):
                set_simd_level(level)
                c = binary_consistency(a, b, threshold=0.5, background=background)
                assert (c.n_and, c.n_or, c.ei_units) == ref, (n, level)
        finally:
            set_simd_level(best)
