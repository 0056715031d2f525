"""Inference: ONNX Runtime sessions, the block scheme (inner / halo / outer / padding), prediction."""
from .blocks import Block, Blocking, choose_blocking
from .key import prediction_key
from .predict import predict_image
from .prepared import PreparedImage, normalize_image, prepare_image
from .session import create_session
from .to_store import PredictionSummary, predict_target

__all__ = [
    "Block", "Blocking", "PredictionSummary", "PreparedImage", "choose_blocking", "create_session",
    "normalize_image", "predict_image", "predict_target", "prediction_key", "prepare_image",
]
