"""Baselines that rank a bank without consistency: what CTE has to beat, and the job that scores them.

Label-free (they see the model's probabilities on the unlabelled target, as CTE does):

- confidence: mean over pixels of the largest class probability, median over images;
- entropy: mean over pixels of the predictive entropy, median over images (low = confident).

Supervised transferability estimators (LEEP and CCFV; they see the target's labels, so they
are not competitors of a label-free ranking; they show the gap) live in
`segrank.evaluate.transferability` and are importable from here too.

`model_baselines` runs a model once per image (probabilities and, for CCFV, features from the
same run); `baselines` does it for a bank and writes DIR/baselines.json in the layout of
ranking.json (one row per model and baseline, the baseline named in "perturbation"), so that
`segrank validate DIR/baselines.json DIR/performance.json` compares them like any ranking.
"""
from __future__ import annotations

import csv
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError, PredictionError, SegrankError
from ..models.description import Model
from ..perturb.seeds import rng
from .transferability import (
    ccfv,
    feature_model,
    feature_tensor,
    feature_variety,
    gaussian_wasserstein,
    leep,
)

# Settings in baselines.json; every score is oriented so that higher ranks first.
BASELINES = ("confidence", "entropy", "leep", "ccfv")
LABEL_FREE = ("confidence", "entropy")
SETTING_PREFIX = "baseline:"


# --- label-free -------------------------------------------------------------------------------


def class_probabilities(prob: np.ndarray, *, activation: str = "sigmoid", foreground_channel: int = 0) -> np.ndarray:
    """Per-pixel class distribution (K, *spatial) from a model's probabilities (C, *spatial).

    A softmax output is a distribution over its C channels already. A sigmoid (or in-graph)
    output holds independent probabilities per channel; the foreground channel p gives the
    two-class distribution (1 - p, p), which is what the foreground decision at 0.5 uses.
    """
    prob = np.asarray(prob, dtype=np.float64)
    if activation == "softmax":
        return prob
    p = np.clip(prob[foreground_channel], 0.0, 1.0)
    return np.stack([1.0 - p, p])


def mean_max_probability(probs: np.ndarray) -> float:
    """Mean over pixels of the largest class probability (the confidence baseline).

    Parameters
    ----------
    probs : ndarray, shape (K, *spatial)
        Class distribution per pixel (see `class_probabilities`).

    Notes
    -----
    confidence = (1 / |Omega|) sum_{x in Omega} max_k p_k(x); 1 for a model that is certain
    everywhere, 1/K for one that is uniform everywhere.
    """
    probs = np.asarray(probs, dtype=np.float64)
    return float(np.mean(np.max(probs, axis=0)))


def mean_entropy(probs: np.ndarray) -> float:
    """Mean over pixels of the predictive entropy in nats (the entropy baseline; lower = surer).

    Notes
    -----
    H = (1 / |Omega|) sum_{x in Omega} -sum_k p_k(x) log p_k(x), with 0 log 0 = 0; between 0
    and log K.
    """
    probs = np.asarray(probs, dtype=np.float64)
    safe = np.where(probs > 0, probs, 1.0)
    return float(np.mean(-np.sum(probs * np.log(safe), axis=0)))


# --- per model, per bank --------------------------------------------------------------------------


def _sample(mask: np.ndarray, n: int, gen: np.random.Generator) -> np.ndarray:
    """Flat indices of up to n pixels where mask is true, drawn without replacement."""
    where = np.flatnonzero(mask)
    if where.size <= n:
        return where
    return np.sort(gen.choice(where, size=n, replace=False))


def _foreground(labels, probs: np.ndarray, image) -> np.ndarray:
    """The foreground (label > 0) of `image`, whose class distribution is `probs` (K, *spatial)."""
    truth = np.asarray(labels)
    if truth.shape != probs.shape[1:]:
        raise InputError(f"{image.source}: labels of {image.name} have shape {truth.shape}, the image {probs.shape[1:]}")
    return truth > 0


def _class_features(feats: np.ndarray, fg: np.ndarray, pixels: int, seed: int, model: str, image: str) -> dict:
    """CCFV's input from one image: {class: up to `pixels` sampled feature vectors (n_c, D)}, 0 = background."""
    ff = np.asarray(feats, dtype=np.float64).reshape(feats.shape[0], -1)
    per_class = {}
    for c, mask in ((0, ~fg.ravel()), (1, fg.ravel())):
        idx = _sample(mask, pixels, rng(seed, model, image, c, "baseline/ccfv"))
        if idx.size:
            per_class[c] = ff[:, idx].T
    return per_class


