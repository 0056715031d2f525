"""Does ranking by agreement with the bank (consensus) beat CTE, and how far do a few labels go?

The protocol of `ranking_quality.py` (its targets, eligibility and true scores, reused through
its functions): per task bank and target, one `segrank.rank(score="consensus")` run stores every
eligible model's unperturbed prediction and the per-unit pairwise statistics; the variants
declared in benchmarks/README.md ("Consensus and few labels") are computed from that run's
agreement.csv; each is compared with the true ranking by `segrank validate`'s statistics.
Few-label variants use the per-image true scores of K seeded images (10 draws per K).

Writes benchmarks/results/<report>.md / .json. Work (run folders, evaluate results) is kept in
benchmarks/.work/ranking_quality/<task>/<target>/ (git-ignored) beside ranking_quality's, so
evaluate results are shared with it and a rerun computes only what is missing.

Usage (2-core box)::

    OMP_NUM_THREADS=1 nohup nice -n 10 python benchmarks/consensus_quality.py > cq.log 2>&1 &
    python benchmarks/consensus_quality.py --max-images 20 --seed 1 --report consensus_quality_replicate
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ranking_quality as rq  # noqa: E402

VARIANTS = {  # name -> (similarity, rounds, kinds it applies to)
    "C1 pairwise Dice": ("dice", 0, ("semantic", "instance")),
    "C2 pairwise EI-form": ("ei", 0, ("semantic",)),
    "C3 pairwise Dice, re-weighted 5": ("dice", 5, ("semantic", "instance")),
    "C4 pairwise EI-form, re-weighted 5": ("ei", 5, ("semantic",)),
    "C5 pairwise mAP": ("map", 0, ("instance",)),
    "C6 pairwise mAP, re-weighted 3": ("map", 3, ("instance",)),
}
LABEL_KS = (1, 2, 3, 5)
DRAWS = 10
CTE_SETTINGS = ("CTE-NHD dropout:0.2", "CTE-EI dropout:0.2", "CTE-Rand dropout:0.2", "baseline:confidence",
                "baseline:leep")


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def per_image_truth(work: Path, names: list[str]) -> dict[str, dict[str, float]]:
    """{model: {image: true score}} from each model's cached evaluate folder."""
    out = {}
    for n in names:
        with (work / "evaluate" / n / "performance_per_image.csv").open(newline="") as f:
            out[n] = {r["image"]: float(r["score"]) for r in csv.DictReader(f)}
    return out


def few_label(order: list[str], truth: dict[str, float], per_image: dict, images: list[str], seed: int) -> dict:
    """L0-L2 for K labelled images, 10 seeded draws each: mean Spearman, regret, top-1."""
    from segrank.perturb.seeds import rng

    names = list(truth)
    best = max(truth.values())
    out = {}
    for k in LABEL_KS:
        if k > len(images):
            continue
        stats = {v: {"spearman": [], "regret": [], "top1": []} for v in ("L0", "L1", "L2")}
        for d in range(DRAWS):
            pick = rng(seed, "few-labels", "draw", d, f"k{k}").permutation(len(images))[:k]
            seen = {n: float(np.mean([per_image[n][images[i]] for i in pick])) for n in names}
            ranked = {"L0": sorted(names, key=lambda n: -seen[n])}
            for v, m in (("L1", 3), ("L2", 5)):
                head = sorted(order[:m], key=lambda n: -seen[n])
                ranked[v] = head + order[m:]
            for v, r in ranked.items():
                pos = {n: -i for i, n in enumerate(r)}
                stats[v]["spearman"].append(spearman([pos[n] for n in names], [truth[n] for n in names]))
                stats[v]["regret"].append(best - truth[r[0]])
                stats[v]["top1"].append(truth[r[0]] == best)
        out[k] = {v: {m: float(np.mean(x)) for m, x in s.items()} for v, s in stats.items()}
    return out


