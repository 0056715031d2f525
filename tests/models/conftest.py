"""Fixtures for the model tests: a private cache and small U-Nets on disk."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from unet_graphs import unet  # noqa: E402


@pytest.fixture(autouse=True)
def quiet_assumptions():
    """Bare test graphs assume a lot; tests that check the warnings use pytest.warns."""
    from segrank.models import ModelAssumptionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelAssumptionWarning)
        yield


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own segrank cache (converted weights, extracted zips, rewrites)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEGRANK_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def unet2d(tmp_path) -> Path:
    path = tmp_path / "unet2d.onnx"
    unet(path)
    return path


@pytest.fixture
def unet3d(tmp_path) -> Path:
    path = tmp_path / "unet3d.onnx"
    unet(path, ndim=3, up="convtranspose", final=None)
    return path
