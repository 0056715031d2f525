"""The prediction cache of a ranking: every run's probabilities, kept across runs and --out folders.

A run is one prediction of one (model graph, image): the unperturbed run, or one (perturbation,
repeat). Its probabilities are stored in a Zarr v3 group (`io.zarr_store.PredictionStore`) as one
float32 array (C, *spatial) named by the run's content key (`inference.key.prediction_key`:
model file and description, input pixels, normalisation, tile and halo, perturbation identity,
seed and dropout mask), chunked by the inner regions of its prediction tiles, with one
completion marker per tile. A tile is read back only when marked, and marked only after its
values are written, so a killed run never leaves a half-written tile that counts.

Any setting that changes a prediction changes its key, so a changed seed, perturbation, model or
tiling simply misses; what does not change predictions (metric, threshold, scoring blocks,
repeats beyond those stored, the --out folder) reuses them. Writers never conflict: a chunk is
exactly one tile, written whole (atomically by zarr's local store), and every writer of a key
writes the same values. The device is not in the key (providers agree to rounding).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from ..inference.blocks import Block, Blocking
from ..models.description import Model
from ..perturb.input import InputPerturbation, PerturbationSpec


def perturbation_key(spec: PerturbationSpec, perturb: InputPerturbation | None = None, *, model: str = "",
                     unit: str = "", repeat: int = 0) -> str:
    """The identity of one perturbed run, for the cache key (None-free, stable JSON).

    An input perturbation is identified by its drawn instance (kind, strength, seed, model,
    unit, repeat, centre); a dropout run by its spec, model, unit and repeat (its mask is
    hashed into the key separately).
    """
    if perturb is not None:
        return json.dumps({"spec": str(spec), **dataclasses.asdict(perturb)}, sort_keys=True)
    return json.dumps({"spec": str(spec), "model": model, "unit": unit, "repeat": int(repeat)}, sort_keys=True)


class PredictionCache:
    """A folder of cached predictions (a Zarr v3 group), opened lazily in each process.

    Parameters
    ----------
    path : str or Path
        The group's folder, created when missing. Several processes may share it (a local or
        shared file system).
    required : bool
        The run reads its predictions back (the consensus score): a full disk is an error. An
        optional cache (the default) that fills up warns once and the run goes on without it.
    """

    def __init__(self, path, *, required: bool = False):
        self.path = str(Path(path))
        self.required = required
        self._store = None

    def __getstate__(self):  # workers open their own store
        return {"path": self.path, "required": self.required, "_store": None}

    def __repr__(self) -> str:
        return f"PredictionCache({self.path!r})"

    @property
    def store(self):
        if self._store is None:
            from ..errors import InputError
            from ..io.zarr_store import PredictionStore

            path = Path(self.path)
            if path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").exists():
                raise InputError(f"{path}: not a prediction cache (no Zarr v3 group); give an empty or new folder as --cache")
            self._store = PredictionStore(self.path)
        return self._store

    def run(self, model: Model, input_digest: str, norm, blocking: Blocking, *, perturbation: str | None = None,
            seed: int | None = None, mask: np.ndarray | None = None, attributes: dict | None = None) -> "CachedRun":
        """The stored run for these inputs, created empty when it is not there yet."""
        from ..inference.key import prediction_key

        key = prediction_key(model, input_digest, norm, blocking, perturb_key=perturbation,
                             seed=None if perturbation is None else seed, dropout_mask=mask)
        run = CachedRun.open(self.store, key, model.out_channels, blocking,
                             dict(attributes or {}, model=model.name, perturbation=perturbation))
        run.optional = not self.required
        return run


_FULL: set[str] = set()  # optional caches whose disk filled up, in this process


class CachedRun:
    """One run's stored probabilities: tiles read back when finished, written as computed."""

    def __init__(self, store, name: str, blocking: Blocking, done: set):
        self.store, self.name, self.blocking, self.done = store, name, blocking, done
        self._array = None
        self.optional = False  # an optional cache stops writing (with one warning) when its disk is full

    @classmethod
    def open(cls, store, key: str, channels: int, blocking: Blocking, attributes: dict) -> "CachedRun":
        done = store.open_or_create(
            key, key=key, shape=(channels,) + tuple(blocking.shape), chunks=(channels,) + tuple(blocking.inner),
            grid=blocking.grid, dimension_names=["c", *"zyx"[-len(blocking.shape):]], attributes=attributes,
        )
        return cls(store, key, blocking, done)

    @property
    def array(self):
        if self._array is None:
            self._array = self.store.array(self.name, mode="r+")
        return self._array

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.blocking)

    def get(self, tile: Block) -> np.ndarray | None:
        """The tile's stored probabilities (C, *inner shape), or None when not stored."""
        if tile.index not in self.done:
            return None
        return np.asarray(self.array[(slice(None),) + tile.inner])

    def put(self, tile: Block, values: np.ndarray) -> None:
        """Store a computed tile, then mark it finished."""
        if tile.index in self.done or (self.optional and str(self.store.path) in _FULL):
            return
        try:
            self.store.write_block(self.name, tile.inner, tile.index, values, array=self.array)
        except OSError as err:
            from ..io.files import DISK_FULL, disk_full_message

            if not (self.optional and err.errno in DISK_FULL):
                raise
            _FULL.add(str(self.store.path))
            print(f"segrank: warning: {disk_full_message(err, self.store.path)}; going on without the cache",
                  file=sys.stderr)
            return
        self.done.add(tile.index)

    def read(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """The stored prediction (only when `complete`), whole or of a spatial `region`."""
        return np.asarray(self.array[(slice(None),) + tuple(region or ())])

    def write(self, values: np.ndarray) -> None:
        """Store a whole prediction computed at once, tile by tile."""
        for tile in self.blocking:
            self.put(tile, values[(slice(None),) + tile.inner])


__all__ = ["CachedRun", "PredictionCache", "perturbation_key"]
