"""Adapted Rand, VI and IoU from tables, checked against skimage, elf and plain numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import adapted_rand_error, variation_of_information as skimage_vi

from metrics.metrics_reference import LABEL_DTYPES, relabel, unique_background
from metrics.test_metrics_contingency import cells
from segrank.metrics import adapted_rand, contingency_table, iou_matrix, variation_of_information

elf_evaluation = pytest.importorskip("elf.evaluation", reason="python-elf is a test dependency")

SETTINGS = settings(max_examples=30, deadline=None)

shapes = st.one_of(
    st.tuples(st.integers(1, 30), st.integers(1, 60)),
    st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(1, 30)),
)


def labelled_pair(seed, shape, rdt, tdt, near_max):
    rng = np.random.default_rng(seed)
    r = cells(rng, shape, 15, rdt, near_max=near_max)
    t = r.astype(tdt, copy=True) if rdt == tdt else cells(rng, shape, 15, tdt)
    # a perturbed copy: some pixels relabelled, some objects merged
    flip = rng.random(shape) < 0.15
    t[flip] = cells(rng, shape, 15, tdt, near_max=near_max)[flip]
    return r, t


def close(a, b, tol=1e-12):
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(b))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), shape=shapes, rdt=st.sampled_from(LABEL_DTYPES),
       tdt=st.sampled_from(LABEL_DTYPES), near_max=st.booleans())
def test_method_convention_matches_skimage_with_unique_background_ids(seed, shape, rdt, tdt, near_max):
    r, t = labelled_pair(seed, shape, rdt, tdt, near_max)
    table = contingency_table(r, t)
    mask = (r != 0) | (t != 0)
    ru, tu = relabel(r), relabel(t)
    ru = unique_background(ru, mask, ru.max() + 1)
    tu = unique_background(tu, mask, tu.max() + 1)
    p, rc, f = adapted_rand(table)
    if mask.sum() == 0:
        assert math.isnan(f)
        return
    with np.errstate(all="ignore"):
        are, prec, rec = adapted_rand_error(ru[mask], tu[mask], ignore_labels=())
    assert close(p, prec) and close(rc, rec) and close(f, 1 - are)
    with np.errstate(all="ignore"):
        split, merge = skimage_vi(ru[mask], tu[mask])
    vs, vm = variation_of_information(table)
    assert abs(vs - split) < 1e-9 and abs(vm - merge) < 1e-9


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), shape=shapes, rdt=st.sampled_from(LABEL_DTYPES),
       tdt=st.sampled_from(LABEL_DTYPES), near_max=st.booleans())
def test_library_conventions(seed, shape, rdt, tdt, near_max):
    r, t = labelled_pair(seed, shape, rdt, tdt, near_max)
    table = contingency_table(r, t)
    ru, tu = relabel(r), relabel(t)
    # skimage with its defaults (reference background ignored, test 0 an ordinary label)
    if (r != 0).any():
        with np.errstate(all="ignore"):
            are, prec, rec = adapted_rand_error(ru, tu)
        p, rc, f = adapted_rand(table, convention="skimage")
        assert close(p, prec) and close(rc, rec) and close(f, 1 - are)
    # elf with its defaults (every pixel, squares); elf returns the adapted Rand error
    are_elf, _ = elf_evaluation.rand_index(tu, ru)
    assert close(adapted_rand(table, convention="elf").f, 1 - are_elf)
    # SNEMI3D: reference foreground only, test background pixels singletons, squares;
    # elf on those pixels after giving each test background pixel its own id
    fg = r != 0
    if fg.any():
        ts = unique_background(tu, fg, tu.max() + 1)
        are_s, _ = elf_evaluation.rand_index(ts[fg], ru[fg])
        assert close(adapted_rand(table, convention="snemi3d").f, 1 - are_s)
    # VI over every pixel: skimage and elf defaults
    with np.errstate(all="ignore"):
        split, merge = skimage_vi(ru, tu)
    vs, vm = variation_of_information(table, convention="all")
    assert abs(vs - split) < 1e-9 and abs(vm - merge) < 1e-9
    es, em = elf_evaluation.variation_of_information(tu, ru)
    assert abs(vs - es) < 1e-9 and abs(vm - em) < 1e-9


def snemi3d_script(seg, gt):
    """The SNEMI3D challenge's adapted Rand (normalised form), transcribed in numpy."""
    import scipy.sparse as sparse

    a_ids, b_ids = np.ravel(gt), np.ravel(seg)
    n = a_ids.size
    p_ij = sparse.csr_matrix((np.ones(n) / n, (a_ids, b_ids)), shape=(a_ids.max() + 1, b_ids.max() + 1))
    a = p_ij[1:, :]
    b = p_ij[1:, 1:]
    c = p_ij[1:, 0].todense()
    d = b.multiply(b)
    a_i, b_i = np.array(a.sum(1)), np.array(b.sum(0))
    sum_a = np.sum(a_i * a_i)
    sum_b = np.sum(b_i * b_i) + np.sum(c) / n
    sum_ab = np.sum(d) + np.sum(c) / n
    precision, recall = sum_ab / sum_b, sum_ab / sum_a
    return 2.0 * precision * recall / (precision + recall)


