"""The main job: perturb, predict, score and rank every model of a bank on one target.

Stages, each its own module: models/ (load the bank, grey-box rewrite), io/ (the target),
perturb/ (seeded perturbations), inference/ (blockwise prediction), postprocess/ (instance
labels), scoring/ (per-unit consistency, aggregation), report/ (files and plots). This module
only orchestrates: it decides what to run, writes per-unit results as they come and resumes.

Work is split into tasks that run in this process or on dask.distributed workers (`_execute`):
one task per (model, 2D image), and one task per (model, scoring block) of a volume
(`scoring.volume`: the block plus the model's halo is read, predicted and scored in bounded
memory, with the whole volume's normalisation, computed here once per (model, volume)).
`rank(..., in_memory=True)` predicts each volume whole instead: the reference that the
blockwise path equals exactly (same tiles, same normalisation, same per-block draws).
Both build their prediction runs with `scoring.runs.plan_run` (one unperturbed run per graph,
shared by every perturbation and repeat) and, given a cache folder, keep them in
`scoring.cache` so that later runs compute only what is missing.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import SegrankError
from .models.description import Model
from .perturb.input import PerturbationSpec, default_perturbation
from .perturb.seeds import rng
from .scoring import aggregate, prediction_for_metric, ranking_order, resolve_metric, unit_consistency
from .scoring.options import ScoringOptions

PER_UNIT_FIELDS = ("model", "perturbation", "unit", "repeat", "score", "status")
# Settings whose change alters results: a run directory refuses to resume under other values.
# (Repeats are not among them: repeat r is drawn the same whatever K is, so a larger K extends.)
RESULT_SETTINGS = ("perturbations", "metric", "seed", "threshold", "units", "block", "tile", "halo")
GPU = "GPU"  # the dask.distributed resource a GPU worker declares (one per GPU)


@dataclass(frozen=True)
class Unit:
    """One scoring unit: an image, or a block (`region`) of a volume."""

    name: str
    image: str
    region: tuple[slice, ...] | None = None


class RunDirectory:
    """DIR of a ranking: settings.json, per_image.csv (one row per unit and repeat, appended as
    results come) and the outputs."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.per_unit = self.out / "per_image.csv"

    def check_settings(self, settings: dict) -> None:
        """Refuse to resume a ranking made with other result settings, then record `settings`.

        More repeats than before extend the ranking (the repeats done are kept); fewer are
        refused, since the folder's per-image scores would mix both.
        """
        path = self.out / "settings.json"
        if path.exists():
            old = json.loads(path.read_text())
            diff = [k for k in RESULT_SETTINGS if old.get(k) != settings.get(k)]
            if old.get("repeats", 1) > settings["repeats"]:
                diff.append(f"repeats {old['repeats']} > {settings['repeats']}")
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
        """Rows already written, keyed by (model, perturbation, unit, repeat).

        A run killed while writing may leave a torn last line: it is cut off here (its unit is
        simply done again), so that the next rows start on a line of their own.
        """
        if not self.per_unit.exists():
            return {}
        raw = self.per_unit.read_bytes()
        if raw and not raw.endswith(b"\n"):
            with self.per_unit.open("r+b") as f:
                f.truncate(raw.rfind(b"\n") + 1)
        rows = {}
        with self.per_unit.open(newline="") as f:
            for row in csv.DictReader(f):
                rows[(row["model"], row["perturbation"], row["unit"], int(row["repeat"]))] = row
        return rows

    def append(self, rows: list[dict]) -> None:
        """Append the rows of one finished task in a single write (a kill tears at most it)."""
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PER_UNIT_FIELDS)
        if not self.per_unit.exists() or self.per_unit.stat().st_size == 0:
            writer.writeheader()
        writer.writerows(rows)
        with self.per_unit.open("a", newline="") as f:
            f.write(buffer.getvalue())
            f.flush()


def file_digest(path: Path) -> str:
    """Short sha256 of a model file (settings.json: a resumed run must use the same files)."""
    from .inference.predict import file_sha256

    return file_sha256(path)[:16]


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
    from .scoring.volume import block_name, block_regions

    if len(spatial_axes) < 3:
        return [Unit(name, name)]
    return [Unit(block_name(name, region), name, region) for region in block_regions(shape[-3:], block)]


