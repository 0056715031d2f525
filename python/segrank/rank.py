"""The main job: perturb, predict, score and rank every model of a bank on one target.

Stages, each its own module: models/ (load the bank, grey-box rewrite), io/ (the target),
perturb/ (seeded perturbations), inference/ (blockwise prediction), postprocess/ (instance
labels), scoring/ (per-unit consistency, aggregation), report/ (files and plots). This module
only orchestrates: it decides what to run, writes per-unit results as they come and resumes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import PredictionError, SegrankError
from .models.description import Model
from .perturb.input import PerturbationSpec, default_perturbation, make_input_perturbation
from .perturb.seeds import rng
from .scoring import aggregate, prediction_for_metric, ranking_order, resolve_metric, unit_consistency

PER_UNIT_FIELDS = ("model", "perturbation", "unit", "repeat", "score", "status")
# Settings whose change alters results: a run directory refuses to resume under other values.
RESULT_SETTINGS = ("perturbations", "metric", "repeats", "seed", "threshold", "units", "block")


@dataclass(frozen=True)
class Unit:
    """One scoring unit: an image, or a block (`region`) of a volume."""

    name: str
    image: str
    region: tuple[slice, ...] | None = None


class RunDirectory:
    """DIR of a ranking: settings.json, per_unit.csv (appended as results come) and failures."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.per_unit = self.out / "per_image.csv"

    def check_settings(self, settings: dict) -> None:
        path = self.out / "settings.json"
        if path.exists():
            old = json.loads(path.read_text())
            diff = [k for k in RESULT_SETTINGS if old.get(k) != settings.get(k)]
            changed = [
                name for name, info in settings.get("models", {}).items()
                if name in old.get("models", {}) and old["models"][name].get("sha256") != info.get("sha256")
            ]
            if changed:
                diff.append("model files of " + ", ".join(changed))
            if diff:
                raise SegrankError(
                    f"{self.out}: holds a ranking made with other settings ({', '.join(diff)}); "
                    "choose another --out or delete it"
                )
        path.write_text(json.dumps(settings, indent=2))

    def done(self) -> dict[tuple[str, str, str, int], dict]:
        """Rows already written, keyed by (model, perturbation, unit, repeat)."""
        if not self.per_unit.exists():
            return {}
        rows = {}
        with self.per_unit.open(newline="") as f:
            for row in csv.DictReader(f):
                rows[(row["model"], row["perturbation"], row["unit"], int(row["repeat"]))] = row
        return rows

    def append(self, rows: list[dict]) -> None:
        new = not self.per_unit.exists()
        with self.per_unit.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PER_UNIT_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def choose_perturbations(specs: list[str], models: list[Model]) -> list[PerturbationSpec]:
    """Parse the user's specs, or pick method.md's default for the whole bank."""
    if specs:
        return [PerturbationSpec.parse(s) for s in specs]
    from .models.greybox import find_bottleneck

    def rewritable(model: Model) -> bool:
        if model.greybox:
            return True
        try:
            find_bottleneck(model)
            return True
        except SegrankError:
            return False

    # One setting for every model, or the scores would not be comparable.
    return [default_perturbation(dropout_possible=all(rewritable(m) for m in models))]


def image_units(name: str, shape: tuple[int, ...], spatial_axes: str, block: tuple[int, ...]) -> list[Unit]:
    """A 2D image is one unit; a volume is cut into a fixed grid of blocks (chosen without labels)."""
    if len(spatial_axes) < 3:
        return [Unit(name, name)]
    spatial = shape[-3:]
    units = []
    steps = [range(0, s, b) for s, b in zip(spatial, block[-3:])]
    for z in steps[0]:
        for y in steps[1]:
            for x in steps[2]:
                region = tuple(slice(o, min(o + b, s)) for o, b, s in zip((z, y, x), block[-3:], spatial))
                units.append(Unit(f"{name}[{z}:{region[0].stop},{y}:{region[1].stop},{x}:{region[2].stop}]", name, region))
    return units


