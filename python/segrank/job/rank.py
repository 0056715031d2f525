"""`rank`: load -> plan -> predict -> score (per model: CTE; across models: consensus) -> aggregate -> write."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import SegrankError
from ..io.files import disk_full_as_error
from .consensus import CONSENSUS, run_consensus
from .labels import run_labels
from .race import RaceSettings, order_by_race, parse_budget
from .racing import race_cte
from .execute import rank_executor
from .failures import Failure, nothing_scored
from .plan import (
    check_options, check_scores, choose_perturbations, default_block, load_inputs, plan_tasks,
    run_settings,
)
from .rows import Ranking, compare_with_truth, disagreement_warnings, ranking_rows
from .rundir import RunDirectory, record_result


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
    block: tuple[int, ...] | None = None,
    tile=None,
    halo=None,
    in_memory: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    gpus=None,
    cache=None,
    score=None,
    similarity: str = "auto",
    rounds: int | None = None,
    labels=None,
    truth=None,
    output_space: str | None = None,
    key: str | None = None,
    trust_code: bool = False,
    budget=None,
    until_separated: bool = False,
    keep_top: int = 3,
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
    block : tuple of int, optional
        Scoring units of a volume: blocks of this (z, y, x) shape on a fixed grid; default
        64 x 256 x 256, smaller for a target that would otherwise have fewer than 8 units
        (`plan.default_block`).
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
    score : str or sequence of {"cte", "consensus"}, optional
        What to rank by, each ranked on its own: "consensus", each model's agreement with the
        other models of the bank on the same units (only unperturbed runs; they are kept in
        `cache`, else in OUT/predictions, and read back per unit; `segrank.scoring.consensus`);
        "cte", the consistency of each model under the perturbations. Default: consensus (it
        ranked the benchmark's real banks better), or cte when `perturbations` are given.
    similarity : {"auto", "dice", "ei", "map"}
        The consensus score's similarity between two models' predictions of a unit; auto: map
        (instance labels) for instance banks, ei (the EI formula between two models) for
        semantic ones.
    rounds : int, optional
        Re-weighting rounds of the consensus score (0: every model weighs the same); default
        5 for semantic banks, 3 for instance banks (the benchmark's best, declared variants).
    labels : path, optional
        A folder with labels for a few of the target's 2D images (named like them): the setting
        "labels" then ranks the models by their mean true score on those images (F1, or mAP for
        instance models), from the same stored predictions as the consensus score.
    output_space : str, optional
        Declare that every model of the bank predicts this output space (`models.load_bank`).
    key : str, optional
        The dataset inside an HDF5 / N5 / Zarr container that holds several.
    trust_code : bool
        Allow running a bioimage.io package's Python architecture (pytorch_state_dict weights).
    budget : float, int or str, optional
        Race: score at most this fraction (<= 1) or number (> 1) of the units, visited in a
        seeded order stratified over images and volume regions; models that cannot make the
        top `keep_top` stop receiving units (`job.race`). None: every unit (the full ranking).
    until_separated : bool
        Race: stop once the leader's P(best) reaches 0.95 or every remaining model is separated
        from the next.
    keep_top : int
        Race: models with a P(top keep_top) below 1 % are eliminated (at least this many stay).
    truth : path, optional
        A performance.json (`segrank evaluate`) of this bank on this target: ranking.json and the
        report then show how far each ranking agrees with it (the bundled example ships one).

    Notes
    -----
    Per unit the score is the mean over the K repeats of consistency(unperturbed, perturbed);
    per (model, perturbation) the median over scored units, with a paired bootstrap over units
    for the 95% interval and the probability of being best. Units where neither run predicts
    foreground have no score; a model with no scored unit ranks last. For volumes, see
    `segrank.scoring.volume` for how blocks are predicted, perturbed and scored.
    """
    from ..inference.session import CUDA, default_threads
    from ..scoring import resolve_metric
    from ..scoring.cache import PredictionCache

    block, scores = check_options(repeats, block), check_scores(score, perturbations=perturbations)
    run = RunDirectory(Path(out))
    with run.lock(), disk_full_as_error(run.out):
        models, images, failures = load_inputs(bank, target, axes=axes, max_images=max_images, seed=seed,
                                               output_space=output_space, key=key, trust_code=trust_code)
        block = block or default_block(images)
        specs = choose_perturbations(list(perturbations), models)
        metrics = {m.name: resolve_metric(metric, m) for m in models}
        settings = run_settings(bank, target, models, images, specs, metric=metric, repeats=repeats, seed=seed,
                                threshold=threshold, block=block, tile=tile, halo=halo, max_images=max_images,
                                device=device, cache=cache)
        settings.update(score=list(scores), similarity=similarity, rounds=rounds,
                        labels=str(labels) if labels is not None else None)
        run.check_settings(settings)
        prediction_cache = PredictionCache(cache) if cache is not None else None
        if prediction_cache is not None:
            prediction_cache.store  # a folder that is no Zarr group is refused before any work
        done = run.done()
        n_workers = len(gpus) if gpus else workers
        threads = default_threads(n_workers) if n_workers else None
        options = dict(device=device, repeats=repeats, seed=seed, threshold=threshold, cache=prediction_cache)
        plan = plan_tasks(models, images, specs, metrics, done, options=options, block=block, tile=tile, halo=halo,
                          in_memory=in_memory, threads=threads, cte="cte" in scores)
        failures += plan.failures
        executor = rank_executor(workers=workers, scheduler=scheduler, gpus=gpus, device=device,
                                 uses_cuda=bool(gpus) or CUDA in plan.providers.values())
        racing = RaceSettings(budget=parse_budget(budget) if isinstance(budget, str) else budget,
                              until_separated=until_separated, keep_top=keep_top)
        stage = dict(seed=seed, threshold=threshold, device=device, threads=threads, block=block, tile=tile,
                     halo=halo, similarity=similarity, rounds=rounds, n_boot=n_boot, progress=progress)
        rows, predictions, race_json = [], {"reused": 0, "computed": 0}, {}
        if "cte" in scores:  # predict and score per model
            rows, predictions, race_json = score_cte(plan, executor, run, done, failures, racing, models=models,
                                                     images=images, specs=specs, metrics=metrics, repeats=repeats,
                                                     options=stage)
        consensus = None
        if CONSENSUS in scores:  # store the predictions, then score across models
            consensus = run_consensus(models, images, plan, run, executor, failures, metrics=metrics,
                                      cache=prediction_cache, options=stage, race=racing)
            if consensus.race is not None:
                race_json[CONSENSUS] = race_summary(consensus.race, consensus.tasks, models, images, block, failures)
            rows += consensus.rows
            consensus.diagnostics["warnings"] += disagreement_warnings(rows)
            predictions = {k: predictions[k] + consensus.predictions[k] for k in predictions}
        if labels is not None:  # the few labelled images, from the same store
            more, counts = run_labels(models, images, plan, run, executor, failures, labels_dir=labels,
                                      metrics=metrics, cache=prediction_cache, done=done, options=stage)
            rows += more
            predictions = {k: predictions[k] + counts[k] for k in predictions}
        settings["provider"] = plan.providers
        ranking = Ranking(rows=rows, settings=settings, failures=failures, out=run.out, predictions=predictions,
                          consensus=consensus.diagnostics if consensus else None,
                          unit_scores={CONSENSUS: consensus.unit_scores} if consensus else None,
                          truth=compare_with_truth(rows, json.loads(Path(truth).read_text())) if truth else None,
                          race=race_json or None)
        write(ranking, models, images, specs, plan, report=report, options=dict(
            seed=seed, threshold=threshold, device=device, cache=prediction_cache), block=block, tile=tile, halo=halo)
        if not any(r["n_scored"] for r in rows):
            raise NothingScored(nothing_scored(failures, models, rows))
        return ranking


