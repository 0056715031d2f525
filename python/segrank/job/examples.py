"""Example tiles for the report: the image and both runs of the best and the worst model."""
from __future__ import annotations

import numpy as np

from ..errors import SegrankError
from ..scoring.options import ScoringOptions
from .units import spatial, units_of


def example_tiles(rows, models, images, spec, *, options: dict, dropout_models, block=(64, 256, 256), tile=None,
                  halo=None, size=256) -> list[dict]:
    """(image, unperturbed, perturbed) foreground probabilities of the best and the worst scored
    model on the first image (repeat 0), for the report: what a person looks at to see why. For
    a volume, its middle scoring block, predicted from the whole volume's tiles (bounded memory).
    The same runs as scored, so they come from the cache when there is one. `options` holds
    seed, threshold, device and cache."""
    from ..inference.axes import channel_first
    from ..inference.session import cached_session
    from ..inference.source import read_region
    from ..scoring.volume import predict_region
    from .block_task import volume_job
    from .image_task import ScoreTask, WholeImage

    scored = [r for r in rows if r["perturbation"] == str(spec) and r["score"] is not None]
    if not scored or not images:
        return []
    picks = [("best", scored[0])] + ([("worst", scored[-1])] if len(scored) > 1 else [])
    image = images[0]
    volume = len(spatial(image.axes)) >= 3
    unit = units_of(image, block)
    unit = unit[len(unit) // 2]
    out = []
    for label, row in picks:
        model = next(m for m in models if m.name == row["name"])
        dropout_model = dropout_models.get(model.name)
        if spec.is_dropout and dropout_model is None:
            continue
        scoring = ScoringOptions((spec,), row["metric"], 1, **options)
        try:
            if volume:
                session, _ = cached_session(model, device=scoring.device)
                job = volume_job(model, dropout_model, image, session, scoring, block, tile, halo, {})
                shown = job.dropout_model if spec.is_dropout else job.model
                perturbed = predict_region(job, unit.region, spec=spec, dropout=spec.is_dropout)
                unperturbed = predict_region(job, unit.region, dropout=spec.is_dropout)
                data, _, _, _ = channel_first(image, None, model)
                pixels, pixel_axes = read_region(data, (slice(None),) + unit.region), "c" + spatial(image.axes)
            else:
                whole = WholeImage(ScoreTask(model, dropout_model, image, (unit,), frozenset(), scoring, tile=tile,
                                             halo=halo))
                graph = "dropout" if spec.is_dropout else "model"
                perturbed, unperturbed = whole.predict(spec, 0), whole.baseline(graph)
                shown = whole.graph(graph).model
                pixels, pixel_axes = whole.pixels, image.axes
        except SegrankError:
            continue
        out.append({
            "label": f"{label}: {row['name']} ({row['score']:.3f}) on {unit.name}",
            "image": _thumbnail(pixels, pixel_axes, size),
            "unperturbed": _thumbnail(unperturbed[shown.foreground_channel], spatial(image.axes), size),
            "perturbed": _thumbnail(perturbed[shown.foreground_channel], spatial(image.axes), size),
        })
    return out


def _thumbnail(array: np.ndarray, axes: str, size: int) -> np.ndarray:
    """A 2D view: first channel, middle z slice, strided down to about `size` pixels."""
    a = np.asarray(array)
    for letter in axes[:-2]:
        a = a[a.shape[0] // 2] if letter == "z" else a[0]
    step = max(1, max(a.shape) // size)
    return a[::step, ::step].astype(np.float32)


__all__ = ["example_tiles"]
