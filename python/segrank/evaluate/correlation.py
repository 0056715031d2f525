"""Agreement between a label-free ranking and the true ranking of the same models."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ..perturb.seeds import rng


def _pearson(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson r of x with each row of ys."""
    xc = (x - x.mean()) / np.linalg.norm(x - x.mean())
    yc = ys - ys.mean(axis=-1, keepdims=True)
    return (yc @ xc) / np.linalg.norm(yc, axis=-1)


def _spearman(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman rho: Pearson r of the (average-tie) ranks."""
    return _pearson(stats.rankdata(x), stats.rankdata(ys, axis=-1))


def _kendall(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Kendall tau-b: sum sx sy / sqrt(sum sx^2 sum sy^2) over pairs i < j of signs of differences."""
    i, j = np.triu_indices(x.size, k=1)
    sx = np.sign(x[i] - x[j])
    sy = np.sign(ys[..., i] - ys[..., j])
    return (sy @ sx) / np.sqrt(np.sum(sx * sx) * np.sum(sy * sy, axis=-1))


def rank_agreement(estimated, true, *, n_permutations: int = 10000, seed: int = 0) -> dict:
    """Kendall tau, Spearman rho (on ranks) and Pearson r (on raw scores), with p-values.

    Parameters
    ----------
    estimated : sequence of float or None
        Label-free scores per model; None (no score) ranks last for Kendall and Spearman and is
        left out of Pearson.
    true : sequence of float
        True performance of the same models.

    Returns
    -------
    dict with keys "kendall", "spearman", "pearson", each {"value", "p"}, plus "n_models",
    "regret" (true score of the best model minus that of the model ranked first) and "top1"
    (whether the model ranked first is a best one).

    Notes
    -----
    p is a two-sided permutation p-value: the share of random permutations of the true scores
    whose statistic is at least as large in absolute value, counting the observed one,
    (1 + #{|s_perm| >= |s|}) / (1 + n_permutations).
    """
    est = np.array([(-math.inf if v is None else float(v)) for v in estimated], dtype=float)
    tru = np.asarray(true, dtype=float)
    if est.shape != tru.shape or est.size < 3:
        raise ValueError("rank agreement needs the same models on both sides, at least 3")
    finite = np.isfinite(est)
    samples = {
        "kendall": (_kendall, est, tru),  # -inf (no score) ties last
        "spearman": (_spearman, est, tru),
        "pearson": (_pearson, est[finite], tru[finite]),
    }
    out = {"n_models": int(tru.size)}
    for name, (fn, xs, ys) in samples.items():
        if xs.size < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
            out[name] = {"value": None, "p": None}
            continue
        value = float(fn(xs, ys[None, :])[0])
        gen = rng(seed, "validate", name, 0, "permutation")
        permuted = gen.permuted(np.broadcast_to(ys, (n_permutations, ys.size)), axis=1)
        hits = int(np.count_nonzero(np.abs(fn(xs, permuted)) >= abs(value) - 1e-12))
        out[name] = {"value": value, "p": (1 + hits) / (1 + n_permutations)}
    best_true = float(np.max(tru))
    first = int(np.argmax(np.where(finite, est, -np.inf))) if finite.any() else 0
    out["regret"] = best_true - float(tru[first])
    out["top1"] = bool(tru[first] == best_true)
    return out


def summarize(per_target: dict[str, dict]) -> dict:
    """Mean and std over targets of each statistic."""
    summary = {}
    for key in ("kendall", "spearman", "pearson"):
        vals = [r[key]["value"] for r in per_target.values() if r[key]["value"] is not None]
        summary[key] = {"mean": float(np.mean(vals)) if vals else None, "std": float(np.std(vals)) if vals else None}
    regrets = [r["regret"] for r in per_target.values()]
    summary["regret"] = {"mean": float(np.mean(regrets)), "std": float(np.std(regrets))}
    summary["top1_rate"] = float(np.mean([r["top1"] for r in per_target.values()]))
    return summary


__all__ = ["rank_agreement", "summarize"]
