"""The newest copy of each BertPretrainJob the operator has seen, so a reconcile need not GET it.

Copies come from kopf's watch events, the resync's list and the answers to the
operator's own status patches. A copy may be older than what is stored (a write
whose watch event has not arrived yet); the controller copes: its status patch
names the resourceVersion it decided on and fails with 409 Conflict if the job
changed since, and anything destructive is decided again on a fresh GET.

Copies are kept as compact JSON (about 2 kB per job), not as parsed dicts (about
five times that), and each reconcile parses its own private copy.
"""

from __future__ import annotations

import json
import threading
from typing import Any

Key = tuple[str, str]
#: Phases after which only a TTL can change anything (``decide.FINAL_PHASES``; the
#: operator's API package is not imported here to keep this module a leaf).
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
Obj = dict[str, Any]


def _version(body: Obj) -> int | None:
    """The resourceVersion as a number; None if it is not one.

    resourceVersions are opaque to clients in general; kube-apiserver's, backed by
    etcd, are its revision numbers and grow with every write. Where one does not
    parse, every copy counts as newer (at worst a needless reconcile).
    """
    try:
        return int(body["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


class JobCache:
    """Thread-safe: watch handlers run on the event loop, reconciles in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._copies: dict[Key, tuple[int | None, bytes]] = {}
        self._finished: set[Key] = set()

    @staticmethod
    def key(body: Obj) -> Key:
        meta = body["metadata"]
        return (meta["namespace"], meta["name"])

    def put(self, body: Obj) -> bool:
        """Keep ``body`` unless the copy held is as new or newer; True if it was kept."""
        key = self.key(body)
        version = _version(body)
        with self._lock:
            held = self._copies.get(key)
            held_version = held[0] if held is not None else None
            if held_version is not None and version is not None and version <= held_version:
                return False
            self._copies[key] = (version, json.dumps(body, separators=(",", ":")).encode())
            if (body.get("status") or {}).get("phase") in FINISHED_PHASES:
                self._finished.add(key)
            else:
                self._finished.discard(key)
        return True

    def get(self, key: Key) -> Obj | None:
        held = self._copies.get(key)
        if held is None:
            return None
        body: Obj = json.loads(held[1])
        return body

    def drop(self, key: Key) -> None:
        with self._lock:
            self._copies.pop(key, None)
            self._finished.discard(key)

    def unfinished(self) -> list[Key]:
        """The jobs whose newest copy is in neither final phase."""
        with self._lock:
            return [key for key in self._copies if key not in self._finished]

    def __len__(self) -> int:
        return len(self._copies)
