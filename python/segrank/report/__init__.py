"""Outputs of a ranking: ranking.json / ranking.csv, PNG plots and a self-contained report.html."""
from __future__ import annotations

import csv
from collections import defaultdict

from .html import write_html
from .plots import plot_agreement, plot_distributions, plot_examples, plot_race, plot_ranking
from .tables import format_table, write_ranking_csv, write_ranking_json


def write_outputs(ranking, *, report: bool = True, examples: list[dict] | None = None) -> None:
    """Write every output of `ranking` into its run directory."""
    out = ranking.out
    document = ranking.to_json()
    write_ranking_json(document, out / "ranking.json")
    write_ranking_csv(ranking.rows, out / "ranking.csv")
    if not report or not ranking.rows:
        return
    figures = [out / "ranking.png", out / "score_distributions.png"]
    plot_ranking(ranking.rows, figures[0])
    per_unit, order = _per_unit_scores(ranking)
    plot_distributions(per_unit, order, figures[1])
    if examples:
        figures.append(out / "examples.png")
        plot_examples(examples, figures[-1])
    if document.get("consensus"):
        c = document["consensus"]
        figures.append(out / "agreement.png")
        plot_agreement(c["models"], c["matrix"], c["groups"], figures[-1])
    if document.get("race") and any(r["rounds"] for r in document["race"].values()):
        figures.append(out / "race.png")
        plot_race({k: r for k, r in document["race"].items() if r["rounds"]}, figures[-1])
    write_html(document, out, figures)


def _per_unit_scores(ranking):
    """Mean over repeats per (perturbation, model, unit), from per_image.csv."""
    sums = defaultdict(list)
    path = ranking.out / "per_image.csv"
    if path.exists():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row["score"]:
                    sums[(row["perturbation"], row["model"], row["unit"])].append(float(row["score"]))
    per_unit: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (pert, model, _unit), vals in sums.items():
        per_unit[pert][model].append(sum(vals) / len(vals))
    for setting, by_model in (ranking.unit_scores or {}).items():  # scores not in per_image.csv
        for model, values in by_model.items():
            per_unit[setting][model] = [v for v in values if v == v]
    order = {}
    for r in ranking.rows:
        order.setdefault(r["perturbation"], []).append(r["name"])
        per_unit[r["perturbation"]].setdefault(r["name"], [])
    return {p: dict(v) for p, v in per_unit.items()}, order


__all__ = ["format_table", "write_outputs"]
