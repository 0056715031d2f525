"""The paper's own setting as a control: CTE on the models trained with one recipe ("-long").

The method's assumption is one training recipe across sources; our banks mix regimes (long,
short, no-intensity-aug, dropout-trained...). This script re-reads the ranking-quality results
(per-model CTE scores and true scores of every target, `results/ranking_quality*.json`) and the
consensus runs, keeps only each bank's "-long" models (one recipe, different sources), and
reports the mean Spearman of every setting on that subset. No inference.

    python benchmarks/cte_control.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def long_subset(names: list[str]) -> list[str]:
    return [n for n in names if n.endswith("-long")]


def cte_rows(report: str) -> dict[str, dict[str, list[float]]]:
    """{task: {setting: [Spearman per target on the -long subset]}}."""
    doc = json.loads((RESULTS / f"{report}.json").read_text())["tasks"]
    out: dict = {}
    for task, res in doc.items():
        for t in res["targets"]:
            names = [n for n in long_subset(t["models"]) if n in t["true"]]
            if len(names) < 4:
                continue
            for setting, scores in t["scores"].items():
                vals = [scores.get(n) for n in names]
                if any(v is None for v in vals):
                    continue
                out.setdefault(task, {}).setdefault(setting, []).append(
                    spearman(vals, [t["true"][n] for n in names]))
    return out


def consensus_rows(report: str, reference: str) -> dict[str, dict[str, list[float]]]:
    """Consensus among the -long models only, from the stored agreement rows."""
    import sys

    sys.path.insert(0, str(HERE))
    import ranking_quality as rq

    from segrank.job.rundir import RunDirectory
    from segrank.scoring.consensus import pairwise_scores, resolve_rounds, resolve_similarity, similarity_matrices

    doc = json.loads((RESULTS / f"{report}.json").read_text())
    cfg = doc["config"]
    out: dict = {}
    for task, res in doc["tasks"].items():
        kind = "instance" if task.endswith("instance") else "semantic"
        for t in res["targets"]:
            names = long_subset(t["models"])
            if len(names) < 4:
                continue
            folder = next((rq.WORK / task).glob(f"{t['name']}*-n{cfg['max_images']}-c{cfg['crop']}-s{cfg['seed']}"))
            rows = RunDirectory(folder / "rank-consensus").agreement.read()
            units = sorted({r["unit"] for r in rows})
            for label, rounds in (("consensus (default)", None), ("consensus, no re-weighting", 0)):
                sim, _ = similarity_matrices(rows, names, units, resolve_similarity("auto", kind))
                per = pairwise_scores(sim, rounds=resolve_rounds(rounds, kind)).per_unit
                score = [float(np.nanmedian(r)) for r in per]
                out.setdefault(task, {}).setdefault(label, []).append(
                    spearman(score, [t["true"][n] for n in names]))
    return out


def main() -> int:
    lines = ["# CTE on one training recipe (the \"-long\" models): the paper's setting as a control", "",
             "Mean Spearman over targets on each bank's -long models only (5-6 per nuclei target, 2 per EM "
             "target are too few: EM is left out); run / replicate.", ""]
    runs = [(cte_rows("ranking_quality"), consensus_rows("consensus_quality", "ranking_quality")),
            (cte_rows("ranking_quality_replicate"), consensus_rows("consensus_quality_replicate", "x"))]
    doc = {}
    for task in runs[0][0]:
        lines += [f"## {task}", "", "| setting | targets | Spearman run | replicate |", "|---|---|---|---|"]
        settings = dict.fromkeys(list(runs[0][0][task]) + list(runs[0][1].get(task, {})))
        for s in settings:
            vals = [({**r[0].get(task, {}), **r[1].get(task, {})}).get(s) for r in runs]
            cells = [f"{np.mean(v):+.2f}" if v else "-" for v in vals]
            n = len(vals[0]) if vals[0] else 0
            lines.append(f"| {s} | {n} | {cells[0]} | {cells[1]} |")
            doc.setdefault(task, {})[s] = [None if not v else float(np.mean(v)) for v in vals]
        lines.append("")
    (RESULTS / "cte_control.md").write_text("\n".join(lines))
    (RESULTS / "cte_control.json").write_text(json.dumps(doc, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
