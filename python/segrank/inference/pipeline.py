"""Overlapped block processing: read the next block and write the last one while the model runs."""
from __future__ import annotations

from collections.abc import Callable, Sequence


def run_pipelined(items: Sequence, prepare: Callable, run: Callable, finish: Callable, *, overlap: bool = True) -> None:
    """``finish(item, run(prepare(item)))`` for every item, in order.

    With `overlap`, item i+1 is prepared (read, normalised) in one thread and item i-1 finished
    (activated, written) in another while item i runs, so reading and writing hide behind the
    model run instead of adding to it. At most three items are in flight: one prepared, one
    running, one being finished; `finish` calls happen one at a time, in item order. `run`
    should return only what `finish` needs, so that the model input is freed after the run.
    """
    items = list(items)
    if not overlap or len(items) < 2:
        for item in items:
            finish(item, run(prepare(item)))
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="segrank-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="segrank-write") as writer:
        ahead = reader.submit(prepare, items[0])
        writing = None
        try:
            for i, item in enumerate(items):
                prepared = ahead.result()
                ahead = reader.submit(prepare, items[i + 1]) if i + 1 < len(items) else None
                result = run(prepared)
                del prepared
                if writing is not None:
                    writing.result()  # bounds the outputs in flight to one; raises its error here
                writing = writer.submit(finish, item, result)
                del result
            writing.result()
        except BaseException:
            if ahead is not None:
                ahead.cancel()
            raise


def groups(items: Sequence, size: int, key: Callable = lambda item: None) -> list[list]:
    """Consecutive runs of up to `size` items with the same key."""
    groups: list[list] = []
    for item in items:
        if groups and len(groups[-1]) < size and key(groups[-1][0]) == key(item):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


__all__ = ["groups", "run_pipelined"]
