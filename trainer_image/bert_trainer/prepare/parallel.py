"""An ordered ``map`` over a process pool whose workers share one read-only state.

The state (the corpus, mostly) is handed to the workers once, when they
start: forked workers share its pages copy-on-write, spawned ones unpickle it
once. Tasks then carry only small arguments, and results come back in task
order, which is what makes ``prepare`` deterministic for any number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.pool import Pool
from typing import Protocol, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


class OrderedMap(Protocol):
    def __call__(self, fn: Callable[[_T], _R], items: Iterable[_T], /) -> Iterator[_R]: ...


_state: object = None


def state() -> object:
    """The state given to :func:`pool`, inside a task."""
    return _state


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def pool(shared: object, workers: int) -> Iterator[OrderedMap]:
    """An ordered ``imap`` whose tasks see ``shared`` through :func:`state`.

    One worker runs the tasks in this process, which keeps tracebacks and
    profiles simple.
    """
    if workers <= 1:
        previous = _set_state(shared)
        try:
            yield map
        finally:
            _set_state(previous)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with Pool(
        workers,
        initializer=_set_state,
        initargs=(shared,),
        context=multiprocessing.get_context(method),
    ) as workers_pool:
        yield workers_pool.imap


def _set_state(shared: object) -> object:
    global _state
    previous, _state = _state, shared
    return previous
