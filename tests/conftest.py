"""Shared test fixtures: tiny ONNX models with known behaviour and small synthetic targets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from model_factory import blob_image, bottleneck_model, pixel_threshold_model, smooth_threshold_model, write_sidecar


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's segrank cache (grey-box rewrites, conversions)."""
    import os

    old = os.environ.get("SEGRANK_CACHE_DIR")
    os.environ["SEGRANK_CACHE_DIR"] = str(tmp_path_factory.mktemp("segrank-cache"))
    yield
    if old is None:
        os.environ.pop("SEGRANK_CACHE_DIR", None)
    else:
        os.environ["SEGRANK_CACHE_DIR"] = old


@pytest.fixture
def blob_target(tmp_path) -> Path:
    """A folder of six 96x96 blob images (with labels in a sibling folder)."""
    images, labels = tmp_path / "target" / "images", tmp_path / "target" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(6):
        img, lab = blob_image(i)
        tifffile.imwrite(images / f"img{i}.tif", img)
        tifffile.imwrite(labels / f"img{i}.tif", lab)
    return images


@pytest.fixture
def noise_bank(tmp_path) -> Path:
    """Two semantic models: one consistent under input noise by construction, one not."""
    bank = tmp_path / "bank"
    bank.mkdir()
    write_sidecar(smooth_threshold_model(bank / "smooth.onnx"))
    write_sidecar(pixel_threshold_model(bank / "sharp.onnx"))
    return bank


@pytest.fixture
def dropout_bank(tmp_path) -> Path:
    """Two grey-box-able models: equal channel weights (dropout is a no-op) vs fragile ones."""
    bank = tmp_path / "dbank"
    bank.mkdir()
    write_sidecar(bottleneck_model(bank / "redundant.onnx", weights=np.full(10, 2.0)))
    # Every pair of dropped channels moves the output by >= 10 logits at full intensity.
    write_sidecar(bottleneck_model(bank / "fragile.onnx", weights=np.array([8.0] * 8 + [-22.0] * 2)))
    return bank
