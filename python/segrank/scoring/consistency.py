"""Per-unit consistency between an unperturbed and a perturbed prediction (method.md).

A unit is an image, or a block of a volume. Every score is "higher = more consistent" and is
None when neither prediction has foreground in the unit (such a unit has no score).
"""
from __future__ import annotations

import numpy as np

from ..metrics import adapted_rand, binary_consistency, contingency_table
from ..models.description import Model
from ..postprocess import instance_labels

METRICS = ("nhd", "ei", "rand")


def resolve_metric(metric: str, model: Model) -> str:
    """``auto`` is rand for instance models and nhd for semantic ones."""
    if metric == "auto":
        return "rand" if model.task == "instance" else "nhd"
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from auto, {', '.join(METRICS)}")
    return metric


def prediction_for_metric(probabilities: np.ndarray, model: Model, metric: str) -> np.ndarray:
    """What the metric compares: the foreground probability, or instance labels for rand."""
    if metric == "rand":
        return instance_labels(probabilities, model)
    return np.asarray(probabilities[model.foreground_channel], dtype=np.float32)


def unit_consistency(
    unperturbed: np.ndarray, perturbed: np.ndarray, *, metric: str, threshold: float = 0.5
) -> float | None:
    """Consistency of one unit from `prediction_for_metric` outputs.

    Notes
    -----
    With A, B the foreground masks (p > threshold) of the two runs and U = A or B:
    ``nhd`` returns 1 - |A xor B| / |U|; ``ei`` returns sum over A and B of sqrt(p_u p_p) / |U|;
    ``rand`` returns the foreground-restricted adapted Rand F-score of the two label images
    (background pixels inside U are singletons). All return None when U is empty.
    """
    if metric == "rand":
        return score_from_counts(contingency_table(unperturbed, perturbed), metric)
    return score_from_counts(binary_consistency(unperturbed, perturbed, threshold=threshold), metric)


def score_from_counts(counts, metric: str) -> float | None:
    """The score of a unit from its (possibly merged) counts: `BinaryCounts` for nhd and ei,
    a contingency table for rand; None when neither run has foreground in the unit."""
    if metric == "rand":
        return None if counts.n_foreground == 0 else float(adapted_rand(counts).f)
    if counts.n_or == 0:
        return None
    return float(counts.consistency if metric == "nhd" else counts.ei)


__all__ = ["METRICS", "prediction_for_metric", "resolve_metric", "score_from_counts", "unit_consistency"]
