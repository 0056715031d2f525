"""The consensus stage: store every model's unperturbed prediction, then score units across models.

Two passes over the executor. First, one task per (model, 2D image) or (model, scoring block of
a volume) makes sure the model's unperturbed prediction is in the prediction store (the
``--cache`` folder, else ``OUT/predictions``). Then one task per unit reads every model's
prediction of that unit back from the store (a volume block in slabs, so memory stays bounded)
and counts the pairwise agreement (`scoring.consensus.unit_agreement_rows`); its rows are
appended to agreement.csv as the unit finishes, so a rerun resumes. The rows of ranking.json
come from those rows (`consensus_rows`), with re-weighting, the bootstrap and the diagnostics.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from ..errors import SegrankError
from ..models.description import Model
from ..scoring.options import ScoringOptions
from .failures import Failure, Stage
from .rundir import record_result
from .units import Unit, spatial, units_of

CONSENSUS = "consensus"  # the setting's name in ranking.json ("perturbation") and the report
SLAB = 8  # z slices of a volume block read at once when counting semantic agreement


@dataclass(frozen=True)
class StoreTask:
    """Make sure one model's unperturbed prediction of one 2D image, or of the tiles of one
    scoring block (`job`, `unit`), is in the prediction store."""

    model: Model
    image: object  # io.targets.TargetImage
    options: ScoringOptions  # with the store as its cache
    tile: object = None
    halo: object = None
    job: object = None  # scoring.volume.VolumeJob for a volume block
    unit: Unit | None = None

    def run(self) -> dict:
        from ..scoring.volume import store_region
        from .image_task import ScoreTask, WholeImage

        counts: dict = {}
        try:
            if self.job is None:
                whole = WholeImage(ScoreTask(self.model, None, self.image, (), frozenset(), self.options,
                                             tile=self.tile, halo=self.halo))
                key = whole.store_baseline()
                counts = {"reused": whole.reused, "computed": whole.computed}
            else:
                key = store_region(self.job, self.unit.region, self.unit.name, counts=counts)
        except SegrankError as err:
            return {"failure": self.failure(str(err))}
        return {"stored": (self.model.name, self.image.name, key), "predictions": counts}

    def failure(self, error: str) -> Failure:
        return Failure(self.model.name, Stage.PREDICT, error, image=self.image.name,
                       unit=self.unit.name if self.unit is not None else None)


@dataclass(frozen=True)
class AgreementTask:
    """Count the agreement between the stored predictions of every model on one unit."""

    unit: Unit
    models: tuple[Model, ...]
    keys: tuple[str, ...]  # each model's array in the store
    store: str
    threshold: float
    instances: bool

    def run(self) -> dict:
        try:
            return {"agreement": self._rows()}
        except SegrankError as err:
            return {"failure": self.failure(str(err))}

    def failure(self, error: str) -> Failure:
        return Failure(",".join(m.name for m in self.models), Stage.PREDICT, error, unit=self.unit.name)

    def _rows(self) -> list[dict]:
        from ..io.zarr_store import PredictionStore
        from ..postprocess import instance_labels
        from ..scoring.consensus import unit_agreement_rows

        store = PredictionStore(self.store)
        arrays = [store.array(key) for key in self.keys]
        region = tuple(self.unit.region or ())
        names = [m.name for m in self.models]
        if self.instances:
            probs = [np.asarray(a[(slice(None),) + region]) for a in arrays]
            labels = [instance_labels(p, m) for p, m in zip(probs, self.models)]
            foreground = [p[m.foreground_channel] for p, m in zip(probs, self.models)]
            return unit_agreement_rows(self.unit.name, names, foreground, labels=labels, threshold=self.threshold)
        return unit_agreement_rows(self.unit.name, names, sums=self._sums(arrays, region), threshold=self.threshold)

    def _sums(self, arrays, region):
        """Pairwise sums of the unit, merged over slabs (a volume block) or of the whole image."""
        from ..metrics import pairwise_agreement

        shape = arrays[0].shape[1:]
        spans = [(0, shape[0])] if len(shape) < 3 else [
            (z, min(z + SLAB, region[0].stop)) for z in range(region[0].start, region[0].stop, SLAB)]
        total = None
        for lo, hi in spans:
            part = region if len(shape) < 3 else (slice(lo, hi),) + region[1:]
            stack = np.stack([np.asarray(a[(m.foreground_channel,) + part], np.float32)
                              for a, m in zip(arrays, self.models)])
            sums = pairwise_agreement(stack, threshold=self.threshold)
            total = sums if total is None else total + sums
        return total


def store_tasks(models, images, sessions, options_of, *, block, tile, halo, pending_images) -> tuple[list, list]:
    """StoreTasks of the images with units still to score, and failures met while planning."""
    from .block_task import volume_job

    tasks, failures, samples = [], [], {}
    for model in models:
        if model.name not in sessions:
            continue
        options = options_of(model)
        for im in images:
            if im.name not in pending_images:
                continue
            if len(spatial(im.axes)) < 3:
                tasks.append(StoreTask(model, im, options, tile=tile, halo=halo))
                continue
            try:
                job = volume_job(model, None, im, sessions[model.name], options, block, tile, halo, samples)
            except SegrankError as err:
                failures.append(Failure(model.name, Stage.PREDICT, str(err), image=im.name))
                continue
            tasks += [StoreTask(model, im, options, job=job, unit=u) for u in units_of(im, block)
                      if u.name in pending_images[im.name]]
    return tasks, failures


def store_predictions(models, images, sessions, options_of, *, executor, block, tile, halo, pending: dict,
                      failures: list[Failure], progress: bool) -> tuple[dict, set, dict]:
    """Run the StoreTasks of the `pending` units ({image: unit names}): (the array name of each
    (model, image) in the store, the (model, unit or image) pairs that failed, predictions counts)."""
    from tqdm import tqdm

    tasks, planning_failures = store_tasks(models, images, sessions, options_of, block=block, tile=tile, halo=halo,
                                           pending_images=pending)
    failures += planning_failures
    predictions = {"reused": 0, "computed": 0}
    keys: dict[tuple[str, str], str] = {}
    failed: set[tuple[str, str]] = {(f.model, f.unit or f.image) for f in planning_failures}
    bar = tqdm(total=len(tasks), desc="predict", unit="task", disable=not progress, file=sys.stderr)
    for task, result in executor.run(tasks):
        result = record_result(task, result, run=None, done={}, failures=failures, predictions=predictions)
        if "failure" in result:
            failed.add((task.model.name, task.unit.name if task.unit is not None else task.image.name))
        else:
            model, image, key = result["stored"]
            keys[(model, image)] = key
        bar.update(1)
    bar.close()
    return keys, failed, predictions


def score_consensus(models, images, sessions, options_of, *, run, executor, store: str, block, tile, halo,
                    threshold: float, failures: list[Failure], progress: bool) -> dict:
    """Run both passes for the units not in agreement.csv yet; returns the predictions counts."""
    from tqdm import tqdm

    done_units = {r["unit"] for r in run.agreement.read()}
    pending = {}
    for im in images:
        names = {u.name for u in units_of(im, block)} - done_units
        if names:
            pending[im.name] = names
    keys, failed, predictions = store_predictions(models, images, sessions, options_of, executor=executor, block=block,
                                                  tile=tile, halo=halo, pending=pending, failures=failures,
                                                  progress=progress)
    by_name = {m.name: m for m in models}
    instances = all(m.task == "instance" for m in models)
    agreement = []
    for im in images:
        for unit in units_of(im, block):
            if unit.name not in pending.get(im.name, ()):
                continue
            usable = [n for n in by_name if (n, unit.name) not in failed and (n, im.name) not in failed]
            task = agreement_task(unit, by_name, keys, usable, store, threshold, instances)
            if task is not None:
                agreement.append(task)
    bar = tqdm(total=len(agreement), desc="agreement", unit="unit", disable=not progress, file=sys.stderr)
    for task, result in executor.run(agreement):
        result = record_result(task, result, run=None, done={}, failures=failures, predictions=predictions)
        if "agreement" in result:
            run.agreement.append(result["agreement"])
        bar.update(1)
    bar.close()
    return predictions


@dataclass
class ConsensusOutcome:
    """What the consensus stage gives the job: ranking rows, diagnostics, per-unit scores (for
    the report) and the predictions it reused and computed."""

    rows: list[dict]
    diagnostics: dict
    unit_scores: dict
    predictions: dict
    race: object = None  # race.RaceState when the stage raced
    tasks: int = 0  # tasks run (racing)


def run_consensus(models, images, plan, run, executor, failures: list[Failure], *, metrics: dict, cache,
                  options: dict, race=None) -> ConsensusOutcome:
    """Store every model's unperturbed predictions (in `cache`, else OUT/predictions), score every
    unit across models, and aggregate; with an active `race` (race.RaceSettings), units are
    visited in the race's order, and an eliminated model stays in the consensus pool of the units
    it was scored on (the units visited after it have a smaller pool)."""
    from ..scoring.cache import PredictionCache
    from ..scoring.consensus import resolve_rounds, resolve_similarity
    from .rows import consensus_rows

    o = options
    # the consensus reads predictions back: its store is required (a full disk stops the run)
    store = PredictionCache(cache.path if cache is not None else run.out / "predictions", required=True)
    task = "instance" if all(m.task == "instance" for m in models) else "semantic"

    def options_of(model: Model) -> ScoringOptions:
        return ScoringOptions((), metrics[model.name], 1, o["seed"], o["threshold"], o["device"], o["threads"], store)

    similarity = resolve_similarity(o["similarity"], task)
    rounds = resolve_rounds(o["rounds"], task)
    state, ran = None, 0
    if race is not None and race.active:
        from .race import eliminated_rows
        from .racing import race_consensus

        state, ran, predictions = race_consensus(
            models, images, plan.sessions, options_of, run=run, executor=executor, store=store.path, block=o["block"],
            tile=o["tile"], halo=o["halo"], threshold=o["threshold"], failures=failures, settings=race,
            similarity=similarity, rounds=rounds, n_boot=o["n_boot"], seed=o["seed"])
        ranked = {m.name for m in models if not state.stopped.get(m.name, "").startswith("elim")}
    else:
        predictions = score_consensus(models, images, plan.sessions, options_of, run=run, executor=executor,
                                      store=store.path, block=o["block"], tile=o["tile"], halo=o["halo"],
                                      threshold=o["threshold"], failures=failures, progress=o["progress"])
        ranked = None
    # the whole bank is the pool: an eliminated model counts on the units it was scored on
    rows, diagnostics, unit_scores = consensus_rows(
        models, images, o["block"], run.agreement.read(), similarity=similarity,
        rounds=rounds, providers=plan.providers, failures=failures, n_boot=o["n_boot"], seed=o["seed"], ranked=ranked)
    if state is not None and rows:
        from .race import order_by_race

        rows = order_by_race(rows + eliminated_rows(state, rows[0]), state)
    return ConsensusOutcome(rows, diagnostics, unit_scores, predictions, state, ran)


def agreement_task(unit: Unit, by_name: dict, keys: dict, usable, store: str, threshold: float,
                   instances: bool) -> AgreementTask | None:
    """The agreement task of a unit over the `usable` models whose predictions of its image are
    stored (`keys`); None with fewer than two such models (no agreement to count)."""
    usable = set(usable)
    names = [n for n in by_name if n in usable and (n, unit.image) in keys]  # bank order: stable rows
    if len(names) < 2:
        return None
    return AgreementTask(unit, tuple(by_name[n] for n in names), tuple(keys[(n, unit.image)] for n in names), store,
                         threshold, instances)


__all__ = ["AgreementTask", "CONSENSUS", "agreement_task", "ConsensusOutcome", "StoreTask", "run_consensus", "score_consensus",
           "store_tasks"]