@dataclass(frozen=True)
class ScoreTask:
    """The work for one (model, image) predicted whole: picklable (no sessions).

    For a volume on the in-memory path, `norm`, `blocking`, `center` and `digest` come from the
    whole lazy volume (as for the blockwise path); for a 2D image they are None and computed
    from it.
    """

    model: Model
    dropout_model: Model | None
    image: object  # TargetImage: lazy pixels, reopened on the worker
    units: tuple[Unit, ...]
    todo: frozenset
    options: ScoringOptions
    norm: object = None
    blocking: object = None
    center: float | None = None
    digest: str | None = None
    tile: object = None
    halo: object = None

    def run(self) -> dict:
        return run_score_task(self)

    def describe(self) -> dict:
        return {"model": self.model.name, "image": self.image.name}


@dataclass(frozen=True)
class _Graph:
    """The model or its grey-box rewrite, as one whole image is predicted through it."""

    model: Model
    session: object
    data: np.ndarray  # channel-first (C, *spatial)
    norm: object
    blocking: object
    digest: str


class WholeImage:
    """The runs of one (model, image) predicted whole, in memory.

    One unperturbed run per graph (the model; its grey-box rewrite for dropout), shared by every
    perturbation and repeat. With a cache, each run is read back when stored and stored when
    computed. Used for 2D images and for volumes on the in-memory path (the reference that the
    blockwise path equals exactly when given the same normalisation, tiling and centre).
    """

    def __init__(self, task: ScoreTask, data: np.ndarray | None = None):
        self.task = task
        self.pixels = np.asarray(task.image.data) if data is None else data
        self.graphs: dict[str, _Graph] = {}
        self.baselines: dict[str, np.ndarray] = {}
        self.center = task.center
        self.reused = self.computed = 0

    def graph(self, name: str) -> _Graph:
        from .inference.normalize import normalization, sample_image
        from .inference.predict import _blocking_for, _channel_first
        from .inference.session import cached_session
        from .scoring.cache import input_identity

        if name not in self.graphs:
            task, options = self.task, self.task.options
            model = task.dropout_model if name == "dropout" else task.model
            session, _ = cached_session(model, device=options.device, threads=options.threads)
            data, _, _, _ = _channel_first(self.pixels, task.image.axes, model)
            if task.norm is not None:
                norm, digest = task.norm, task.digest
            else:
                sample = sample_image(data)
                norm = normalization(model.preprocessing, sample)
                digest = input_identity(sample.digest, complete=sample.complete, source=task.image.source,
                                        name=task.image.name)
            blocking = task.blocking
            if blocking is None:
                _, blocking = _blocking_for(model, session, data.shape[1:], task.tile, task.halo, None, data)
            self.graphs[name] = _Graph(model, session, data, norm, blocking, digest)
        return self.graphs[name]

    def predict(self, spec: PerturbationSpec | None = None, repeat: int = 0, unit: str | None = None,
                *, graph: str = "model") -> np.ndarray:
        """Probabilities (C, *spatial) of the unperturbed run of `graph` (`spec` None), or of
        (`spec`, `repeat`) for `unit` (whose name seeds a dropout mask)."""
        from .inference.predict import predict_image
        from .scoring.runs import plan_run

        graph = "dropout" if spec is not None and spec.is_dropout else graph
        g = self.graph(graph)
        if spec is not None and spec.kind == "contrast" and self.center is None:
            self.center = float(np.mean(g.norm.apply(g.data)))  # of the image as the model sees it
        run = plan_run(g.model, spec, repeat, options=self.task.options, image=self.task.image.name,
                       unit=unit or self.task.image.name, center=self.center or 0.0, norm=g.norm,
                       blocking=g.blocking, digest=g.digest)
        if run.stored is not None and run.stored.complete:
            self.reused += len(g.blocking)
            return run.stored.read()
        prob = predict_image(g.model, g.data, axes="c" + "zyx"[-(g.data.ndim - 1):], session=g.session,
                             perturb=run.perturb, dropout_mask=run.mask, normalization=g.norm, blocking=g.blocking)
        self.computed += len(g.blocking)
        if run.stored is not None:
            run.stored.write(prob)
        return prob

    def baseline(self, graph: str) -> np.ndarray:
        """The unperturbed run of `graph` ("model" or "dropout"), once per graph file."""
        key = str(self.graph(graph).model.path)  # a grey-box model is its own rewrite
        if key not in self.baselines:
            self.baselines[key] = self.predict(graph=graph)
        return self.baselines[key]


