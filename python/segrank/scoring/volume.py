"""Consistency of a volume block by block: bounded memory, exact, equal to the whole-volume result.

A volume (an image with a z axis) is cut into **scoring blocks**: a fixed grid of `block`-shaped
regions, chosen from the volume's shape alone (never from labels), each one scoring unit whose
scores enter the median over units. A scoring block is scored by one task that

1. reads only the region the model needs: the union of the prediction tiles that overlap the
   block (the block plus the model's halo, plus reflect padding at the volume's border);
2. predicts each prediction tile unperturbed and under every (perturbation, repeat) still to do,
   with the *whole volume's* normalisation (computed once per (model, volume) from a seeded
   subsample, `inference.normalize`) and the tiles of the *whole volume's* tiling
   (`scoring_blocking`), so that every probability equals, bit for bit, what predicting the whole
   volume at once gives;
3. accumulates the consistency counts of the tile parts inside the block with the C++ core and
   merges them exactly (`BinaryCounts` are integer sums, EI included).

Perturbation draws per scoring block (method.md: every draw is identified by (seed, model, unit,
repeat)):

* input perturbations (noise, gamma, brightness, contrast) are drawn per (seed, model, *volume*,
  repeat): their strength once per volume and Gaussian noise as a function of global voxel
  coordinates, so each block sees exactly the perturbed volume that a whole-volume prediction
  would see (each tile passes its global origin);
* a dropout mask acts on a whole run, not on a region, so it is drawn per (seed, model,
  *block name*, repeat): each block's perturbed prediction is the whole volume predicted with
  that block's mask, cropped to the block. Units thereby get independent masks, as images do.

Instance models (metric ``rand``): the per-block score is the foreground-restricted adapted Rand
score of instance labels computed **within the block**: the model's post-processing (connected
components or watershed, minimum size) runs on the block's probabilities alone, so an object
cut by a block border counts as separate objects in the two blocks, in both runs alike. This
needs the block's probabilities (not the volume's) in memory; the contingency table of a block
is exact and blocks never merge tables, since ids are local to a block.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..inference.blocks import Block, Blocking, choose_blocking
from ..inference.normalize import ImageSample, Normalization
from ..metrics import BinaryCounts, binary_consistency, contingency_table
from ..models.description import Model
from ..perturb.input import PerturbationSpec
from .consistency import prediction_for_metric, score_from_counts
from .options import ScoringOptions
from .runs import Run, plan_run

Region = tuple[slice, ...]


# --- the grid of scoring blocks ---------------------------------------------------------------


def block_regions(shape: Sequence[int], block: Sequence[int]) -> list[Region]:
    """A fixed grid of `block`-shaped regions over a volume of spatial `shape` (z, y, x).

    Regions at the far borders are cut at the volume's edge. The grid depends on the shape
    only: never on labels, models or predictions.
    """
    shape, block = tuple(int(s) for s in shape[-3:]), tuple(int(b) for b in block[-3:])
    if len(block) != 3 or any(b < 1 for b in block):
        raise InputError(f"scoring block {block}: expected three positive sizes (z, y, x)")
    steps = [range(0, s, b) for s, b in zip(shape, block)]
    return [
        tuple(slice(o, min(o + b, s)) for o, b, s in zip(corner, block, shape))
        for corner in itertools.product(*steps)
    ]


def block_name(image: str, region: Region) -> str:
    """The unit name of a block, e.g. ``vol[0:64,0:256,0:256]`` (also its dropout seed)."""
    return f"{image}[" + ",".join(f"{r.start}:{r.stop}" for r in region) + "]"


# --- the whole volume's tiling ----------------------------------------------------------------


def _per_axis(value, n: int, default: int) -> tuple[int, ...]:
    if not value:
        return (default,) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


def nested_tile(model: Model, base: Blocking, block: Sequence[int], *, slice_wise: bool,
                fixed_batch: bool = False) -> tuple[int, ...] | None:
    """An outer tile shape close to `base`'s whose inner regions nest in the scoring blocks.

    When the inner tile divides the scoring block along every axis, no tile straddles two blocks
    and no tile is predicted twice. Returns None when `base` already nests, or when the
    model's constraints (minimum, multiple_of) admit no nesting tile near it.
    """
    nd = model.ndim
    minimum = _per_axis(model.tiling.minimum, nd, 1)
    multiple = _per_axis(model.tiling.multiple_of, nd, 1)
    extra = len(base.shape) - nd
    tile = list(base.tile)
    changed = False
    for axis, (b, s, t, h) in enumerate(zip(block[-len(base.shape):], base.shape, base.tile, base.halo)):
        inner = t - 2 * h
        if b >= s or (inner <= b and b % inner == 0):
            continue  # one block along this axis, or already nested
        if slice_wise and axis == 0:
            if fixed_batch:  # the graph takes exactly this many slices per run
                continue
            # slices per run: the largest divisor of the block depth up to the chosen batch
            tile[0] = max(d for d in range(1, min(inner, b) + 1) if b % d == 0)
            changed = True
            continue
        mn, mu = minimum[axis - extra], multiple[axis - extra]
        found = None
        # from the base inner size downwards: a few more tiles per block, never much smaller ones
        for n in range(max(1, math.ceil(b / inner)), b + 1):
            if b % n:
                continue
            cand = b // n + 2 * h
            if b // n < max(1, inner // 4):
                break
            if cand >= mn and (mu <= 1 or cand % mu == 0):
                found = cand
                break
        if found is None:
            return None
        tile[axis] = found
        changed = True
    return tuple(tile) if changed else None


def scoring_blocking(
    model: Model,
    session,
    data,
    block: Sequence[int],
    *,
    tile=None,
    halo=None,
    batch=None,
) -> tuple[Model, Blocking]:
    """The tiling of the whole volume used to score it, shared by every scoring block.

    Parameters
    ----------
    model : Model
    session : onnxruntime.InferenceSession
        Read for fixed input sizes of the graph.
    data : array (C, z, y, x)
        The channel-first volume (lazy); its shape and chunks decide the default tiling.
    block : sequence of int
        Scoring block shape (z, y, x).
    tile, halo, batch : optional
        As for `inference.blocks.choose_blocking`; a tile given here is used as is.

    Returns
    -------
    model : Model
        With the graph's fixed tile, when it has one.
    blocking : Blocking
        `predict_image`'s default tiling, with the tile adjusted (when the model allows) so that
        inner tiles nest in scoring blocks. Predicting the whole volume with this blocking and
        scoring it block by block give identical probabilities.
    """
    from ..inference.predict import _blocking_for, _graph_constraints

    spatial = tuple(int(s) for s in data.shape[1:])
    model_c, base = _blocking_for(model, session, spatial, tile, halo, batch, data)
    if tile is not None or model_c.tiling.fixed is not None:
        return model_c, base
    slice_wise = len(spatial) > model.ndim
    fixed_batch = batch is not None or _graph_constraints(model, session)[1] is not None
    nested = nested_tile(model_c, base, block, slice_wise=slice_wise, fixed_batch=fixed_batch)
    if nested is None:
        return model_c, base
    try:
        return model_c, choose_blocking(model_c, spatial, tile=nested, halo=base.halo[len(spatial) - model.ndim:])
    except InputError:
        return model_c, base


def tiles_in(blocking: Blocking, region: Region) -> list[Block]:
    """The prediction tiles of `blocking` whose inner region overlaps `region`."""
    ranges = [
        range(r.start // step, min(g, -(-r.stop // step)))
        for r, step, g in zip(region, blocking.inner, blocking.grid)
    ]
    return [blocking.block(index) for index in itertools.product(*ranges)]


def _overlap(inner: Region, region: Region) -> tuple[Region, Region] | None:
    """(slices in the tile's inner prediction, slices in the region) of their overlap."""
    lo = [max(a.start, b.start) for a, b in zip(inner, region)]
    hi = [min(a.stop, b.stop) for a, b in zip(inner, region)]
    if any(l >= h for l, h in zip(lo, hi)):
        return None
    in_tile = tuple(slice(l - a.start, h - a.start) for l, h, a in zip(lo, hi, inner))
    in_region = tuple(slice(l - b.start, h - b.start) for l, h, b in zip(lo, hi, region))
    return in_tile, in_region


# --- perturbations of one unit ------------------------------------------------------------------


def normalized_mean(norm: Normalization, sample: ImageSample) -> float:
    """Mean of the normalised volume, from its normalisation sample (the contrast centre)."""
    return float(np.mean(norm.apply(sample.values)))


# --- one scoring block ------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeJob:
    """What every block task of one (model, volume) shares: picklable, no sessions.

    Attributes
    ----------
    model, dropout_model : Model
        The model (with its graph's fixed tile, if any), and its grey-box rewrite for dropout
        runs (None when dropout is not possible).
    image : TargetImage
        The volume, lazy; reopened on the worker.
    norm : Normalization
        Of the whole volume, for this model.
    center : float
        Mean of the normalised volume (the centre of ``contrast``).
    blocking : Blocking
        The whole volume's tiling (`scoring_blocking`).
    digest : str
        Identifies the volume's pixels in cache keys (`cache.input_identity`).
    options : ScoringOptions
        Perturbations, metric, repeats, seed, device and cache.
    """

    model: Model
    dropout_model: Model | None
    image: object
    norm: Normalization
    center: float
    blocking: Blocking
    digest: str
    options: ScoringOptions


def volume_run(job: VolumeJob, spec: PerturbationSpec | None, repeat: int, unit: str, *, dropout: bool) -> Run:
    """`runs.plan_run` for one block (`unit`, its name) of the job's volume: input perturbations
    are drawn per volume, dropout masks per block; through the grey-box rewrite when `dropout`."""
    return plan_run(
        job.dropout_model if dropout else job.model, spec, repeat, options=job.options, image=job.image.name,
        unit=unit, center=job.center, norm=job.norm, blocking=job.blocking, digest=job.digest,
    )


class _BlockPixels:
    """The pixels one region needs, read once on first use: the union of its tiles' reads.

    Tiles are predicted from these local pixels (each keeps its global origin), or read back
    from the run's stored copy; a region whose tiles are all stored reads no pixels and runs
    no model.
    """

    def __init__(self, job: VolumeJob, region: Region, where: str):
        self.job, self.region, self.where = job, region, where
        self.tiles = tiles_in(job.blocking, region)
        self.box = tuple(
            slice(min(t.read[a].start for t in self.tiles), max(t.read[a].stop for t in self.tiles))
            for a in range(len(region))
        )
        self._local = None
        self._runners: dict[str, object] = {}
        self.reused = self.computed = 0

    def _read(self):
        from ..inference.predict import _channel_first, _read

        data, spatial_axes, _, source = _channel_first(self.job.image, None, self.job.model)
        self.slice_wise = len(spatial_axes) > self.job.model.ndim
        self.source = source
        return _read(data, (slice(None),) + self.box)

    def _runner(self, model: Model):
        from ..inference.session import TileRunner, cached_session

        key = str(model.path)  # a grey-box rewrite keeps the model's name, not its file
        if key not in self._runners:
            session, provider = cached_session(model, device=self.job.options.device, threads=self.job.options.threads)
            self._runners[key] = TileRunner(model, session, provider)
        return self._runners[key]

    def predict(self, tile: Block, run: Run) -> np.ndarray:
        """Probabilities (C, *tile inner shape) of one tile under `run`: stored, or predicted."""
        from ..inference.predict import predict_block

        if run.stored is not None:
            values = run.stored.get(tile)
            if values is not None:
                self.reused += 1
                return values
        if self._local is None:
            self._local = self._read()
        shifted = dataclasses.replace(
            tile, read=tuple(slice(r.start - b.start, r.stop - b.start) for r, b in zip(tile.read, self.box))
        )
        values = predict_block(run.model, self._runner(run.model), self._local, self.job.norm, shifted,
                               slice_wise=self.slice_wise, perturb=run.perturb, dropout_mask=run.mask,
                               where=f"{self.source} {self.where}")
        self.computed += 1
        if run.stored is not None:
            run.stored.put(tile, values)
        return values

    def assemble(self, run: Run) -> np.ndarray:
        """Probabilities (C, *region) of the whole region under `run`."""
        shape = tuple(r.stop - r.start for r in self.region)
        out = np.empty((run.model.out_channels,) + shape, np.float32)
        for tile in self.tiles:
            part = _overlap(tile.inner, self.region)
            if part is not None:
                out[(slice(None),) + part[1]] = self.predict(tile, run)[(slice(None),) + part[0]]
        return out


def score_block(job: VolumeJob, name: str, region: Region, todo, *, counts: dict | None = None) -> list[dict]:
    """Rows (model, perturbation, unit, repeat, score, status) of one scoring block.

    Parameters
    ----------
    job : VolumeJob
    name : str
        The block's unit name (`block_name`); seeds its dropout masks.
    region : tuple of slice
        The block in the volume's spatial coordinates.
    todo : iterable of (str, int)
        (perturbation spec, repeat) pairs to score; others are skipped (resume).
    counts : dict, optional
        Updated with the tile predictions ``reused`` from the cache and ``computed``.

    Notes
    -----
    For ``nhd`` and ``ei`` the counts of each tile's part of the block are merged exactly:
    ``counts(block) = sum over tiles t of counts(t inner ∩ block)``, so only one tile's
    predictions are in memory at a time. For ``rand`` the block's probabilities are assembled
    and labelled as a whole (see the module notes). One unperturbed run per graph is shared by
    every perturbation and repeat.
    """
    options = job.options
    runs = options.runs(todo, dropout=job.dropout_model is not None)
    if not runs:
        return []
    plans = [(spec, repeat, volume_run(job, spec, repeat, name, dropout=spec.is_dropout)) for spec, repeat in runs]
    baselines = {}  # the unperturbed run of each graph
    for spec, _, run in plans:
        if run.graph not in baselines:
            baselines[run.graph] = volume_run(job, None, 0, name, dropout=spec.is_dropout)
    pixels = _BlockPixels(job, region, name)

    results = {}
    if options.metric in ("nhd", "ei"):
        totals = {(str(s), r): BinaryCounts() for s, r, _ in plans}
        for tile in pixels.tiles:
            part = _overlap(tile.inner, region)
            if part is None:
                continue
            crop = (slice(None),) + part[0]
            reference = {}
            for spec, repeat, run in plans:
                if run.graph not in reference:
                    base = baselines[run.graph]
                    reference[run.graph] = prediction_for_metric(pixels.predict(tile, base)[crop], base.model, options.metric)
                perturbed = prediction_for_metric(pixels.predict(tile, run)[crop], run.model, options.metric)
                totals[(str(spec), repeat)] += binary_consistency(reference[run.graph], perturbed,
                                                                  threshold=options.threshold)
        results = {k: score_from_counts(c, options.metric) for k, c in totals.items()}
    else:
        labels = {}
        for spec, repeat, run in plans:
            if run.graph not in labels:
                base = baselines[run.graph]
                labels[run.graph] = prediction_for_metric(pixels.assemble(base), base.model, "rand")
            table = contingency_table(labels[run.graph], prediction_for_metric(pixels.assemble(run), run.model, "rand"))
            results[(str(spec), repeat)] = score_from_counts(table, "rand")
    if counts is not None:
        counts["reused"] = counts.get("reused", 0) + pixels.reused
        counts["computed"] = counts.get("computed", 0) + pixels.computed
    return [unit_row(job.model.name, spec, name, repeat, results[(str(spec), repeat)]) for spec, repeat, _ in plans]


def unit_row(model: str, spec: PerturbationSpec, unit: str, repeat: int, score: float | None) -> dict:
    """One row of per_image.csv (`ranking.PER_UNIT_FIELDS`)."""
    return {
        "model": model,
        "perturbation": str(spec),
        "unit": unit,
        "repeat": repeat,
        "score": "" if score is None else repr(score),
        "status": "ok" if score is not None else "no-foreground",
    }


def predict_region(job: VolumeJob, region: Region, *, spec: PerturbationSpec | None = None, repeat: int = 0,
                   dropout: bool = False) -> np.ndarray:
    """Probabilities (C, *region) of one region from the whole volume's tiles (for reports): the
    unperturbed run, or that of (`spec`, `repeat`) for the block `region` (from the cache when
    stored)."""
    name = block_name(job.image.name, region)
    return _BlockPixels(job, region, name).assemble(volume_run(job, spec, repeat, name, dropout=dropout))


__all__ = [
    "VolumeJob",
    "block_name",
    "block_regions",
    "nested_tile",
    "normalized_mean",
    "predict_region",
    "score_block",
    "scoring_blocking",
    "tiles_in",
    "unit_row",
    "volume_run",
]
