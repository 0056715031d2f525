"""Machine-readable results: ranking.json, ranking.csv, and the terminal table."""
from __future__ import annotations

import csv
import json
from pathlib import Path

RANKING_FIELDS = (
    "name", "rank", "score", "ci_low", "ci_high", "p_best", "n_images", "n_scored",
    "perturbation", "metric", "provider", "status",
)


def write_ranking_json(document: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2))
    tmp.replace(path)  # never leave a half-written ranking behind


def write_ranking_csv(rows: list[dict], path: Path) -> None:
    fields = list(RANKING_FIELDS) + sorted({k for r in rows for k in r} - set(RANKING_FIELDS))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict]) -> str:
    """A readable ranking table for the terminal, one block per perturbation setting."""
    lines = []
    for pert in dict.fromkeys(r["perturbation"] for r in rows):
        block = [r for r in rows if r["perturbation"] == pert]
        lines.append(f"perturbation {pert}, metric {block[0]['metric']}")
        width = max(len("model"), *(len(r["name"]) for r in block))
        lines.append(f"  {'rank':>4}  {'model':<{width}}  {'score':>6}  {'95% interval':>15}  {'p_best':>6}  {'scored':>7}")
        for r in block:
            if r["score"] is None:
                score, ci = "  -   ", f"{'':>15}"
            else:
                score, ci = f"{r['score']:.4f}", f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            note = "" if r["status"] == "ok" else f"  ({r['status']})"
            lines.append(
                f"  {r['rank']:>4}  {r['name']:<{width}}  {score:>6}  {ci:>15}  {r['p_best']:>6.2f}  "
                f"{r['n_scored']:>3}/{r['n_units']:<3}{note}"
            )
        top = block[0]
        if top.get("top_two_separated") is False and len(block) > 1:
            lines.append("  note: the top two models cannot be told apart (bootstrap P(#1 > #2) < 0.95)")
        lines.append("")
    return "\n".join(lines).rstrip()