def run_target(task: str, info: dict, spec, models: list, splits: dict, cfg) -> dict | None:
    from segrank.evaluate.job import evaluate
    from segrank.io.targets import open_target
    from segrank.job import rank
    from segrank.job.rundir import RunDirectory, file_digest
    from segrank.scoring.consensus import agreement_groups, majority_share, pairwise_scores, similarity_matrices

    in_domain = info["domain"] == "em"
    eligible = [m for m in models if in_domain or not ((rq.model_sources(m) or set()) & spec.sources)]
    if len(eligible) < 3:
        return None
    folder = rq.build_target(spec, splits, structure=info.get("structure"), max_images=cfg.max_images, crop=cfg.crop,
                             seed=cfg.seed)
    images_dir, labels_dir = folder / "images", folder / "labels"
    images = [im.name for im in open_target(images_dir).images]
    work = rq.WORK / task / folder.name
    names = [m.name for m in eligible]
    t0 = time.perf_counter()
    truth = {}
    for m in eligible:
        def compute(m=m):
            return evaluate([m], images_dir, labels=labels_dir, out=work / "evaluate" / m.name, device="cpu",
                            progress=False)[0]
        row = rq.cached_json(work / "evaluate" / m.name / "cache.json",
                             {"sha": file_digest(m.path), "images": len(images)}, compute)
        truth[m.name] = row["score"]
    seconds = {"evaluate": time.perf_counter() - t0}
    t0 = time.perf_counter()
    out = work / "rank-consensus"
    ranking = rank(eligible, images_dir, out=out, score="consensus", device="cpu", report=False, progress=False,
                   seed=cfg.seed)
    seconds["consensus"] = time.perf_counter() - t0
    rows = RunDirectory(out).agreement.read()
    units = images
    result = {"name": spec.name, "n_images": len(images), "models": names, "true": truth, "variants": {},
              "seconds": seconds, "failures": [f.to_json() for f in ranking.failures],
              "predictions": ranking.predictions}
    true_best = max(truth.values())
    for variant, (similarity, rounds, kinds) in VARIANTS.items():
        if info["kind"] not in kinds:
            continue
        sim, size = similarity_matrices(rows, names, units, similarity)
        res = pairwise_scores(sim, rounds=rounds, size=size)
        score = {n: float(np.nanmedian(res.per_unit[i])) for i, n in enumerate(names)}
        order = sorted(names, key=lambda n: -score[n])
        groups = agreement_groups(res.matrix)
        result["variants"][variant] = {
            "spearman": spearman([score[n] for n in names], [truth[n] for n in names]),
            "regret": true_best - truth[order[0]], "top1": truth[order[0]] == true_best, "order": order,
            "majority_share": majority_share(groups),
            "relative_mask_size": dict(zip(names, [None if not np.isfinite(v) else float(v)
                                                   for v in res.relative_mask_size])),
        }
    main = "C5 pairwise mAP" if info["kind"] == "instance" else "C1 pairwise Dice"
    result["few_labels"] = few_label(result["variants"][main]["order"], truth, per_image_truth(work, names), images,
                                     cfg.seed)
    return result


def summarize(targets: list[dict]) -> dict:
    out = {}
    for variant in sorted({v for t in targets for v in t["variants"]}):
        vals = [t["variants"][variant] for t in targets if variant in t["variants"]]
        out[variant] = {k: float(np.mean([v[k] for v in vals])) for k in ("spearman", "regret", "top1")}
        out[variant]["n_targets"] = len(vals)
    few = {}
    for k in LABEL_KS:
        for v in ("L0", "L1", "L2"):
            vals = [t["few_labels"][k][v] for t in targets if k in t["few_labels"]]
            if vals:
                few[f"{v} K={k}"] = {m: float(np.mean([x[m] for x in vals])) for m in ("spearman", "regret", "top1")}
    out["few_labels"] = few
    return out


def cte_reference(task: str, target_names: list[str], report: str, config: dict) -> dict:
    """Mean Spearman / regret of CTE and baselines on the same targets, from ranking_quality's results."""
    path = rq.RESULTS / f"{report}.json"
    if not path.exists():
        return {}
    whole = json.loads(path.read_text())
    if any(whole["config"].get(k) != v for k, v in config.items()):
        return {}  # other images: not comparable
    doc = whole["tasks"].get(task, {})
    by_name = {t["name"]: t for t in doc.get("targets", [])}
    out = {}
    for setting in CTE_SETTINGS:
        vals = [by_name[n]["agreement"][setting] for n in target_names if n in by_name
                and setting in by_name[n]["agreement"]]
        if vals:
            out[setting] = {"spearman": float(np.mean([v["spearman"]["value"] for v in vals])),
                            "regret": float(np.mean([v["regret"] for v in vals])),
                            "top1": float(np.mean([bool(v["top1"]) for v in vals])), "n_targets": len(vals)}
    return out


