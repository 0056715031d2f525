"""Targets as lazy dask arrays (`open_target`) and Zarr stores for predictions."""
from .targets import Target, TargetImage, open_target
from .zarr_store import PredictionStore

__all__ = ["PredictionStore", "Target", "TargetImage", "open_target"]
