"""Test volumes (balls on noise, in Zarr) and small 3D / slice-wise / instance / grey-box banks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from conv_nets import conv_model
from model_factory import smooth_threshold_model, write_sidecar

from segrank.models.description import Tiling

SHAPE = (14, 36, 44)
BLOCK = (8, 20, 24)  # 2 x 2 x 2 scoring blocks, cut at the far borders
N_BLOCKS = 8


def blob_volume(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """uint8 balls of varied size and brightness on a noisy background."""
    gen = np.random.default_rng(seed)
    grid = np.indices(shape)
    vol = np.full(shape, 30.0)
    for _ in range(14):
        c = gen.uniform(0, shape)
        r = gen.uniform(2.5, 6)
        vol[sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= r * r] = gen.uniform(110, 220)
    return np.clip(vol + gen.normal(0, 12, shape), 0, 255).astype(np.uint8)


def write_volume(path: Path, chunks=(8, 16, 16), shape=SHAPE) -> Path:
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint8", dimension_names=["z", "y", "x"])
    arr[...] = blob_volume(shape)
    return path


def volume_bank(tmp_path: Path, kind: str) -> Path:
    bank = tmp_path / f"bank-{kind}"
    bank.mkdir()
    tiling3d = {"multiple_of": [1, 1, 1], "minimum": [1, 1, 1], "halo": [2, 3, 3]}
    if kind == "3d":
        write_sidecar(smooth_threshold_model(bank / "smooth3d.onnx", ndim=3, size=3), axes="bczyx", tiling=tiling3d)
        write_sidecar(smooth_threshold_model(bank / "sharp3d.onnx", ndim=3, size=1, level=0.3), axes="bczyx", tiling=tiling3d)
    elif kind == "2d":  # 2D models on the volume, slice-wise
        tiling2d = {"multiple_of": [2, 2], "minimum": [2, 2], "halo": [3, 3]}
        write_sidecar(smooth_threshold_model(bank / "smooth2d.onnx", size=5), tiling=tiling2d)
        write_sidecar(smooth_threshold_model(bank / "sharp2d.onnx", size=1, level=0.3), tiling=tiling2d)
    elif kind == "instance":
        post = {"kind": "components", "threshold": 0.5, "min_size": 4}
        write_sidecar(smooth_threshold_model(bank / "inst3d.onnx", ndim=3, size=3), axes="bczyx", tiling=tiling3d,
                      task="instance", postprocessing=post)
        write_sidecar(smooth_threshold_model(bank / "inst3d_sharp.onnx", ndim=3, size=1, level=0.4), axes="bczyx",
                      tiling=tiling3d, task="instance", postprocessing=post)
    elif kind == "dropout":  # grey-box conv nets (a channel-mask input), 2D slice-wise and 3D
        return [
            conv_model(bank / f"{name}.onnx", ndim=ndim, name=name, hidden=6, layers=2, dropout=True, seed=seed,
                       tiling=Tiling(halo=(2,) * ndim))
            for name, ndim, seed in (("drop2d", 2, 1), ("drop3d", 3, 2))
        ]
    return bank
