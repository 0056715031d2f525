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
from ..metrics import BinaryCounts, adapted_rand, binary_consistency, contingency_table
from ..models.description import Model
from ..perturb.dropout import channel_mask
from ..perturb.input import PerturbationSpec, make_input_perturbation
from ..perturb.seeds import rng
from .consistency import prediction_for_metric

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


def dropout_mask(model: Model, spec: PerturbationSpec, *, seed: int, unit: str, repeat: int) -> np.ndarray:
    """The channel mask of a dropout run of `unit` (an image, or a block name)."""
    return channel_mask(
        model.dropout_levels or model.dropout_channels, spec.low, rng(seed, model.name, unit, repeat, "dropout"),
        ndim=model.ndim,
    )


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
    """

    model: Model
    dropout_model: Model | None
    image: object
    norm: Normalization
    center: float
    blocking: Blocking
    specs: tuple[PerturbationSpec, ...]
    metric: str
    repeats: int
    seed: int
    threshold: float
    device: str
    threads: int | None


@dataclass(frozen=True)
class _BlockPixels:
    """The pixels one scoring block needs, read once: the union of its tiles' reads."""

    tiles: list[Block]
    box: Region  # where `local` lies in the volume
    local: np.ndarray  # (C, *box shape), the source dtype
    slice_wise: bool
    where: str

    @classmethod
    def read(cls, job: "VolumeJob", region: Region, where: str) -> "_BlockPixels":
        from ..inference.predict import _channel_first, _read

        data, spatial_axes, _, source = _channel_first(job.image, None, job.model)
        tiles = tiles_in(job.blocking, region)
        box = tuple(
            slice(min(t.read[a].start for t in tiles), max(t.read[a].stop for t in tiles)) for a in range(len(region))
        )
        return cls(tiles, box, _read(data, (slice(None),) + box), len(spatial_axes) > job.model.ndim,
                   f"{source} {where}")

    def predict(self, job: "VolumeJob", runner, tile: Block, model: Model, perturb=None, mask=None) -> np.ndarray:
        """`predict_block` of one tile from the local pixels (the tile keeps its global origin)."""
        from ..inference.predict import predict_block

        shifted = dataclasses.replace(
            tile, read=tuple(slice(r.start - b.start, r.stop - b.start) for r, b in zip(tile.read, self.box))
        )
        return predict_block(model, runner, self.local, job.norm, shifted, slice_wise=self.slice_wise,
                             perturb=perturb, dropout_mask=mask, where=self.where)


def _score(counts, metric: str) -> float | None:
    if metric == "rand":
        return None if counts.n_foreground == 0 else float(adapted_rand(counts).f)
    if counts.n_or == 0:
        return None
    return float(counts.consistency if metric == "nhd" else counts.ei)