def test_snemi3d_matches_the_challenge_formula():
    rng = np.random.default_rng(4)
    for _ in range(5):
        r, t = labelled_pair(int(rng.integers(2**31)), (23, 37), np.uint16, np.uint16, False)
        assert close(adapted_rand(r, t, convention="snemi3d").f, snemi3d_script(relabel(t), relabel(r)), 1e-10)


def test_hand_computed_and_identity():
    u = np.array([[1, 1, 0], [2, 2, 0]])
    p = np.array([[1, 1, 0], [1, 1, 0]])
    assert adapted_rand(u, p) == (1.0, 1 / 3, 0.5)
    assert adapted_rand(u, u).f == 1.0
    s = variation_of_information(u, p)
    assert s.split == pytest.approx(0.0) and s.merge == pytest.approx(1.0)


def test_blocks_merge_to_the_same_scores():
    rng = np.random.default_rng(8)
    r, t = labelled_pair(3, (40, 64), np.uint32, np.uint32, False)
    whole = contingency_table(r, t)
    merged = contingency_table(r[:13], t[:13]) + contingency_table(r[13:], t[13:])
    for conv in ("method", "skimage", "elf", "snemi3d"):
        assert adapted_rand(merged, convention=conv) == adapted_rand(whole, convention=conv)
    assert variation_of_information(merged) == variation_of_information(whole)
    del rng


def test_call_styles_and_errors():
    r = np.array([[1, 1, 0, 2]], np.uint8)
    t = np.array([[1, 1, 3, 3]], np.uint8)
    table = contingency_table(r, t)
    assert adapted_rand(table) == adapted_rand(table=table) == adapted_rand(r, t)
    assert variation_of_information(table=table) == variation_of_information(r, t)
    with pytest.raises(TypeError):
        adapted_rand(r)
    with pytest.raises(TypeError):
        adapted_rand(r, t, table=table)
    with pytest.raises(ValueError, match="convention"):
        adapted_rand(table, convention="cremi")
    with pytest.raises(ValueError, match="convention"):
        variation_of_information(table, convention="skimage2")
    with pytest.raises(TypeError):
        iou_matrix(r)
    empty = contingency_table(np.zeros(4, np.uint8), np.zeros(4, np.uint8))
    assert all(math.isnan(x) for x in adapted_rand(empty))
    assert all(math.isnan(x) for x in variation_of_information(empty))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), shape=shapes, dtype=st.sampled_from([np.uint16, np.int32, np.uint64]))
def test_iou_matrix_matches_numpy(seed, shape, dtype):
    r, t = labelled_pair(seed, shape, dtype, dtype, dtype == np.uint64)
    ref_ids, test_ids, iou = iou_matrix(contingency_table(r, t))
    assert set(ref_ids.tolist()) == set(np.unique(r[r != 0]).tolist())
    assert set(test_ids.tolist()) == set(np.unique(t[t != 0]).tolist())
    for k, i in enumerate(ref_ids):
        for l, j in enumerate(test_ids):
            a, b = r == i, t == j
            want = (a & b).sum() / (a | b).sum()
            assert iou[k, l] == pytest.approx(want, abs=1e-15)
    _, _, sparse = iou_matrix(contingency_table(r, t), sparse=True)
    np.testing.assert_array_equal(sparse.toarray(), iou)