def model_baselines(
    model: Model,
    images: Sequence,
    *,
    labels: Mapping[str, np.ndarray] | None = None,
    pixels: int = 2000,
    seed: int = 0,
    tensor: str = "auto",
    with_ccfv: bool = True,
    device: str = "auto",
    threads: int | None = None,
    progress=None,
) -> tuple[dict, list[dict]]:
    """Every baseline of one model on the images of a target.

    Parameters
    ----------
    model : Model
    images : sequence of TargetImage
    labels : {image name: label array}, optional
        Without labels only the label-free baselines are computed.
    pixels : int
        Pixels sampled per image for LEEP, and per class per image for CCFV (seeded by
        `seed`, the model and the image).
    tensor : str
        CCFV's feature tensor ("auto": see `feature_tensor`).

    Returns
    -------
    scores : dict
        {"confidence", "entropy" (negated mean entropy, so higher ranks first), "leep", "ccfv"}
        (None where not computed), plus "n_images" and, if CCFV was skipped, "ccfv_error".
    per_image : list of dict
        {"image", "confidence", "entropy"} per image (entropy not negated).

    Notes
    -----
    Per image: confidence and entropy over all pixels (see `mean_max_probability`,
    `mean_entropy`); per target the median over images, like CTE's aggregation. LEEP pools the
    sampled pixels of all images; CCFV compares images (see `ccfv`).
    """
    from ..inference.predict import predict_image
    from ..inference.steps import activate
    from ..inference.session import create_session

    scores: dict = {"confidence": None, "entropy": None, "leep": None, "ccfv": None, "n_images": len(images)}
    per_image: list[dict] = []
    theta, targets, class_feats = [], [], []
    with tempfile.TemporaryDirectory(prefix="segrank-features-") as tmp:
        probe = None
        if labels is not None and with_ccfv:
            try:
                name, channels = feature_tensor(model, tensor)
                probe = feature_model(model, name, channels, Path(tmp))
            except SegrankError as err:
                scores["ccfv_error"] = str(err)
        run_model = probe or model
        session, _ = create_session(run_model, device=device, threads=threads)
        for im in images:
            raw = predict_image(run_model, im, session=session)
            if probe is not None:
                prob = activate(raw[: model.out_channels], model.activation)
                feats = raw[model.out_channels:]
            else:
                prob, feats = raw, None
            probs = class_probabilities(prob, activation=model.activation, foreground_channel=model.foreground_channel)
            row = {"image": im.name, "confidence": mean_max_probability(probs), "entropy": mean_entropy(probs)}
            per_image.append(row)
            if labels is not None:
                fg = _foreground(labels[im.name], probs, im)
                flat = probs.reshape(probs.shape[0], -1)
                pick = _sample(np.ones(fg.size, bool), pixels, rng(seed, model.name, im.name, 0, "baseline/leep"))
                theta.append(flat[:, pick].T)
                targets.append(fg.ravel()[pick].astype(np.int64))
                if feats is not None:
                    class_feats.append(_class_features(feats, fg, pixels, seed, model.name, im.name))
            if progress is not None:
                progress.update(1)
    if per_image:
        scores["confidence"] = float(np.median([r["confidence"] for r in per_image]))
        scores["entropy"] = -float(np.median([r["entropy"] for r in per_image]))
    if theta:
        scores["leep"] = leep(np.concatenate(theta), np.concatenate(targets))
    if class_feats:
        scores["ccfv"] = ccfv(class_feats)
    return scores, per_image


def baselines(
    bank,
    target,
    *,
    out,
    labels=None,
    pixels: int = 2000,
    seed: int = 0,
    tensor: str = "auto",
    with_ccfv: bool = True,
    device: str = "auto",
    axes: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Baseline scores of every model of `bank` on `target`; writes DIR/baselines.json.

    Parameters
    ----------
    bank : path or list of Model
    target : path
    out : path
        Writes OUT/baselines.json ({"models": one row per model and baseline: "name",
        "score", "rank", "perturbation" = "baseline:NAME"}) and OUT/baselines_per_image.csv.
    labels : path, optional
        Folder of label images named like the target images; enables LEEP and CCFV.

    Returns
    -------
    list of dict
        The rows of baselines.json.
    """
    from tqdm import tqdm

    from ..job.failures import Failure, Stage
    from .job import load_inputs, read_truth

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    failures: list[Failure] = []
    models, images = load_inputs(bank, target, axes=axes, failures=failures)
    truth = read_truth(images, Path(labels)) if labels is not None else None
    bar = tqdm(total=len(models) * len(images), desc="baselines", unit="img", disable=not progress, file=sys.stderr)
    scores, per_image, notes = {}, [], {}
    for model in models:
        try:
            s, rows = model_baselines(model, images, labels=truth, pixels=pixels, seed=seed, tensor=tensor,
                                      with_ccfv=with_ccfv, device=device, threads=threads, progress=bar)
        except (ModelError, PredictionError) as err:  # this model; bad input or labels stop the run
            failures.append(Failure(model.name, Stage.PREDICT, str(err)))
            print(f"segrank: {model.name}: {err}", file=sys.stderr)
            continue
        scores[model.name] = s
        if "ccfv_error" in s:
            notes[model.name] = s["ccfv_error"]
        per_image += [{"model": model.name, **r} for r in rows]
    bar.close()
    rows = baseline_rows(scores)
    doc = {"models": rows, "target": str(target), "labels": None if labels is None else str(labels),
           "settings": {"pixels": pixels, "seed": seed, "tensor": tensor}, "notes": notes,
           "failures": [f.to_json() for f in failures]}
    (out / "baselines.json").write_text(json.dumps(doc, indent=2))
    with (out / "baselines_per_image.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "image", "confidence", "entropy"])
        writer.writeheader()
        writer.writerows(per_image)
    return rows


def baseline_rows(scores: Mapping[str, Mapping]) -> list[dict]:
    """Rows in ranking.json's layout from {model: scores}: per baseline, models by descending
    score (None last), "perturbation" = "baseline:NAME"."""
    rows = []
    for key in BASELINES:
        if all(s.get(key) is None for s in scores.values()):
            continue
        order = sorted(scores, key=lambda n: (scores[n].get(key) is None, -(scores[n].get(key) or 0.0)))
        for position, name in enumerate(order, start=1):
            rows.append({"name": name, "rank": position, "score": scores[name].get(key),
                         "perturbation": SETTING_PREFIX + key, "n_images": scores[name].get("n_images")})
    return rows


__all__ = [
    "BASELINES",
    "baseline_rows",
    "baselines",
    "ccfv",
    "class_probabilities",
    "feature_model",
    "feature_tensor",
    "feature_variety",
    "gaussian_wasserstein",
    "leep",
    "mean_entropy",
    "mean_max_probability",
    "model_baselines",
]
