"""True performance against labels (to validate rankings; never needed to rank).

Semantic models: foreground F1 (Dice) at the threshold. Instance models: mean average precision
over IoU thresholds 0.50:0.05:0.95 with the DSB2018 definition. Both through the C++ tables.
"""
from __future__ import annotations

import numpy as np

from ..metrics import binary_consistency, contingency_table, iou_matrix

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def foreground_f1(probability: np.ndarray, truth: np.ndarray, *, threshold: float = 0.5) -> float:
    """F1 (Dice) of the foreground p > threshold against truth > 0.

    Notes
    -----
    F1 = 2 |P and T| / (|P| + |T|) = 2 |P and T| / (|P or T| + |P and T|). An image where both
    are empty is a perfect prediction: 1.0.
    """
    pred = np.asarray(probability, dtype=np.float32) > threshold
    counts = binary_consistency(pred, np.asarray(truth) > 0)
    denom = counts.n_or + counts.n_and
    return 1.0 if denom == 0 else 2.0 * counts.n_and / denom


def average_precision(truth: np.ndarray, prediction: np.ndarray, *, thresholds=IOU_THRESHOLDS) -> float:
    """Mean over IoU thresholds of TP / (TP + FP + FN) (the DSB2018 definition).

    Notes
    -----
    A true object i and a predicted object j match at threshold t when IoU(i, j) > t; for
    t >= 0.5 every object has at most one such partner, so matching is one-to-one. Both images
    empty: 1.0 (nothing to find, nothing found).
    """
    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    true_ids = np.unique(truth[truth > 0])
    pred_ids = np.unique(prediction[prediction > 0])
    n_true, n_pred = len(true_ids), len(pred_ids)
    if n_true == 0 and n_pred == 0:
        return 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0
    _, _, iou = iou_matrix(contingency_table(truth, prediction))
    scores = []
    for t in thresholds:
        tp = int(np.count_nonzero(iou > t))
        scores.append(tp / (n_true + n_pred - tp))
    return float(np.mean(scores))


__all__ = ["IOU_THRESHOLDS", "average_precision", "foreground_f1"]
