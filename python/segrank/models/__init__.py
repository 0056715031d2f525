"""Candidate models: descriptions, loading, conversion and the grey-box rewrite.

- `load_model(path)`: a bare .onnx, a .onnx with its NAME.yaml sidecar, or a bioimage.io
  package (folder, zip, rdf.yaml / bioimageio.yaml; spec 0.4 and 0.5) as a `Model`.
- `load_bank(path)`: every model of a folder or list file, ``(models, problems)``.
- `segrank.models.greybox`: `find_bottleneck`, `rewrite` (channel-mask input for dropout).
- `segrank.models.convert`: `torch_to_onnx` (optional torch extra).
"""
from .bank import Bank, BankError, BankProblem, load_bank
from .description import Model, Postprocessing, Preprocessing, Tiling
from .load import load_model
from .onnx_model import ModelAssumptionWarning

__all__ = [
    "Bank",
    "BankError",
    "BankProblem",
    "Model",
    "ModelAssumptionWarning",
    "Postprocessing",
    "Preprocessing",
    "Tiling",
    "load_bank",
    "load_model",
]
