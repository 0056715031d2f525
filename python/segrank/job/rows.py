"""Aggregation into the rows of ranking.json: per (model, perturbation) score, interval, status."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..scoring import aggregate, ranking_order
from .failures import Failure, Stage
from .units import units_of


@dataclass
class Ranking:
    """The result of `rank`: the rows of ranking.json plus where everything was written.

    `predictions` counts the tile predictions computed and reused from the cache in this run
    (not written to ranking.json: it depends on what earlier runs left).
    """

    rows: list[dict]
    settings: dict
    failures: list[Failure]
    out: Path
    predictions: dict | None = None
    consensus: dict | None = None  # the consensus diagnostics (see `consensus_rows`)
    truth: dict | None = None  # agreement with a known true ranking (`compare_with_truth`)
    unit_scores: dict | None = None  # {setting: {model: per-unit scores}} not in per_image.csv (report only)
    race: dict | None = None  # per score, how a race (--budget / --until-separated) went

    def to_json(self) -> dict:
        document = {
            "models": self.rows,
            "settings": self.settings,
            "failures": [f.to_json() for f in self.failures],
            "perturbations": per_perturbation(self.rows),
            "segrank_version": __version__,
        }
        if self.consensus is not None:
            document["consensus"] = self.consensus
        if self.truth is not None:
            document["truth"] = self.truth
        if self.race is not None:
            document["race"] = self.race
        return document


def per_perturbation(rows: list[dict]) -> list[dict]:
    """Each setting is ranked on its own: its order (failed models are not ranked) and whether #1
    stands apart."""
    out = []
    for pert in dict.fromkeys(r["perturbation"] for r in rows):
        block = sorted((r for r in rows if r["perturbation"] == pert and r["rank"] is not None),
                       key=lambda r: r["rank"])
        out.append({"perturbation": pert, "ranking": [r["name"] for r in block],
                    "top_two_separated": block[0].get("top_two_separated") if block else None})
    return out


def unit_matrix(models, units: list[str], perturbation: str, done: dict, repeats: int) -> np.ndarray:
    """(models x units) mean score over the first `repeats` repeats; NaN where none is scored."""
    matrix = []
    for model in models:
        per_unit = []
        for u in units:
            vals = [done.get((model.name, perturbation, u, r)) for r in range(repeats)]
            scores = [float(v["score"]) for v in vals if v and v["score"] != ""]
            per_unit.append(np.mean(scores) if scores else math.nan)
        matrix.append(per_unit)
    return np.array(matrix, dtype=float).reshape(len(models), len(units))


def model_status(model: str, *, dropout: bool, failures: list[Failure], images: list, n_scored: int,
                 score) -> str:
    """ok, failed, failed on k of n images, or predicts no foreground."""
    failed = set()  # images with a failure (a volume counts once, however many of its blocks failed)
    for f in failures:
        if f.model == model and f.stage == Stage.SESSION:
            failed.update(im.name for im in images)
        elif f.model == model and f.stage == Stage.PREDICT:
            failed.add(f.image or "?")
    no_greybox = any(f.model == model and f.stage == Stage.GREYBOX for f in failures)
    if (dropout and no_greybox) or (failed and n_scored == 0):
        return "failed"
    if failed:
        return f"failed on {min(len(failed), len(images))} of {len(images)} images"
    if score is None:
        return "predicts no foreground"
    return "ok"


def ranking_rows(models, images, specs, done, metrics, providers, failures, block, n_boot, seed, repeats) -> list[dict]:
    """The rows of ranking.json: each perturbation setting ranked on its own, from the mean over
    the first `repeats` repeats of every unit."""
    units = [u.name for im in images for u in units_of(im, block)]
    rows = []
    for spec in specs:
        matrix = unit_matrix(models, units, str(spec), done, repeats)
        results, p_sep = aggregate([m.name for m in models], matrix, n_boot=n_boot, seed=seed, label=str(spec))
        block = [
            ranking_row(results[i], setting=str(spec), metric=metrics[models[i].name], estimator="cte",
                        n_images=len(images), provider=providers.get(models[i].name),
                        status=model_status(models[i].name, dropout=spec.is_dropout, failures=failures,
                                            images=images, n_scored=results[i].n_scored, score=results[i].score))
            for i in ranking_order(results)
        ]
        rows += assign_ranks(block, p_sep)
    return rows


def ranking_row(r, *, setting: str, metric: str, estimator: str, n_images: int, provider, status: str,
                **extra) -> dict:
    """One row of ranking.json from a model's aggregate (`scoring.aggregate.ModelScore`); its rank
    is set by `assign_ranks`."""
    return {
        "name": r.name, "rank": None, "score": r.score, "ci_low": r.ci_low, "ci_high": r.ci_high,
        "p_best": r.p_best, "n_images": n_images, "n_units": r.n_units, "n_scored": r.n_scored,
        "perturbation": setting, "metric": metric, "provider": provider, "status": status,
        "top_two_separated": None, "estimator": estimator, **extra,
    }


def assign_ranks(block: list[dict], p_sep: float | None) -> list[dict]:
    """Ranks 1, 2, ... in the given order for every model that ran; a failed model (never scored)
    gets no rank and comes after every other. `top_two_separated` on the first ranked row: the
    bootstrap P(#1 beats #2) >= 0.95 (None when the bootstrap is not available)."""
    ran = [r for r in block if r["status"] != "failed"]
    failed = [r for r in block if r["status"] == "failed"]
    for position, r in enumerate(ran, start=1):
        r["rank"] = position
    if ran:
        ran[0]["top_two_separated"] = None if p_sep is None else p_sep >= 0.95
    return ran + failed


def consensus_rows(models, images, block, agreement: list[dict], *, similarity: str, rounds: int, providers,
                   failures, n_boot: int, seed: int, ranked: set[str] | None = None) -> tuple[list[dict], dict, dict]:
    """Rows of ranking.json for the consensus score (setting "consensus"), its diagnostics, and
    each ranked model's per-unit scores (for the report).

    Each model's per-unit score is its weighted mean agreement with the other models that
    predicted the unit (`scoring.consensus.pairwise_scores`); the median over units, the
    interval and P(best) come from the same paired bootstrap over units as CTE's, with the
    weights of the last re-weighting round held fixed (the bootstrap does not redo the rounds).
    `models` is the pool; only the `ranked` ones (default: all) get rows: a race's eliminated
    models stay in the pool on the units they were scored on.
    """
    from ..scoring.consensus import agreement_groups, majority_share, pairwise_scores, similarity_matrices
    from .consensus import CONSENSUS

    names = [m.name for m in models]
    units = [u.name for im in images for u in units_of(im, block)]
    sim, size = similarity_matrices(agreement, names, units, similarity)
    result = pairwise_scores(sim, rounds=rounds, size=size)
    keep = [i for i, n in enumerate(names) if ranked is None or n in ranked]
    scores, p_sep = aggregate([names[i] for i in keep], result.per_unit[keep], n_boot=n_boot, seed=seed,
                              label=CONSENSUS)
    groups = agreement_groups(result.matrix)
    rows = []
    for k in ranking_order(scores):
        r, i = scores[k], keep[k]
        model = models[i]
        rows.append(ranking_row(
            r, setting=CONSENSUS, metric=similarity, estimator=CONSENSUS, n_images=len(images),
            provider=providers.get(model.name),
            status=model_status(model.name, dropout=False, failures=failures, images=images, n_scored=r.n_scored,
                                score=r.score),
            weight=float(result.weights[i]),
            group=int(groups[i]),
            relative_mask_size=None if not np.isfinite(result.relative_mask_size[i])
            else float(result.relative_mask_size[i]),
        ))
    rows = assign_ranks(rows, p_sep)
    share = majority_share(groups)
    diagnostics = {
        "similarity": similarity, "rounds": rounds, "models": names,
        "matrix": [[None if not np.isfinite(v) else round(float(v), 6) for v in row] for row in result.matrix],
        "groups": [int(g) for g in groups], "majority_share": share,
        "warnings": [] if share >= 0.5 else [
            f"no agreeing majority: the largest group of models that agree holds {share:.0%} of the bank; "
            "the consensus may be the wrong one, compare with --score cte"],
    }
    per_unit = {names[i]: [float(v) for v in result.per_unit[i]] for i in keep}
    return rows, diagnostics, per_unit


def disagreement_warnings(rows: list[dict]) -> list[str]:
    """A warning for each CTE setting whose first pick is not the consensus's first pick."""
    firsts = {r["perturbation"]: r["name"] for r in rows if r["rank"] == 1 and r["score"] is not None}
    consensus = firsts.get("consensus")
    return [f"CTE ({setting}) and consensus disagree on the best model: {name} vs {consensus}; "
            "compare both rankings before choosing" for setting, name in firsts.items()
            if consensus is not None and setting != "consensus" and name != consensus]


def compare_with_truth(rows: list[dict], performance: dict) -> dict:
    """Each setting's ranking against a known true ranking (performance.json's rows): Spearman,
    Kendall, the true best model and the regret of the first pick."""
    from ..evaluate.correlation import rank_agreement

    true = {r["name"]: r["score"] for r in performance["models"]}
    out = {}
    for setting in dict.fromkeys(r["perturbation"] for r in rows):
        block = [r for r in rows if r["perturbation"] == setting and r["name"] in true and r["rank"] is not None]
        if len(block) < 3:
            continue
        result = rank_agreement([r["score"] for r in block], [true[r["name"]] for r in block], n_permutations=1000)
        out[setting] = {"spearman": result["spearman"]["value"], "kendall": result["kendall"]["value"],
                        "true_best": max(true, key=true.get), "first_pick": min(block, key=lambda r: r["rank"])["name"],
                        "regret": result["regret"]}
    return out


__all__ = ["Ranking", "ranking_row", "compare_with_truth", "consensus_rows", "disagreement_warnings", "model_status", "per_perturbation", "ranking_rows", "unit_matrix"]
