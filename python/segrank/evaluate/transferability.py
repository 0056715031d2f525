"""Supervised transferability estimators: LEEP and CCFV, the baselines that see the target's labels.

They are not competitors of a label-free ranking; they show the gap:

- LEEP (Nguyen et al., ICML 2020) on pixels sampled from every target image: the model's
  per-pixel class distribution is the "dummy label" distribution, the target labels are
  foreground / background;
- CCFV (Yang et al., MICCAI 2023: class consistency and feature variety) from an intermediate
  full-resolution feature tensor of the model, which ONNX exposes as an extra graph output
  (`feature_tensor`, `feature_model`).

`segrank.evaluate.baselines` runs both beside the label-free baselines.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..models.description import Model

FEATURE_OUTPUT = "segrank_probe_output"
_TINY = 1e-12


# --- LEEP ---------------------------------------------------------------------------------------


def leep(theta: np.ndarray, labels: np.ndarray) -> float:
    """Log Expected Empirical Prediction (Nguyen et al. 2020) of samples with known labels.

    Parameters
    ----------
    theta : ndarray, shape (n, Z)
        The source model's distribution over its Z classes for each of n samples (pixels).
    labels : ndarray of int, shape (n,)
        The target label of each sample.

    Returns
    -------
    float
        Between -log(number of target classes) and 0; higher = the model's outputs predict the
        target labels better.

    Notes
    -----
    Empirical joint P(y, z) = (1/n) sum_i theta_iz [y_i = y]; P(z) = sum_y P(y, z);
    conditional P(y | z) = P(y, z) / P(z); LEEP = (1/n) sum_i log sum_z P(y_i | z) theta_iz.
    A model whose outputs carry no information about y scores -H(y), the labels' entropy.
    """
    theta = np.asarray(theta, dtype=np.float64)
    labels = np.asarray(labels).ravel()
    if theta.ndim != 2 or theta.shape[0] != labels.size or labels.size == 0:
        raise ValueError(f"leep: theta of shape {theta.shape} does not match {labels.size} labels")
    classes, y = np.unique(labels, return_inverse=True)
    onehot = np.zeros((labels.size, classes.size))
    onehot[np.arange(labels.size), y] = 1.0
    joint = onehot.T @ theta / labels.size  # (Y, Z)
    marginal = joint.sum(axis=0)  # P(z)
    conditional = joint / np.maximum(marginal, _TINY)
    expected = np.sum(theta * conditional[y], axis=1)  # sum_z P(y_i | z) theta_iz
    return float(np.mean(np.log(np.maximum(expected, _TINY))))


# --- CCFV ---------------------------------------------------------------------------------------


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def gaussian_wasserstein(f1: np.ndarray, f2: np.ndarray, *, ridge: float = 1e-6) -> float:
    """2-Wasserstein distance between Gaussians fitted to two sets of feature vectors.

    Parameters
    ----------
    f1, f2 : ndarray, shape (n1, D) and (n2, D)
        Feature vectors (rows); each set needs at least 2 rows.
    ridge : float
        Added to the covariance diagonals, so that n < D stays finite.

    Notes
    -----
    W2 = sqrt(|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^(1/2) S2 S1^(1/2))^(1/2)), with the
    sample means mu and unbiased sample covariances S (np.cov). In one dimension this is
    sqrt((mu1 - mu2)^2 + (sigma1 - sigma2)^2).
    """
    f1 = np.atleast_2d(np.asarray(f1, dtype=np.float64))
    f2 = np.atleast_2d(np.asarray(f2, dtype=np.float64))
    if f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"gaussian_wasserstein: need >= 2 rows of equal width, got {f1.shape} and {f2.shape}")
    eye = np.eye(f1.shape[1]) * ridge
    s1 = np.atleast_2d(np.cov(f1, rowvar=False)) + eye
    s2 = np.atleast_2d(np.cov(f2, rowvar=False)) + eye
    root = _sqrtm_psd(s1)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)))
    d2 = np.sum((f1.mean(0) - f2.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
    return float(math.sqrt(max(d2, 0.0)))


def feature_variety(global_features: np.ndarray, *, eps: float = 1e-3) -> float:
    """CCFV's feature-variety term: mean over image pairs of 1 / sqrt(|g_i - g_j|^2 + eps).

    Parameters
    ----------
    global_features : ndarray, shape (N, D)
        One global feature per image (the mean of its sampled features), N >= 2.

    Notes
    -----
    V = 2 / (N (N - 1)) sum_{i < j} (|g_i - g_j|^2 + eps)^(-1/2), the pairwise potential
    energy of the images' global features, as in the authors' code (utils/ccfv.py,
    `cal_variety`).
    """
    g = np.atleast_2d(np.asarray(global_features, dtype=np.float64))
    if len(g) < 2:
        raise ValueError("feature_variety: need at least 2 images")
    i, j = np.triu_indices(len(g), k=1)
    d2 = np.sum((g[i] - g[j]) ** 2, axis=1)
    return float(np.mean(1.0 / np.sqrt(d2 + eps)))


def ccfv(per_image: Sequence[Mapping[int, np.ndarray]], *, eps: float = 1e-3, min_samples: int = 2) -> float | None:
    """Class consistency and feature variety (Yang et al. 2023) of a model on a labelled target.

    Parameters
    ----------
    per_image : sequence of {class: ndarray (n_c, D)}
        For each target image, the features sampled at pixels of each target class
        (0 = background).
    eps : float
        See `feature_variety`.
    min_samples : int
        A class needs this many sampled pixels in an image to enter its consistency term.

    Returns
    -------
    float or None
        log(V / W); None when no foreground class occurs in two images (no consistency term)
        or fewer than two images have features.

    Notes
    -----
    Class consistency W: for each foreground class c, the mean over image pairs (i < j) that
    both contain c of the 2-Wasserstein distance between Gaussians fitted to the class-c
    features of i and j (`gaussian_wasserstein`); then the mean over classes. Variety V:
    `feature_variety` of the per-image means of all sampled features. CCFV = log(V / W),
    the combination of the authors' code (its running sum ``w += w / (n^2 / 2) / C`` is read
    as the intended mean over pairs and classes). Higher = better transfer by their claim.
    """
    globals_, distances = [], []
    for feats in per_image:
        rows = [np.asarray(f, dtype=np.float64) for f in feats.values() if len(f)]
        if rows:
            globals_.append(np.concatenate(rows).mean(axis=0))
    classes = sorted({c for feats in per_image for c in feats if c != 0})
    for c in classes:
        sets = [feats[c] for feats in per_image if c in feats and len(feats[c]) >= min_samples]
        pairs = [gaussian_wasserstein(sets[i], sets[j]) for i in range(len(sets)) for j in range(i + 1, len(sets))]
        if pairs:
            distances.append(float(np.mean(pairs)))
    if not distances or len(globals_) < 2:
        return None
    w = float(np.mean(distances))
    v = feature_variety(np.stack(globals_), eps=eps)
    return float(math.log(v / max(w, _TINY)))


# --- features from ONNX -------------------------------------------------------------------------


def feature_tensor(model: Model, tensor: str = "auto") -> tuple[str, int]:
    """(name, channels) of the intermediate tensor CCFV reads.

    "auto": the last full-resolution decoder tensor with more channels than the output (in a
    U-Net, the features the final 1x1 convolution maps to logits). A named tensor must be a
    4D/5D float tensor at the input's spatial size.

    Raises
    ------
    ModelError
        When no such tensor exists (naming the model).
    """
    from ..models.greybox import analyse

    result = analyse(model)
    spatial = tuple(result.input_shape[2:])
    full = [c for c in result.candidates if tuple(c.spatial) == spatial and c.name != model.output_name]
    if tensor == "auto":
        picks = [c for c in full if c.side == "decoder" and c.channels > model.out_channels]
        if not picks:
            raise ModelError(f"{model.path}: {model.name} has no full-resolution decoder tensor for CCFV features")
        best = max(picks, key=lambda c: c.index)
        return best.name, best.channels
    for c in full:
        if c.name == tensor:
            return c.name, c.channels
    raise ModelError(f"{model.path}: {model.name} has no full-resolution float tensor {tensor!r} for CCFV features")


def feature_model(model: Model, tensor: str, channels: int, folder: Path) -> Model:
    """A copy of `model` in `folder` whose single output is Concat(output, tensor) on channels.

    One run of the copy gives the model's raw output (first `out_channels` channels) and the
    features; the copy's activation is "none" (apply the model's own to the first part).
    """
    import onnx
    from onnx import helper

    from ..models.onnx_graph import read_onnx

    proto = read_onnx(model.path, load_data=True)
    graph = proto.graph
    out_type = next((o.type.tensor_type.elem_type for o in graph.output if o.name == model.output_name), onnx.TensorProto.FLOAT)
    axis = model.axes.index("c")
    graph.node.append(helper.make_node("Concat", [model.output_name, tensor], [FEATURE_OUTPUT], axis=axis))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(FEATURE_OUTPUT, out_type, None))
    path = Path(folder) / f"{model.path.stem}.features.onnx"
    onnx.save_model(proto, str(path))
    return model.with_(path=path, output_name=FEATURE_OUTPUT, out_channels=model.out_channels + channels,
                       activation="none", sha256=None)


__all__ = [
    "FEATURE_OUTPUT",
    "ccfv",
    "feature_model",
    "feature_tensor",
    "feature_variety",
    "gaussian_wasserstein",
    "leep",
]