def _check_finite(prob: np.ndarray, model: Model, image: str) -> np.ndarray:
    if not np.isfinite(prob).all():
        raise PredictionError(f"{model.name}: NaN or infinite output on image {image}")
    return prob


def score_image(
    model: Model,
    image_name: str,
    data: np.ndarray,
    axes: str,
    units: list[Unit],
    specs: list[PerturbationSpec],
    *,
    metric: str,
    repeats: int,
    seed: int,
    threshold: float,
    session,
    dropout_model: Model | None,
    dropout_session,
    todo: set[tuple[str, int]] | None = None,
) -> list[dict]:
    """All rows for one (model, image): one unperturbed run shared by every perturbation/repeat.

    `todo` limits the work to (perturbation, repeat) pairs not yet done (resume).
    """
    from .inference.predict import normalize_image, predict_image
    from .perturb.dropout import channel_mask

    rows = []
    baselines: dict[str, np.ndarray] = {}

    def baseline(m: Model, sess) -> np.ndarray:
        # The unperturbed and the perturbed run go through the same graph, so rounding
        # differences between graphs never count as inconsistency.
        if m.name + str(m.greybox) not in baselines:
            prob = predict_image(m, data, axes=axes, session=sess)
            baselines[m.name + str(m.greybox)] = prediction_for_metric(_check_finite(prob, m, image_name), m, metric)
        return baselines[m.name + str(m.greybox)]

    center = None
    for spec in specs:
        for repeat in range(repeats):
            if todo is not None and (str(spec), repeat) not in todo:
                continue
            if spec.is_dropout:
                if dropout_model is None:
                    continue
                m, sess = dropout_model, dropout_session
                ndim = m.ndim
                # One ceil(pC) draw per masked tensor when the rewrite masks several levels.
                mask = channel_mask(
                    m.dropout_levels or m.dropout_channels, spec.low, rng(seed, m.name, image_name, repeat, "dropout"),
                    ndim=ndim,
                )
                prob = predict_image(m, data, axes=axes, session=sess, dropout_mask=mask)
            else:
                m, sess = model, session
                if center is None and spec.kind == "contrast":
                    center = float(np.mean(normalize_image(m, data, axes=axes)))
                perturb = make_input_perturbation(
                    spec, seed=seed, model=m.name, unit=image_name, repeat=repeat, center=center or 0.0
                )
                prob = predict_image(m, data, axes=axes, session=sess, perturb=perturb)
            reference = baseline(m, sess)
            perturbed = prediction_for_metric(_check_finite(prob, m, image_name), m, metric)
            for unit in units:
                region = (Ellipsis,) + unit.region if unit.region else (Ellipsis,)
                score = unit_consistency(reference[region], perturbed[region], metric=metric, threshold=threshold)
                rows.append(
                    {
                        "model": model.name,
                        "perturbation": str(spec),
                        "unit": unit.name,
                        "repeat": repeat,
                        "score": "" if score is None else repr(score),
                        "status": "ok" if score is not None else "no-foreground",
                    }
                )
    return rows


@dataclass
class Ranking:
    """The result of `rank`: the rows of ranking.json plus where everything was written."""

    rows: list[dict]
    settings: dict
    failures: list[dict]
    out: Path

    def to_json(self) -> dict:
        return {
            "models": self.rows,
            "settings": self.settings,
            "failures": self.failures,
            "segrank_version": __version__,
        }


@dataclass(frozen=True)
class ScoreTask:
    """The work for one (model, image): everything a worker needs, picklable (no sessions)."""

    model: Model
    dropout_model: Model | None
    image: object  # TargetImage: lazy pixels, reopened on the worker
    units: tuple[Unit, ...]
    todo: frozenset
    specs: tuple[PerturbationSpec, ...]
    metric: str
    repeats: int
    seed: int
    threshold: float
    device: str
    threads: int | None