def score_image(task: ScoreTask, data: np.ndarray | None = None, counts: dict | None = None) -> list[dict]:
    """All rows for one (model, image), the image predicted whole, in memory.

    Only the (perturbation, repeat) pairs in `task.todo` are scored (resume, more repeats).
    Each unit (the image, or a scoring block of a volume) compares its crop of the two runs; for
    ``rand`` the instance labels are computed per unit, from the unit's crop of the
    probabilities. Dropout masks are drawn per unit, so under dropout a volume is predicted once
    per block. `counts` is updated with the tile predictions reused from the cache and computed.
    """
    from .scoring.volume import unit_row

    image = WholeImage(task, data)
    options = task.options
    rows = []
    for spec, repeat in options.runs(task.todo, dropout=task.dropout_model is not None):
        graph = "dropout" if spec.is_dropout else "model"
        scores = {}
        prob = None if spec.is_dropout else image.predict(spec, repeat)
        for unit in task.units:
            if spec.is_dropout:  # a mask per unit: the whole image per unit
                prob = image.predict(spec, repeat, unit.name)
            crop = (slice(None),) + (unit.region or ())
            model = image.graph(graph).model
            scores[unit.name] = unit_consistency(
                prediction_for_metric(image.baseline(graph)[crop], model, options.metric),
                prediction_for_metric(prob[crop], model, options.metric),
                metric=options.metric, threshold=options.threshold,
            )
        rows += [unit_row(task.model.name, spec, unit.name, repeat, scores[unit.name]) for unit in task.units]
    if counts is not None:
        counts["reused"] = counts.get("reused", 0) + image.reused
        counts["computed"] = counts.get("computed", 0) + image.computed
    return rows


@dataclass
class Ranking:
    """The result of `rank`: the rows of ranking.json plus where everything was written.

    `predictions` counts the tile predictions computed and reused from the cache in this run
    (not written to ranking.json: it depends on what earlier runs left).
    """

    rows: list[dict]
    settings: dict
    failures: list[dict]
    out: Path
    predictions: dict | None = None

    def to_json(self) -> dict:
        return {
            "models": self.rows,
            "settings": self.settings,
            "failures": self.failures,
            "perturbations": _per_perturbation(self.rows),
            "segrank_version": __version__,
        }


def _per_perturbation(rows: list[dict]) -> list[dict]:
    """Each perturbation setting is ranked on its own: its order and whether #1 stands apart."""
    out = []
    for pert in dict.fromkeys(r["perturbation"] for r in rows):
        block = sorted((r for r in rows if r["perturbation"] == pert), key=lambda r: r["rank"])
        out.append({"perturbation": pert, "ranking": [r["name"] for r in block],
                    "top_two_separated": block[0].get("top_two_separated")})
    return out


def run_score_task(task: ScoreTask) -> dict:
    """Score one (model, image) in this process; failures come back as data, not exceptions."""
    counts: dict = {}
    try:
        rows = score_image(task, counts=counts)
    except SegrankError as err:
        return {"failure": dict(task.describe(), stage="predict", error=str(err))}
    return {"rows": rows, "predictions": counts}


@dataclass(frozen=True)
class BlockTask:
    """The work for one (model, scoring block) of a volume: its block plus halo, nothing more."""

    job: object  # scoring.volume.VolumeJob, shared by the blocks of one (model, volume)
    unit: Unit
    todo: frozenset

    def run(self) -> dict:
        return run_block_task(self)

    def describe(self) -> dict:
        return {"model": self.job.model.name, "image": self.unit.image, "unit": self.unit.name}


