"""Every user of the prediction store runs the store contract (`store_contract.StoreContract`)."""
from __future__ import annotations

import numpy as np
from store_contract import BLOCKING, StoreContract

from segrank.io.zarr_store import PredictionStore


class _PredictArray:
    """An array as `segrank predict` (inference.to_store) keeps it: `prepare`, then a writer."""

    def __init__(self, path, key: str, channels: int):
        self.store = PredictionStore(path)
        fresh = self.store.prepare("img", key=key, shape=(channels,) + BLOCKING.shape,
                                   chunks=(channels,) + BLOCKING.inner, grid=BLOCKING.grid, dimension_names="cyx")
        self.fresh = fresh

    def done(self):
        return set() if self.fresh else self.store.done_blocks("img")

    def write(self, block, values):
        self.store.writer("img").write(block.inner, block.index, values)

    def read(self):
        return np.asarray(self.store.array("img")[...])


class TestPredictArray(StoreContract):
    def open(self, path, key="k1"):
        return _PredictArray(path, key, self.channels)


class _CachedRunHandle:
    """A run of the ranking's prediction cache (scoring.cache): one array per content key."""

    def __init__(self, path, key: str, channels: int):
        from segrank.scoring.cache import CachedRun, PredictionCache

        self.run = CachedRun.open(PredictionCache(path).store, key, channels, BLOCKING, {"model": "m"})

    def done(self):
        return set(self.run.done)

    def write(self, block, values):
        self.run.put(block, values)

    def read(self):
        return self.run.read()


class TestCachedRun(StoreContract):
    def open(self, path, key="k1"):
        return _CachedRunHandle(path, key, self.channels)
