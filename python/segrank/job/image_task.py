"""The task of one (model, image) predicted whole in memory: 2D images, and volumes on the
in-memory path (the reference that the blockwise path equals exactly)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SegrankError
from ..inference.blocks import Blocking
from ..inference.normalize import Normalization
from ..inference.prepared import PreparedImage
from ..models.description import Model
from ..perturb.input import PerturbationSpec
from ..scoring import prediction_for_metric, unit_consistency
from ..scoring.options import ScoringOptions
from .failures import Failure, Stage
from .rundir import unit_row
from .units import Unit


@dataclass(frozen=True)
class ScoreTask:
    """The work for one (model, image) predicted whole: picklable (no sessions).

    For a volume on the in-memory path, `norm`, `blocking`, `center` and `digest` come from the
    whole lazy volume (as for the blockwise path); for a 2D image they are None and computed
    from it.
    """

    model: Model
    dropout_model: Model | None
    image: object  # io.targets.TargetImage: lazy pixels, reopened on the worker
    units: tuple[Unit, ...]
    todo: frozenset
    options: ScoringOptions
    norm: Normalization | None = None
    blocking: Blocking | None = None
    center: float | None = None
    digest: str | None = None
    tile: object = None
    halo: object = None

    def run(self) -> dict:
        """Rows of the image's units; a failure comes back as data, not as an exception."""
        counts: dict = {}
        try:
            rows = score_image(self, counts=counts)
        except SegrankError as err:
            return {"failure": self.failure(str(err))}
        return {"rows": rows, "predictions": counts}

    def failure(self, error: str) -> Failure:
        return Failure(self.model.name, Stage.PREDICT, error, image=self.image.name)


@dataclass(frozen=True)
class _Graph:
    """The model or its grey-box rewrite, with the image prepared for it."""

    image: PreparedImage
    session: object
    digest: str

    @property
    def model(self) -> Model:
        return self.image.model


class WholeImage:
    """The runs of one (model, image) predicted whole, in memory.

    One unperturbed run per graph (the model; its grey-box rewrite for dropout), shared by every
    perturbation and repeat. With a cache, each run is read back when stored and stored when
    computed.
    """

    def __init__(self, task: ScoreTask, data: np.ndarray | None = None):
        self.task = task
        self.pixels = np.asarray(task.image.data) if data is None else data
        self.graphs: dict[str, _Graph] = {}
        self.baselines: dict[str, np.ndarray] = {}
        self.center = task.center
        self.reused = self.computed = 0

    def graph(self, name: str) -> _Graph:
        from ..inference.prepared import prepare_image
        from ..inference.session import cached_session

        if name not in self.graphs:
            task, options = self.task, self.task.options
            model = task.dropout_model if name == "dropout" else task.model
            session, _ = cached_session(model, device=options.device, threads=options.threads)
            prepared = prepare_image(model, task.image, pixels=self.pixels, session=session, tile=task.tile,
                                     halo=task.halo, blocking=task.blocking, norm=task.norm)
            self.graphs[name] = _Graph(prepared, session, task.digest if task.norm is not None else prepared.identity)
        return self.graphs[name]

    def predict(self, spec: PerturbationSpec | None = None, repeat: int = 0, unit: str | None = None,
                *, graph: str = "model") -> np.ndarray:
        """Probabilities (C, *spatial) of the unperturbed run of `graph` (`spec` None), or of
        (`spec`, `repeat`) for `unit` (whose name seeds a dropout mask)."""
        from ..inference.predict import predict_prepared
        from ..scoring.runs import plan_run

        graph = "dropout" if spec is not None and spec.is_dropout else graph
        g = self.graph(graph)
        image = g.image
        if spec is not None and spec.kind == "contrast" and self.center is None:
            self.center = float(np.mean(image.norm.apply(image.data)))  # of the image as the model sees it
        run = plan_run(g.model, spec, repeat, options=self.task.options, image=self.task.image.name,
                       unit=unit or self.task.image.name, center=self.center or 0.0, norm=image.norm,
                       blocking=image.blocking, digest=g.digest)
        if run.stored is not None and run.stored.complete:
            self.reused += len(image.blocking)
            return run.stored.read()
        prob = predict_prepared(image, g.session, perturb=run.perturb, dropout_mask=run.mask)
        self.computed += len(image.blocking)
        if run.stored is not None:
            run.stored.write(prob)
        return prob

    def store_baseline(self) -> str:
        """Make sure the model's unperturbed run is in the prediction cache; its array's name."""
        from ..inference.predict import predict_prepared
        from ..scoring.runs import plan_run

        g = self.graph("model")
        run = plan_run(g.model, None, 0, options=self.task.options, image=self.task.image.name,
                       unit=self.task.image.name, center=0.0, norm=g.image.norm, blocking=g.image.blocking,
                       digest=g.digest)
        if run.stored.complete:
            self.reused += len(g.image.blocking)
        else:
            run.stored.write(predict_prepared(g.image, g.session))
            self.computed += len(g.image.blocking)
        return run.stored.name

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


__all__ = ["ScoreTask", "WholeImage", "score_image"]
