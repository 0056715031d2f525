"""The bundled example: a few CC0 DSB2018 nuclei images and a small bank of ONNX models.

Used by ``segrank rank --example --out DIR``. The models were trained by
benchmarks/bank/train.py on other sources than the example images' domain, so ranking them
is a real transfer question; nuclei/labels/ and nuclei/performance.json hold the truth to
check the ranking against (see nuclei/README.md).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["example_labels", "example_paths", "example_performance"]

_NUCLEI = Path(__file__).resolve().parent / "nuclei"


def example_paths() -> tuple[Path, Path]:
    """Return ``(bank_dir, target_dir)``: the example's model bank and its image folder."""
    return _NUCLEI / "bank", _NUCLEI / "images"


def example_labels() -> Path:
    """Return the folder of the example images' instance labels (same file names)."""
    return _NUCLEI / "labels"


def example_performance() -> Path:
    """Return the example bank's true performance on the example images (performance.json)."""
    return _NUCLEI / "performance.json"
