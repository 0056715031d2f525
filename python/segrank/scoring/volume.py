"""Consistency of a volume block by block: bounded memory, exact, equal to the whole-volume result.

A volume (an image with a z axis) is cut into **scoring blocks** (`grid`), each one scoring unit
whose scores enter the median over units. A scoring block is scored by one task that

1. reads only the region the model needs: the union of the prediction tiles that overlap the
   block (the block plus the model's halo, plus reflect padding at the volume's border);
2. predicts each prediction tile unperturbed and under every (perturbation, repeat) still to do,
   with the *whole volume's* normalisation (computed once per (model, volume) from a seeded
   subsample, `inference.normalize`) and the tiles of the *whole volume's* tiling
   (`grid.scoring_blocking`), so that every probability equals, bit for bit, what predicting the whole
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
from dataclasses import dataclass

import numpy as np

from ..inference.blocks import Block, Blocking
from ..inference.normalize import ImageSample, Normalization
from ..metrics import BinaryCounts, binary_consistency, contingency_table
from ..models.description import Model
from ..perturb.input import PerturbationSpec
from .consistency import prediction_for_metric, score_from_counts
from .options import ScoringOptions
from .grid import Region, block_name, overlap, tiles_in
from .runs import Run, plan_run


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
        Identifies the volume's pixels in cache keys (`inference.prepared.PreparedImage.identity`).
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
        from ..inference.axes import channel_first
        from ..inference.source import read_region

        data, spatial_axes, _, source = channel_first(self.job.image, None, self.job.model)
        self.slice_wise = len(spatial_axes) > self.job.model.ndim
        self.source = source
        return read_region(data, (slice(None),) + self.box)

    def _runner(self, model: Model):
        from ..inference.session import TileRunner, cached_session

        key = str(model.path)  # a grey-box rewrite keeps the model's name, not its file
        if key not in self._runners:
            session, provider = cached_session(model, device=self.job.options.device, threads=self.job.options.threads)
            self._runners[key] = TileRunner(model, session, provider)
        return self._runners[key]

    def predict(self, tile: Block, run: Run) -> np.ndarray:
        """Probabilities (C, *tile inner shape) of one tile under `run`: stored, or predicted."""
        from ..inference.steps import predict_block

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
            part = overlap(tile.inner, self.region)
            if part is not None:
                out[(slice(None),) + part[1]] = self.predict(tile, run)[(slice(None),) + part[0]]
        return out


def score_block(job: VolumeJob, name: str, region: Region, todo, *,
                counts: dict | None = None) -> list[tuple[PerturbationSpec, int, float | None]]:
    """(perturbation, repeat, score) of one scoring block, for each pair of `todo` (score None:
    no foreground in either run).

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
            part = overlap(tile.inner, region)
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
    return [(spec, repeat, results[(str(spec), repeat)]) for spec, repeat, _ in plans]


def store_region(job: VolumeJob, region: Region, name: str, *, counts: dict | None = None) -> str:
    """Make sure the unperturbed tiles that cover `region` are in the prediction cache (the
    job's options must have one); the name of the whole volume's stored array."""
    pixels = _BlockPixels(job, region, name)
    run = volume_run(job, None, 0, name, dropout=False)
    for tile in pixels.tiles:
        if tile.index not in run.stored.done:
            pixels.predict(tile, run)
        else:
            pixels.reused += 1
    if counts is not None:
        counts["reused"] = counts.get("reused", 0) + pixels.reused
        counts["computed"] = counts.get("computed", 0) + pixels.computed
    return run.stored.name


def predict_region(job: VolumeJob, region: Region, *, spec: PerturbationSpec | None = None, repeat: int = 0,
                   dropout: bool = False) -> np.ndarray:
    """Probabilities (C, *region) of one region from the whole volume's tiles (for reports): the
    unperturbed run, or that of (`spec`, `repeat`) for the block `region` (from the cache when
    stored)."""
    name = block_name(job.image.name, region)
    return _BlockPixels(job, region, name).assemble(volume_run(job, spec, repeat, name, dropout=dropout))


__all__ = ["VolumeJob", "normalized_mean", "predict_region", "score_block", "store_region", "volume_run"]
