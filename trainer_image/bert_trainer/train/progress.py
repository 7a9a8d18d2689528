"""Progress reports to the BertPretrainJob's ``status.progress`` (worker 0 only).

Best effort by design: a report is sent from a background thread, at most once
per ``min_report_interval_seconds`` (the newest report wins while one is
pending), and any failure is logged and dropped. Training must never stall or
die because the Kubernetes API is slow or unreachable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bert_trainer import contract
from bert_trainer.config import JobRef

log = logging.getLogger(__name__)

_REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Progress:
    """One snapshot of training, as ``status.progress`` shows it."""

    step: int
    total_steps: int
    loss: float | None = None
    mlm_accuracy: float | None = None
    nsp_accuracy: float | None = None
    examples_per_second: float | None = None
    eta_seconds: float | None = None
    last_checkpoint: str | None = None
    last_checkpoint_step: int | None = None

    def to_status(self, now: datetime) -> dict[str, Any]:
        """The ``status.progress`` object: exactly ``contract.PROGRESS_FIELDS``."""
        status = {
            "step": self.step,
            "totalSteps": self.total_steps,
            "loss": _finite(self.loss),
            "mlmAccuracy": _finite(self.mlm_accuracy),
            "nspAccuracy": _finite(self.nsp_accuracy),
            "examplesPerSecond": _finite(self.examples_per_second),
            "etaSeconds": None if self.eta_seconds is None else round(self.eta_seconds),
            "lastCheckpoint": self.last_checkpoint,
            "lastCheckpointStep": self.last_checkpoint_step,
            "updatedTime": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        assert tuple(status) == contract.PROGRESS_FIELDS
        return status


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or Infinity; the API server would reject the whole patch.
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return round(float(value), 6)


class ProgressSink(Protocol):
    """Where a ``status.progress`` object goes."""

    def send(self, progress: Mapping[str, Any]) -> None: ...


class KubernetesStatusSink:
    """Merge-patches ``status.progress`` through the pod's service account.

    Uses the in-cluster configuration, or ``KUBECONFIG`` outside a cluster
    (the local pod runner). The client is created on first use, so a missing
    configuration surfaces as a failed (dropped) report, not a failed start.
    """

    def __init__(self, job: JobRef) -> None:
        self._job = job
        self._api: Any = None

    def send(self, progress: Mapping[str, Any]) -> None:
        if self._api is None:
            self._api = custom_objects_api()
        self._api.patch_namespaced_custom_object_status(
            group=contract.API_GROUP,
            version=contract.API_VERSION,
            namespace=self._job.namespace,
            plural=contract.PLURAL,
            name=self._job.name,
            body={"status": {"progress": dict(progress)}},
            _request_timeout=_REQUEST_TIMEOUT_SECONDS,
        )


def custom_objects_api() -> Any:
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


class ProgressReporter:
    """Rate-limited, non-blocking, failure-swallowing progress reports.

    ``report`` returns at once; a daemon thread sends. ``close`` sends what
    is pending (within ``timeout``) and stops the thread.
    """

    def __init__(
        self,
        sink: ProgressSink,
        min_interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sink = sink
        self._min_interval = min_interval_seconds
        self._clock = clock
        self._now = now
        self._pending: Progress | None = None
        self._last_sent_at: float | None = None
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="progress-reporter", daemon=True)
        self._thread.start()

    def report(self, progress: Progress, force: bool = False) -> None:
        """Queue ``progress``; ``force`` skips the rate limit (final and checkpoint reports)."""
        with self._wake:
            self._pending = progress
            if force:
                self._last_sent_at = None
            self._wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._closed = True
            self._last_sent_at = None
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                progress = self._wait_for_due_report()
                if progress is None:
                    return
                self._pending = None
                self._last_sent_at = self._clock()
            self._send(progress)

    def _wait_for_due_report(self) -> Progress | None:
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

    def _send(self, progress: Progress) -> None:
        try:
            self._sink.send(progress.to_status(self._now()))
        except Exception:
            log.warning("progress report dropped", exc_info=True)


def make_reporter(job: JobRef | None, is_chief: bool) -> ProgressReporter | None:
    """The reporter for this process: None unless it is worker 0 of a job that wants reports."""
    if job is None or not job.report_progress or not is_chief:
        return None
    return ProgressReporter(KubernetesStatusSink(job), job.min_report_interval_seconds)
