"""Status reports from trainer pods to their BertPretrainJob (no TensorFlow here).

Shared by training's ``status.progress`` (``train/progress.py``) and the prepare
passes' ``status.preparation.reports`` (``prepare/reports.py``):

- ``StatusPatcher`` merge-patches the job's status subresource with the pod's own
  service account, through a client built the same way for both (``custom_objects_api``);
- ``BackgroundReporter`` sends reports from a daemon thread, at most one per
  interval, the newest winning while one waits, and logs and drops failures: a
  slow or unreachable API server never holds up the work being reported.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from bert_trainer import contract
from bert_trainer.config import JobRef

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0
"""The total time of one API request: it bounds how long ``BackgroundReporter.stop`` waits."""

_T = TypeVar("_T")


def custom_objects_api() -> Any:
    """The API client: the in-cluster configuration, or ``KUBECONFIG`` outside a cluster."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    # The kubeconfig loader takes HTTPS_PROXY from the environment but not NO_PROXY;
    # without it, a proxy meant for storage traffic would also carry API calls.
    cfg.no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy")
    return client.CustomObjectsApi(client.ApiClient(cfg))


class StatusPatcher:
    """Merge-patches the job's status subresource.

    The client is created on first use, so a missing configuration surfaces as a
    failed report (dropped, or retried for a final one), not as a failed start.
    """

    def __init__(self, job: JobRef) -> None:
        self._job = job
        self._api: Any = None

    def patch(self, status: Mapping[str, Any]) -> None:
        """Merge ``{"status": status}`` into the job."""
        if self._api is None:
            self._api = custom_objects_api()
        self._api.patch_namespaced_custom_object_status(
            group=contract.API_GROUP,
            version=contract.API_VERSION,
            namespace=self._job.namespace,
            plural=contract.PLURAL,
            name=self._job.name,
            body={"status": dict(status)},
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )


class BackgroundReporter(Generic[_T]):
    """Rate-limited, non-blocking, failure-swallowing reports of ``_T``.

    ``report`` returns at once; a daemon thread calls ``send``. ``close`` sends
    what is pending and stops the thread; ``stop`` drops it instead, and once it
    returns nothing more is sent (a final report sent after it cannot be
    overwritten by an older one still in flight).
    """

    def __init__(
        self,
        send: Callable[[_T], None],
        min_interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        name: str = "status-reporter",
        dropped: str = "status report dropped",
    ) -> None:
        self._send_fn = send
        self._min_interval = min_interval_seconds
        self._clock = clock
        self._dropped = dropped
        self._pending: _T | None = None
        self._last_sent_at: float | None = None
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def report(self, item: _T, force: bool = False) -> None:
        """Queue ``item``; ``force`` skips the rate limit."""
        with self._wake:
            if self._closed:
                return
            self._pending = item
            if force:
                self._last_sent_at = None
            self._wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is pending (within ``timeout``) and stop the thread."""
        with self._wake:
            self._closed = True
            self._last_sent_at = None
            self._wake.notify()
        self._thread.join(timeout)

    def stop(self) -> None:
        """Drop what is pending and wait for a send in flight (one request at most)."""
        with self._wake:
            self._closed = True
            self._pending = None
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                item = self._wait_for_due_report()
                if item is None:
                    return
                self._pending = None
                self._last_sent_at = self._clock()
            try:
                self._send_fn(item)
            except Exception:
                log.warning(self._dropped, exc_info=True)

    def _wait_for_due_report(self) -> _T | None:
        while True:
            if self._pending is None:
                if self._closed:
                    return None
                self._wake.wait()
                continue
            wait = self._seconds_until_due()
            if wait <= 0:
                return self._pending
            self._wake.wait(wait)

    def _seconds_until_due(self) -> float:
        if self._last_sent_at is None or self._closed:
            return 0.0
        return self._last_sent_at + self._min_interval - self._clock()
