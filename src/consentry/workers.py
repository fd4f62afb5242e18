"""CPU-bound work on many items in worker processes, results in the items' order.

The CSV import reads and validates blocks of a file this way, and feedback ingestion classifies
messages: the main process meanwhile writes what is done to the database.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def _init(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    # Ctrl-C is the main process's to handle: it stops the pool (workers print no tracebacks).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def in_order(work: Callable[[Item], Result], items: Iterable[Item], workers: int, *,
             here: Callable[[Item], Result],
             initializer: Callable[..., None] | None = None,
             initargs: tuple[Any, ...] = ()) -> Iterator[tuple[Item, Result]]:
    """Each item with its result, in the items' order; with workers > 1, up to `workers` items
    at once in other processes, where `work` runs after `initializer(*initargs)` (both must be
    module-level functions: they are sent to the workers by name). In this process, with one
    worker or when the pool breaks, `here` does the same work."""
    if workers <= 1:
        for item in items:
            yield item, here(item)
        return
    # spawn, not fork: the parent holds database connections and, in servers, threads. A caller
    # whose main module cannot be imported again (a script without a __main__ guard) breaks the
    # pool: the items are then worked on here instead.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                               initargs=(initializer, initargs))
    try:
        waiting: deque[tuple[Item, Future[Result]]] = deque()
        broken = False
        for item in items:
            if broken:
                yield item, here(item)
                continue
            waiting.append((item, pool.submit(work, item)))
            if len(waiting) <= workers:
                continue
            done, future = waiting.popleft()
            try:
                yield done, future.result()
            except BrokenProcessPool:
                broken = True
                yield done, here(done)
        for done, future in waiting:
            try:
                yield done, future.result() if not broken else here(done)
            except BrokenProcessPool:
                broken = True
                yield done, here(done)
    finally:
        # Also when the caller stops early: items not yet worked on are dropped, not waited for.
        pool.shutdown(wait=True, cancel_futures=True)
