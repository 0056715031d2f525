"""Prediction into a store: every image of a target, block by block, resumable (`segrank predict`).

Each image's probabilities go to one array of a `io.zarr_store.PredictionStore` under the
content key of everything that decides them (`key.prediction_key`), with a marker per finished
block, so a repeated or interrupted run computes only what is missing. Blocks are grouped into
tasks of consecutive blocks (each overlaps reading, running and writing, `pipeline`) and run by
the job executor (`job.execute.Executor`): in threads here, or on a dask.distributed cluster.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..models.description import Model
from .key import prediction_key
from .memory import return_large_buffers
from .pipeline import groups, run_pipelined
from .prepared import KEEP_PIXELS_BYTES, PreparedImage, prepare_image
from .session import TileRunner, cached_session, default_threads, provider_note
from .steps import Perturb, check_tiles_per_run, finish_block, prepare_block, split_output, stack_prepared

# Upper bound on tasks per run: beyond it, a task predicts several blocks in turn.
MAX_TASKS = 10_000
# Blocks per task, at most: a task overlaps reading the next block and writing the last
# one with the model run of the current one, so it should hold several; but not so many that
# the progress bar or the load balance across workers suffers.
BLOCKS_PER_TASK = 16


@dataclass(frozen=True)
class ImageJob:
    """Everything a worker needs to predict blocks of one image (picklable; no session)."""

    image: PreparedImage
    store: str
    array: str
    device: str
    threads: int | None
    perturb: Perturb | None
    dropout_mask: np.ndarray | None
    overlap: bool = True
    tiles_per_run: int = 1


class _JobState:
    """Per task and image: the session, reader and the array's writer (never pickled)."""

    def __init__(self, job: ImageJob):
        from ..io.zarr_store import PredictionStore

        session, self.provider = cached_session(job.image.model, device=job.device, threads=job.threads)
        self.runner = TileRunner(job.image.model, session, self.provider)
        self.read = job.image.source.reader()
        self.writer = PredictionStore(job.store).writer(job.array)


@dataclass(frozen=True)
class BlockBatch:
    """One task: blocks ``(job number, grid index)`` of one or more images, predicted and stored."""

    items: tuple
    jobs: tuple[ImageJob, ...]
    progress: Callable | None = None

    def run(self) -> tuple[int, str]:
        """(blocks done, provider)."""
        return_large_buffers()  # in this worker's process (a LocalCluster worker, or here)
        jobs, progress = self.jobs, self.progress
        states: dict[int, _JobState] = {}

        def state(k: int) -> _JobState:
            if k not in states:  # first from the reader thread; later threads only look it up
                states.clear()  # one image's reader and arrays at a time (items are grouped by image)
                states[k] = _JobState(jobs[k])
            return states[k]

        def prepare(group):  # consecutive blocks of one image, one model run
            k = group[0][0]
            image, st = jobs[k].image, state(k)
            blocks = [image.blocking.block(index) for _, index in group]
            prepared = stack_prepared(image.model, [
                prepare_block(image.model, st.read, image.norm, block, slice_wise=image.slice_wise,
                              perturb=jobs[k].perturb, dropout_mask=jobs[k].dropout_mask)
                for block in blocks
            ])
            return st, blocks, prepared

        def run(p):
            st, blocks, prepared = p
            return st, blocks, prepared.tile_shape, st.runner(prepared.feed, prepared.mask)

        def finish(group, result):
            image = jobs[group[0][0]].image
            st, blocks, tile_shape, raw = result
            for (_, index), block, part in zip(group, blocks, split_output(image.model, raw, len(group))):
                values = finish_block(image.model, part, block, tile_shape, slice_wise=image.slice_wise,
                                      where=image.where)
                st.writer.write(block.inner, index, values)  # data, then marker
                if progress is not None:
                    progress(1)

        batches = [g for k, job in enumerate(jobs)
                   for g in groups([i for i in self.items if i[0] == k], job.tiles_per_run)]
        run_pipelined(batches, prepare, run, finish, overlap=all(j.overlap for j in jobs))
        providers = {cached_session(j.image.model, device=j.device, threads=j.threads)[1] for j in jobs}
        return len(self.items), ",".join(sorted(providers))


