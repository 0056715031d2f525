"""ONNX Runtime sessions, the block scheme (inner / halo / outer / padding) and blockwise prediction."""
from .blocks import Block, Blocking, choose_blocking
from .predict import PredictionSummary, normalize_image, predict_image, predict_target, prediction_key
from .session import create_session

__all__ = [
    "Block", "Blocking", "PredictionSummary", "choose_blocking", "create_session", "normalize_image",
    "predict_image", "predict_target", "prediction_key",
]
