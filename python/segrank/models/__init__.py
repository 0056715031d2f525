"""Candidate models: descriptions, loading, conversion and the grey-box rewrite."""
from .description import Model, Postprocessing, Preprocessing, Tiling

__all__ = ["Model", "Postprocessing", "Preprocessing", "Tiling"]