@dataclass(frozen=True)
class PredictionSummary:
    """What `predict_target` did."""

    out: Path
    provider: str
    n_blocks: int
    n_computed: int
    n_reused: int
    seconds: float
    images: tuple[dict, ...]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["images"] = list(self.images)
        return d


def predict_target(
    model: Model,
    target,
    out,
    *,
    tile: int | Sequence[int] | None = None,
    halo: int | Sequence[int] | None = None,
    batch: int | None = None,
    device: str = "auto",
    perturb: Perturb | None = None,
    perturb_key: str | None = None,
    seed: int | None = None,
    dropout_mask: np.ndarray | None = None,
    scheduler: str = "threads",
    workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    overlap: bool = True,
    tiles_per_run: int = 1,
) -> PredictionSummary:
    """Predict every image of `target` into the Zarr v3 store `out`, resuming finished blocks.

    Parameters
    ----------
    model : Model
    target : Target, TargetImage or path
        Opened with `segrank.io.targets.open_target` when a path.
    out : path
        Zarr v3 group; one float32 array (C, *spatial) per image, chunks = inner blocks.
    tile, halo, batch :
        See `segrank.inference.blocks.choose_blocking`.
    device : {"auto", "cpu", "cuda"}
    perturb, perturb_key, seed :
        An optional perturbation (see `predict_image`); `perturb_key` names it (with `seed`)
        in the cache key and is required with `perturb`.
    dropout_mask : array, optional
    scheduler : str
        "threads" (a thread pool in this process, default), "sync", "local" (a LocalCluster of
        `workers` processes) or a dask.distributed scheduler address (`job.execute.Executor`).
    workers : int, optional
        Threads (threaded scheduler, default: the cores, at most 4) or worker processes
        (LocalCluster, likewise).
    threads : int, optional
        ONNX Runtime intra-op threads per session (default: the cores divided among the
        workers; on an existing scheduler, ONNX Runtime's default).
    progress : bool
        tqdm bar of blocks done / total on stderr.
    overlap : bool
        Each task reads its next block and writes its last one in threads while the model
        runs (default); False does one step at a time. Results are identical.
    tiles_per_run : int
        Blocks of an image stacked into one model run (see `predict_image`).

    Returns
    -------
    PredictionSummary
        Blocks computed and reused, provider, per-image keys.

    Notes
    -----
    Each array's key is `prediction_key`; a rerun under the same key skips every block marked
    finished, a different key (other model, input, settings) replaces the array.
    """
    from tqdm import tqdm

    from ..io.targets import Target, TargetImage, open_target
    from ..io.zarr_store import PredictionStore, array_name
    from ..job.execute import Executor

    if perturb is not None and perturb_key is None:
        raise ValueError("perturb_key is required with perturb: it names the perturbation in the cache key")
    if isinstance(target, (str, Path)):
        target = open_target(target)
    images = list(target.images) if isinstance(target, Target) else [target]
    if not all(isinstance(im, TargetImage) for im in images):
        raise TypeError("target must be a path, a Target or a TargetImage")
    names = [array_name(im.name) for im in images]
    if len(set(names)) != len(names):
        raise InputError(f"{getattr(target, 'source', out)}: image names collide in the store: {names}")

    start = time.perf_counter()
    n_workers = workers or (1 if scheduler == "sync" else min(4, default_threads(1)))
    executor = Executor(scheduler, n_workers)
    if threads is None and scheduler in ("threads", "sync", "local"):
        threads = default_threads(n_workers)
    # One session here: it fails loudly for --device cuda before any work is scheduled, tells
    # the provider, and (threaded scheduler) is the very session the tasks share.
    session, provider = cached_session(model, device=device, threads=threads)
    note = provider_note(provider, device)
    if note and progress:
        print(note, file=sys.stderr)
    store = PredictionStore(out)

    jobs, infos = _image_jobs(model, images, names, store, session, dict(
        tile=tile, halo=halo, batch=batch, device=device, threads=threads, perturb=perturb, perturb_key=perturb_key,
        seed=seed, dropout_mask=dropout_mask, overlap=overlap, tiles_per_run=tiles_per_run,
    ), keep_pixels=None if executor.distributed else [KEEP_PIXELS_BYTES])
    n_blocks = sum(info["blocks"] for info in infos)
    n_reused = sum(info["reused"] for info in infos)
    n_pending = n_blocks - n_reused
    bar = tqdm(total=n_blocks, initial=n_reused, unit="block", desc=f"predict {model.name}", file=sys.stderr,
               disable=not progress, smoothing=0.1)
    tasks = _batches(jobs, n_workers, None if executor.distributed else (lambda n: bar.update(n)))
    providers = set()
    try:
        for _, outcome in executor.run(tasks):
            if isinstance(outcome, BaseException):
                raise outcome
            blocks, used_provider = outcome
            if executor.distributed:
                bar.update(blocks)
            providers.add(used_provider)
    finally:
        bar.close()
    return PredictionSummary(
        out=store.path,
        provider=",".join(sorted(providers or {provider})),
        n_blocks=n_blocks,
        n_computed=n_pending,
        n_reused=n_reused,
        seconds=time.perf_counter() - start,
        images=tuple(infos),
    )


