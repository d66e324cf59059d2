"""Ordered map over worker processes for the data tools: a payload (dataset, tokenizer) shipped once per worker."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator

_PAYLOAD: Any = None


def default_workers() -> int:
    """This process's cores, shared with the other ranks of the node (torchrun's LOCAL_WORLD_SIZE)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(local, 1))


def pool_context() -> mp.context.BaseContext:
    """fork where the platform has it (workers inherit the payload: no import, no pickling), else spawn."""
    fork = "fork" in mp.get_all_start_methods() and sys.platform != "darwin"
    return mp.get_context("fork" if fork else "spawn")


def _init(payload: Any) -> None:
    global _PAYLOAD
    if payload is not None:  # spawn: it comes pickled; fork: it is inherited
        _PAYLOAD = payload


def _call(fn: Callable[[Any, Any], Any], task: Any) -> Any:
    return fn(_PAYLOAD, task)


def ordered_map(fn: Callable[[Any, Any], Any], tasks: Iterable[Any], payload: Any, workers: int) -> Iterator[Any]:
    """`fn(payload, task)` for each task, in task order; in this process when `workers <= 1`. `fn` must be a
    module-level function (it is pickled by name); a bounded window of tasks is in flight."""
    global _PAYLOAD
    if workers <= 1:
        for task in tasks:
            yield fn(payload, task)
        return
    ctx = pool_context()
    fork = ctx.get_start_method() == "fork"
    previous, _PAYLOAD = _PAYLOAD, (payload if fork else _PAYLOAD)
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                                 initargs=(None if fork else payload,)) as pool:
            pending = []
            for task in tasks:
                pending.append(pool.submit(_call, fn, task))
                if len(pending) >= 4 * workers:  # bounded: memory flat in the number of tasks
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()
    finally:
        _PAYLOAD = previous