class NothingScored(SegrankError):
    """A run finished without scoring any model (its outputs are written, for inspection)."""


def write(ranking: Ranking, models, images, specs, plan, *, report: bool, options: dict, block, tile, halo) -> None:
    """ranking.json / ranking.csv, and with `report` the plots (with example tiles) and report.html."""
    from ..report import write_outputs
    from .examples import example_tiles

    examples = None
    if report:
        examples = example_tiles(ranking.rows, models, images, specs[0], options=options,
                                 dropout_models=plan.dropout_models, block=block, tile=tile, halo=halo)
    write_outputs(ranking, report=report, examples=examples)


def score_cte(plan, executor, run, done, failures, racing, *, models, images, specs, metrics, repeats: int,
              options: dict) -> tuple[list[dict], dict, dict]:
    """The CTE stage: every task of the plan (or a race over them); (ranking rows, predictions
    counts, {"cte": race summary} when it raced)."""
    o = options
    if not racing.active:
        predictions = predict_and_score(plan, executor, run, done, failures, progress=o["progress"])
        return (ranking_rows(models, images, specs, done, metrics, plan.providers, failures, o["block"], o["n_boot"],
                             o["seed"], repeats), predictions, {})
    state, ran, predictions = race_cte(plan, executor, run, done, failures, models=models, images=images,
                                       block=o["block"], spec=specs[0], repeats=repeats, settings=racing,
                                       n_boot=o["n_boot"], seed=o["seed"])
    rows = ranking_rows(models, images, specs, done, metrics, plan.providers, failures, o["block"], o["n_boot"],
                        o["seed"], repeats)
    return order_by_race(rows, state), predictions, {"cte": race_summary(state, ran, models, images, o["block"],
                                                                          failures)}


def race_summary(state, tasks: int, models, images, block, failures) -> dict:
    """ranking.json's "race" entry for one score: why it stopped, units and tasks against a full run."""
    from .units import units_of

    n_units = sum(len(units_of(im, block)) for im in images)
    ok = len({m.name for m in models} - {f.model for f in failures if f.stage.value in ("load", "session")})
    return state.to_json(units_total=n_units, tasks_done=tasks, tasks_full=ok * n_units)


def predict_and_score(plan, executor, run: RunDirectory, done: dict, failures: list[Failure], *,
                      progress: bool) -> dict:
    """Run the plan's tasks; append each task's rows to per_image.csv (and `done`) as it finishes.

    Returns the tile predictions reused from the cache and computed.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(plan.tasks) + plan.skipped, initial=plan.skipped, desc="rank", unit="unit",
               disable=not progress, file=sys.stderr)
    predictions = {"reused": 0, "computed": 0}
    for task, result in executor.run(plan.tasks):
        record_result(task, result, run=run, done=done, failures=failures, predictions=predictions)
        bar.update(1)
    bar.close()
    return predictions


__all__ = ["predict_and_score", "rank"]
