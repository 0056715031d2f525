"""Machine-readable results: ranking.json, ranking.csv, and the terminal table."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..io.files import atomic_write

RANKING_FIELDS = (
    "name", "rank", "score", "ci_low", "ci_high", "p_best", "n_images", "n_scored",
    "perturbation", "metric", "provider", "status",
)


def write_ranking_json(document: dict, path: Path) -> None:
    atomic_write(path, json.dumps(document, indent=2))  # never leave a half-written ranking behind


def write_ranking_csv(rows: list[dict], path: Path) -> None:
    fields = list(RANKING_FIELDS) + sorted({k for r in rows for k in r} - set(RANKING_FIELDS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())


SCORE_MEANING = {
    "nhd": "1 - NHD", "ei": "effective invariance", "rand": "adapted Rand F", "dice": "mean Dice with the others",
    "map": "mean mAP with the others", "f1": "mean F1 on the labelled images",
}


def setting_title(setting: str, metric: str) -> str:
    """How a setting's block is headed: what its score is, and that higher is better."""
    what = SCORE_MEANING.get(metric, metric)
    if setting == "consensus":
        what = {"ei": "mean EI form with the others", "dice": "mean Dice with the others",
                "map": "mean mAP with the others"}.get(metric, metric)
        return f"consensus (agreement with the bank), score = {what} ({metric}); higher = more agreement"
    if setting == "labels":
        return f"few labels, score = {what if metric == 'f1' else 'mean mAP on the labelled images'}"
    return f"perturbation {setting}, metric {metric}: score = {what}; higher = more consistent"


def notes(block: list[dict]) -> list[str]:
    """What a reader of one setting's ranking must know: the top two cannot be told apart, or the
    target has too few units for intervals at all."""
    from ..scoring.aggregate import MIN_UNITS

    ranked = [r for r in block if r["rank"] is not None]
    out = []
    if ranked and ranked[0]["n_units"] < MIN_UNITS:
        out.append(f"intervals and p_best need at least {MIN_UNITS} units (images or volume blocks); this target "
                   f"has {ranked[0]['n_units']}: add images, or give a smaller --block for a volume")
    elif ranked and ranked[0].get("top_two_separated") is False and len(ranked) > 1:
        out.append("the top two models cannot be told apart (bootstrap P(#1 > #2) < 0.95)")
    return out


def format_table(rows: list[dict]) -> str:
    """A readable ranking table for the terminal, one block per perturbation setting."""
    lines = []
    for pert in dict.fromkeys(r["perturbation"] for r in rows):
        block = [r for r in rows if r["perturbation"] == pert]
        lines.append(setting_title(pert, block[0]["metric"]))
        width = max(len("model"), *(len(r["name"]) for r in block))
        lines.append(f"  {'rank':>4}  {'model':<{width}}  {'score':>6}  {'95% interval':>15}  {'p_best':>6}  {'scored':>7}")
        for r in block:
            score = "  -   " if r["score"] is None else f"{r['score']:.4f}"
            ci = f"{'n/a':>15}" if r["ci_low"] is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            p_best = "n/a" if r["p_best"] is None else f"{r['p_best']:.2f}"
            note = "" if r["status"] == "ok" else f"  ({r['status']})"
            rank = "-" if r["rank"] is None else r["rank"]
            lines.append(
                f"  {rank:>4}  {r['name']:<{width}}  {score:>6}  {ci:>15}  {p_best:>6}  "
                f"{r['n_scored']:>3}/{r['n_units']:<3}{note}"
            )
        lines += [f"  note: {n}" for n in notes(block)]
        lines.append("")
    return "\n".join(lines).rstrip()
