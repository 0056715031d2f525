"""Consistency scores per unit (through the C++ core) and their aggregation per model."""
from .aggregate import ModelScore, aggregate, ranking_order
from .consistency import METRICS, prediction_for_metric, resolve_metric, unit_consistency

__all__ = [
    "METRICS",
    "ModelScore",
    "aggregate",
    "prediction_for_metric",
    "ranking_order",
    "resolve_metric",
    "unit_consistency",
]