def write_report(all_results: dict, cfg) -> None:
    lines = [f"# Consensus and few labels ({cfg.report})", "",
             f"Targets: `--max-images {cfg.max_images} --crop {cfg.crop} --seed {cfg.seed}` (the ranking_quality "
             "protocol). Mean over targets; regret = best true score minus the pick's; few-label rows: "
             f"{DRAWS} seeded draws of K labelled images per target.", ""]
    for task, res in all_results.items():
        lines += [f"## {task} ({len(res['targets'])} targets)", "", "| score | Spearman | regret | top-1 |",
                  "|---|---|---|---|"]
        for name, s in {**res["reference"], **res["summary"]}.items():
            if name == "few_labels":
                continue
            lines.append(f"| {name} | {s['spearman']:+.2f} | {s['regret']:.3f} | {s['top1']:.2f} |")
        for name, s in res["summary"]["few_labels"].items():
            lines.append(f"| few labels {name} | {s['spearman']:+.2f} | {s['regret']:.3f} | {s['top1']:.2f} |")
        lines += ["", "| target | models | " + " | ".join(v.split(" ")[0] for v in res["summary"] if v != "few_labels")
                  + " | majority share (C1/C5) | consensus s |", "|---" * (4 + len(res["summary"]) - 1) + "|"]
        for t in res["targets"]:
            main = "C5 pairwise mAP" if "C5 pairwise mAP" in t["variants"] else "C1 pairwise Dice"
            cells = [f"{t['variants'][v]['spearman']:+.2f}" if v in t["variants"] else "-"
                     for v in res["summary"] if v != "few_labels"]
            lines.append(f"| {t['name']} | {len(t['models'])} | " + " | ".join(cells)
                         + f" | {t['variants'][main]['majority_share']:.2f} | {t['seconds']['consensus']:.0f} |")
        lines.append("")
    (rq.RESULTS / f"{cfg.report}.md").write_text("\n".join(lines))
    (rq.RESULTS / f"{cfg.report}.json").write_text(json.dumps({"config": vars(cfg), "tasks": all_results}, indent=1,
                                                              default=str))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--max-images", type=int, default=10)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", default="consensus_quality")
    p.add_argument("--reference", default="ranking_quality", help="ranking_quality results to compare with")
    p.add_argument("--only-targets", nargs="*", default=None)
    p.add_argument("--dsb-all", action="store_true",
                   help="one large target instead: every DSB2018 test image (all size groups), for racing")
    p.add_argument("--all-splits", action="store_true",
                   help="nuclei targets from every split of their source (train, val, test ids; named <target>-all): "
                        "unseen by their models, which were not trained on the source")
    cfg = p.parse_args(argv)
    splits = json.loads(rq.SPLITS.read_text())
    all_results = {}
    for task, info in rq.discover_banks(cfg.tasks, 8).items():
        if info.get("fallback"):
            continue
        models, _ = rq.load_models(info)
        specs = rq.em_targets() if info["domain"] == "em" else rq.nuclei_targets(splits)
        if cfg.dsb_all:
            if info["domain"] != "nuclei":
                continue
            groups = tuple(sorted(splits["datasets"][rq.DSB]["size_group"]))
            specs = [rq.TargetSpec("dsb-all", rq.DSB, groups, "every DSB2018 test image (all size groups)")]
        if cfg.all_splits:
            if info["domain"] != "nuclei":  # the EM bank trained on both EM sources' train ids
                continue
            specs = [spec.every_split() for spec in specs]
        targets = []
        for spec in specs:
            if cfg.only_targets and spec.name not in cfg.only_targets:
                continue
            rq.log(f"{task}/{spec.name}: consensus")
            res = run_target(task, info, spec, models, splits, cfg)
            if res is not None:
                targets.append(res)
                rq.log(f"{task}/{spec.name}: " + ", ".join(f"{k.split(' ')[0]} {v['spearman']:+.2f}"
                                                           for k, v in res["variants"].items()))
        all_results[task] = {"targets": targets, "summary": summarize(targets),
                             "reference": cte_reference(task, [t["name"] for t in targets], cfg.reference,
                                                       {"max_images": cfg.max_images, "crop": cfg.crop,
                                                        "seed": cfg.seed})}
        write_report(all_results, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
