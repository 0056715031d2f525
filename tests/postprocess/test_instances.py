"""Instance labels from probabilities: components, watershed, label passthrough, minimum size."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from skimage.measure import label as sk_label

from segrank.models.description import Postprocessing
from segrank.postprocess import instance_labels
from segrank.postprocess.instances import remove_small


def _model(**post):
    """The fields of a Model that post-processing reads."""
    return SimpleNamespace(name="m", foreground_channel=0, postprocessing=Postprocessing(**post))


def test_components_match_skimage_and_drop_small_objects():
    rng = np.random.default_rng(0)
    fg = rng.random((40, 40)).astype(np.float32)
    model = _model(kind="components", threshold=0.7, min_size=3)
    got = instance_labels(fg[None], model)
    expected = remove_small(sk_label(fg > 0.7, connectivity=2).astype(np.uint32), 3)
    np.testing.assert_array_equal(got, expected)
    sizes = np.bincount(got.ravel())[1:]
    assert sizes[sizes > 0].min() >= 3


def test_watershed_splits_touching_objects_along_the_boundary():
    fg = np.zeros((20, 30), np.float32)
    fg[5:15, 3:27] = 1.0
    boundary = np.zeros_like(fg)
    boundary[:, 15] = 0.9  # a ridge between two touching objects
    model = _model(kind="watershed", threshold=0.5, boundary_channel=1, min_size=1)
    labels = instance_labels(np.stack([fg, boundary]), model)
    assert set(np.unique(labels[5:15, 3:14])) != set(np.unique(labels[5:15, 17:27]))
    assert len(np.unique(labels)) == 3 and (labels[fg == 0] == 0).all()


def test_labels_pass_through_and_unknown_kinds_fail():
    ids = np.array([[0, 1, 1], [2, 2, 0]], np.float32)
    np.testing.assert_array_equal(instance_labels(ids[None], _model(kind="none", min_size=1)), ids.astype(np.uint32))
    with pytest.raises(ValueError, match="boundary_channel"):
        instance_labels(ids[None], _model(kind="watershed", min_size=1))


def test_remove_small_keeps_ids_and_returns_the_input_when_nothing_is_small():
    labels = np.array([[1, 1, 0, 2], [1, 0, 0, 2]], np.uint32)
    assert remove_small(labels, 2) is labels
    np.testing.assert_array_equal(remove_small(labels, 3), np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.uint32))