def run_block_task(task: BlockTask) -> dict:
    """Score one scoring block in this process; failures come back as data, not exceptions."""
    from .scoring.volume import score_block

    counts: dict = {}
    try:
        rows = score_block(task.job, task.unit.name, task.unit.region, task.todo, counts=counts)
    except SegrankError as err:
        return {"failure": dict(task.describe(), stage="predict", error=str(err))}
    return {"rows": rows, "predictions": counts}


def _run_task(task) -> dict:
    return task.run()


def visible_gpus() -> list[str]:
    """GPU ids this machine offers: CUDA_VISIBLE_DEVICES when set, else those nvidia-smi lists."""
    import os
    import subprocess

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def gpu_cluster(gpus):
    """A local dask.distributed cluster with one single-threaded worker per GPU.

    Each worker sees only its GPU (CUDA_VISIBLE_DEVICES, set before its process starts) and
    declares the resource ``GPU=1``; tasks that require ``GPU=1`` therefore run one at a time
    per GPU, so each GPU runs one model at a time. (On an existing cluster, start GPU workers
    the same way: ``CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nthreads 1 --resources GPU=1``.)
    """
    import logging

    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{g}": {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU: 1}, "env": {"CUDA_VISIBLE_DEVICES": str(g)}}}
        for g in gpus
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard": False, "dashboard_address": ":0"}}
    return SpecCluster(scheduler=scheduler, workers=workers, silence_logs=logging.ERROR)