def run_score_task(task: ScoreTask) -> dict:
    """Score one (model, image) in this process; failures come back as data, not exceptions."""
    from .inference.session import cached_session

    try:
        session, _ = cached_session(task.model, device=task.device, threads=task.threads)
        dropout_session = None
        if task.dropout_model is not None:
            dropout_session, _ = cached_session(task.dropout_model, device=task.device, threads=task.threads)
        data = np.asarray(task.image.data)
        rows = score_image(
            task.model, task.image.name, data, task.image.axes, list(task.units), list(task.specs),
            metric=task.metric, repeats=task.repeats, seed=task.seed, threshold=task.threshold,
            session=session, dropout_model=task.dropout_model, dropout_session=dropout_session, todo=set(task.todo),
        )
    except SegrankError as err:
        return {"failure": {"model": task.model.name, "stage": "predict", "image": task.image.name, "error": str(err)}}
    return {"rows": rows}


def _execute(tasks: list[ScoreTask], *, workers: int | None, scheduler: str | None):
    """Results of `tasks` as they complete: in this process, or on a dask.distributed cluster
    (a LocalCluster of `workers` processes, or the scheduler at `scheduler`)."""
    if not workers and not scheduler:
        for task in tasks:
            yield run_score_task(task)
        return
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = [client.submit(run_score_task, t, pure=False) for t in tasks]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def rank(
    bank,
    target,
    *,
    out,
    perturbations: list[str] | tuple[str, ...] = (),
    metric: str = "auto",
    repeats: int = 1,
    seed: int = 0,
    device: str = "auto",
    max_images: int | None = None,
    axes: str | None = None,
    threshold: float = 0.5,
    block: tuple[int, ...] = (64, 256, 256),
    workers: int | None = None,
    scheduler: str | None = None,
    n_boot: int = 1000,
    report: bool = True,
    progress: bool = True,
) -> Ranking:
    """Rank the models of `bank` on the unlabelled `target` by prediction consistency.

    Parameters
    ----------
    bank : path or list of Model
        A bank folder / list file, or models already loaded.
    target : path
        A folder of images, a stack, or a Zarr/HDF5 volume (see segrank.io.targets).
    out : path
        Run directory; results are written as they come and a rerun resumes.
    perturbations : list of str
        Specs such as ``dropout:0.2`` or ``noise:0.1-0.2``; default: dropout at the bottleneck
        when every model allows it, else Gaussian noise (method.md).
    metric : {"auto", "nhd", "ei", "rand"}
        auto: rand for instance models, nhd for semantic ones.
    repeats : int
        Perturbed runs per unit (K); the unperturbed run is shared.
    seed : int
        Seeds every draw with (seed, model, image, repeat).
    max_images : int, optional
        Score a seeded random subset of this many images.
    block : tuple of int
        Scoring units of a volume: blocks of this (z, y, x) shape on a fixed grid.
    workers, scheduler : optional
        Run (model, image) tasks on a dask.distributed LocalCluster of `workers` processes, or
        on an existing scheduler address; default: in this process.

    Notes
    -----
    Per unit the score is the mean over the K repeats of consistency(unperturbed, perturbed);
    per (model, perturbation) the median over scored units, with a paired bootstrap over units
    for the 95% interval and the probability of being best. Units where neither run predicts
    foreground have no score; a model with no scored unit ranks last.
    """
    from tqdm import tqdm

    from .inference.session import create_session, default_threads
    from .io.targets import open_target
    from .models import load_bank
    from .models.greybox import rewrite

    if repeats < 1:
        raise SegrankError(f"--repeats must be >= 1, got {repeats}")
    run = RunDirectory(Path(out))
    failures: list[dict] = []
    if isinstance(bank, (list, tuple)):
        models = list(bank)
    else:
        models, problems = load_bank(bank)
        failures += [{"model": p.name, "stage": "load", "error": p.message} for p in problems]
    if not models:
        raise SegrankError(f"{bank}: no usable model in the bank")
    images = list(open_target(target, axes=axes).images)
    if not images:
        raise SegrankError(f"{target}: no image found")
    if max_images is not None and max_images < len(images):
        pick = rng(seed, "target", "subset", 0, "max-images").choice(len(images), size=max_images, replace=False)
        images = [images[i] for i in sorted(pick)]
    specs = choose_perturbations(list(perturbations), models)
    metrics = {m.name: resolve_metric(metric, m) for m in models}

    settings = {
        "bank": str(bank) if not isinstance(bank, (list, tuple)) else "<models>",
        "target": str(target),
        "perturbations": [str(s) for s in specs],
        "metric": metric,
        "repeats": repeats,
        "seed": seed,
        "threshold": threshold,
        "block": list(block),
        "units": [im.name for im in images],
        "max_images": max_images,
        "device": device,
        "models": {m.name: {"file": str(m.path), "sha256": file_digest(m.path)} for m in models},
    }
    run.check_settings(settings)
    done = run.done()
    providers: dict[str, str] = {}
    threads = default_threads(workers) if workers else None

    tasks, skipped = [], 0
    for model in models:
        try:
            # Loads the model once here, so that a broken file is reported before any work.
            _, providers[model.name] = create_session(model, device=device, threads=threads)
        except SegrankError as err:
            failures.append({"model": model.name, "stage": "session", "error": str(err)})
            continue
        dropout_model = None
        if any(s.is_dropout for s in specs):
            try:
                dropout_model = model if model.greybox else rewrite(model, tensor="auto")
            except SegrankError as err:
                failures.append({"model": model.name, "stage": "greybox", "error": str(err)})
        for im in images:
            units = tuple(image_units(im.name, im.data.shape, _spatial(im.axes), block))
            todo = frozenset(
                (str(s), r)
                for s in specs
                for r in range(repeats)
                if not (s.is_dropout and dropout_model is None)
                and not all((model.name, str(s), u.name, r) in done for u in units)
            )
            if not todo:
                skipped += 1
                continue
            tasks.append(ScoreTask(model, dropout_model, im, units, todo, tuple(specs), metrics[model.name],
                                   repeats, seed, threshold, device, threads))

    bar = tqdm(total=len(tasks) + skipped, initial=skipped, desc="rank", unit="img", disable=not progress,
               file=sys.stderr)
    for result in _execute(tasks, workers=workers, scheduler=scheduler):
        if "failure" in result:
            failures.append(result["failure"])
            print(f"segrank: {result['failure']['error']}", file=sys.stderr)
        else:
            run.append(result["rows"])
            for row in result["rows"]:
                done[(row["model"], row["perturbation"], row["unit"], int(row["repeat"]))] = row
        bar.update(1)
    bar.close()

    rows = _ranking_rows(models, images, specs, done, metrics, providers, failures, block, n_boot, seed, repeats)
    settings["provider"] = providers
    ranking = Ranking(rows=rows, settings=settings, failures=failures, out=run.out)
    from .report import write_outputs

    examples = None
    if report:
        by_name = {t.model.name: t for t in tasks}
        examples = example_tiles(rows, models, images, specs[0], seed=seed, device=device,
                                 dropout_models={n: t.dropout_model for n, t in by_name.items()})
    write_outputs(ranking, report=report, examples=examples)
    return ranking


