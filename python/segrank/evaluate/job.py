"""`segrank evaluate` and `segrank validate`: true performance of a bank, and rank agreement."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError, SegrankError
from ..io.files import atomic_write
from .correlation import rank_agreement, summarize
from .performance import average_precision, foreground_f1


LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def label_file(image_name: str, labels: Path) -> Path | None:
    """The label file of an image in a labels folder (same name), or None."""
    for ext in LABEL_SUFFIXES:
        candidate = Path(labels) / f"{image_name}{ext}"
        if candidate.exists():
            return candidate
    return None


def _label_for(image_name: str, labels: Path) -> Path:
    found = label_file(image_name, labels)
    if found is None:
        raise InputError(f"{labels}: no label file for image {image_name!r}")
    return found


def read_labels(path: Path) -> np.ndarray:
    """A label image (tif, png or npy)."""
    return _read_labels(Path(path))


def _read_labels(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".png":
        from skimage.io import imread

        return imread(path)
    import tifffile

    return tifffile.imread(path)


def load_inputs(bank, target, *, axes: str | None = None, failures: list | None = None,
                output_space: str | None = None, key: str | None = None,
                trust_code: bool = False) -> tuple[list, list]:
    """The usable models of `bank` and the images of `target`; models that do not load are
    added to `failures` (typed, as in `rank`) when given, else reported on stderr."""
    from ..io.targets import open_target
    from ..job.failures import Failure, Stage
    from ..models import load_bank

    models, problems = (load_bank(bank, output_space=output_space, trust_code=trust_code)
                        if not isinstance(bank, (list, tuple)) else (list(bank), []))
    for p in problems:
        if failures is not None:
            failures.append(Failure(p.name, Stage.LOAD, p.message))
        print(f"segrank: {p.message}", file=sys.stderr)
    return models, list(open_target(target, axes=axes, key=key).images)


def read_truth(images, labels: Path) -> dict[str, np.ndarray]:
    """Label image per target image, matched by file name."""
    return {im.name: _read_labels(_label_for(im.name, Path(labels))) for im in images}


def evaluate(bank, target, *, labels, out, device: str = "auto", axes: str | None = None,
             threshold: float = 0.5, progress: bool = True, output_space: str | None = None, key: str | None = None,
             trust_code: bool = False) -> list[dict]:
    """True performance of every model of `bank` on `target` against `labels`.

    Semantic models: median over images of the foreground F1 at `threshold`; instance models:
    median over images of mAP over IoU 0.50:0.05:0.95 (DSB2018). Writes DIR/performance.json
    ({"models": [{"name", "score", "metric", "n_images"}], "failures": [...]}) and
    DIR/performance_per_image.csv. A model that fails (it does not load, has no session, or
    fails on an image) is recorded in "failures", as `rank` records it, and the others go on;
    a model that failed on some images is scored on the rest.
    """
    from tqdm import tqdm

    from ..job.failures import Failure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    failures: list[Failure] = []
    models, images = load_inputs(bank, target, axes=axes, failures=failures, output_space=output_space, key=key,
                                 trust_code=trust_code)
    labels = Path(labels)
    truth = read_truth(images, labels)
    rows, per_image = [], []
    bar = tqdm(total=len(models) * len(images), desc="evaluate", unit="img", disable=not progress, file=sys.stderr)
    for model in models:
        scores = _model_performance(model, images, truth, labels, device=device, threshold=threshold,
                                    failures=failures, per_image=per_image, bar=bar)
        if scores:
            rows.append({"name": model.name, "score": float(np.median(scores)),
                         "metric": "map" if model.task == "instance" else "f1", "n_images": len(scores)})
    bar.close()
    for f in failures:
        print(f"segrank: {f.model} ({f.stage}): {f.error}", file=sys.stderr)
    document = {"models": rows, "target": str(target), "labels": str(labels),
                "failures": [f.to_json() for f in failures]}
    atomic_write(out / "performance.json", json.dumps(document, indent=2))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["model", "image", "metric", "score"])
    writer.writeheader()
    writer.writerows(per_image)
    atomic_write(out / "performance_per_image.csv", buffer.getvalue())
    return rows


def _model_performance(model, images, truth, labels: Path, *, device, threshold, failures, per_image, bar) -> list:
    """Scores of one model on the images it could predict; its failures are recorded."""
    from ..inference.predict import predict_image
    from ..inference.session import create_session
    from ..job.failures import Failure, Stage
    from ..postprocess import instance_labels

    try:
        session, _ = create_session(model, device=device)
    except SegrankError as err:
        failures.append(Failure(model.name, Stage.SESSION, str(err)))
        bar.update(len(images))
        return []
    metric = "map" if model.task == "instance" else "f1"
    scores = []
    for im in images:
        bar.update(1)
        try:
            prob = predict_image(model, np.asarray(im.data), axes=im.axes, session=session)
        except SegrankError as err:
            failures.append(Failure(model.name, Stage.PREDICT, str(err), image=im.name))
            continue
        gt = truth[im.name]
        if gt.shape != prob.shape[1:]:
            raise InputError(f"{labels}: labels of {im.name} have shape {gt.shape}, image {prob.shape[1:]}")
        if metric == "map":
            score = average_precision(gt, instance_labels(prob, model))
        else:
            score = foreground_f1(prob[model.foreground_channel], gt, threshold=threshold)
        scores.append(score)
        per_image.append({"model": model.name, "image": im.name, "metric": metric, "score": repr(score)})
    return scores


def _load_rows(path: Path, what: str) -> list[dict]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read {what} ({err})") from None
    rows = doc.get("models") if isinstance(doc, dict) else doc
    if not isinstance(rows, list):
        raise InputError(f"{path}: no 'models' list in {what}")
    return rows


def validate(pairs: list[tuple[Path, Path]], *, n_permutations: int = 10000, seed: int = 0) -> dict:
    """Agreement of rankings with true performance, per target (one (ranking, performance) pair
    each) and per perturbation setting; mean and std over targets when there are several.

    Returns a dict with "kendall", "spearman", "pearson" ({"value", "p"}; with several targets
    {"value": mean, "std", "p": None} and "targets" holding each target's own values), "regret",
    "perturbation", and "by_perturbation" when the rankings hold several settings.
    """
    per_setting: dict[str, dict[str, dict]] = {}
    for index, (ranking_path, performance_path) in enumerate(pairs):
        ranking = _load_rows(ranking_path, "ranking")
        true = {r["name"]: r["score"] for r in _load_rows(performance_path, "performance")}
        for pert in dict.fromkeys(r.get("perturbation", "") for r in ranking):
            rows = [r for r in ranking if r.get("perturbation", "") == pert]
            missing = [r["name"] for r in rows if r["name"] not in true]
            if missing:
                raise InputError(f"{performance_path}: no true score for {', '.join(missing)}")
            try:
                result = rank_agreement([r["score"] for r in rows], [true[r["name"]] for r in rows],
                                        n_permutations=n_permutations, seed=seed)
            except ValueError as err:
                raise InputError(f"{ranking_path} vs {performance_path}: {err} ({len(rows)} models in "
                                 f"{pert or 'the ranking'})") from None
            per_setting.setdefault(pert, {})[f"{index}:{ranking_path}"] = result
    if not per_setting:
        raise SegrankError("validate: nothing to compare")
    by_setting = {}
    for pert, per_target in per_setting.items():
        if len(per_target) == 1:
            entry = dict(next(iter(per_target.values())))
        else:
            mean = summarize(per_target)
            entry = {k: {"value": mean[k]["mean"], "std": mean[k]["std"], "p": None} for k in ("kendall", "spearman", "pearson")}
            entry.update({"regret": mean["regret"], "top1_rate": mean["top1_rate"], "targets": per_target})
        entry["perturbation"] = pert
        by_setting[pert] = entry
    # The first setting at the top level ("kendall", "spearman", "pearson"), all of them below.
    result = dict(next(iter(by_setting.values())))
    if len(by_setting) > 1:
        result["by_perturbation"] = by_setting
    return result


__all__ = ["evaluate", "validate"]