def _image_jobs(model: Model, images, names, store, session, settings: dict, *, keep_pixels) -> tuple[list, list]:
    """Per image: (its ImageJob, the grid indices still to do) and what `PredictionSummary.images`
    reports. Pixels read for the statistics are kept for the blocks within `keep_pixels` bytes
    (in this process only: a cluster would get them with every task)."""
    jobs, infos = [], []
    for im, name in zip(images, names):
        prepared = prepare_image(model, im, session=session, tile=settings["tile"], halo=settings["halo"],
                                 batch=settings["batch"], keep_pixels=keep_pixels)
        blocking = prepared.blocking
        key = prediction_key(model, prepared.digest, prepared.norm, blocking, perturb_key=settings["perturb_key"],
                             seed=settings["seed"], dropout_mask=settings["dropout_mask"],
                             tiles_per_run=settings["tiles_per_run"])
        fresh = store.prepare(
            name, key=key, shape=(model.out_channels,) + tuple(prepared.data.shape[1:]),
            chunks=(model.out_channels,) + blocking.inner, grid=blocking.grid,
            dimension_names=["c"] + list(prepared.spatial_axes),
            attributes={
                "model": model.name, "image": im.name, "source": str(im.source), "activation": model.activation,
                "tile": list(blocking.tile), "halo": list(blocking.halo), "perturbation": settings["perturb_key"],
                "seed": settings["seed"],
            },
        )
        done = set() if fresh else store.done_blocks(name)
        pending = [i for i in blocking.indices() if i not in done]
        infos.append({"image": im.name, "array": name, "key": key, "blocks": len(blocking),
                      "reused": len(blocking) - len(pending)})
        tiles_per_run = check_tiles_per_run(prepared.model, session, settings["tiles_per_run"], prepared.where)
        jobs.append((ImageJob(prepared, str(store.path), name, settings["device"], settings["threads"],
                              settings["perturb"], settings["dropout_mask"], settings["overlap"], tiles_per_run),
                     pending))
    return jobs, infos


def _batches(jobs: list, n_workers: int, progress: Callable | None) -> list[BlockBatch]:
    """Tasks of consecutive blocks (across images, for folders of small images): each overlaps
    reads and writes with its model runs; enough tasks to balance the workers."""
    items = [(k, index) for k, (_, pending) in enumerate(jobs) for index in pending]
    n_pending = len(items)
    per_task = max(math.ceil(n_pending / MAX_TASKS), min(BLOCKS_PER_TASK, math.ceil(n_pending / (2 * n_workers))), 1)
    tasks = []
    for i in range(0, n_pending, per_task):
        chunk = items[i : i + per_task]
        used = sorted({k for k, _ in chunk})
        renumber = {k: j for j, k in enumerate(used)}
        tasks.append(BlockBatch(tuple((renumber[k], index) for k, index in chunk), tuple(jobs[k][0] for k in used),
                                progress))
    return tasks


__all__ = ["BlockBatch", "ImageJob", "PredictionSummary", "predict_target"]