def example_tiles(rows, models, images, spec, *, seed, device, dropout_models, size=256) -> list[dict]:
    """(image, unperturbed, perturbed) foreground probabilities of the best and the worst scored
    model on the first image, for the report: what a person looks at to see why."""
    from .inference.predict import normalize_image, predict_image
    from .perturb.dropout import channel_mask

    scored = [r for r in rows if r["perturbation"] == str(spec) and r["score"] is not None]
    if not scored or not images:
        return []
    picks = [("best", scored[0])] + ([("worst", scored[-1])] if len(scored) > 1 else [])
    image = images[0]
    data = np.asarray(image.data)
    out = []
    for label, row in picks:
        model = next(m for m in models if m.name == row["name"])
        try:
            if spec.is_dropout:
                model = dropout_models.get(model.name) or model
                if not model.greybox:
                    continue
                mask = channel_mask(model.dropout_levels or model.dropout_channels, spec.low,
                                    rng(seed, model.name, image.name, 0, "dropout"), ndim=model.ndim)
                perturbed = predict_image(model, data, axes=image.axes, device=device, dropout_mask=mask)
            else:
                center = float(np.mean(normalize_image(model, data, axes=image.axes))) if spec.kind == "contrast" else 0.0
                perturb = make_input_perturbation(spec, seed=seed, model=model.name, unit=image.name, repeat=0, center=center)
                perturbed = predict_image(model, data, axes=image.axes, device=device, perturb=perturb)
            unperturbed = predict_image(model, data, axes=image.axes, device=device)
        except SegrankError:
            continue
        out.append({
            "label": f"{label}: {row['name']} ({row['score']:.3f}) on {image.name}",
            "image": _thumbnail(data, image.axes, size),
            "unperturbed": _thumbnail(unperturbed[model.foreground_channel], _spatial(image.axes), size),
            "perturbed": _thumbnail(perturbed[model.foreground_channel], _spatial(image.axes), size),
        })
    return out


