"""The contract every user of the prediction store keeps, as one suite that each user subclasses.

A user (``segrank predict``'s arrays, the ranking's prediction cache) stores one array per
prediction, chunked by the inner blocks of a tiling, and marks each block finished only after
its data: a killed writer leaves no marked block without data, a reopened array resumes from
its marked blocks, and writes that are not exactly chunk-aligned are refused.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from segrank.errors import PredictionError
from segrank.inference.blocks import Blocking

BLOCKING = Blocking(shape=(20, 18), tile=(12, 12), halo=(2, 2))  # inner 8 x 8 on a 3 x 3 grid, edges cut


def values_of(block, channels: int = 2) -> np.ndarray:
    """Distinct, recognisable values for a block's inner region (C, *inner)."""
    shape = (channels,) + tuple(s.stop - s.start for s in block.inner)
    return np.full(shape, 1.0 + block.index[0] * 10 + block.index[1], np.float32) + np.arange(channels)[:, None, None]


class StoreContract:
    """Subclasses implement `open(path)` -> a handle with `done()`, `write(block, values)` and
    `read()` (the whole array) for one prediction of key "k1" over `BLOCKING`."""

    channels = 2

    def open(self, path, key: str = "k1"):
        raise NotImplementedError

    def test_data_then_marker(self, tmp_path):
        handle = self.open(tmp_path / "store")
        assert handle.done() == set()
        block = BLOCKING.block((1, 2))
        handle.write(block, values_of(block))
        assert self.open(tmp_path / "store").done() == {(1, 2)}
        got = self.open(tmp_path / "store").read()[(slice(None),) + block.inner]
        np.testing.assert_array_equal(got, values_of(block))

    def test_resume_keeps_finished_blocks(self, tmp_path):
        handle = self.open(tmp_path / "store")
        blocks = list(BLOCKING)
        for block in blocks[:4]:
            handle.write(block, values_of(block))
        again = self.open(tmp_path / "store")
        assert again.done() == {b.index for b in blocks[:4]}
        for block in blocks[4:]:
            again.write(block, values_of(block))
        whole = self.open(tmp_path / "store").read()
        for block in blocks:
            np.testing.assert_array_equal(whole[(slice(None),) + block.inner], values_of(block))

    def test_a_kill_between_data_and_marker_leaves_the_block_undone(self, tmp_path, monkeypatch):
        import segrank.io.zarr_store as zs

        handle = self.open(tmp_path / "store")
        first, second = BLOCKING.block((0, 0)), BLOCKING.block((0, 1))
        handle.write(first, values_of(first))
        real = zs._put_file
        calls = []

        def dies_after_data(path, data):
            calls.append(path)
            if len(calls) == 2:  # the marker: the process dies before writing it
                raise KeyboardInterrupt("killed")
            real(path, data)

        monkeypatch.setattr(zs, "_put_file", dies_after_data)
        with pytest.raises(KeyboardInterrupt):
            self.open(tmp_path / "store").write(second, values_of(second))
        monkeypatch.setattr(zs, "_put_file", real)
        assert self.open(tmp_path / "store").done() == {(0, 0)}
        assert not [p for p in os.listdir(tmp_path / "store") if p.endswith(".partial")]

    def test_unaligned_writes_are_refused(self, tmp_path):
        from segrank.inference.blocks import Block

        handle = self.open(tmp_path / "store")
        block = BLOCKING.block((0, 0))
        shifted = Block(index=(0, 0), inner=(slice(1, 9), slice(0, 8)), outer=block.outer, read=block.read,
                        padding=block.padding)
        with pytest.raises(PredictionError, match="not aligned"):
            handle.write(shifted, values_of(block))
        assert self.open(tmp_path / "store").done() == set()

    def test_another_key_does_not_see_these_blocks(self, tmp_path):
        handle = self.open(tmp_path / "store")
        block = BLOCKING.block((0, 0))
        handle.write(block, values_of(block))
        assert self.open(tmp_path / "store", key="k2").done() == set()
