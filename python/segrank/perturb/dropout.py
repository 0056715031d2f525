"""Spatial (channel-wise) dropout masks for the grey-box rewrite's mask input.

The rewritten graph multiplies one intermediate tensor by a mask of shape [N, C, 1, 1] (2D)
or [N, C, 1, 1, 1] (3D). The host draws the mask from a seeded generator, so that the same
(seed, model, image, repeat) gives the same mask on any machine or execution provider.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def dropped_channels(channels: int, p: float) -> int:
    """k = ceil(p C), the number of channels a rate-p dropout zeroes.

    p C is rounded to 9 decimals first, so that binary rounding (0.07 * 100 = 7.000000000000001)
    does not drop one channel too many.
    """
    return int(math.ceil(round(p * channels, 9)))


def channel_mask(
    channels: int | Sequence[int],
    p: float,
    rng: np.random.Generator,
    *,
    batch: int = 1,
    ndim: int = 2,
) -> np.ndarray:
    """A spatial-dropout mask: exactly ceil(p C) channels zeroed, survivors scaled by 1/(1 - p).

    Parameters
    ----------
    channels : int or sequence of int
        C, the channel count of the masked tensor. A sequence (``Model.dropout_levels``) gives
        one block of channels per masked tensor, each with its own ceil(p C_l) drops, in order.
    p : float
        Dropout rate in [0, 1). p = 0 gives all ones (the unperturbed model).
    rng : numpy.random.Generator
        From `segrank.perturb.seeds.rng(seed, model, unit, repeat, "dropout")`.
    batch : int
        N; every batch item gets its own draw.
    ndim : int
        Spatial dimensions of the tensor (2 or 3): the number of trailing singleton axes.

    Returns
    -------
    numpy.ndarray
        float32, shape [N, C, 1, 1] or [N, C, 1, 1, 1] (C = the sum for a sequence).

    Notes
    -----
    For a tensor with C channels, the k = ceil(p C) dropped channels are a uniform random
    subset of size k (drawn as the first k of a permutation), and

        mask[n, c] = 0 if c is dropped, else 1 / (1 - p),

    which is the authors' newest variant; Bernoulli-per-channel dropout varies k between draws.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate p must be in [0, 1), got {p}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    blocks = [int(channels)] if np.isscalar(channels) else [int(c) for c in channels]
    if not blocks or any(c < 1 for c in blocks):
        raise ValueError(f"channel counts must be positive, got {channels}")
    total = sum(blocks)
    mask = np.ones((batch, total), dtype=np.float32)
    if p > 0.0:
        scale = np.float32(1.0 / (1.0 - p))
        mask *= scale
        for n in range(batch):
            start = 0
            for c in blocks:
                k = dropped_channels(c, p)
                mask[n, start + rng.permutation(c)[:k]] = 0.0
                start += c
    return mask.reshape((batch, total) + (1,) * ndim)
