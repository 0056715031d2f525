"""`load_model`: any candidate (bare ONNX, ONNX + sidecar, bioimage.io package) as a `Model`."""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .bioimageio import is_package, load_package
from .description import Model
from .onnx_model import load_onnx
from .sidecar import read_sidecar, sidecar_path

TORCH_SUFFIXES = (".pt", ".pth", ".torchscript", ".ckpt")


def load_model(path, *, name: str | None = None, trust_code: bool = False) -> Model:
    """Describe one candidate model, ready for ONNX Runtime.

    Parameters
    ----------
    path : path
        A ``.onnx`` file (with ``NAME.yaml`` beside it when there is one), a bioimage.io package
        (folder, ``.zip``, or its ``rdf.yaml`` / ``bioimageio.yaml``), or a sidecar ``NAME.yaml``.
    name : str, optional
        The model's name in rankings (default: declared name, else the file stem).
    trust_code : bool
        Allow running a package's Python architecture to convert pytorch_state_dict weights.

    Returns
    -------
    Model
        Values not declared anywhere are inferred and listed in ``Model.assumptions``
        (each also warned once as a `ModelAssumptionWarning`).

    Raises
    ------
    ModelError
        One line naming the file and the problem (unreadable, unsupported, refused).
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".zip":
        return load_package(path, name=name, trust_code=trust_code)
    if suffix in (".yaml", ".yml"):
        if is_package(path):
            return load_package(path, name=name, trust_code=trust_code)
        onnx_file = path.with_suffix(".onnx")
        if onnx_file.is_file():
            return _load_onnx_file(onnx_file, name=name)
        raise ModelError(f"{path}: neither a bioimage.io model description nor the sidecar of an .onnx file")
    if suffix == ".onnx":
        return _load_onnx_file(path, name=name)
    if suffix in TORCH_SUFFIXES:
        raise ModelError(f"{path}: a PyTorch file; convert it first with `segrank convert` (or package it for bioimage.io)")
    raise ModelError(f"{path}: not a model (expected .onnx, a bioimage.io package folder/.zip, or rdf.yaml)")


def _load_onnx_file(path: Path, *, name: str | None) -> Model:
    sidecar = sidecar_path(path)
    if sidecar is None:
        return load_onnx(path, name=name, source="onnx")
    return load_onnx(path, name=name, declared=read_sidecar(sidecar), source="sidecar")
