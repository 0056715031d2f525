"""Instance labels from a model's probabilities, by the model's declared post-processing."""
from __future__ import annotations

import numpy as np
from skimage.measure import label as connected_components
from skimage.segmentation import watershed

from ..models.description import Model, Postprocessing


def instance_labels(probabilities: np.ndarray, model: Model) -> np.ndarray:
    """Label image (uint32, 0 = background) from probabilities shaped (C, *spatial).

    Parameters
    ----------
    probabilities : ndarray
        The model's output after its activation, channels first.
    model : Model
        Supplies the foreground channel and the post-processing (`Model.postprocessing`).

    Notes
    -----
    ``components``: connected components (full connectivity) of p_fg > threshold.
    ``watershed``: seeds are connected components of (p_fg - p_boundary) > threshold; they
    flood the boundary probability inside the foreground mask p_fg > threshold.
    ``none``: the foreground channel already holds integer labels.
    Objects smaller than ``min_size`` pixels are removed in every case.
    """
    post: Postprocessing = model.postprocessing
    fg = np.asarray(probabilities[model.foreground_channel])
    if post.kind == "none":
        labels = fg.astype(np.uint32)
    elif post.kind == "components":
        labels = connected_components(fg > post.threshold, connectivity=fg.ndim).astype(np.uint32)
    elif post.kind == "watershed":
        if post.boundary_channel is None:
            raise ValueError(f"{model.name}: watershed post-processing needs a boundary_channel")
        boundary = np.asarray(probabilities[post.boundary_channel])
        mask = fg > post.threshold
        seeds = connected_components((fg - boundary) > post.threshold, connectivity=fg.ndim)
        labels = watershed(boundary, markers=seeds, mask=mask).astype(np.uint32)
    else:
        raise ValueError(f"{model.name}: unknown post-processing {post.kind!r}")
    if post.min_size > 1 and labels.any():
        labels = remove_small(labels, post.min_size)
    return labels


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set objects of fewer than `min_size` pixels to background (ids are kept)."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if not small.any():
        return labels
    out = labels.copy()
    out[small[labels]] = 0
    return out


__all__ = ["instance_labels", "remove_small"]
