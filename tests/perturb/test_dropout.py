"""Channel dropout masks: exact counts, scaling, shapes, reproducibility."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segrank.perturb.dropout import channel_mask, dropped_channels
from segrank.perturb.seeds import rng


@settings(max_examples=60, deadline=None)
@given(channels=st.integers(1, 300), p=st.floats(0.0, 0.95), batch=st.integers(1, 3), ndim=st.sampled_from([2, 3]))
def test_exactly_ceil_pc_channels_dropped_survivors_scaled(channels, p, batch, ndim):
    mask = channel_mask(channels, p, rng(7, "m", "img", 0, "dropout"), batch=batch, ndim=ndim)
    assert mask.dtype == np.float32 and mask.shape == (batch, channels) + (1,) * ndim
    flat = mask.reshape(batch, channels)
    k = dropped_channels(channels, p)
    assert k == math.ceil(round(p * channels, 9))
    for row in flat:
        assert int((row == 0).sum()) == k
        np.testing.assert_allclose(row[row != 0], np.float32(1 / (1 - p)), rtol=1e-7)


def test_binary_rounding_does_not_drop_an_extra_channel():
    assert 0.07 * 100 > 7  # 7.000000000000001 in binary floating point
    assert dropped_channels(100, 0.07) == 7
    assert dropped_channels(100, 0.071) == 8
    assert dropped_channels(16, 0.2) == 4  # ceil(3.2)


def test_zero_rate_is_all_ones():
    mask = channel_mask(16, 0.0, rng(0, "m", "u", 0, "dropout"), batch=2, ndim=3)
    assert mask.shape == (2, 16, 1, 1, 1) and np.all(mask == 1.0)


def test_reproducible_and_varying_with_the_identity():
    a = channel_mask(64, 0.2, rng(3, "model-a", "img1", 0, "dropout"))
    b = channel_mask(64, 0.2, rng(3, "model-a", "img1", 0, "dropout"))
    np.testing.assert_array_equal(a, b)
    others = [
        channel_mask(64, 0.2, rng(3, "model-a", "img1", 1, "dropout")),
        channel_mask(64, 0.2, rng(3, "model-a", "img2", 0, "dropout")),
        channel_mask(64, 0.2, rng(4, "model-a", "img1", 0, "dropout")),
    ]
    assert all(not np.array_equal(a, o) for o in others)


def test_batch_items_draw_independently():
    mask = channel_mask(64, 0.25, rng(0, "m", "u", 0, "dropout"), batch=4)
    rows = {tuple(np.flatnonzero(r.ravel() == 0)) for r in mask}
    assert len(rows) > 1


def test_levels_each_drop_their_own_ceil():
    levels = (4, 8, 16, 8)
    mask = channel_mask(levels, 0.3, rng(0, "m", "u", 0, "dropout")).ravel()
    assert mask.size == sum(levels)
    start = 0
    for c in levels:
        assert int((mask[start : start + c] == 0).sum()) == math.ceil(0.3 * c)
        start += c


@pytest.mark.parametrize("kwargs", [dict(p=1.0), dict(p=-0.1), dict(ndim=4), dict(batch=0), dict(channels=0)])
def test_invalid_arguments(kwargs):
    args = dict(channels=8, p=0.2, batch=1, ndim=2) | kwargs
    with pytest.raises(ValueError):
        channel_mask(args["channels"], args["p"], rng(0, "m", "u", 0, "dropout"), batch=args["batch"], ndim=args["ndim"])
