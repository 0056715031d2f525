"""contingency_table against np.unique over pixel pairs: every label dtype, layouts, band, blocks."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.metrics_reference import LABEL_DTYPES, as_u64, band_numpy, table_numpy
from segrank.metrics import ContingencyTable, contingency_table, set_simd_level, simd_level

SETTINGS = settings(max_examples=40, deadline=None)


def cells(rng, shape, n_ids, dtype, *, near_max=False, cell=6):
    """Label image of boxy cells (runs of several pixels), ~40% background."""
    if 0 in shape:
        return np.zeros(shape, dtype)
    grid = tuple(np.arange(s) // max(1, cell + int(rng.integers(-2, 3))) for s in shape)
    mesh = np.meshgrid(*grid, indexing="ij")
    key = sum(m * (7 ** k) for k, m in enumerate(mesh))
    lut = rng.integers(1, n_ids + 1, int(key.max()) + 1)
    lut[rng.random(lut.shape) < 0.4] = 0
    ids = lut[key]
    info = np.iinfo(dtype)
    if near_max:
        ids = ids.astype(dtype)
        ids = np.where(ids > 0, dtype(info.max) - ids + dtype(1), dtype(0))
    elif info.min < 0:
        ids = np.where(rng.random(shape) < 0.1, -ids, ids)  # some negative ids
    noise = rng.random(shape) < 0.05  # single-pixel changes break runs
    ids[noise] = rng.integers(0, n_ids + 1, int(noise.sum())).astype(ids.dtype)
    return ids.astype(dtype)


def as_tuple(t: ContingencyTable):
    return as_u64(t.ref_ids), as_u64(t.test_ids), t.counts


def assert_table_equal(t: ContingencyTable, ref):
    for got, want in zip(as_tuple(t), ref):
        np.testing.assert_array_equal(got, want)


shapes = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(0, 90)),
    st.tuples(st.integers(0, 5), st.integers(0, 25), st.integers(0, 40)),
)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=shapes,
    rdt=st.sampled_from(LABEL_DTYPES),
    tdt=st.sampled_from(LABEL_DTYPES),
    how=st.sampled_from(["C", "F", "strided", "transposed"]),
    near_max=st.booleans(),
)
def test_table_matches_numpy(seed, shape, rdt, tdt, how, near_max):
    rng = np.random.default_rng(seed)
    r = cells(rng, shape, 20, rdt, near_max=near_max)
    t = cells(rng, shape, 20, tdt, near_max=not near_max)
    if how == "F":
        rv, tv = np.asfortranarray(r), np.asfortranarray(t)
    elif how == "strided":
        big_r = np.zeros(tuple(2 * s + 1 for s in shape), rdt)
        big_t = np.zeros(tuple(2 * s + 1 for s in shape), tdt)
        sl = tuple(slice(1, None, 2) for _ in shape)
        big_r[sl], big_t[sl] = r, t
        rv, tv = big_r[sl], big_t[sl]
    elif how == "transposed":
        rv, tv = np.ascontiguousarray(r.T).T, t
    else:
        rv, tv = r, t
    table = contingency_table(rv, tv)
    assert table.ref_ids.dtype == rdt and table.test_ids.dtype == tdt
    assert_table_equal(table, table_numpy(r, t))
    assert table.n_pixels == r.size
    assert table.n_foreground == int(((r != 0) | (t != 0)).sum())


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), shape=shapes, dtype=st.sampled_from([np.uint16, np.int64, np.uint64]),
       how=st.sampled_from(["C", "F"]))
def test_boundary_band_matches_numpy(seed, shape, dtype, how):
    rng = np.random.default_rng(seed)
    r = cells(rng, shape, 15, dtype)
    t = cells(rng, shape, 15, dtype)
    conv = np.asfortranarray if how == "F" else np.ascontiguousarray
    table = contingency_table(conv(r), conv(t), exclude_boundary=True)
    assert_table_equal(table, table_numpy(r, t, keep=~band_numpy(r)))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    ndim=st.sampled_from([2, 3]),
    block=st.tuples(st.integers(1, 9), st.integers(1, 13), st.integers(1, 17)),
    exclude=st.booleans(),
)
def test_blocks_with_halo_merge_to_whole(seed, ndim, block, exclude):
    rng = np.random.default_rng(seed)
    shape = (7, 19, 23)[-ndim:]
    block = block[-ndim:]
    r = cells(rng, shape, 12, np.uint32)
    t = cells(rng, shape, 12, np.uint32)
    whole = contingency_table(r, t, exclude_boundary=exclude)
    merged = None
    for start in np.ndindex(*[(s + b - 1) // b for s, b in zip(shape, block)]):
        lo = [i * b for i, b in zip(start, block)]
        hi = [min(l + b, s) for l, b, s in zip(lo, block, shape)]
        halo = [1 if h < s else 0 for h, s in zip(hi, shape)]
        sl = tuple(slice(l, h + e) for l, h, e in zip(lo, hi, halo))
        part = contingency_table(r[sl], t[sl], exclude_boundary=exclude, halo=halo)
        merged = part if merged is None else merged + part
    assert merged == whole


def test_threads_and_simd_paths_agree():
    rng = np.random.default_rng(3)
    r = cells(rng, (40, 256, 512), 3000, np.uint32, cell=9)  # 5.2 Mvoxel: two threads engage
    t = r.copy()
    t[:, :, 1:] = r[:, :, :-1]  # shifted boundaries
    one = contingency_table(r, t)
    assert contingency_table(r, t, threads=2) == one
    assert contingency_table(r, t, threads=5) == one
    banded = contingency_table(r, t, exclude_boundary=True)
    assert contingency_table(r, t, exclude_boundary=True, threads=2) == banded
    best = simd_level()
    try:
        set_simd_level("portable")
        assert contingency_table(r, t) == one
    finally:
        set_simd_level(best)


def test_hand_computed_table_and_sums():
    r = np.array([[1, 1, 2], [0, 2, 2]], np.uint8)
    t = np.array([[3, 3, 3], [0, 0, 4]], np.int32)
    table = contingency_table(r, t)
    assert table.ref_ids.tolist() == [0, 1, 2, 2, 2]
    assert table.test_ids.tolist() == [0, 3, 0, 3, 4]
    assert table.counts.tolist() == [1, 2, 1, 1, 1]
    ids, sizes = table.row_counts()
    assert ids.tolist() == [0, 1, 2] and sizes.tolist() == [1, 2, 3]
    ids, sizes = table.col_counts()
    assert ids.tolist() == [0, 3, 4] and sizes.tolist() == [2, 3, 1]


def test_edge_cases():
    z = np.zeros((6, 7), np.uint16)
    t = contingency_table(z, z)
    assert t.ref_ids.tolist() == [0] and t.counts.tolist() == [42] and t.n_foreground == 0
    e = contingency_table(np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.uint8))
    assert len(e) == 0 and e.n_pixels == 0
    one = np.zeros((5, 5), np.int64)
    one[1:3, 1:4] = 9
    t1 = contingency_table(one, one)
    assert t1.ref_ids.tolist() == [0, 9] and t1.counts.tolist() == [19, 6]
    top = np.full((2, 2), np.iinfo(np.uint64).max, np.uint64)
    assert contingency_table(top, top).ref_ids.tolist() == [np.iinfo(np.uint64).max]
    neg = np.array([[-1, -1], [np.iinfo(np.int64).min, 0]], np.int64)
    assert sorted(contingency_table(neg, neg).ref_ids.tolist()) == [np.iinfo(np.int64).min, -1, 0]
    b = contingency_table(np.array([True, False]), np.array([True, True]))
    assert b.ref_ids.dtype == np.uint8 and b.counts.tolist() == [1, 1]


def test_table_is_frozen_picklable_and_mergeable():
    rng = np.random.default_rng(0)
    r, t = cells(rng, (20, 30), 5, np.uint32), cells(rng, (20, 30), 5, np.uint32)
    table = contingency_table(r, t)
    with pytest.raises(ValueError):
        table.counts[0] = 5
    with pytest.raises(AttributeError):
        table.counts = None
    assert pickle.loads(pickle.dumps(table)) == table
    assert contingency_table(r[:7], t[:7]) + contingency_table(r[7:], t[7:]) == table
    with pytest.raises(TypeError, match="dtypes"):
        table.merge(contingency_table(r.astype(np.uint16), t))


@pytest.mark.parametrize(
    "r, t, kwargs, error, words",
    [
        (np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8), {}, TypeError, "integer"),
        (np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.float64), {}, TypeError, "integer"),
        (np.zeros((3, 3), np.uint8), np.zeros((3, 4), np.uint8), {}, ValueError, "shape"),
        (np.array(["a"]), np.array(["a"]), {}, TypeError, "numeric"),
        (np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8), {"halo": [1]}, ValueError, "halo"),
        (np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8), {"halo": 2}, ValueError, "halo"),
        (np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8), {"threads": -1}, ValueError, "threads"),
    ],
)
def test_bad_input_raises_clear_errors(r, t, kwargs, error, words):
    with pytest.raises(error, match=words):
        contingency_table(r, t, **kwargs)