def _thumbnail(array: np.ndarray, axes: str, size: int) -> np.ndarray:
    """A 2D view: first channel, middle z slice, strided down to about `size` pixels."""
    a = np.asarray(array)
    for letter in axes[:-2]:
        a = a[a.shape[0] // 2] if letter == "z" else a[0]
    step = max(1, max(a.shape) // size)
    return a[::step, ::step].astype(np.float32)


def _spatial(axes: str) -> str:
    return "".join(a for a in axes if a in "zyx")


def _ranking_rows(models, images, specs, done, metrics, providers, failures, block, n_boot, seed, repeats) -> list[dict]:
    failed_images: dict[str, int] = {}
    for f in failures:
        if f["stage"] in ("session", "predict"):
            failed_images[f["model"]] = failed_images.get(f["model"], 0) + (1 if f["stage"] == "predict" else len(images))
    rows = []
    for spec in specs:
        names, matrix = [], []
        units = [u.name for im in images for u in image_units(im.name, im.data.shape, _spatial(im.axes), block)]
        for model in models:
            per_unit = []
            for u in units:
                vals = [done.get((model.name, str(spec), u, r)) for r in range(repeats)]
                scores = [float(v["score"]) for v in vals if v and v["score"] != ""]
                per_unit.append(np.mean(scores) if scores else math.nan)
            names.append(model.name)
            matrix.append(per_unit)
        results, p_sep = aggregate(names, np.array(matrix, dtype=float), n_boot=n_boot, seed=seed, label=str(spec))
        order = ranking_order(results)
        for rank_pos, i in enumerate(order, start=1):
            r = results[i]
            model = models[i]
            status = "ok"
            if model.name in failed_images and r.n_scored == 0:
                status = "failed"
            elif model.name in failed_images:
                status = f"failed on {min(failed_images[model.name], len(images))} of {len(images)} images"
            elif r.score is None:
                status = "predicts no foreground"
            rows.append(
                {
                    "name": r.name,
                    "rank": rank_pos,
                    "score": r.score,
                    "ci_low": r.ci_low,
                    "ci_high": r.ci_high,
                    "p_best": r.p_best,
                    "n_images": len(images),
                    "n_units": r.n_units,
                    "n_scored": r.n_scored,
                    "perturbation": str(spec),
                    "metric": metrics[model.name],
                    "provider": providers.get(model.name),
                    "status": status,
                    "top_two_separated": (p_sep is not None and p_sep >= 0.95) if rank_pos == 1 else None,
                }
            )
    return rows


__all__ = ["Ranking", "rank"]
