"""Does segrank's label-free ranking agree with the true ranking? (issue 7)

For every task bank in benchmarks/bank/<task>/ (or the bundled example bank as a fallback),
every model is ranked on every target it was not trained on (leave-one-source-out, from the
`card.source_data` of its sidecar and the test ids of benchmarks/bank/splits.json), through
segrank's Python API:

- `segrank.rank` (segrank/job/): CTE-NHD and CTE-EI (semantic) or CTE-Rand (instance), with bottleneck
  dropout and with input noise, plus a perturbation-strength sweep (dropout 0.05-0.5, noise
  sigma 0.01-0.3) and a run with more repeats;
- `segrank.evaluate.job.evaluate`: true foreground F1 / mAP against the labels;
- `segrank.evaluate.baselines`: confidence and entropy (label-free), LEEP and CCFV (they see
  labels);
- `segrank.evaluate.job.validate`: Kendall / Spearman / Pearson with permutation p-values,
  regret and top-1, per target, then mean +- std over targets.

Label-free fixes measured beside the published method (no labels used to choose anything):
strength chosen per target where the bank's scores spread most, several dropout (or noise)
levels averaged, dropout and noise combined, more repeats, and dropout at every U-Net level
(`--every-level`: the grey-box rewrite's every-level mask, so skip connections are perturbed too).

Writes benchmarks/results/ranking_quality.md / .json and PNG figures. Everything is cached in
benchmarks/.work/ranking_quality/ (git-ignored): rank's run directories resume, evaluate and
baseline results are kept per model (keyed by the model file's sha256), so a rerun after new
models land computes only what is new.

Usage (shared 2-core box: one ONNX Runtime thread, nice)::

    OMP_NUM_THREADS=1 nohup nice -n 10 python benchmarks/ranking_quality.py > rq.log 2>&1 &
    python benchmarks/ranking_quality.py --tasks nuclei-semantic --max-images 6 --crop 384

Targets are seeded subsets (`--max-images`) of each test split, center-cropped to at most
`--crop` pixels per side (0 = full size), written once to the work folder with their labels.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("SEGRANK_DATA", "/work/shared/data"))  # ../shared/data, or a copy elsewhere
SPLITS = HERE / "bank" / "splits.json"
WORK = HERE / ".work" / "ranking_quality"
RESULTS = HERE / "results"
EXAMPLE_BANK = REPO / "python/segrank/examples/nuclei/bank"
NOTES = RESULTS / "ranking_quality_notes.md"
REPORT = "ranking_quality"  # results/<REPORT>.md/.json and its figures (--report)

TASKS = {
    "nuclei-semantic": {"domain": "nuclei", "kind": "semantic"},
    "nuclei-instance": {"domain": "nuclei", "kind": "instance"},
    "em-mito": {"domain": "em", "structure": "mito", "kind": "semantic"},
    "em-membranes": {"domain": "em", "structure": "membranes", "kind": "semantic"},
}
DSB = "dsb2018_fluo"
DSB_MAIN_GROUPS = ("256x256", "360x360", "520x696")
FOLDERS = {
    DSB: "nuclei/dsb2018_fluo",
    "coelho2009_u2os": "nuclei/coelho2009_u2os",
    "ctc_fluo_n2dh_gowt1": "nuclei/ctc_fluo_n2dh_gowt1",
    "ctc_fluo_n2dl_hela": "nuclei/ctc_fluo_n2dl_hela",
    "gonuclear_plantseg_mini": "nuclei/gonuclear_plantseg_mini",
    "epfl_hippocampus": "em/epfl_hippocampus",
    "vnc_drosophila": "em/vnc_drosophila",
}

# The paper's newest numbers (method.md), mean over targets: Kendall, Spearman, Pearson.
PAPER = {
    "nuclei-semantic": {"CTE-NHD dropout": (0.81, 0.91, 0.76), "CTE-NHD dropout (v1)": (0.83, 0.92, 0.80)},
    "nuclei-instance": {"CTE-Rand dropout": (0.80, 0.85, 0.85)},
    "em-mito": {"CTE-NHD dropout": (0.69, 0.85, 0.84), "CTE-EI noise": (0.77, 0.85, 0.83),
                "CTE-NHD dropout (v1)": (1.00, 1.00, 0.98), "LEEP": (0.89, 0.96, 0.97)},
}
GOALS = {"spearman_nuclei": 0.9, "spearman_other": 0.85, "regret": 0.02}
CTE_LABEL = {"nhd": "CTE-NHD", "ei": "CTE-EI", "rand": "CTE-Rand"}


@dataclass(frozen=True)
class TargetSpec:
    """A target: the test images of one source (a dataset, or DSB size groups)."""

    name: str
    dataset: str
    groups: tuple[str, ...] = ()
    note: str = ""
    splits: tuple[str, ...] = ("test",)  # the splits.json ids it takes images from

    def every_split(self) -> "TargetSpec":
        """The same source from its train, val and test ids (named `<name>-all`): unseen by the
        models ranked on it, which are those not trained on the source (leave-one-source-out)."""
        return TargetSpec(f"{self.name}-all", self.dataset, self.groups, f"{self.note}, every split",
                          ("train", "val", "test"))

    @property
    def sources(self) -> set[tuple[str, str | None]]:
        return {(self.dataset, g) for g in self.groups} if self.groups else {(self.dataset, None)}


def nuclei_targets(splits: dict) -> list[TargetSpec]:
    other = tuple(g for g in sorted(splits["datasets"][DSB]["size_group"]) if g not in DSB_MAIN_GROUPS)
    return [
        TargetSpec("dsb-256", DSB, ("256x256",), "DSB2018 256x256 group (many labs)"),
        TargetSpec("dsb-360", DSB, ("360x360",), "DSB2018 360x360 group"),
        TargetSpec("dsb-520", DSB, ("520x696",), "DSB2018 520x696 group (BBBC039-like U2OS)"),
        TargetSpec("dsb-other", DSB, other, "DSB2018 small groups (" + ", ".join(other) + "), never a source"),
        TargetSpec("coelho", "coelho2009_u2os", (), "Coelho 2009 U2OS"),
        TargetSpec("hela", "ctc_fluo_n2dl_hela", (), "CTC Fluo-N2DL-HeLa"),
        TargetSpec("gowt1", "ctc_fluo_n2dh_gowt1", (), "CTC Fluo-N2DH-GOWT1"),
        TargetSpec("gonuclear", "gonuclear_plantseg_mini", (), "GoNuclear plant nuclei, 2D slices (target only)"),
    ]


def em_targets() -> list[TargetSpec]:
    return [TargetSpec("epfl", "epfl_hippocampus", (), "EPFL hippocampus (FIB-SEM)"),
            TargetSpec("vnc", "vnc_drosophila", (), "Drosophila VNC (ssTEM)")]


# ------------------------------------------------------------------------------ helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def limit_threads(threads: int) -> None:
    """Every ONNX Runtime session of this process gets `threads` intra-op threads (rank and
    evaluate otherwise use one per core: on a shared box they would oversubscribe it)."""
    import segrank.inference.session as session

    original = session._options

    def options(n):
        return original(threads if n is None else n)

    session._options = options


def model_sources(model) -> set[tuple[str, str | None]] | None:
    """(dataset, DSB size group or None) pairs from the sidecar card; None when unknown."""
    card = model.card or {}
    entries = card.get("source_data")
    if not entries:
        return None
    out = set()
    for text in entries if isinstance(entries, list) else [entries]:
        m = re.match(r"^\s*(\S+)(?:\s*\(size_group\s+([^)\s]+)\))?", str(text))
        if m:
            out.add((m.group(1), m.group(2)))
    return out


def read_image(path: Path) -> np.ndarray:
    import tifffile

    image = tifffile.imread(path)
    if image.ndim == 3:  # stray channel axis, as benchmarks/bank/train.py reads it
        image = image[..., 0] if image.shape[-1] <= 4 else image[0]
    return image


def center_crop(a: np.ndarray, size: int) -> np.ndarray:
    if not size:
        return a
    sl = tuple(slice((s - min(s, size)) // 2, (s - min(s, size)) // 2 + min(s, size)) for s in a.shape)
    return a[sl]


def build_target(spec: TargetSpec, splits: dict, *, structure: str | None, max_images: int, crop: int, seed: int) -> Path:
    """The target folder (images/ + labels/, cropped copies) for a seeded subset of the spec's ids."""
    import tifffile

    from segrank.perturb.seeds import rng

    folder = WORK / "targets" / f"{spec.name}{'-' + structure if structure else ''}-n{max_images}-c{crop}-s{seed}"
    done = folder / "done.json"
    if done.exists():
        return folder
    entry = splits["datasets"][spec.dataset]
    ids = sorted(i for g in spec.groups for s in spec.splits for i in entry["size_group"][g].get(s, [])) if spec.groups \
        else sorted(i for s in spec.splits for i in entry.get(s, []))
    if max_images and len(ids) > max_images:
        pick = rng(seed, "ranking_quality", spec.name, 0, "subset").choice(len(ids), size=max_images, replace=False)
        ids = [ids[i] for i in sorted(pick)]
    root = DATA / FOLDERS[spec.dataset]
    label_dir = root / ("labels" if structure is None else f"labels_{structure}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    shapes = []
    for image_id in ids:
        name = image_id[:12] if spec.dataset == DSB else image_id
        image = center_crop(read_image(root / "images" / f"{image_id}.tif"), crop)
        labels = center_crop(tifffile.imread(label_dir / f"{image_id}.tif"), crop)
        if labels.shape != image.shape:
            raise SystemExit(f"{label_dir / image_id}.tif: labels {labels.shape} vs image {image.shape}")
        tifffile.imwrite(folder / "images" / f"{name}.tif", image)
        tifffile.imwrite(folder / "labels" / f"{name}.tif", labels)
        shapes.append(list(image.shape))
    done.write_text(json.dumps({"ids": ids, "shapes": shapes, "crop": crop, "seed": seed}, indent=1))
    return folder


def rank_dir_guard(out: Path, fn):
    """Run `fn()`; a run directory made with other settings or model files is moved aside once."""
    from segrank.errors import SegrankError

    try:
        return fn()
    except SegrankError as err:
        if "holds a ranking made with other settings" not in str(err):
            raise
        stale = out.with_name(out.name + f".stale-{int(time.time())}")
        log(f"{out}: {err}; moved to {stale.name}, recomputing")
        out.rename(stale)
        return fn()


def cached_json(path: Path, key: dict, compute):
    """compute() -> JSON-able, kept in `path` with `key`; recomputed when the key differs."""
    if path.exists():
        doc = json.loads(path.read_text())
        if doc.get("key") == key:
            return doc["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "value": value}, indent=1))
    return value


def per_unit_scores(run_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{perturbation: {model: {unit: mean over repeats}}} from rank's per_image.csv."""
    sums: dict = {}
    path = run_dir / "per_image.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["score"]:
                sums.setdefault(row["perturbation"], {}).setdefault(row["model"], {}).setdefault(row["unit"], []).append(float(row["score"]))
    return {p: {m: {u: float(np.mean(v)) for u, v in units.items()} for m, units in models.items()} for p, models in sums.items()}


def write_ranking(path: Path, scores: dict[str, float | None], setting: str) -> Path:
    """A ranking.json-shaped file (rows: name, score, perturbation) for validate."""
    order = sorted(scores, key=lambda n: (scores[n] is None, -(scores[n] or 0.0)))
    rows = [{"name": n, "rank": i, "score": scores[n], "perturbation": setting} for i, n in enumerate(order, 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"models": rows}, indent=1))
    return path


# ------------------------------------------------------------------------------ the run


@dataclass
class Config:
    max_images: int
    crop: int
    seed: int
    dropout_levels: tuple[float, ...]
    noise_levels: tuple[float, ...]
    main_dropout: str
    main_noise: str
    repeats_fix: int
    pixels: int
    permutations: int
    threads: int
    device: str = "cpu"
    sweep: bool = True
    every_level: tuple[float, ...] = ()  # dropout rates at every encoder/decoder level (empty: skip)
    prediction_cache: bool = True  # one per target, so that EI and K>1 runs reuse predictions


@dataclass
class TargetResult:
    name: str
    note: str
    n_images: int
    models: list[str]
    excluded: list[str]
    true: dict[str, float]
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)  # setting -> model -> score
    agreement: dict[str, dict] = field(default_factory=dict)  # setting -> validate result
    chosen: dict[str, str] = field(default_factory=dict)  # fix -> setting it chose
    seconds: dict[str, float] = field(default_factory=dict)
    seconds_total: dict[str, float] = field(default_factory=dict)  # accumulated over runs
    failures: list[dict] = field(default_factory=list)


def run_target(task: str, info: dict, spec: TargetSpec, models: list, splits: dict, cfg: Config) -> TargetResult | None:
    from segrank.job import rank
    from segrank.evaluate.baselines import BASELINES, SETTING_PREFIX, baselines
    from segrank.evaluate.job import evaluate, validate
    from segrank.io.targets import open_target
    from segrank.job.rundir import file_digest

    in_domain = info["domain"] == "em"
    eligible, excluded = [], []
    for m in models:
        src = model_sources(m)
        if not in_domain and src is not None and src & spec.sources:
            excluded.append(m.name)
        else:
            eligible.append(m)
    if len(eligible) < 3:
        log(f"{task}/{spec.name}: {len(eligible)} eligible models, skipped (need 3)")
        return None
    folder = build_target(spec, splits, structure=info.get("structure"), max_images=cfg.max_images, crop=cfg.crop, seed=cfg.seed)
    images_dir, labels_dir = folder / "images", folder / "labels"
    n_images = len(open_target(images_dir).images)
    work = WORK / task / folder.name
    res = TargetResult(spec.name, spec.note, n_images, [m.name for m in eligible], excluded, {})
    digests = {m.name: file_digest(m.path) for m in eligible}

    # --- true performance (cached per model file)
    t0 = time.perf_counter()
    for m in eligible:
        def compute(m=m):
            rows = evaluate([m], images_dir, labels=labels_dir, out=work / "evaluate" / m.name, device=cfg.device, progress=False)
            return rows[0]
        row = cached_json(work / "evaluate" / m.name / "cache.json", {"sha": digests[m.name], "images": n_images}, compute)
        res.true[m.name] = row["score"]
    res.seconds["evaluate"] = time.perf_counter() - t0
    perf_path = work / "performance.json"
    perf_path.write_text(json.dumps({"models": [{"name": n, "score": s, "metric": "map" if info["kind"] == "instance" else "f1",
                                                 "n_images": n_images} for n, s in res.true.items()]}, indent=1))

    # --- baselines (cached per model file)
    t0 = time.perf_counter()
    base_scores: dict[str, dict] = {}
    for m in eligible:
        def compute(m=m):
            rows = baselines([m], images_dir, labels=labels_dir, out=work / "baselines" / m.name, pixels=cfg.pixels,
                             seed=cfg.seed, device=cfg.device, progress=False)
            doc = json.loads((work / "baselines" / m.name / "baselines.json").read_text())
            return {"rows": rows, "notes": doc.get("notes", {})}
        value = cached_json(work / "baselines" / m.name / "cache.json",
                            {"sha": digests[m.name], "images": n_images, "pixels": cfg.pixels}, compute)
        base_scores[m.name] = {r["perturbation"][len(SETTING_PREFIX):]: r["score"] for r in value["rows"]}
        if value["notes"]:
            res.failures.append({"model": m.name, "stage": "ccfv", "error": next(iter(value["notes"].values()))})
    res.seconds["baselines"] = time.perf_counter() - t0
    for key in BASELINES:
        scores = {n: base_scores[n].get(key) for n in base_scores}
        if any(v is not None for v in scores.values()):
            res.scores[SETTING_PREFIX + key] = scores

    # --- rank: the sweep (with the main settings in it), EI, more repeats, every-level dropout;
    # one prediction cache per target, so the EI and more-repeats runs reuse the NHD run's predictions
    metric_main = "rand" if info["kind"] == "instance" else "nhd"
    sweep = [f"dropout:{p:g}" for p in cfg.dropout_levels] + [f"noise:{s:g}" for s in cfg.noise_levels]
    main = [cfg.main_dropout, cfg.main_noise]
    # call -> (perturbations, metric, repeats, models, what "dropout:" is called in the settings)
    calls = {metric_main: (list(dict.fromkeys((sweep if cfg.sweep else []) + main)), metric_main, 1, eligible, "dropout:")}
    if info["kind"] == "semantic":
        calls["ei"] = (main, "ei", 1, eligible, "dropout:")
    if cfg.repeats_fix > 1:
        calls[f"{metric_main}-k{cfg.repeats_fix}"] = (main, metric_main, cfg.repeats_fix, eligible, "dropout:")
    # dropout at every level (greybox --every-level): the same rate on each encoder resolution,
    # the bottleneck and each decoder input, so the skip connections are perturbed too
    if cfg.every_level:
        from segrank.errors import SegrankError
        from segrank.models.greybox import rewrite

        every = []
        for m in eligible:
            try:
                every.append(rewrite(m, tensor="auto", every_level=True))
            except SegrankError as err:
                res.failures.append({"model": m.name, "stage": "greybox every-level", "error": str(err)})
        for metric in [metric_main] + (["ei"] if info["kind"] == "semantic" else []):
            calls[f"every-{metric}"] = ([f"dropout:{p:g}" for p in cfg.every_level], metric, 1, every, "dropout-every:")
    per_unit: dict[str, dict] = {}
    for call, (specs, metric, repeats, models, dropout_name) in calls.items():
        out = work / f"rank-{call}"
        t0 = time.perf_counter()
        ranking = rank_dir_guard(out, lambda: rank(models, images_dir, out=out, perturbations=specs, metric=metric,
                                                    repeats=repeats, seed=cfg.seed, device=cfg.device, report=False,
                                                    progress=True, cache=work / "prediction-cache" if cfg.prediction_cache else None))
        if any(ranking.predictions.values()):  # a report-only pass (all units done) adds no time
            res.seconds[f"rank-{call}"] = time.perf_counter() - t0
        res.failures += ranking.failures
        suffix = f" K={repeats}" if repeats > 1 else ""

        def setting(perturbation: str) -> str:
            return f"{CTE_LABEL[metric]} {perturbation.replace('dropout:', dropout_name)}{suffix}"

        for row in ranking.rows:
            res.scores.setdefault(setting(row["perturbation"]), {})[row["name"]] = row["score"]
        for pert, by_model in per_unit_scores(out).items():
            per_unit[setting(pert)] = by_model

    # --- label-free fixes, from the per-image scores (no labels, no extra inference)
    label = "CTE-Rand" if info["kind"] == "instance" else "CTE-NHD"
    names = [m.name for m in eligible]

    def spread(setting: str) -> float:
        """Std of the model scores across the bank: the issue's "where the scores spread most"."""
        vals = [v for v in (res.scores.get(setting) or {}).values() if v is not None]
        return float(np.std(vals)) if len(vals) > 1 else -1.0

    def concordance(setting: str) -> float:
        """Kendall's W of the per-image rankings of the models (images as raters): how
        reproducible the ordering is from image to image; label-free."""
        from scipy.stats import rankdata

        by_model = per_unit.get(setting, {})
        units = sorted(set.intersection(*[set(by_model.get(n, {})) for n in names])) if names else []
        if len(units) < 2:
            return -1.0
        ranks = np.stack([rankdata([by_model[n][u] for n in names]) for u in units])  # images x models
        m, n = ranks.shape
        s_dev = np.sum((ranks.sum(axis=0) - m * (n + 1) / 2) ** 2)
        return float(12 * s_dev / (m * m * (n ** 3 - n)))

    def zmean(settings: list[str]) -> dict[str, float | None]:
        """Mean over settings of the model scores standardised across models (per target), so
        that no setting dominates by its scale; a model unscored in any setting gets None."""
        out = {n: [] for n in names}
        for s in settings:
            vals = res.scores.get(s, {})
            xs = np.array([vals.get(n) for n in names if vals.get(n) is not None], dtype=float)
            sd = xs.std() if xs.size > 1 else 0.0
            for n in names:
                v = vals.get(n)
                out[n].append(None if v is None else (0.0 if sd == 0 else (v - xs.mean()) / sd))
        return {n: (None if any(v is None for v in vs) or not vs else float(np.mean(vs))) for n, vs in out.items()}

    if cfg.sweep:
        drops = [f"{label} dropout:{p:g}" for p in cfg.dropout_levels]
        noises = [f"{label} noise:{s:g}" for s in cfg.noise_levels]
        for rule, criterion in (("max spread", spread), ("max Kendall W", concordance)):
            for fix, pool in ((f"fix: dropout p by {rule}", drops), (f"fix: noise sigma by {rule}", noises),
                              (f"fix: any sweep setting by {rule}", drops + noises)):
                pick = max(pool, key=criterion)
                res.chosen[fix] = pick
                res.scores[fix] = dict(res.scores[pick])
        res.scores["fix: all dropout levels (z-mean)"] = zmean(drops)
        res.scores["fix: all noise levels (z-mean)"] = zmean(noises)
        res.scores["fix: whole sweep (z-mean)"] = zmean(drops + noises)
    if cfg.every_level:
        for name in (label, "CTE-EI"):
            pool = [f"{name} dropout-every:{p:g}" for p in cfg.every_level]
            if all(s in res.scores for s in pool):
                pick = max(pool, key=spread)
                res.chosen[f"fix: {name} every-level p by max spread"] = pick
                res.scores[f"fix: {name} every-level p by max spread"] = dict(res.scores[pick])
    res.scores["fix: dropout + noise combined (z-mean)"] = zmean([f"{label} {cfg.main_dropout}", f"{label} {cfg.main_noise}"])
    # the best single scores (EI with dropout; every-level dropout on instances) beside a second,
    # label-free view of the model
    every0 = f"{label} dropout-every:{cfg.every_level[0]:g}" if cfg.every_level else None
    pairs = [(f"CTE-EI {cfg.main_dropout}", "baseline:confidence", "confidence"),
             (f"CTE-EI {cfg.main_dropout}", every0, f"every-level {cfg.every_level[0]:g}" if cfg.every_level else "")]
    if info["kind"] == "instance":
        pairs.append((every0, "baseline:confidence", "confidence"))
    for base, other, what in pairs:
        if base in res.scores and other in res.scores:
            res.scores[f"fix: {base} + {what} (z-mean)"] = zmean([base, other])
    if cfg.repeats_fix > 1:
        for s in main:
            key = f"{label} {s} K={cfg.repeats_fix}"
            if key in res.scores:
                res.scores[f"fix: {s} K={cfg.repeats_fix}"] = res.scores.pop(key)

    # --- compute time accumulated over runs (a rerun only adds what it computed, ~0 when cached)
    timings = work / "timings.json"
    total = json.loads(timings.read_text()) if timings.exists() else {}
    for k, v in res.seconds.items():
        total[k] = total.get(k, 0.0) + v
    timings.write_text(json.dumps(total, indent=1))
    res.seconds_total = total

    # --- agreement with the truth, per setting, through segrank's validate
    for setting, scores in res.scores.items():
        safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", setting)
        path = write_ranking(work / "rankings" / f"{safe}.json", scores, setting)
        result = validate([(path, perf_path)], n_permutations=cfg.permutations, seed=cfg.seed)
        res.agreement[setting] = {k: result[k] for k in ("kendall", "spearman", "pearson", "regret", "top1", "n_models")}
    return res


# ------------------------------------------------------------------------------ report


MAIN_ORDER = ["CTE-NHD {d}", "CTE-NHD {n}", "CTE-EI {d}", "CTE-EI {n}", "CTE-Rand {d}", "CTE-Rand {n}",
              "baseline:confidence", "baseline:entropy", "baseline:leep", "baseline:ccfv"]


def summarize_task(targets: list[TargetResult]) -> dict[str, dict]:
    from segrank.evaluate.correlation import summarize

    settings = list(dict.fromkeys(s for t in targets for s in t.agreement))
    out = {}
    for s in settings:
        per = {t.name: t.agreement[s] for t in targets if s in t.agreement}
        if per:
            summary = summarize(per)
            summary["n_targets"] = len(per)
            out[s] = summary
    return out


def fmt(v, digits=2, signed=True):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def ordered_settings(summary: dict, cfg: Config) -> list[str]:
    main = [s.format(d=cfg.main_dropout, n=cfg.main_noise) for s in MAIN_ORDER]
    first = [s for s in main if s in summary]
    fixes = [s for s in summary if s.startswith("fix:")]
    rest = [s for s in summary if s not in first and s not in fixes]
    return first + fixes + rest


def plot_sweep(all_results: dict, cfg: Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind, levels in ((axes[0], "dropout", cfg.dropout_levels), (axes[1], "noise", cfg.noise_levels)):
        for task, (targets, summary) in all_results.items():
            label = "CTE-Rand" if TASKS.get(task, {}).get("kind") == "instance" else "CTE-NHD"
            xs, ys, es = [], [], []
            for v in levels:
                s = summary.get(f"{label} {kind}:{v:g}")
                if s and s["spearman"]["mean"] is not None:
                    xs.append(v), ys.append(s["spearman"]["mean"]), es.append(s["spearman"]["std"])
            color = None
            if xs:
                line = ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{task} ({label})")
                color = line[0].get_color()
            conf = summary.get("baseline:confidence")
            if conf and conf["spearman"]["mean"] is not None:
                ax.axhline(conf["spearman"]["mean"], ls="--", lw=1, color=color or "grey")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.set_xticks(list(levels))
        ax.set_xticklabels([f"{v:g}" for v in levels])
        ax.minorticks_off()
        ax.set_xlabel("dropout rate p (bottleneck)" if kind == "dropout" else "noise sigma (normalised units)")
        ax.set_title(f"{kind}: mean Spearman over targets (+- std)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Spearman rho vs true performance")
    axes[1].legend(fontsize=8)
    axes[0].text(0.02, 0.02, "dashed: confidence baseline (same colour = same bank)", transform=axes[0].transAxes, fontsize=8, color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scatter(task: str, targets: list[TargetResult], settings: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(targets)
    fig, axes = plt.subplots(len(settings), cols, figsize=(2.9 * cols, 2.7 * len(settings)), squeeze=False)
    for r, setting in enumerate(settings):
        for c, t in enumerate(targets):
            ax = axes[r][c]
            scores = t.scores.get(setting, {})
            pts = [(scores.get(n), t.true[n], n) for n in t.models if scores.get(n) is not None]
            if pts:
                xs, ys, ns = zip(*pts)
                ax.scatter(xs, ys, s=18)
                for x, y, n in pts:
                    ax.annotate(n, (x, y), fontsize=5, alpha=0.7)
            a = t.agreement.get(setting, {})
            rho = a.get("spearman", {}).get("value")
            ax.set_title(f"{t.name}: rho {fmt(rho)}", fontsize=8)
            ax.tick_params(labelsize=6)
            if c == 0:
                ax.set_ylabel(f"{setting}\ntrue score", fontsize=7)
            if r == len(settings) - 1:
                ax.set_xlabel("label-free score", fontsize=7)
    fig.suptitle(f"{task}: label-free score vs true performance per target", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(all_results: dict, cfg: Config, meta: dict) -> None:
    lines = ["# Ranking quality on real data (issue 7)", "",
             f"Generated by `benchmarks/ranking_quality.py` ({meta['command']}); {meta['date']}; machine: {meta['machine']}; "
             f"wall time of this run {meta['seconds'] / 60:.1f} min (cached stages are not recomputed).", "",
             "Protocol: every model on every target it was not trained on (leave-one-source-out from each sidecar's "
             "`card.source_data`; targets are test ids of `benchmarks/bank/splits.json`, never trained on), "
             f"seeded subsets of at most {cfg.max_images} images per target, center-cropped to at most "
             f"{cfg.crop or 'full'} px per side. Main settings: {cfg.main_dropout} (bottleneck), {cfg.main_noise}; "
             "K = 1 repeat unless stated. True score: median per-image foreground F1 (semantic) or DSB2018 mAP "
             "(instance). Correlations per target via `segrank.evaluate.job.validate` "
             f"({cfg.permutations} permutations), then mean +- std over targets. Regret = best true score minus the "
             "true score of the model ranked first; top-1 = share of targets where the first pick is a best model. "
             "LEEP and CCFV see the target labels (supervised reference); confidence and entropy do not.", ""]
    if NOTES.exists() and REPORT == "ranking_quality":
        lines += [NOTES.read_text().strip(), ""]
    for task, (targets, summary) in all_results.items():
        lines += [f"## {task}", ""]
        if meta["banks"][task].get("fallback"):
            lines += [f"**Fallback bank** ({meta['banks'][task]['path']}): the bundled 6-model example, not the real bank. "
                      "With 4-6 models per target one target's Spearman has a standard error near 0.4.", ""]
        elif meta["banks"][task].get("combined"):
            lines += ["**Combined bank**: the real nuclei-semantic models trained so far plus the 6 example models "
                      "(renamed ex-*; base 8 instead of 16, other regimes), all trained on the same splits; "
                      "sources are read from each card, so leave-one-source-out holds for both.", ""]
        elif meta["banks"][task]["n_models"] < 8:
            lines += [f"**Partial bank**: {meta['banks'][task]['n_models']} models so far (the issue asks for >= 8, "
                      "12+ planned); with 3-4 models per target a correlation means little.", ""]
        lines += [f"Bank: {meta['banks'][task]['path']} ({meta['banks'][task]['n_models']} models). "
                  f"Targets ({len(targets)}):", ""]
        lines += ["| target | images | models | left out (trained on it) | true score range |", "| --- | --- | --- | --- | --- |"]
        for t in targets:
            vals = list(t.true.values())
            lines.append(f"| {t.name} ({t.note}) | {t.n_images} | {len(t.models)} | {', '.join(t.excluded) or '-'} | "
                         f"{min(vals):.3f} - {max(vals):.3f} |")
        lines += ["", "### Mean over targets", "",
                  "| setting | Kendall | Spearman | Pearson | regret | top-1 | paper K / S / P |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        paper = PAPER.get(task, PAPER["nuclei-semantic"] if meta["banks"][task].get("fallback") else {})
        for s in ordered_settings(summary, cfg):
            v = summary[s]
            ref = ""
            if s == f"CTE-NHD {cfg.main_dropout}" or s == f"CTE-Rand {cfg.main_dropout}":
                ref = "; ".join(f"{k}: {' / '.join(f'{x:.2f}' for x in nums)}" for k, nums in paper.items() if "dropout" in k)
            elif s == f"CTE-EI {cfg.main_noise}" and "CTE-EI noise" in paper:
                ref = " / ".join(f"{x:.2f}" for x in paper["CTE-EI noise"])
            elif s == "baseline:leep" and "LEEP" in paper:
                ref = " / ".join(f"{x:.2f}" for x in paper["LEEP"])
            lines.append(
                f"| {s} | {fmt(v['kendall']['mean'])} +- {fmt(v['kendall']['std'], signed=False)} | "
                f"{fmt(v['spearman']['mean'])} +- {fmt(v['spearman']['std'], signed=False)} | "
                f"{fmt(v['pearson']['mean'])} +- {fmt(v['pearson']['std'], signed=False)} | "
                f"{v['regret']['mean']:.3f} | {v['top1_rate']:.2f} | {ref} |")
        lines += ["", "### Per target: Kendall / Spearman / Pearson (regret)", ""]
        shown = [s for s in ordered_settings(summary, cfg) if not s.startswith("CTE-NHD dropout:") or s == f"CTE-NHD {cfg.main_dropout}"]
        shown = [s for s in shown if not re.match(r"CTE-(NHD|Rand) noise:\d", s) or s == f"CTE-NHD {cfg.main_noise}"]
        shown = [s for s in shown if not re.match(r"CTE-Rand dropout:", s) or s == f"CTE-Rand {cfg.main_dropout}"]
        lines += ["| setting | " + " | ".join(t.name for t in targets) + " |", "| --- |" + " --- |" * len(targets)]
        for s in shown:
            cells = []
            for t in targets:
                a = t.agreement.get(s)
                if not a:
                    cells.append("-")
                    continue
                cells.append(f"{fmt(a['kendall']['value'])} / {fmt(a['spearman']['value'])} / {fmt(a['pearson']['value'])} "
                             f"({a['regret']:.3f})")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines += ["", "Spearman permutation p-values of the main settings:", ""]
        lines += ["| setting | " + " | ".join(t.name for t in targets) + " |", "| --- |" + " --- |" * len(targets)]
        for s in shown[:6]:
            lines.append(f"| {s} | " + " | ".join(
                fmt(t.agreement[s]["spearman"]["p"], 3, signed=False) if s in t.agreement and t.agreement[s]["spearman"]["p"] is not None else "-"
                for t in targets) + " |")
        lines += ["", "How much each main setting just follows confidence (label-free; Spearman between the two scores "
                  "across models, mean over targets):", ""]
        lines += ["| setting | Spearman with confidence |", "| --- | --- |"]
        for s in shown[:6]:
            rhos = []
            for t in targets:
                a, b = t.scores.get(s, {}), t.scores.get("baseline:confidence", {})
                common = [n for n in t.models if a.get(n) is not None and b.get(n) is not None]
                if len(common) >= 3 and s != "baseline:confidence":
                    from scipy.stats import spearmanr

                    rho = spearmanr([a[n] for n in common], [b[n] for n in common])[0]
                    if math.isfinite(rho):
                        rhos.append(rho)
            if rhos:
                lines.append(f"| {s} | {fmt(float(np.mean(rhos)))} |")
        lines += ["", "### Perturbation-strength sweep (mean Spearman over targets; score spread = std of model scores)", ""]
        label = "CTE-Rand" if TASKS.get(task, {}).get("kind") == "instance" else "CTE-NHD"
        lines += ["| setting | Kendall | Spearman | Pearson | regret | top-1 | mean score | mean spread |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, kind, levels in ((label, "dropout", cfg.dropout_levels), (label, "noise", cfg.noise_levels),
                                   (label, "dropout-every", cfg.every_level), ("CTE-EI", "dropout-every", cfg.every_level)):
            for lv in levels:
                s = f"{name} {kind}:{lv:g}"
                if s not in summary:
                    continue
                v = summary[s]
                means = [np.mean([x for x in t.scores[s].values() if x is not None]) for t in targets if s in t.scores]
                spreads = [np.std([x for x in t.scores[s].values() if x is not None]) for t in targets if s in t.scores]
                lines.append(f"| {s} | {fmt(v['kendall']['mean'])} | {fmt(v['spearman']['mean'])} | {fmt(v['pearson']['mean'])} | "
                             f"{v['regret']['mean']:.3f} | {v['top1_rate']:.2f} | {np.mean(means):.3f} | {np.mean(spreads):.4f} |")
        chosen = {fix: [t.chosen.get(fix, "-") for t in targets] for fix in sorted({f for t in targets for f in t.chosen})}
        if chosen:
            lines += ["", "Settings the label-free spread rule picked per target:", "",
                      "| fix | " + " | ".join(t.name for t in targets) + " |", "| --- |" + " --- |" * len(targets)]
            for fix, picks in chosen.items():
                lines.append(f"| {fix} | " + " | ".join(p.split(' ', 1)[1] if ' ' in p else p for p in picks) + " |")
        if cfg.sweep:
            lines += ["", f"![sweep]({REPORT}_sweep.png)"]
        lines += ["", f"![scatter]({REPORT}_scatter_{task}.png)", ""]
        lines += ["### True performance per target (median over images)", "",
                  "| model | " + " | ".join(t.name for t in targets) + " |", "| --- |" + " --- |" * len(targets)]
        all_models = list(dict.fromkeys(n for t in targets for n in t.models + t.excluded))
        for n in all_models:
            lines.append(f"| {n} | " + " | ".join(f"{t.true[n]:.3f}" if n in t.true else "(source)" for t in targets) + " |")
        # goals
        goal = GOALS["spearman_nuclei"] if task.startswith("nuclei") or meta["banks"][task].get("fallback") else GOALS["spearman_other"]
        lines += ["", "### Against the issue's goals", ""]
        best_free = max((summary[s]["spearman"]["mean"] or -9) for s in summary if s in ("baseline:confidence", "baseline:entropy"))
        for s in ordered_settings(summary, cfg)[:4]:
            if not s.startswith("CTE"):
                continue
            v = summary[s]
            ok = (v["spearman"]["mean"] or -9) >= goal and v["regret"]["mean"] <= GOALS["regret"] and (v["spearman"]["mean"] or -9) > best_free
            lines.append(f"- {s}: mean Spearman {fmt(v['spearman']['mean'])} (goal >= {goal}), regret {v['regret']['mean']:.3f} "
                         f"(goal <= {GOALS['regret']}), best label-free baseline {fmt(best_free)}: **{'met' if ok else 'not met'}**")
        fails = [f for t in targets for f in t.failures]
        if fails:
            lines += ["", "Failures / notes:", ""] + sorted({f"- {f['model']} ({f['stage']}): {f['error']}" for f in fails})
        lines.append("")
    lines += ["## Timing", "", "Compute time per stage, accumulated over all runs of this configuration (cached stages add "
              "~0; a run made before per-stage timing was kept counts as one wall time from its log, in the total only), "
              f"{meta['machine']}:", "",
              "| task | target | evaluate | baselines | rank calls | total |", "| --- | --- | --- | --- | --- | --- |"]
    grand = 0.0
    for task, (targets, _) in all_results.items():
        for t in targets:
            sec = t.seconds_total or t.seconds
            ranks = sum(v for k, v in sec.items() if k.startswith("rank"))
            tot = sum(sec.values())
            grand += tot
            lines.append(f"| {task} | {t.name} | {sec.get('evaluate', 0):.0f} s | {sec.get('baselines', 0):.0f} s | {ranks:.0f} s | {tot / 60:.1f} min |")
    lines += ["", f"All tasks: {grand / 60:.1f} min of compute."]
    lines.append("")
    (RESULTS / f"{REPORT}.md").write_text("\n".join(lines))


def discover_banks(names: list[str] | None, min_models: int) -> dict[str, dict]:
    """Task banks with at least `min_models` models (or those named); the bundled example as the
    nuclei-semantic fallback while the real bank is not there yet (or when named "example")."""
    banks = {}
    for task in TASKS:
        folder = HERE / "bank" / task
        n = len(list(folder.glob("*.onnx"))) if folder.is_dir() else 0
        if n and ((names and task in names) or (not names and n >= min_models)):
            banks[task] = {"path": folder, "fallback": False, **TASKS[task]}
    if (names and "example" in names) or (not names and "nuclei-semantic" not in banks):
        banks["example"] = {"path": EXAMPLE_BANK, "fallback": True, "domain": "nuclei", "kind": "semantic"}
    semantic = HERE / "bank" / "nuclei-semantic"
    if names and "nuclei-combined" in names and semantic.is_dir():
        # the example's models (renamed ex-*) and the real bank's so far: same output space,
        # same splits, more models per target while the real bank is incomplete
        banks["nuclei-combined"] = {"path": semantic, "also": [(EXAMPLE_BANK, "ex-")], "fallback": False,
                                    "combined": True, "domain": "nuclei", "kind": "semantic"}
    return banks


def load_models(info: dict):
    from segrank.models import load_bank

    models, problems = load_bank(info["path"])
    for path, prefix in info.get("also", []):
        more, extra = load_bank(path)
        models += [m.with_(name=prefix + m.name) for m in more]
        problems += extra
    return models, problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="*", default=None,
                   help="task banks (default: every bank present, else the example); also 'example' and "
                        "'nuclei-combined' (the real nuclei-semantic models + the example's)")
    p.add_argument("--max-images", type=int, default=6)
    p.add_argument("--crop", type=int, default=384, help="center crop per side (0: full size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout-levels", default="0.05,0.1,0.2,0.3,0.5")
    p.add_argument("--noise-levels", default="0.01,0.03,0.1,0.2,0.3")
    p.add_argument("--main-dropout", default="dropout:0.2")
    p.add_argument("--main-noise", default="noise:0.1-0.2")
    p.add_argument("--repeats-fix", type=int, default=3, help="K of the more-repeats run (1: skip it)")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--every-level", default="", help="dropout rates at every U-Net level, e.g. 0.05,0.1,0.2 (empty: skip)")
    p.add_argument("--no-prediction-cache", action="store_true",
                   help="keep no predictions (they take ~0.3 MB per image and run; EI and K>1 runs then predict again)")
    p.add_argument("--report", default="ranking_quality",
                   help="results/REPORT.md/.json and figures (the findings notes go into the default report only)")
    p.add_argument("--machine", default="", help="where the cached runs were computed, for the report "
                   "(default: this machine), e.g. when they came from a GPU machine and this run only reports")
    p.add_argument("--build-targets", action="store_true", help="only write the target folders, then stop")
    p.add_argument("--device", default="cpu", help="ONNX Runtime provider for every run (cpu, cuda, auto)")
    p.add_argument("--pixels", type=int, default=2000, help="pixels per image (LEEP) / per class per image (CCFV)")
    p.add_argument("--permutations", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per session")
    p.add_argument("--only-targets", nargs="*", default=None)
    p.add_argument("--min-models", type=int, default=8, help="a task bank enters (unnamed) from this many models")
    args = p.parse_args(argv)

    limit_threads(args.threads)
    global REPORT
    REPORT = args.report

    cfg = Config(args.max_images, args.crop, args.seed, tuple(float(x) for x in args.dropout_levels.split(",")),
                 tuple(float(x) for x in args.noise_levels.split(",")), args.main_dropout, args.main_noise,
                 args.repeats_fix, args.pixels, args.permutations, args.threads, device=args.device,
                 sweep=not args.no_sweep, prediction_cache=not args.no_prediction_cache,
                 every_level=tuple(float(x) for x in args.every_level.split(",") if x.strip()))
    splits = json.loads(SPLITS.read_text())
    banks = discover_banks(args.tasks, args.min_models)
    start = time.perf_counter()
    all_results, meta_banks = {}, {}
    for task, info in banks.items():
        models, problems = load_models(info)
        for pr in problems:
            log(f"{task}: {pr.message}")
        meta_banks[task] = {"path": " + ".join(str(Path(p).relative_to(REPO)) for p in [info["path"]] + [a for a, _ in info.get("also", [])]),
                            "combined": info.get("combined", False), "fallback": info["fallback"], "n_models": len(models),
                            "models": {m.name: {"sources": sorted(f"{d}/{g}" if g else d for d, g in (model_sources(m) or set())),
                                                "card_validation": (m.card or {}).get("validation", {}).get("score")} for m in models}}
        specs = nuclei_targets(splits) if info["domain"] == "nuclei" else em_targets()
        if args.only_targets:
            specs = [s for s in specs if s.name in args.only_targets]
        targets = []
        for spec in specs:
            if args.build_targets:
                print(build_target(spec, splits, structure=info.get("structure"), max_images=cfg.max_images,
                                   crop=cfg.crop, seed=cfg.seed))
                continue
            log(f"{task}/{spec.name}: start")
            result = run_target(task, info, spec, models, splits, cfg)
            if result is not None:
                targets.append(result)
                sp = result.agreement.get(f"CTE-NHD {cfg.main_dropout}", result.agreement.get(f"CTE-Rand {cfg.main_dropout}", {}))
                log(f"{task}/{spec.name}: done, Spearman main dropout {fmt(sp.get('spearman', {}).get('value'))}")
        if targets:
            all_results[task] = (targets, summarize_task(targets))
    if args.build_targets:
        return 0
    seconds = time.perf_counter() - start
    import platform

    meta = {"command": "python benchmarks/ranking_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds,
            "machine": args.machine or (f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores shared, "
                                        f"{args.threads} ONNX Runtime thread(s), device {args.device}"), "banks": meta_banks}
    RESULTS.mkdir(exist_ok=True)
    doc = {"meta": meta, "config": {k: v for k, v in cfg.__dict__.items()}, "paper": PAPER, "goals": GOALS, "tasks": {}}
    for task, (targets, summary) in all_results.items():
        doc["tasks"][task] = {"summary": summary, "targets": [t.__dict__ for t in targets]}
        label = "CTE-Rand" if banks[task]["kind"] == "instance" else "CTE-NHD"
        shown = [f"{label} {cfg.main_dropout}", f"{label} {cfg.main_noise}", f"CTE-EI {cfg.main_dropout}"]
        shown += [f"{label} dropout-every:{cfg.every_level[0]:g}"] if cfg.every_level else []
        plot_scatter(task, targets, [s for s in shown + ["baseline:confidence"] if any(s in t.scores for t in targets)],
                     RESULTS / f"{REPORT}_scatter_{task}.png")
    (RESULTS / f"{REPORT}.json").write_text(json.dumps(doc, indent=1, default=str))
    if all_results and cfg.sweep:
        plot_sweep(all_results, cfg, RESULTS / f"{REPORT}_sweep.png")
    write_report(all_results, cfg, meta)
    log(f"done in {seconds / 60:.1f} min: {RESULTS / (REPORT + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
