"""Does the consensus need a competent majority, and does its warning say so? (EM sub-banks)

For each EM target, sub-banks of 7 models with k in-domain models (trained on the target's
dataset) and 7 - k out-of-domain models are drawn (20 per k, seeded); each is ranked by the
default consensus, from the agreement rows the consensus benchmark stored (no inference), and by
CTE-EI dropout 0.2 (ranking_quality's per-model scores). Reported per k: mean Spearman of both,
how often the majority-share warning fires, and how often consensus is worse than CTE by > .10
without a warning.

    python benchmarks/minority.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ranking_quality as rq  # noqa: E402

CTE = "CTE-EI dropout:0.2"
DRAWS = 20


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> int:
    from segrank.job.rundir import RunDirectory
    from segrank.perturb.seeds import rng
    from segrank.scoring.consensus import (
        agreement_groups, majority_share, pairwise_scores, resolve_rounds, resolve_similarity, similarity_matrices,
    )

    cons = json.loads((rq.RESULTS / "consensus_quality.json").read_text())
    cte = json.loads((rq.RESULTS / "ranking_quality.json").read_text())["tasks"]
    cfg = cons["config"]
    out, lines = {}, ["# Minority-competent EM sub-banks (7 models, k in-domain)", "",
                      "| task | k | consensus Spearman | CTE-EI Spearman | warned | worse than CTE by > .10, unwarned "
                      "| top picks differ | top picks differ when consensus is worse by > .10 |",
                      "|---|---|---|---|---|---|---|---|"]
    for task in ("em-mito", "em-membranes"):
        cte_targets = {t["name"]: t for t in cte[task]["targets"]}
        for k in range(1, 7):
            rows_k = []
            for t in cons["tasks"][task]["targets"]:
                names, truth = t["models"], t["true"]
                inside = [n for n in names if n.startswith(t["name"] + "-")]
                outside = [n for n in names if n not in inside]
                folder = next((rq.WORK / task).glob(f"{t['name']}*-n{cfg['max_images']}-c{cfg['crop']}-s{cfg['seed']}"))
                rows = RunDirectory(folder / "rank-consensus").agreement.read()
                units = sorted({r["unit"] for r in rows})
                cte_scores = cte_targets[t["name"]]["scores"][CTE]
                for d in range(DRAWS):
                    g = rng(0, "minority", f"{task}/{t['name']}", d, f"k{k}")
                    bank = list(g.choice(inside, k, replace=False)) + list(g.choice(outside, 7 - k, replace=False))
                    sim, _ = similarity_matrices(rows, bank, units, resolve_similarity("auto", "semantic"))
                    res = pairwise_scores(sim, rounds=resolve_rounds(None, "semantic"))
                    score = [float(np.nanmedian(r)) for r in res.per_unit]
                    true = [truth[n] for n in bank]
                    s_cons = spearman(score, true)
                    s_cte = spearman([cte_scores[n] for n in bank], true)
                    warned = majority_share(agreement_groups(res.matrix)) < 0.5
                    differ = bank[int(np.argmax(score))] != max(bank, key=lambda n: cte_scores[n])
                    rows_k.append((s_cons, s_cte, warned, differ))
            arr = np.array(rows_k, dtype=float)
            worse = arr[:, 0] < arr[:, 1] - 0.10
            bad = float(np.mean(worse & (arr[:, 2] == 0)))
            caught = float(np.mean(arr[worse, 3])) if worse.any() else float("nan")
            out.setdefault(task, {})[k] = {"consensus": float(arr[:, 0].mean()), "cte": float(arr[:, 1].mean()),
                                           "warned": float(arr[:, 2].mean()), "worse_unwarned": bad,
                                           "top_picks_differ": float(arr[:, 3].mean()), "differ_when_worse": caught}
            lines.append(f"| {task} | {k} | {arr[:, 0].mean():+.2f} | {arr[:, 1].mean():+.2f} | {arr[:, 2].mean():.2f}"
                         f" | {bad:.2f} | {arr[:, 3].mean():.2f} | {caught:.2f} |")
    (rq.RESULTS / "minority.md").write_text("\n".join(lines) + "\n")
    (rq.RESULTS / "minority.json").write_text(json.dumps(out, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
