"""From per-unit scores to one score per model, with bootstrap uncertainty and the ranking."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..perturb.seeds import rng

# A bootstrap over fewer units than this says nothing: intervals and P(best) are not given.
MIN_UNITS = 5


@dataclass(frozen=True)
class ModelScore:
    """Aggregate of one model under one perturbation setting.

    score is the median over scored units (None when no unit has a score); ci_low/ci_high is
    the bootstrap 95% interval of that median (None with fewer than `MIN_UNITS` scored units);
    p_best the bootstrap probability that this model has the highest median of the bank (None
    when the target has fewer than `MIN_UNITS` units).
    """

    name: str
    score: float | None
    ci_low: float | None
    ci_high: float | None
    p_best: float | None
    n_units: int
    n_scored: int


def aggregate(
    names: list[str], scores: np.ndarray, *, n_boot: int = 1000, seed: int = 0, label: str = ""
) -> tuple[list[ModelScore], float | None]:
    """Median score per model and a paired bootstrap over units.

    Parameters
    ----------
    names : list of str
        Model names, one per row of `scores`.
    scores : ndarray, shape (M, N)
        Per-unit scores (already averaged over repeats), NaN where a unit has no score.
    n_boot : int
        Bootstrap resamples of the N units (the same resample for every model: paired).
    seed : int
        Seeds the resampling through segrank's seed derivation.

    Returns
    -------
    model_scores : list of ModelScore, in the order of `names`.
    p_top_separated : float or None
        Bootstrap probability that the top-ranked model's median beats the second's (None with
        fewer than two scored models, or fewer than `MIN_UNITS` units).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(len(names), -1)
    n_models, n_units = scores.shape
    scored = ~np.isnan(scores)
    medians = np.array([np.median(row[ok]) if ok.any() else np.nan for row, ok in zip(scores, scored)])

    boot = bootstrap_medians(scores, n_boot=n_boot, seed=seed, label=label)
    p_best = top_k_probability(boot, 1)

    enough = n_units >= MIN_UNITS
    out = []
    for m, name in enumerate(names):
        ok = ~np.isnan(boot[m])
        lo, hi = (np.percentile(boot[m][ok], [2.5, 97.5]) if ok.any() else (np.nan, np.nan))
        if scored[m].sum() < MIN_UNITS:
            lo = hi = np.nan
        out.append(
            ModelScore(
                name=name,
                score=_opt(medians[m]),
                ci_low=_opt(lo),
                ci_high=_opt(hi),
                p_best=float(p_best[m]) if enough else None,
                n_units=int(n_units),
                n_scored=int(scored[m].sum()),
            )
        )
    order = ranking_order(out)
    p_sep = None
    if enough and len(order) >= 2 and out[order[1]].score is not None:
        a, b = boot[order[0]], boot[order[1]]
        p_sep = float(np.mean(np.nan_to_num(a, nan=-np.inf) > np.nan_to_num(b, nan=-np.inf)))
    return out, p_sep


def bootstrap_medians(scores: np.ndarray, *, n_boot: int, seed: int, label: str = "") -> np.ndarray:
    """(M, n_boot) medians per model of `n_boot` paired resamples of the units (one resample of
    unit indices shared by every model; NaN units skipped; NaN where a resample holds none)."""
    scores = np.asarray(scores, dtype=np.float64)
    n_models, n_units = scores.shape
    boot = np.full((n_models, n_boot), np.nan)
    if n_units and n_boot:
        idx = rng(seed, "bank", f"bootstrap/{label}", 0, "bootstrap").integers(0, n_units, size=(n_boot, n_units))
        for m in range(n_models):
            if not np.isnan(scores[m]).all():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # resamples of only NaN
                    boot[m] = np.nanmedian(scores[m][idx], axis=1)
    return boot


def top_k_probability(boot: np.ndarray, k: int) -> np.ndarray:
    """Per model, the share of resamples in which it is among the k best medians (ties at the
    k-th place share it; NaN never counts). k = 1 is P(best)."""
    n_models, n_boot = boot.shape
    if not n_boot:
        return np.zeros(n_models)
    filled = np.where(np.isnan(boot), -np.inf, boot)
    if k == 1:  # the winner of each resample; ties split
        best = filled.max(axis=0, keepdims=True)
        winners = (filled == best) & np.isfinite(filled)
        return (winners / np.maximum(winners.sum(axis=0, keepdims=True), 1)).mean(axis=1)
    kth = -np.sort(-filled, axis=0)[min(k, n_models) - 1]  # the k-th best median per resample
    above = (filled > kth) & np.isfinite(filled)
    at = (filled == kth) & np.isfinite(filled)
    seats = np.maximum(min(k, n_models) - above.sum(axis=0), 0)
    share = above + at * (seats / np.maximum(at.sum(axis=0), 1))
    return share.mean(axis=1)


def ranking_order(model_scores: list[ModelScore]) -> list[int]:
    """Indices in rank order: descending score, models without a score last, ties by name."""
    return sorted(
        range(len(model_scores)),
        key=lambda i: (model_scores[i].score is None, -(model_scores[i].score or 0.0), model_scores[i].name),
    )


def _opt(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


__all__ = ["MIN_UNITS", "ModelScore", "aggregate", "bootstrap_medians", "ranking_order", "top_k_probability"]
