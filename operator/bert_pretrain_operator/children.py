"""Each job's child Jobs and pods as the watches delivered them, so a reconcile need not LIST.

The source is kopf's indices of the child watches (``handlers.child_jobs`` and
``handlers.child_pods``): kopf fills them from each watch's initial list before
it runs any handler, and keeps them current from its events, as client-go's
informers do. Only what ``reconcile.observe`` reads is kept of each object (the
``slim_*`` functions, about a tenth of a pod's full body), as compact JSON
(``pack``): parsed dicts cost several times their JSON, and with 1,000 running
jobs the dicts alone took about 15 MB of the operator's 150 MB budget
(docs/benchmarks.md, section 3).

The indices live on the event loop; a reconcile runs in a worker thread, so it
takes its snapshot on the loop (``asyncio.run_coroutine_threadsafe``) rather than
iterate a dict that the loop may be changing.

A watch trails the API server by the time an event takes to arrive. A Job the
operator created a moment ago may not be in the index yet; the status the
reconcile decides on already names it. So a snapshot is used only when it holds
every child Job the status names (``StageJobs``); otherwise the reconcile LISTs, as
before, and ``bpj_children_reads_total{source}`` counts which it was.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str]
#: Returns the slim child Jobs and pods indexed under one job's key.
Snapshot = Callable[[Key], tuple[list[Obj], list[Obj]]]
#: Seconds a reconcile waits for the event loop to take a snapshot.
SNAPSHOT_TIMEOUT_SECONDS = 10.0


#: What observe() reads of a child's metadata, Jobs and pods alike.
_METADATA = ("name", "namespace", "uid", "labels", "deletionTimestamp")
#: What it reads of a pod's status: its phase, why it failed, its containers' states.
_POD_STATUS = ("phase", "reason", "message", "conditions", "containerStatuses")


def _pick(obj: Mapping[str, Any], *keys: str) -> Obj:
    return {k: obj[k] for k in keys if k in obj}


def slim_job(body: Mapping[str, Any]) -> Obj:
    return {
        "metadata": _pick(body.get("metadata") or {}, *_METADATA),
        "spec": _pick(body.get("spec") or {}, "suspend", "parallelism", "completions"),
        "status": dict(body.get("status") or {}),
    }


def slim_pod(body: Mapping[str, Any]) -> Obj:
    return {
        "metadata": _pick(body.get("metadata") or {}, *_METADATA),
        "status": _pick(body.get("status") or {}, *_POD_STATUS),
    }


def pack(obj: Obj) -> bytes:
    """``obj`` as compact JSON: what the indices hold."""
    return json.dumps(obj, separators=(",", ":")).encode()


class Children:
    """Snapshots of the indexed children, per job; None where a LIST must answer instead."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    @classmethod
    def of_indices(
        cls,
        loop: asyncio.AbstractEventLoop,
        jobs: Mapping[Key, Iterable[bytes]],
        pods: Mapping[Key, Iterable[bytes]],
    ) -> Children:
        """Snapshots of kopf's ``jobs`` and ``pods`` indices (``pack``ed), taken on ``loop``."""

        async def take(key: Key) -> tuple[list[bytes], list[bytes]]:
            return list(jobs.get(key, ())), list(pods.get(key, ()))

        def snapshot(key: Key) -> tuple[list[Obj], list[Obj]]:
            future = asyncio.run_coroutine_threadsafe(take(key), loop)
            packed_jobs, packed_pods = future.result(SNAPSHOT_TIMEOUT_SECONDS)
            # Parsed here, in the reconcile's thread: each reconcile gets its own copies.
            return [json.loads(j) for j in packed_jobs], [json.loads(p) for p in packed_pods]

        return cls(snapshot)

    def get(self, key: Key, named: Collection[str]) -> tuple[list[Obj], list[Obj]] | None:
        """The children under ``key`` if every Job in ``named`` is among them, else None."""
        jobs, pods = self._snapshot(key)
        present = {job["metadata"].get("name") for job in jobs}
        if not set(named) <= present:
            return None
        return jobs, pods
