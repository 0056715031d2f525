"""Source-referenced consistency: does dividing out a model's own consistency fix the regime confound?

Last session's finding (benchmarks/results/ranking_quality.md): CTE scores on these banks rank
the TRAINING REGIME (short / no-intensity-augmentation models look inconsistent under noise
everywhere, dropout barely moves any U-Net with skip connections) more than the transfer.

The label-free fix measured here: each model's CTE on held-out images of its OWN training
source (the val ids of benchmarks/bank/splits.json for its `card.source_data`; what a model
zoo could ship in each model card as a "reference consistency") is taken as the model's
intrinsic consistency, and each model is scored on a target by

    ratio = CTE_target / CTE_source        diff = CTE_target - CTE_source

(one score per metric and perturbation setting; a model without a score on either side ranks
last). No target label is used. The reference runs use the same perturbations, metrics, seed,
subset rule (seeded, at most `--max-images` images) and center crop as
benchmarks/ranking_quality.py; the target-side CTE scores, true scores and baselines are read
from the lead's run folders benchmarks/.work/ranking_quality/<task>/<target>-n5-c384-s0/
(only targets whose rank output is complete when this runs). Agreement with the truth via
`segrank.evaluate.job.validate` (Kendall / Spearman / Pearson, permutation p-values, regret,
top-1), per target and mean +- std over targets.

Writes benchmarks/results/ranking_quality_reference.md / .json. Reference runs are cached in
benchmarks/.work/ranking_quality_reference/ (git-ignored; rank run directories resume and a
prediction cache lets the EI call reuse the NHD call's predictions), so a rerun that picks up
newly finished targets is cheap.

Usage (shared 2-core box)::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/ranking_quality_reference.py \
        --tasks nuclei-semantic em-mito em-membranes nuclei-instance
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ranking_quality as rq  # noqa: E402  (the benchmark this extends: its helpers, paths and rules)

WORK = HERE / ".work" / "ranking_quality_reference"
RESULTS = rq.RESULTS
METRIC_LABEL = {"nhd": "CTE-NHD", "ei": "CTE-EI", "rand": "CTE-Rand"}
BASELINES_SHOWN = ("confidence", "entropy")
# The hand-written interpretation lives between these markers in the .md; a rerun keeps it.
BEGIN, END = "<!-- interpretation -->", "<!-- /interpretation -->"


# ------------------------------------------------------------------------------ reference sets


def source_key(sources: set[tuple[str, str | None]]) -> str:
    """A folder-safe name for a set of (dataset, DSB size group) sources."""
    parts = []
    for dataset in sorted({d for d, _ in sources}):
        groups = sorted(g for d, g in sources if d == dataset and g)
        parts.append(dataset + ("-" + "+".join(groups) if groups else ""))
    return "__".join(parts)


def build_reference(sources: set[tuple[str, str | None]], splits: dict, *, max_images: int, crop: int, seed: int) -> Path:
    """Images (no labels) of a seeded subset of the VAL ids of `sources`, center-cropped:
    the same subset and crop rule as `ranking_quality.build_target`, on the val split."""
    import tifffile

    from segrank.perturb.seeds import rng

    key = source_key(sources)
    folder = WORK / "references" / f"{key}-n{max_images}-c{crop}-s{seed}"
    done = folder / "done.json"
    if done.exists():
        return folder
    ids: list[tuple[str, str]] = []
    for dataset in sorted({d for d, _ in sources}):
        entry = splits["datasets"][dataset]
        groups = sorted(g for d, g in sources if d == dataset and g)
        chosen = sorted(i for g in groups for i in entry["size_group"][g]["val"]) if groups else sorted(entry["val"])
        ids += [(dataset, i) for i in chosen]
    if not ids:
        raise SystemExit(f"{rq.SPLITS}: no val ids for {key}")
    if max_images and len(ids) > max_images:
        pick = rng(seed, "ranking_quality_reference", key, 0, "subset").choice(len(ids), size=max_images, replace=False)
        ids = [ids[i] for i in sorted(pick)]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    shapes = []
    for dataset, image_id in ids:
        name = image_id[:12] if dataset == rq.DSB else image_id
        image = rq.center_crop(rq.read_image(rq.DATA / rq.FOLDERS[dataset] / "images" / f"{image_id}.tif"), crop)
        tifffile.imwrite(folder / "images" / f"{name}.tif", image)
        shapes.append(list(image.shape))
    done.write_text(json.dumps({"sources": sorted(f"{d}/{g}" if g else d for d, g in sources),
                                "ids": [i for _, i in ids], "shapes": shapes, "crop": crop, "seed": seed}, indent=1))
    return folder


def reference_scores(task: str, info: dict, models: list, splits: dict, args) -> tuple[dict, dict, dict]:
    """{setting: {model: CTE on its own source's val images}} (setting = "CTE-NHD dropout:0.2" ...),
    the reference folders used per model, and the compute seconds of this call."""
    from segrank.job import rank

    groups: dict[str, tuple[set, list]] = {}
    unknown = []
    for m in models:
        src = rq.model_sources(m)
        if not src:
            unknown.append(m.name)
            continue
        groups.setdefault(source_key(src), (src, []))[1].append(m)
    if unknown:
        rq.log(f"{task}: no card.source_data for {', '.join(unknown)}: no reference (ranked last by ratio/diff)")
    metrics = ["rand"] if info["kind"] == "instance" else ["nhd", "ei"]
    perts = [args.main_dropout, args.main_noise]
    scores: dict[str, dict[str, float | None]] = {}
    where, seconds = {}, {}
    for key, (src, members) in sorted(groups.items()):
        folder = build_reference(src, splits, max_images=args.max_images, crop=args.crop, seed=args.seed)
        for m in members:
            where[m.name] = str(folder.relative_to(HERE.parent))
        for metric in metrics:
            out = WORK / task / key / f"rank-{metric}"
            t0 = time.perf_counter()
            rq.log(f"{task}: reference {key} ({len(members)} models), {metric}")
            ranking = rq.rank_dir_guard(out, lambda: rank(members, folder / "images", out=out, perturbations=perts,
                                                          metric=metric, repeats=1, seed=args.seed, device="cpu",
                                                          cache=WORK / task / key / "cache", report=False,
                                                          progress=True))
            seconds[f"{key}/{metric}"] = time.perf_counter() - t0
            for row in ranking.rows:
                scores.setdefault(f"{METRIC_LABEL[metric]} {row['perturbation']}", {})[row["name"]] = row["score"]
    return scores, where, seconds


# ------------------------------------------------------------------------------ targets


def target_scores(folder: Path, digests: dict[str, str]) -> tuple[dict, dict, list[str]] | None:
    """Plain CTE scores and baselines of a finished target folder of the lead's run; None when
    its rank output is not complete (or was made with other model files)."""
    scores: dict[str, dict[str, float | None]] = {}
    notes = []
    for metric, label in METRIC_LABEL.items():
        path = folder / f"rank-{metric}" / "ranking.json"
        if not path.exists():
            if (folder / f"rank-{metric}").exists():
                notes.append(f"rank-{metric} not finished")
            continue
        doc = json.loads(path.read_text())
        stale = [n for n, v in doc["settings"]["models"].items() if digests.get(n) not in (None, v["sha256"])]
        if stale:
            notes.append(f"rank-{metric} made with other model files ({', '.join(stale)}): skipped")
            continue
        for row in doc["models"]:
            scores.setdefault(f"{label} {row['perturbation']}", {})[row["name"]] = row["score"]
    if not scores or not (folder / "performance.json").exists():
        return None
    names = set().union(*[set(v) for v in scores.values()])
    base: dict[str, dict[str, float | None]] = {}
    for name in names:
        cache = folder / "baselines" / name / "cache.json"
        if not cache.exists():
            continue
        for row in json.loads(cache.read_text())["value"]["rows"]:
            key = row["perturbation"]
            if key.split(":", 1)[1] in BASELINES_SHOWN:
                base.setdefault(key, {})[name] = row["score"]
    for key, vals in base.items():
        if set(vals) == names:
            scores[key] = vals
        else:
            notes.append(f"{key}: missing for {', '.join(sorted(names - set(vals)))}")
    return scores, {r["name"]: r["score"] for r in json.loads((folder / "performance.json").read_text())["models"]}, notes


def referenced(target: dict[str, float | None], source: dict[str, float | None], how: str) -> dict[str, float | None]:
    out = {}
    for name, t in target.items():
        s = source.get(name)
        if t is None or s is None or (how == "ratio" and s <= 0):
            out[name] = None
        else:
            out[name] = t / s if how == "ratio" else t - s
    return out


def spearman(a: dict, b: dict) -> float | None:
    from scipy.stats import spearmanr

    names = [n for n in a if a[n] is not None and b.get(n) is not None]
    if len(names) < 3:
        return None
    x, y = [a[n] for n in names], [b[n] for n in names]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def analyse_target(task: str, folder: Path, ref: dict, digests: dict, args) -> dict | None:
    from segrank.evaluate.job import validate

    got = target_scores(folder, digests)
    if got is None:
        return None
    plain, true, notes = got
    settings: dict[str, dict[str, float | None]] = {}
    cte = [s for s in plain if s.startswith("CTE-")]
    for s in cte:
        settings[s] = plain[s]
    for s in cte:
        if s in ref:
            settings[f"ratio: {s}"] = referenced(plain[s], ref[s], "ratio")
            settings[f"diff: {s}"] = referenced(plain[s], ref[s], "diff")
            # the reference alone (target-independent): how much the regime itself predicts transfer
            settings[f"source only: {s}"] = {n: ref[s].get(n) for n in plain[s]}
    for s in plain:
        if s.startswith("baseline:"):
            settings[s] = plain[s]
    agreement = {}
    work = WORK / task / "targets" / folder.name
    for setting, scores in settings.items():
        safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", setting)
        path = rq.write_ranking(work / "rankings" / f"{safe}.json", scores, setting)
        result = validate([(path, folder / "performance.json")], n_permutations=args.permutations, seed=args.seed)
        agreement[setting] = {k: result[k] for k in ("kendall", "spearman", "pearson", "regret", "top1", "n_models")}
    # label-free diagnostics: how much of the target score is the model's own consistency,
    # and how much the referenced score still follows confidence
    diag = {}
    for s in cte:
        if s in ref:
            diag[s] = {"target_vs_source": spearman(plain[s], ref[s]),
                       "plain_vs_confidence": spearman(plain[s], plain.get("baseline:confidence", {})),
                       "ratio_vs_confidence": spearman(settings[f"ratio: {s}"], plain.get("baseline:confidence", {}))}
    return {"target": folder.name, "n_models": len(true), "true": true, "scores": settings,
            "source_scores": {s: {n: ref[s].get(n) for n in true} for s in cte if s in ref},
            "agreement": agreement, "diagnostics": diag, "notes": notes}


# ------------------------------------------------------------------------------ report


def fmt(v, digits=2, signed=True):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def order(settings: list[str]) -> list[str]:
    def key(s):
        base = s.split(": ", 1)[-1]
        prefixes = ("CTE-", "ratio: ", "diff: ", "source only: ")
        kind = next((i for i, p in enumerate(prefixes) if s.startswith(p)), len(prefixes))
        return (kind == len(prefixes), base, kind)
    return sorted(settings, key=key)


def summarize(targets: list[dict]) -> dict:
    from segrank.evaluate.correlation import summarize as summ

    out = {}
    for s in dict.fromkeys(s for t in targets for s in t["agreement"]):
        per = {t["target"]: t["agreement"][s] for t in targets if s in t["agreement"]}
        out[s] = {**summ(per), "n_targets": len(per)}
    return out


def paired_delta(targets: list[dict], setting: str) -> tuple[float, float] | None:
    """Mean over targets of Spearman(setting) - Spearman(the plain CTE it is built on), and its
    standard error (std / sqrt(n - 1)): the referenced and plain scores share each target's
    models and truth, so the paired difference is what says whether the reference helped."""
    if not setting.startswith(("ratio: ", "diff: ", "source only: ")):
        return None
    plain = setting.split(": ", 1)[1]
    ds = [t["agreement"][setting]["spearman"]["value"] - t["agreement"][plain]["spearman"]["value"]
          for t in targets if setting in t["agreement"] and plain in t["agreement"]
          and t["agreement"][setting]["spearman"]["value"] is not None and t["agreement"][plain]["spearman"]["value"] is not None]
    if not ds:
        return None
    return float(np.mean(ds)), (float(np.std(ds) / math.sqrt(len(ds) - 1)) if len(ds) > 1 else float("nan"))


def write_report(doc: dict, path_md: Path) -> None:
    m = doc["meta"]
    lines = ["# Source-referenced consistency (issue 7, extra analysis)", "",
             f"Generated by `benchmarks/ranking_quality_reference.py` ({m['command']}); {m['date']}; {m['machine']}; "
             f"reference compute this run {m['seconds'] / 60:.1f} min (cached runs are not recomputed).", "",
             "**Question.** Last session's CTE scores ranked the training regime (short / no-intensity-aug models "
             "look inconsistent under noise everywhere; dropout barely moves any model) more than the transfer. "
             "Does dividing out each model's *own* consistency fix that, without target labels?", "",
             "**Score.** For each model, CTE_source = its CTE (same perturbations "
             f"{m['perturbations']}, same metrics, seed {m['seed']}, K = 1) on at most {m['max_images']} seeded val "
             f"images of its own training source (`card.source_data`; val ids of benchmarks/bank/splits.json, "
             f"center crop {m['crop']} px): a number a model zoo could ship in each card. On a target: "
             "`ratio` = CTE_target / CTE_source, `diff` = CTE_target - CTE_source; `source only` = CTE_source alone "
             "(the same for every target: does the regime itself predict transfer?); plain CTE_target, true scores and "
             "baselines come from the lead's run folders (benchmarks/.work/ranking_quality/<task>/<target>-n5-c384-s0, "
             "leave-one-source-out for nuclei, every model on both EM targets). Correlations via "
             f"`segrank.evaluate.job.validate` ({m['permutations']} permutations); regret = best true score minus true "
             "score of the model ranked first; top-1 = share of targets where the first pick is a best model. "
             "Confidence and entropy are the label-free baselines (no reference).", ""]
    if doc.get("interpretation"):
        lines += [BEGIN, doc["interpretation"].strip(), END, ""]
    for task, t in doc["tasks"].items():
        targets, summary = t["targets"], t["summary"]
        lines += [f"## {task}", "", f"Bank: benchmarks/bank/{task} ({t['n_models']} models). "
                  f"Targets finished in the lead's run when this ran: {len(targets)} "
                  f"({', '.join(x['target'] for x in targets) or 'none'}); not yet: {', '.join(t['pending']) or 'none'}.", ""]
        if t["unreferenced"]:
            lines += [f"Models without a reference: {', '.join(t['unreferenced'])}.", ""]
        lines += ["Reference sets (val images of each source):", "", "| source | images | models |", "| --- | --- | --- |"]
        for key, r in t["references"].items():
            lines.append(f"| {key} | {r['n_images']} | {', '.join(r['models'])} |")
        if t["reference_scores"]:
            lines += ["", "CTE_source per model (reference consistency, what a card would ship):", "",
                      "| model | " + " | ".join(t["reference_scores"]) + " |", "| --- " * (len(t["reference_scores"]) + 1) + "|"]
            for name in sorted(set().union(*[set(v) for v in t["reference_scores"].values()])):
                lines.append(f"| {name} | " + " | ".join(fmt(t["reference_scores"][s].get(name), 4, signed=False)
                                                        for s in t["reference_scores"]) + " |")
        if not targets:
            lines += [""]
            continue
        lines += ["", "### Mean over targets", "",
                  "| setting | Kendall | Spearman | Pearson | regret | top-1 | targets | Spearman minus plain CTE (paired, mean +- s.e.) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in order(list(summary)):
            v = summary[s]
            d = paired_delta(targets, s)
            lines.append(f"| {s} | {fmt(v['kendall']['mean'])} +- {fmt(v['kendall']['std'], signed=False)} | "
                         f"{fmt(v['spearman']['mean'])} +- {fmt(v['spearman']['std'], signed=False)} | "
                         f"{fmt(v['pearson']['mean'])} +- {fmt(v['pearson']['std'], signed=False)} | "
                         f"{v['regret']['mean']:.3f} | {v['top1_rate']:.2f} | {v['n_targets']} | "
                         f"{'' if d is None else fmt(d[0]) + ' +- ' + fmt(d[1], signed=False)} |")
        names = [x["target"] for x in targets]
        lines += ["", "### Per target: Kendall / Spearman / Pearson (regret)", "",
                  "| setting | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
        for s in order(list(summary)):
            cells = []
            for x in targets:
                a = x["agreement"].get(s)
                cells.append("-" if a is None else f"{fmt(a['kendall']['value'])} / {fmt(a['spearman']['value'])} / "
                                                   f"{fmt(a['pearson']['value'])} ({a['regret']:.3f})")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines += ["", "Spearman p-values (permutation test):", "", "| setting | " + " | ".join(names) + " |",
                  "| --- " * (len(names) + 1) + "|"]
        for s in order(list(summary)):
            lines.append(f"| {s} | " + " | ".join(
                "-" if s not in x["agreement"] or x["agreement"][s]["spearman"]["p"] is None
                else f"{x['agreement'][s]['spearman']['p']:.3f}" for x in targets) + " |")
        diag_settings = list(dict.fromkeys(s for x in targets for s in x["diagnostics"]))
        lines += ["", "Label-free diagnostics (Spearman across models, mean over targets): how much the plain target "
                  "score is the model's own consistency (target vs source), and how much each score follows "
                  "confidence:", "", "| setting | CTE_target vs CTE_source | plain vs confidence | ratio vs confidence |",
                  "| --- | --- | --- | --- |"]
        for s in diag_settings:
            cols = []
            for k in ("target_vs_source", "plain_vs_confidence", "ratio_vs_confidence"):
                vals = [x["diagnostics"][s][k] for x in targets if s in x["diagnostics"] and x["diagnostics"][s][k] is not None]
                cols.append(fmt(float(np.mean(vals))) if vals else "n/a")
            lines.append(f"| {s} | " + " | ".join(cols) + " |")
        noise = next((s for s in diag_settings if "noise" in s), None)
        if noise:
            lines += ["", f"Per model under {noise}: true score, then rank (1 = first) by truth / plain CTE / ratio "
                      "(what the reference does to each model; '(src)' = trained on the target, not scored):", "",
                      "| model | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]

            def ranks(scores: dict) -> dict:
                order_ = sorted(scores, key=lambda n: (scores[n] is None, -(scores[n] or 0.0)))
                return {n: i for i, n in enumerate(order_, 1)}

            per_target = [(x["true"], ranks(x["true"]), ranks(x["scores"][noise]), ranks(x["scores"][f"ratio: {noise}"]))
                          for x in targets]
            for name in sorted(set().union(*[set(x["true"]) for x in targets])):
                lines.append(f"| {name} | " + " | ".join(
                    "(src)" if name not in tr else f"{tr[name]:.3f}: {rt[name]} / {rp[name]} / {rr[name]}"
                    for tr, rt, rp, rr in per_target) + " |")
        lines.append("")
    path_md.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="*", default=["nuclei-semantic", "em-mito", "em-membranes", "nuclei-instance"])
    p.add_argument("--max-images", type=int, default=5, help="as the lead's run (--max-images 5)")
    p.add_argument("--crop", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--main-dropout", default="dropout:0.2")
    p.add_argument("--main-noise", default="noise:0.1-0.2")
    p.add_argument("--permutations", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per session")
    args = p.parse_args(argv)
    rq.limit_threads(args.threads)
    from segrank.job.rundir import file_digest

    splits = json.loads(rq.SPLITS.read_text())
    start = time.perf_counter()
    doc = {"meta": {}, "tasks": {}}
    for task in args.tasks:
        info = {"path": HERE / "bank" / task, **rq.TASKS[task]}
        if not info["path"].is_dir():
            rq.log(f"{task}: no bank folder, skipped")
            continue
        models, problems = rq.load_models(info)
        for pr in problems:
            rq.log(f"{task}: {pr.message}")
        digests = {m.name: file_digest(m.path) for m in models}
        ref, where, seconds = reference_scores(task, info, models, splits, args)
        references = {}
        for name, folder in where.items():
            key = Path(folder).name
            entry = references.setdefault(key, {"n_images": len(list((HERE.parent / folder / "images").glob("*.tif"))), "models": []})
            entry["models"].append(name)
        suffix = f"-n{args.max_images}-c{args.crop}-s{args.seed}"
        targets, pending = [], []
        task_dir = rq.WORK / task
        for folder in sorted(task_dir.glob(f"*{suffix}")) if task_dir.is_dir() else []:
            result = analyse_target(task, folder, ref, digests, args)
            if result is None:
                pending.append(folder.name)
            else:
                targets.append(result)
                if result["notes"]:
                    rq.log(f"{task}/{folder.name}: " + "; ".join(result["notes"]))
        doc["tasks"][task] = {"n_models": len(models), "references": references, "reference_scores": ref,
                              "unreferenced": sorted(set(digests) - set(where)), "reference_seconds": seconds,
                              "targets": targets, "pending": pending, "summary": summarize(targets)}
        for k, v in doc["tasks"][task]["summary"].items():
            d = paired_delta(targets, k)
            if d is not None:
                v["spearman_minus_plain"] = {"mean": d[0], "se": d[1]}
        s = doc["tasks"][task]["summary"]
        for k in order(list(s)):
            rq.log(f"{task}: {k}: Spearman {fmt(s[k]['spearman']['mean'])} over {s[k]['n_targets']} targets")
    import os
    import platform

    doc["meta"] = {"command": "python benchmarks/ranking_quality_reference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - start,
                   "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores shared, {args.threads} ONNX Runtime thread(s), CPU",
                   "perturbations": [args.main_dropout, args.main_noise], "seed": args.seed, "max_images": args.max_images,
                   "crop": args.crop, "permutations": args.permutations}
    old = RESULTS / "ranking_quality_reference.md"
    if old.exists() and BEGIN in old.read_text():  # the hand-written interpretation survives a rerun
        doc["interpretation"] = old.read_text().split(BEGIN, 1)[1].split(END, 1)[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ranking_quality_reference.json").write_text(json.dumps(doc, indent=1, default=str))
    write_report(doc, RESULTS / "ranking_quality_reference.md")
    rq.log(f"done in {doc['meta']['seconds'] / 60:.1f} min: {RESULTS / 'ranking_quality_reference.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