def score_block(job: VolumeJob, name: str, region: Region, todo, *, sessions=None) -> list[dict]:
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
    sessions : dict, optional
        {model name: (session, provider)}; default: this process's cached sessions.

    Notes
    -----
    For ``nhd`` and ``ei`` the counts of each tile's part of the block are merged exactly:
    ``counts(block) = sum over tiles t of counts(t inner ∩ block)``, so only one tile's
    predictions are in memory at a time. For ``rand`` the block's probabilities are assembled
    and labelled as a whole (see the module notes).
    """
    from ..inference.session import TileRunner, cached_session

    todo = set(todo)
    runs = [(spec, r) for spec in job.specs for r in range(job.repeats) if (str(spec), r) in todo]
    runs = [(s, r) for s, r in runs if not (s.is_dropout and job.dropout_model is None)]
    if not runs:
        return []

    def runner_for(model: Model) -> TileRunner:
        if sessions and model.name in sessions:
            session, provider = sessions[model.name]
        else:
            session, provider = cached_session(model, device=job.device, threads=job.threads)
        return TileRunner(model, session, provider)

    runners: dict[str, TileRunner] = {}
    plans = []  # (spec, repeat, model, runner key, perturb, mask)
    for spec, repeat in runs:
        if spec.is_dropout:
            m = job.dropout_model
            plans.append((spec, repeat, m, "dropout", None, dropout_mask(m, spec, seed=job.seed, unit=name, repeat=repeat)))
        else:
            m = job.model
            perturb = make_input_perturbation(
                spec, seed=job.seed, model=m.name, unit=job.image.name, repeat=repeat, center=job.center
            )
            plans.append((spec, repeat, m, "model", perturb, None))
        key = plans[-1][3]
        if key not in runners:
            runners[key] = runner_for(m)

    # one read for the block: the union of its tiles' reads (the block grown by the halo)
    pixels = _BlockPixels.read(job, region, name)
    tiles = pixels.tiles

    def predict(tile: Block, model: Model, key: str, perturb=None, mask=None) -> np.ndarray:
        return pixels.predict(job, runners[key], tile, model, perturb, mask)

    results = {}
    if job.metric in ("nhd", "ei"):
        counts = {(str(s), r): BinaryCounts() for s, r, *_ in plans}
        for tile in tiles:
            part = _overlap(tile.inner, region)
            if part is None:
                continue
            crop = (slice(None),) + part[0]
            baselines: dict[str, np.ndarray] = {}
            for spec, repeat, m, key, perturb, mask in plans:
                # the unperturbed run goes through the same graph as the perturbed one
                if key not in baselines:
                    baselines[key] = prediction_for_metric(predict(tile, m, key)[crop], m, job.metric)
                perturbed = prediction_for_metric(predict(tile, m, key, perturb, mask)[crop], m, job.metric)
                counts[(str(spec), repeat)] += binary_consistency(baselines[key], perturbed, threshold=job.threshold)
        results = {k: _score(c, job.metric) for k, c in counts.items()}
    else:
        shape = tuple(r.stop - r.start for r in region)

        def assemble(m: Model, key: str, perturb=None, mask=None) -> np.ndarray:
            probs = np.empty((m.out_channels,) + shape, np.float32)
            for tile in tiles:
                part = _overlap(tile.inner, region)
                if part is not None:
                    probs[(slice(None),) + part[1]] = predict(tile, m, key, perturb, mask)[(slice(None),) + part[0]]
            return prediction_for_metric(probs, m, "rand")

        labels: dict[str, np.ndarray] = {}
        for spec, repeat, m, key, perturb, mask in plans:
            if key not in labels:
                labels[key] = assemble(m, key)
            table = contingency_table(labels[key], assemble(m, key, perturb, mask))
            results[(str(spec), repeat)] = _score(table, "rand")

    return [
        {
            "model": job.model.name,
            "perturbation": str(spec),
            "unit": name,
            "repeat": repeat,
            "score": "" if results[(str(spec), repeat)] is None else repr(results[(str(spec), repeat)]),
            "status": "ok" if results[(str(spec), repeat)] is not None else "no-foreground",
        }
        for spec, repeat, *_ in plans
    ]


def predict_region(job: VolumeJob, region: Region, *, perturb=None, mask=None, dropout: bool = False) -> np.ndarray:
    """Probabilities (C, *region) of one region, from the whole volume's tiles (for reports)."""
    from ..inference.session import TileRunner, cached_session

    model = job.dropout_model if dropout else job.model
    session, provider = cached_session(model, device=job.device, threads=job.threads)
    runner = TileRunner(model, session, provider)
    pixels = _BlockPixels.read(job, region, block_name(job.image.name, region))
    out = np.empty((model.out_channels,) + tuple(r.stop - r.start for r in region), np.float32)
    for tile in pixels.tiles:
        part = _overlap(tile.inner, region)
        if part is not None:
            probs = pixels.predict(job, runner, tile, model, perturb, mask)
            out[(slice(None),) + part[1]] = probs[(slice(None),) + part[0]]
    return out


__all__ = [
    "VolumeJob",
    "block_name",
    "block_regions",
    "dropout_mask",
    "nested_tile",
    "normalized_mean",
    "predict_region",
    "score_block",
    "scoring_blocking",
    "tiles_in",
]
