"""Planning: the models and images of a job, its settings, and the tasks still to do."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SegrankError
from ..models.description import Model
from ..perturb.input import PerturbationSpec, default_perturbation
from ..perturb.seeds import rng
from ..scoring.options import ScoringOptions
from .failures import Failure, Stage
from .rundir import file_digest
from .units import spatial, units_of


DEFAULT_BLOCK = (64, 256, 256)
MIN_BLOCKS = 8  # units a default scoring grid aims for: enough for bootstrap intervals


def default_block(images) -> tuple[int, ...]:
    """The scoring block when none is given: 64 x 256 x 256, made smaller (the largest side
    halved, down to 8) while the target would have fewer than `MIN_BLOCKS` units, so that a
    small volume still gets intervals."""
    import math

    volumes = [tuple(int(s) for s in im.data.shape[-3:]) for im in images if len(spatial(im.axes)) >= 3]
    flat = len(images) - len(volumes)

    def units(block):
        return flat + sum(math.prod(math.ceil(s / b) for s, b in zip(shape, block)) for shape in volumes)

    if not volumes or units(DEFAULT_BLOCK) >= MIN_BLOCKS:
        return DEFAULT_BLOCK
    block = [min(b, max(v[a] for v in volumes)) for a, b in enumerate(DEFAULT_BLOCK)]
    while units(block) < MIN_BLOCKS:
        axis = max(range(3), key=lambda a: block[a])
        if block[axis] <= 8:
            break
        block[axis] = math.ceil(block[axis] / 2)
    return tuple(block)


def check_options(repeats: int, block) -> tuple[int, ...] | None:
    """Refuse impossible repeats and scoring blocks (one line each); the block as a tuple (None:
    chosen from the target, `default_block`)."""
    if repeats < 1:
        raise SegrankError(f"--repeats must be >= 1, got {repeats}")
    if block is None:
        return None
    block = tuple(block)
    if len(block) != 3 or not all(isinstance(b, (int, np.integer)) and b >= 1 for b in block):
        raise SegrankError(f"--block {','.join(map(str, block))}: a scoring block is three positive sizes Z,Y,X")
    return block


SCORES = ("cte", "consensus")
# By evidence (benchmarks/results/consensus_quality*.md): agreement with the bank ranked better
# than every CTE setting on all four real task banks, in the run and its replicate.
DEFAULT_SCORE = ("consensus",)


def check_scores(score, *, perturbations=()) -> tuple[str, ...]:
    """The scores to rank by, each ranked on its own: "cte", "consensus" or both. None (not
    given): consensus, or cte when perturbations are given (they only make sense for CTE)."""
    if score is None:
        score = ("cte",) if perturbations else DEFAULT_SCORE
    scores = (score,) if isinstance(score, str) else tuple(score)
    unknown = [s for s in scores if s not in SCORES]
    if unknown or not scores:
        raise SegrankError(f"--score {','.join(unknown) or '(none)'}: choose from {', '.join(SCORES)}")
    return tuple(dict.fromkeys(scores))


def load_inputs(bank, target, *, axes: str | None, max_images: int | None, seed: int,
                output_space: str | None = None, key: str | None = None,
                trust_code: bool = False) -> tuple[list, list, list[Failure]]:
    """(usable models, images to score, models that did not load) of a bank and a target."""
    from ..io.targets import open_target
    from ..models import load_bank

    failures: list[Failure] = []
    if isinstance(bank, (list, tuple)):
        models = list(bank)
    else:
        models, problems = load_bank(bank, output_space=output_space, trust_code=trust_code)
        failures += [Failure(p.name, Stage.LOAD, p.message) for p in problems]
    if not models:
        reasons = "; ".join(f"{f.model}: {f.error}" for f in failures) or "no model file found"
        raise SegrankError(f"{bank}: no usable model in the bank ({reasons})")
    images = list(open_target(target, axes=axes, key=key).images)
    if not images:
        raise SegrankError(f"{target}: no image found")
    if max_images is not None and max_images < len(images):
        pick = rng(seed, "target", "subset", 0, "max-images").choice(len(images), size=max_images, replace=False)
        images = [images[i] for i in sorted(pick)]
    return models, images, failures


def choose_perturbations(specs: list[str], models: list[Model]) -> list[PerturbationSpec]:
    """Parse the user's specs, or pick method.md's default for the whole bank."""
    if specs:
        return [PerturbationSpec.parse(s) for s in specs]
    from ..models.greybox import find_bottleneck

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


def run_settings(bank, target, models, images, specs, **options) -> dict:
    """settings.json: what the results depend on (`rundir.RESULT_SETTINGS`) and what ran them."""
    tile, halo, cache = options.pop("tile"), options.pop("halo"), options.pop("cache")
    return {
        "bank": str(bank) if not isinstance(bank, (list, tuple)) else "<models>",
        "target": str(target),
        "perturbations": [str(s) for s in specs],
        "metric": options["metric"],
        "repeats": options["repeats"],
        "seed": options["seed"],
        "threshold": options["threshold"],
        "block": list(options["block"]),
        "tile": tile if tile is None or isinstance(tile, int) else list(tile),
        "halo": halo if halo is None or isinstance(halo, int) else list(halo),
        "units": [im.name for im in images],
        "max_images": options["max_images"],
        "device": options["device"],
        "cache": str(cache) if cache is not None else None,
        "models": {m.name: {"file": str(m.path), "sha256": file_digest(m.path)} for m in models},
    }


@dataclass
class Plan:
    """The tasks still to do, and what planning found on the way."""

    tasks: list = field(default_factory=list)
    skipped: int = 0  # units already done (resume)
    sessions: dict = field(default_factory=dict)  # in this process only, per model name
    failures: list[Failure] = field(default_factory=list)
    providers: dict[str, str] = field(default_factory=dict)
    dropout_models: dict[str, Model | None] = field(default_factory=dict)


def plan_tasks(models, images, specs, metrics, done, *, options: dict, block, tile, halo, in_memory: bool,
               threads: int | None, cte: bool = True) -> Plan:
    """One task per (model, 2D image) and per (model, scoring block) of a volume (or per (model,
    volume) `in_memory`), for the (perturbation, repeat) pairs not in `done`; none without
    `cte` (then only the sessions are opened, for the consensus stage).

    A session is created here once per model, so that a broken file is reported before any
    work; so is each model's grey-box rewrite when a perturbation needs it.
    """
    from ..models.greybox import rewrite
    from .block_task import BlockTask, volume_job
    from .image_task import ScoreTask

    plan = Plan()
    samples: dict = {}
    device = options["device"]
    sessions = plan.sessions = open_sessions(models, device=device, threads=threads, plan=plan)
    for model in models if cte else ():
        if model.name not in sessions:
            continue
        session = sessions[model.name]
        dropout_model = None
        if any(s.is_dropout for s in specs):
            try:
                dropout_model = model if model.greybox else rewrite(model, tensor="auto")
            except SegrankError as err:
                plan.failures.append(Failure(model.name, Stage.GREYBOX, str(err)))
        plan.dropout_models[model.name] = dropout_model
        scoring = ScoringOptions(tuple(specs), metrics[model.name], options["repeats"], options["seed"],
                                 options["threshold"], device, threads, options["cache"])
        possible = [(str(s), r) for s in specs for r in range(scoring.repeats)
                    if not (s.is_dropout and dropout_model is None)]
        for im in images:
            units = units_of(im, block)
            open_pairs = {u.name: frozenset(p for p in possible if (model.name, p[0], u.name, p[1]) not in done)
                          for u in units}
            pending = [u for u in units if open_pairs[u.name]]
            if not pending:
                plan.skipped += 1 if (len(units) == 1 or in_memory) else len(units)
                continue
            todo = frozenset().union(*open_pairs.values())
            if len(spatial(im.axes)) < 3:
                plan.tasks.append(ScoreTask(model, dropout_model, im, tuple(units), todo, scoring, tile=tile, halo=halo))
                continue
            try:
                job = volume_job(model, dropout_model, im, session, scoring, block, tile, halo, samples)
            except SegrankError as err:
                plan.failures.append(Failure(model.name, Stage.PREDICT, str(err), image=im.name))
                continue
            if in_memory:
                plan.tasks.append(ScoreTask(model, dropout_model, im, tuple(units), todo, scoring, norm=job.norm,
                                            blocking=job.blocking, center=job.center, digest=job.digest))
                continue
            plan.skipped += len(units) - len(pending)
            plan.tasks += [BlockTask(job, u, open_pairs[u.name]) for u in pending]
    return plan


def open_sessions(models, *, device: str, threads: int | None, plan: Plan) -> dict:
    """A session per model, created here once so that a broken file is reported before any work;
    the provider of each goes to `plan.providers`, a failure to `plan.failures`."""
    from ..inference.session import create_session

    sessions = {}
    for model in models:
        if model.name in plan.providers:
            continue
        try:
            sessions[model.name], plan.providers[model.name] = create_session(model, device=device, threads=threads)
        except SegrankError as err:
            plan.failures.append(Failure(model.name, Stage.SESSION, str(err)))
    return sessions


__all__ = ["DEFAULT_BLOCK", "DEFAULT_SCORE", "default_block", "Plan", "SCORES", "check_scores", "open_sessions", "check_options", "choose_perturbations", "load_inputs", "plan_tasks", "run_settings"]
