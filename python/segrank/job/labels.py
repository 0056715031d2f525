"""Few labels: the models ranked by their true score on the few target images that have labels.

With labels for K of the target's images (``--labels DIR``), every model's stored unperturbed
prediction of those images (the consensus stage's store, so no extra inference when consensus
runs too) is scored against them: foreground F1 for semantic models, DSB mAP for instance
models (as `segrank evaluate`). The setting "labels" ranks the models by the mean over the K
images, beside the label-free settings. On the benchmark this plain use of the labels beat every
way of combining them with a label-free shortlist (benchmarks/README.md, "Consensus and few
labels"), so it is what segrank offers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, SegrankError
from ..models.description import Model
from .failures import Failure, Stage
from .rundir import record_result, unit_row
from .units import spatial

LABELS = "labels"  # the setting's name in ranking.json ("perturbation")


@dataclass(frozen=True)
class LabelTask:
    """Score one model's stored prediction of one labelled image."""

    model: Model
    image: str
    key: str
    store: str
    label_path: Path
    threshold: float

    def run(self) -> dict:
        try:
            return {"rows": [unit_row(self.model.name, LABELS, self.image, 0, self._score())]}
        except SegrankError as err:
            return {"failure": self.failure(str(err))}

    def failure(self, error: str) -> Failure:
        return Failure(self.model.name, Stage.PREDICT, error, image=self.image)

    def _score(self) -> float:
        from ..evaluate.job import read_labels
        from ..evaluate.performance import average_precision, foreground_f1
        from ..io.zarr_store import PredictionStore
        from ..postprocess import instance_labels

        prob = np.asarray(PredictionStore(self.store).array(self.key)[...])
        truth = read_labels(self.label_path)
        if truth.shape != prob.shape[1:]:
            raise InputError(f"{self.label_path}: labels of shape {truth.shape}, the image is {prob.shape[1:]}")
        if self.model.task == "instance":
            return average_precision(truth, instance_labels(prob, self.model))
        return foreground_f1(prob[self.model.foreground_channel], truth, threshold=self.threshold)


def labelled(images, labels_dir) -> dict[str, Path]:
    """{image name: label file} of the target's 2D images that have labels in `labels_dir`."""
    from ..evaluate.job import label_file

    folder = Path(labels_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: --labels needs a folder of label images named like the target's images")
    found = {}
    for im in images:
        path = label_file(im.name, folder)
        if path is not None:
            if len(spatial(im.axes)) >= 3:
                raise InputError(f"{path}: labels of a volume; --labels takes labels of 2D images only")
            found[im.name] = path
    if not found:
        raise InputError(f"{folder}: no label file named like a target image ({', '.join(im.name for im in images[:3])}, ...)")
    return found


def label_rows(models, labels: dict[str, Path], done: dict, failures: list[Failure], providers) -> list[dict]:
    """Rows of ranking.json for the setting "labels": each model's mean true score over the
    labelled images (no interval: K is small by design)."""
    from ..scoring.aggregate import ModelScore
    from .rows import assign_ranks, ranking_row

    rows = []
    failed = {f.model for f in failures}
    for model in models:
        values = [float(done[k]["score"]) for k in ((model.name, LABELS, im, 0) for im in labels) if k in done]
        if not values:
            status = "failed" if model.name in failed else "not scored"
        elif len(values) < len(labels):
            status = f"failed on {len(labels) - len(values)} of {len(labels)} labelled images"
        else:
            status = "ok"
        score = ModelScore(model.name, float(np.mean(values)) if values else None, None, None, None,
                           len(labels), len(values))
        rows.append(ranking_row(score, setting=LABELS, metric="map" if model.task == "instance" else "f1",
                                estimator=LABELS, n_images=len(labels), provider=providers.get(model.name),
                                status=status))
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0.0), r["name"]))
    return assign_ranks(rows, None)


def score_labels(models, images, labels: dict[str, Path], keys: dict, *, run, executor, store: str, threshold: float,
                 done: dict, failures: list[Failure]) -> None:
    """Score the stored predictions of the labelled images not scored yet; rows to per_image.csv."""
    by_name = {im.name: im for im in images}
    tasks = [LabelTask(m, name, keys[(m.name, name)], store, path, threshold) for m in models
             for name, path in labels.items() if (m.name, name) in keys and (m.name, LABELS, name, 0) not in done
             and name in by_name]
    for task, result in executor.run(tasks):
        record_result(task, result, run=run, done=done, failures=failures, predictions={})


def run_labels(models, images, plan, run, executor, failures: list[Failure], *, labels_dir, metrics: dict, cache,
               done: dict, options: dict) -> tuple[list[dict], dict]:
    """Store the labelled images' predictions (shared with the consensus stage), score them, and
    rank; (rows, predictions counts)."""
    from ..scoring.cache import PredictionCache
    from ..scoring.options import ScoringOptions
    from .consensus import store_predictions

    o = options
    labels = labelled(images, labels_dir)
    store = PredictionCache(cache.path if cache is not None else run.out / "predictions", required=True)

    def options_of(model: Model) -> ScoringOptions:
        return ScoringOptions((), metrics[model.name], 1, o["seed"], o["threshold"], o["device"], o["threads"], store)

    todo = {name: {name} for name in labels if any((m.name, LABELS, name, 0) not in done for m in models)}
    keys, _, predictions = store_predictions(models, images, plan.sessions, options_of, executor=executor,
                                             block=o["block"], tile=o["tile"], halo=o["halo"], pending=todo,
                                             failures=failures, progress=o["progress"])
    score_labels(models, images, labels, keys, run=run, executor=executor, store=store.path,
                 threshold=o["threshold"], done=done, failures=failures)
    return label_rows(models, labels, done, failures, plan.providers), predictions


__all__ = ["LABELS", "LabelTask", "label_rows", "labelled", "run_labels", "score_labels"]