def _execute(tasks: list, *, workers: int | None, scheduler: str | None, gpus=None, want_gpu: bool = False,
             require_gpu: bool = False):
    """Results of `tasks` as they complete: in this process, or on a dask.distributed cluster
    (a LocalCluster of `workers` processes, or the scheduler at `scheduler`).

    With `gpus` (a list of GPU ids) the local cluster is `gpu_cluster(gpus)` and every task
    requires the ``GPU`` resource. On an existing scheduler, tasks require it when `want_gpu`
    and some worker declares it; when none does and `require_gpu`, that is an error. A task
    whose worker died (killed, out of memory) is retried elsewhere by the scheduler; if it
    cannot finish it comes back as a failure, and every finished one is already written.
    """
    if not workers and not scheduler and not gpus:
        for task in tasks:
            yield _run_task(task)
        return
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    resources = None
    if scheduler:
        client = Client(scheduler)
        if want_gpu or require_gpu:
            infos = client.scheduler_info(n_workers=-1)["workers"].values()
            if any(w.get("resources", {}).get(GPU) for w in infos):
                resources = {GPU: 1}
            elif require_gpu:
                client.close()
                raise SegrankError(
                    f"scheduler {scheduler}: no worker declares the {GPU} resource; start one worker per GPU with "
                    f"CUDA_VISIBLE_DEVICES=i dask worker {scheduler} --nthreads 1 --resources {GPU}=1"
                )
    elif gpus:
        cluster = gpu_cluster(gpus)
        client = Client(cluster)
        resources = {GPU: 1}
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {client.submit(_run_task, t, pure=False, resources=resources): t for t in tasks}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as err:  # e.g. distributed.KilledWorker: the task killed its workers
                yield {"failure": dict(futures[future].describe(), stage="predict",
                                       error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")}
            future.release()
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
    tile=None,
    halo=None,
    in_memory: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    gpus=None,
    cache=None,
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
        Run directory; results are written as they come and a rerun resumes (a rerun with more
        `repeats` keeps the repeats done and computes only the new ones).
    perturbations : list of str
        Specs such as ``dropout:0.2`` or ``noise:0.1-0.2``; default: dropout at the bottleneck
        when every model allows it, else Gaussian noise (method.md). Each setting is scored and
        ranked on its own; all share one unperturbed run per (model, image).
    metric : {"auto", "nhd", "ei", "rand"}
        auto: rand for instance models, nhd for semantic ones.
    repeats : int
        Perturbed runs per unit (K); the unperturbed run is shared. Repeat r is drawn from
        (seed, model, unit, r), so the first K repeats of a larger run equal a run with K.
    seed : int
        Seeds every draw with (seed, model, unit, repeat).
    max_images : int, optional
        Score a seeded random subset of this many images.
    block : tuple of int
        Scoring units of a volume: blocks of this (z, y, x) shape on a fixed grid.
    tile, halo : optional
        Prediction tile and halo (see `inference.blocks.choose_blocking`); default: the
        model's, with tiles of volumes nested in the scoring blocks when the model allows.
    in_memory : bool
        Predict each volume whole in memory (the reference for small volumes) instead of
        scoring it block by block in bounded memory. Both give the same scores.
    workers, scheduler : optional
        Run tasks (one per 2D image or per scoring block of a volume, and model) on a
        dask.distributed LocalCluster of `workers` processes, or on an existing scheduler
        address; default: in this process.
    gpus : list of str, optional
        GPU ids for a local cluster of one worker per GPU, each declaring the dask resource
        ``GPU=1`` that every task requires (so each GPU runs one model at a time). Default:
        the visible GPUs when the models run on the CUDA provider and `workers` is given. On an
        existing scheduler, tasks require ``GPU=1`` whenever some worker declares it and
        `device` is not "cpu" (and must find one with `device="cuda"` or `gpus`).
    cache : path, optional
        A folder (Zarr v3 group) that keeps every prediction, unperturbed and perturbed, keyed
        by its content (`segrank.scoring.cache`): another run with the same cache, into any
        `out`, computes only the predictions not stored yet and gives the same scores. Default:
        no cache (a rerun into the same `out` still resumes from its per-image scores).

    Notes
    -----
    Per unit the score is the mean over the K repeats of consistency(unperturbed, perturbed);
    per (model, perturbation) the median over scored units, with a paired bootstrap over units
    for the 95% interval and the probability of being best. Units where neither run predicts
    foreground have no score; a model with no scored unit ranks last. For volumes, see
    `segrank.scoring.volume` for how blocks are predicted, perturbed and scored.
    """
    from tqdm import tqdm

    from .inference.session import CUDA, create_session, default_threads
    from .io.targets import open_target
    from .models import load_bank
    from .models.greybox import rewrite

    from .scoring.cache import PredictionCache

    if repeats < 1:
        raise SegrankError(f"--repeats must be >= 1, got {repeats}")
    block = tuple(block)
    if len(block) != 3 or not all(isinstance(b, (int, np.integer)) and b >= 1 for b in block):
        raise SegrankError(f"--block {','.join(map(str, block))}: a scoring block is three positive sizes Z,Y,X")
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
        "tile": tile if tile is None or isinstance(tile, int) else list(tile),
        "halo": halo if halo is None or isinstance(halo, int) else list(halo),
        "units": [im.name for im in images],
        "max_images": max_images,
        "device": device,
        "cache": str(cache) if cache is not None else None,
        "models": {m.name: {"file": str(m.path), "sha256": file_digest(m.path)} for m in models},
    }
    run.check_settings(settings)
    prediction_cache = PredictionCache(cache) if cache is not None else None
    if prediction_cache is not None:
        prediction_cache.store  # a folder that is no Zarr group is refused before any work
    done = run.done()
    providers: dict[str, str] = {}
    gpus = list(gpus) if gpus else None
    n_workers = len(gpus) if gpus else workers
    threads = default_threads(n_workers) if n_workers else None
    samples: dict[str, object] = {}

    tasks, skipped, dropout_models = [], 0, {}
    for model in models:
        try:
            # Loads the model once here, so that a broken file is reported before any work.
            session, providers[model.name] = create_session(model, device=device, threads=threads)
        except SegrankError as err:
            failures.append({"model": model.name, "stage": "session", "error": str(err)})
            continue
        dropout_model = None
        if any(s.is_dropout for s in specs):
            try:
                dropout_model = model if model.greybox else rewrite(model, tensor="auto")
            except SegrankError as err:
                failures.append({"model": model.name, "stage": "greybox", "error": str(err)})
        dropout_models[model.name] = dropout_model
        options = ScoringOptions(tuple(specs), metrics[model.name], repeats, seed, threshold, device, threads,
                                 prediction_cache)
        possible = [(str(s), r) for s in specs for r in range(repeats) if not (s.is_dropout and dropout_model is None)]
        for im in images:
            units = image_units(im.name, im.data.shape, _spatial(im.axes), block)
            open_pairs = {u.name: frozenset(p for p in possible if (model.name, p[0], u.name, p[1]) not in done) for u in units}
            pending = [u for u in units if open_pairs[u.name]]
            if not pending:
                skipped += 1 if (len(units) == 1 or in_memory) else len(units)
                continue
            todo = frozenset().union(*open_pairs.values())
            if len(_spatial(im.axes)) < 3:
                tasks.append(ScoreTask(model, dropout_model, im, tuple(units), todo, options, tile=tile, halo=halo))
                continue
            try:
                job = _volume_job(model, dropout_model, im, session, options, block, tile, halo, samples)
            except SegrankError as err:
                failures.append({"model": model.name, "stage": "predict", "image": im.name, "error": str(err)})
                continue
            if in_memory:
                tasks.append(ScoreTask(model, dropout_model, im, tuple(units), todo, options, norm=job.norm,
                                       blocking=job.blocking, center=job.center, digest=job.digest))
                continue
            skipped += len(units) - len(pending)
            tasks += [BlockTask(job, u, open_pairs[u.name]) for u in pending]

    use_gpu = bool(gpus) or any(p == CUDA for p in providers.values())
    if use_gpu and workers and not scheduler and not gpus:
        gpus = visible_gpus() or ["0"]
        if workers != len(gpus):
            print(f"segrank: {len(gpus)} GPU worker(s), one per GPU, instead of --workers {workers}", file=sys.stderr)
    bar = tqdm(total=len(tasks) + skipped, initial=skipped, desc="rank", unit="unit", disable=not progress,
               file=sys.stderr)
    # on an existing cluster, tasks need a GPU worker unless --device cpu (when some worker has one)
    results = _execute(tasks, workers=workers, scheduler=scheduler, gpus=gpus if not scheduler else None,
                       want_gpu=device != "cpu" or bool(gpus), require_gpu=device == "cuda" or bool(gpus))
    predictions = {"reused": 0, "computed": 0}
    for result in results:
        if "failure" in result:
            failures.append(result["failure"])
            print(f"segrank: {result['failure']['error']}", file=sys.stderr)
        else:
            for k, n in result.get("predictions", {}).items():
                predictions[k] += n
            run.append(result["rows"])
            for row in result["rows"]:
                done[(row["model"], row["perturbation"], row["unit"], int(row["repeat"]))] = row
        bar.update(1)
    bar.close()

    rows = _ranking_rows(models, images, specs, done, metrics, providers, failures, block, n_boot, seed, repeats)
    settings["provider"] = providers
    ranking = Ranking(rows=rows, settings=settings, failures=failures, out=run.out, predictions=predictions)
    from .report import write_outputs

    examples = None
    if report:
        examples = example_tiles(rows, models, images, specs[0], options=dict(seed=seed, threshold=threshold,
                                 device=device, cache=prediction_cache), dropout_models=dropout_models, block=block,
                                 tile=tile, halo=halo)
    write_outputs(ranking, report=report, examples=examples)
    return ranking


def _volume_job(model, dropout_model, image, session, options: ScoringOptions, block, tile, halo, samples: dict):
    """The VolumeJob of one (model, volume): whole-volume normalisation (its sample read once
    per volume, shared by the models), contrast centre and tiling, computed here once."""
    from .inference.normalize import normalization, sample_image
    from .inference.predict import _channel_first
    from .scoring.cache import input_identity
    from .scoring.volume import VolumeJob, normalized_mean, scoring_blocking

    data, _, _, _ = _channel_first(image, None, model)
    if image.name not in samples:
        samples[image.name] = sample_image(data)
    sample = samples[image.name]
    norm = normalization(model.preprocessing, sample)
    center = normalized_mean(norm, sample) if any(s.kind == "contrast" for s in options.specs) else 0.0
    model_c, blocking = scoring_blocking(model, session, data, block, tile=tile, halo=halo)
    digest = input_identity(sample.digest, complete=sample.complete, source=image.source, name=image.name)
    return VolumeJob(model_c, dropout_model, image, norm, center, blocking, digest, options)


def example_tiles(rows, models, images, spec, *, options: dict, dropout_models, block=(64, 256, 256), tile=None,
                  halo=None, size=256) -> list[dict]:
    """(image, unperturbed, perturbed) foreground probabilities of the best and the worst scored
    model on the first image (repeat 0), for the report: what a person looks at to see why. For
    a volume, its middle scoring block, predicted from the whole volume's tiles (bounded memory).
    The same runs as scored, so they come from the cache when there is one. `options` holds
    seed, threshold, device and cache."""
    from .inference.predict import _channel_first, _read
    from .inference.session import cached_session
    from .scoring.volume import predict_region

    scored = [r for r in rows if r["perturbation"] == str(spec) and r["score"] is not None]
    if not scored or not images:
        return []
    picks = [("best", scored[0])] + ([("worst", scored[-1])] if len(scored) > 1 else [])
    image = images[0]
    volume = len(_spatial(image.axes)) >= 3
    unit = image_units(image.name, image.data.shape, _spatial(image.axes), block)
    unit = unit[len(unit) // 2]
    out = []
    for label, row in picks:
        model = next(m for m in models if m.name == row["name"])
        dropout_model = dropout_models.get(model.name)
        if spec.is_dropout and dropout_model is None:
            continue
        scoring = ScoringOptions((spec,), row["metric"], 1, **options)
        try:
            if volume:
                session, _ = cached_session(model, device=scoring.device)
                job = _volume_job(model, dropout_model, image, session, scoring, block, tile, halo, {})
                shown = job.dropout_model if spec.is_dropout else job.model
                perturbed = predict_region(job, unit.region, spec=spec, dropout=spec.is_dropout)
                unperturbed = predict_region(job, unit.region, dropout=spec.is_dropout)
                data, _, _, _ = _channel_first(image, None, model)
                pixels, pixel_axes = _read(data, (slice(None),) + unit.region), "c" + _spatial(image.axes)
            else:
                whole = WholeImage(ScoreTask(model, dropout_model, image, (unit,), frozenset(), scoring, tile=tile,
                                             halo=halo))
                graph = "dropout" if spec.is_dropout else "model"
                perturbed, unperturbed = whole.predict(spec, 0), whole.baseline(graph)
                shown = whole.graph(graph).model
                pixels, pixel_axes = whole.pixels, image.axes
        except SegrankError:
            continue
        out.append({
            "label": f"{label}: {row['name']} ({row['score']:.3f}) on {unit.name}",
            "image": _thumbnail(pixels, pixel_axes, size),
            "unperturbed": _thumbnail(unperturbed[shown.foreground_channel], _spatial(image.axes), size),
            "perturbed": _thumbnail(perturbed[shown.foreground_channel], _spatial(image.axes), size),
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
    """The rows of ranking.json: each perturbation setting ranked on its own, from the mean over
    the first `repeats` repeats of every unit."""
    # images with a failure, per model (a volume counts once, however many of its blocks failed)
    failed: dict[str, set] = {}
    no_greybox = {f["model"] for f in failures if f["stage"] == "greybox"}  # no dropout runs possible
    for f in failures:
        if f["stage"] == "session":
            failed.setdefault(f["model"], set()).update(im.name for im in images)
        elif f["stage"] == "predict":
            failed.setdefault(f["model"], set()).add(f.get("image", "?"))
    units = [u.name for im in images for u in image_units(im.name, im.data.shape, _spatial(im.axes), block)]
    rows = []
    for spec in specs:
        matrix = []
        for model in models:
            per_unit = []
            for u in units:
                vals = [done.get((model.name, str(spec), u, r)) for r in range(repeats)]
                scores = [float(v["score"]) for v in vals if v and v["score"] != ""]
                per_unit.append(np.mean(scores) if scores else math.nan)
            matrix.append(per_unit)
        results, p_sep = aggregate([m.name for m in models], np.array(matrix, dtype=float), n_boot=n_boot, seed=seed,
                                   label=str(spec))
        for rank_pos, i in enumerate(ranking_order(results), start=1):
            r, model = results[i], models[i]
            n_failed = len(failed.get(model.name, ()))
            if (spec.is_dropout and model.name in no_greybox) or (n_failed and r.n_scored == 0):
                status = "failed"
            elif n_failed:
                status = f"failed on {min(n_failed, len(images))} of {len(images)} images"
            elif r.score is None:
                status = "predicts no foreground"
            else:
                status = "ok"
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
