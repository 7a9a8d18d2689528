"""Progress reports to the BertPretrainJob's ``status.progress`` (worker 0 only).

Best effort by design: a report is sent from a background thread, at most once
per ``min_report_interval_seconds`` (the newest report wins while one is
pending), and any failure is logged and dropped. Training must never stall or
die because the Kubernetes API is slow or unreachable. The thread and the API
client are ``bert_trainer.report``'s, shared with the prepare passes' reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bert_trainer import contract
from bert_trainer.config import JobRef
from bert_trainer.report import BackgroundReporter, StatusPatcher


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
    eval: Mapping[str, float | int] | None = None
    """The latest held-out evaluation (``contract.EVAL_FIELDS``), None before the first."""

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
            "eval": None
            if self.eval is None
            else {k: v if k == "step" else _finite(float(v)) for k, v in self.eval.items()},
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


class KubernetesStatusSink(StatusPatcher):
    """Merge-patches ``status.progress`` through the pod's service account.

    Uses the in-cluster configuration, or ``KUBECONFIG`` outside a cluster
    (the local pod runner). The client is created on first use, so a missing
    configuration surfaces as a failed (dropped) report, not a failed start.
    """

    def send(self, progress: Mapping[str, Any]) -> None:
        self.patch({"progress": dict(progress)})


class ProgressReporter(BackgroundReporter[Progress]):
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
        def send(progress: Progress) -> None:
            sink.send(progress.to_status(now()))

        super().__init__(
            send,
            min_interval_seconds,
            clock,
            name="progress-reporter",
            dropped="progress report dropped",
        )


def make_reporter(job: JobRef | None, is_chief: bool) -> ProgressReporter | None:
    """The reporter for this process: None unless it is worker 0 of a job that wants reports."""
    if job is None or not job.report_progress or not is_chief:
        return None
    return ProgressReporter(KubernetesStatusSink(job), job.min_report_interval_seconds)
