"""An ordered ``map`` over a process pool whose workers share one read-only state.

The state (the corpus, mostly) is handed to the workers once, when they
start: forked workers share its pages copy-on-write, spawned ones unpickle it
once. Tasks then carry only small arguments, and results come back in task
order, which is what makes ``prepare`` deterministic for any number of workers.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.pool import Pool
from typing import Protocol, TypeVar

from bert_trainer import contract

_T = TypeVar("_T")
_R = TypeVar("_R")


class OrderedMap(Protocol):
    def __call__(self, fn: Callable[[_T], _R], items: Iterable[_T], /) -> Iterator[_R]: ...


_state: object = None


def state() -> object:
    """The state given to :func:`pool`, inside a task."""
    return _state


def cpu_count(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The processes to run: the CPUs this process may use, capped by its CPU quota.

    A pod's CPU limit is a CFS quota, not an affinity: on a 64-core node a pod
    limited to 2 CPUs still sees 64, and 64 processes would be throttled to 2
    CPUs while each holds its own memory. So the cgroup's quota (v2 ``cpu.max``,
    v1 ``cpu.cfs_quota_us``), rounded up, caps the count; so does the pod's CPU
    request, which the operator passes as ``$BERT_TRAINER_CPUS`` (its pods have a
    request and no CPU limit: a pool sized by the request uses what it asked for).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        usable = min(usable, math.ceil(quota))
    requested = os.environ.get(contract.ENV_CPUS, "")
    if requested.isdigit() and int(requested) > 0:
        usable = min(usable, int(requested))
    return max(1, usable)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs of this process' cgroup quota, or None when it has none (or no cgroup is seen)."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:  # cgroup v2
            quota, _, period = f.read().strip().partition(" ")
    except OSError:
        try:
            with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:  # cgroup v1
                quota = f.read().strip()
            with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit():
        return None
    if int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


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
