"""The executor: the same outcomes in this process, in threads and on a local cluster."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from segrank.job.execute import Executor, FunctionTask, rank_executor


@dataclass(frozen=True)
class Square:
    x: int

    def run(self):
        if self.x < 0:
            raise ValueError(f"negative {self.x}")
        return self.x * self.x


@pytest.mark.parametrize("executor", [Executor("sync"), Executor("threads", 3)])
def test_every_task_runs_once_in_this_process(executor):
    outcomes = dict((t.x, o) for t, o in executor.run([Square(i) for i in range(7)]))
    assert outcomes == {i: i * i for i in range(7)}


def test_an_error_in_this_process_is_raised():
    with pytest.raises(ValueError, match="negative"):
        list(Executor("sync").run([Square(1), Square(-1)]))


def test_a_local_cluster_returns_errors_as_outcomes():
    import math

    # tasks from an importable module (worker processes cannot import this test file)
    outcomes = dict((t.args[0], o) for t, o in Executor("local", 2).run([FunctionTask(math.sqrt, (4.0,)),
                                                                          FunctionTask(math.sqrt, (-1.0,))]))
    assert outcomes[4.0] == 2.0 and isinstance(outcomes[-1.0], ValueError)


def test_rank_options_choose_the_executor():
    assert rank_executor(workers=None, scheduler=None, gpus=None, device="cpu", uses_cuda=False) == Executor("sync")
    assert rank_executor(workers=2, scheduler=None, gpus=None, device="cpu", uses_cuda=False) == Executor("local", 2)
    assert rank_executor(workers=None, scheduler=None, gpus=["0", "1"], device="auto",
                         uses_cuda=False) == Executor("gpus", 2, ("0", "1"))
    remote = rank_executor(workers=None, scheduler="tcp://h:8786", gpus=None, device="cuda", uses_cuda=True)
    assert remote.scheduler == "tcp://h:8786" and remote.require_gpu and remote.want_gpu


@pytest.mark.parametrize("executor", [Executor("sync"), Executor("threads", 2), Executor("local", 2)])
def test_stream_asks_for_tasks_as_results_come_and_can_stop_early(executor):
    queue = list(range(20))
    seen = []

    def next_task():
        if len(seen) >= 6 or not queue:  # the caller decides, between results, what comes next
            return None
        return FunctionTask(pow, (queue.pop(0), 2))

    for task, outcome in executor.stream(next_task):
        assert outcome == task.args[0] ** 2
        seen.append(task.args[0])
    window = 1 if executor.scheduler == "sync" else 2 * executor.workers
    assert 6 <= len(seen) <= 6 + window and sorted(seen) == list(range(len(seen)))
