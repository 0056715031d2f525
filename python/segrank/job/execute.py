"""Execution: run picklable tasks in this process, in threads, or on a dask.distributed cluster.

One vocabulary for every job (`rank`, `predict`): an `Executor` names where tasks run, and
`Executor.run(tasks)` yields ``(task, outcome)`` as tasks finish, the outcome being what
``task.run()`` returned or, on a cluster, the exception that ended it (a worker killed, out
of memory). Tasks are objects with a ``run()`` method and no open sessions.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..errors import SegrankError

GPU = "GPU"  # the dask.distributed resource a GPU worker declares (one per GPU)


@dataclass(frozen=True)
class Executor:
    """Where tasks run.

    Attributes
    ----------
    scheduler : str
        "sync" (one after another in this process), "threads" (a thread pool of `workers` in
        this process), "local" (a LocalCluster of `workers` processes, one thread each), "gpus"
        (a local cluster of one worker per GPU in `gpus`) or a dask.distributed scheduler
        address.
    workers : int
        Threads or worker processes.
    gpus : tuple of str
        GPU ids for "gpus".
    want_gpu, require_gpu : bool
        On an existing cluster: tasks require the ``GPU`` resource when some worker declares
        it and `want_gpu`; when none does and `require_gpu`, that is an error.
    """

    scheduler: str = "sync"
    workers: int = 1
    gpus: tuple[str, ...] = ()
    want_gpu: bool = False
    require_gpu: bool = False

    @property
    def distributed(self) -> bool:
        return self.scheduler not in ("sync", "threads")

    def run(self, tasks: Iterable) -> Iterator[tuple[object, object]]:
        """``(task, outcome)`` for every task, as they finish (in order when in this process):
        `stream` with every task handed out at once."""
        tasks = list(tasks)
        queue = iter(tasks)
        yield from self.stream(lambda: next(queue, None), window=max(len(tasks), 1))


    def stream(self, next_task, *, window: int | None = None) -> Iterator[tuple[object, object]]:
        """``(task, outcome)`` as tasks finish, asking ``next_task()`` for the next task whenever
        one finishes (None: nothing to start now). Up to `window` tasks are in flight (default:
        twice the workers), so the workers never wait for a batch to end; the caller may change
        what ``next_task`` gives between results (e.g. stop giving a model's tasks)."""
        window = window or (1 if self.scheduler == "sync" else 2 * max(self.workers, 1))
        if self.distributed:
            yield from self._stream_distributed(next_task, window)
            return
        if self.scheduler == "sync" or (self.scheduler == "threads" and self.workers <= 1):
            while (task := next_task()) is not None:
                yield task, task.run()
            return
        if self.scheduler == "threads":
            from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

            with ThreadPoolExecutor(self.workers, thread_name_prefix="segrank-task") as pool:
                running = {}
                while True:
                    while len(running) < window and (task := next_task()) is not None:
                        running[pool.submit(_run_task, task)] = task
                    if not running:
                        return
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        yield running.pop(future), future.result()

    def _connect(self):
        """(client, cluster or None, task resources) for a distributed scheduler."""
        from dask.distributed import Client, LocalCluster

        if self.scheduler == "gpus":
            cluster = gpu_cluster(self.gpus)
            return Client(cluster), cluster, {GPU: 1}
        if self.scheduler == "local":
            cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True, dashboard_address=None)
            return Client(cluster), cluster, None
        client = Client(self.scheduler)
        return client, None, self._gpu_resources(client)

    def _stream_distributed(self, next_task, window: int) -> Iterator[tuple[object, object]]:
        from dask.distributed import as_completed

        first = next_task()
        if first is None:  # nothing to do: no cluster is started
            return
        client, cluster, resources = self._connect()
        try:
            running = as_completed()
            tasks = {}
            pending = [first]

            def top_up():
                while len(tasks) < window and (task := pending.pop() if pending else next_task()) is not None:
                    future = client.submit(_run_task, task, pure=False, resources=resources)
                    tasks[future.key] = task
                    running.add(future)

            top_up()
            for future in running:
                task = tasks.pop(future.key)
                try:
                    outcome = future.result()
                except Exception as err:  # e.g. distributed.KilledWorker
                    outcome = err
                future.release()
                yield task, outcome
                top_up()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    def _gpu_resources(self, client) -> dict | None:
        if not (self.want_gpu or self.require_gpu):
            return None
        infos = client.scheduler_info(n_workers=-1)["workers"].values()
        if any(w.get("resources", {}).get(GPU) for w in infos):
            return {GPU: 1}
        if self.require_gpu:
            client.close()
            raise SegrankError(
                f"scheduler {self.scheduler}: no worker declares the {GPU} resource; start one worker per GPU with "
                f"CUDA_VISIBLE_DEVICES=i dask worker {self.scheduler} --nthreads 1 --resources {GPU}=1"
            )
        return None


@dataclass(frozen=True)
class FunctionTask:
    """A plain function call as a task (the function must be importable on the workers)."""

    fn: object
    args: tuple = ()

    def run(self):
        return self.fn(*self.args)


def _run_task(task):
    return task.run()


def visible_gpus() -> list[str]:
    """GPU ids this machine offers: CUDA_VISIBLE_DEVICES when set, else those nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def gpu_cluster(gpus):
    """A local dask.distributed cluster with one single-threaded worker per GPU.

    Each worker sees only its GPU (CUDA_VISIBLE_DEVICES, set before its process starts) and
    declares the resource ``GPU=1``; tasks that require ``GPU=1`` therefore run one at a time
    per GPU, so each GPU runs one model at a time. (On an existing cluster, start GPU workers
    the same way: ``CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nthreads 1 --resources GPU=1``.)
    """
    import logging

    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{g}": {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU: 1}, "env": {"CUDA_VISIBLE_DEVICES": str(g)}}}
        for g in gpus
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard": False, "dashboard_address": ":0"}}
    return SpecCluster(scheduler=scheduler, workers=workers, silence_logs=logging.ERROR)


def rank_executor(*, workers: int | None, scheduler: str | None, gpus, device: str, uses_cuda: bool) -> Executor:
    """The executor of `rank`'s options: in this process by default; `workers` local processes;
    one worker per GPU (`gpus`, or every visible GPU when the models run on CUDA and `workers`
    is given); or an existing `scheduler`, where tasks need a GPU worker unless device is cpu."""
    gpus = list(gpus) if gpus else []
    if scheduler:
        return Executor(scheduler, workers or 1, want_gpu=device != "cpu" or bool(gpus),
                        require_gpu=device == "cuda" or bool(gpus))
    if uses_cuda and workers and not gpus:
        gpus = visible_gpus() or ["0"]
        if workers != len(gpus):
            print(f"segrank: {len(gpus)} GPU worker(s), one per GPU, instead of --workers {workers}", file=sys.stderr)
    if gpus:
        return Executor("gpus", len(gpus), tuple(str(g) for g in gpus))
    if workers:
        return Executor("local", workers)
    return Executor("sync")


__all__ = ["Executor", "FunctionTask", "GPU", "gpu_cluster", "rank_executor", "visible_gpus"]
