"""A preparation pod's reports: its own entry of ``status.preparation.reports``.

Each pod merge-patches only ``reports[<pass>-<index>]`` (``contract``), which the
progress admission policy checks against the pod's name. Progress reports are
best effort and rate limited, like training's: a slow API never holds up the
pass for long. The final report (``done: true``) is what the operator counts
and what plan's worker count is derived from, so it is retried for the storage
retry budget and, if it still cannot be written, fails the pod (an
infrastructure failure: the Job reruns the index, which finds its marker and
only reports again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from bert_trainer import contract
from bert_trainer.config import JobRef
from bert_trainer.storage import retry_budget_seconds

log = logging.getLogger(__name__)

_REQUEST_TIMEOUT_SECONDS = 10.0
_FIRST_RETRY_SECONDS = 1.0
_MAX_RETRY_SECONDS = 30.0


class ReportSink(Protocol):
    def send(self, key: str, report: Mapping[str, Any]) -> None: ...


class KubernetesReportSink:
    """Merge-patches the job's status subresource through the pod's service account."""

    def __init__(self, job: JobRef) -> None:
        self._job = job
        self._api: Any = None

    def send(self, key: str, report: Mapping[str, Any]) -> None:
        if self._api is None:
            from bert_trainer.train.progress import custom_objects_api

            self._api = custom_objects_api()
        self._api.patch_namespaced_custom_object_status(
            group=contract.API_GROUP,
            version=contract.API_VERSION,
            namespace=self._job.namespace,
            plural=contract.PLURAL,
            name=self._job.name,
            body={"status": {"preparation": {"reports": {key: dict(report)}}}},
            _request_timeout=_REQUEST_TIMEOUT_SECONDS,
        )


class PassReporter:
    """Reports of one index of one pass; a None sink reports nothing (local runs)."""

    def __init__(
        self,
        sink: ReportSink | None,
        prepare_pass: str,
        index: int,
        min_interval_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.key = contract.preparation_report_key(prepare_pass, index)
        self._sink = sink
        self._min_interval = min_interval_seconds
        self._clock = clock
        self._sleep = sleep
        self._last: float | None = None

    def progress(self, **fields: int) -> None:
        if self._sink is None:
            return
        now = self._clock()
        if self._last is not None and now - self._last < self._min_interval:
            return
        self._last = now
        try:
            self._sink.send(self.key, _report(fields, done=False))
        except Exception:
            log.warning("preparation report dropped", extra={"report": self.key}, exc_info=True)

    def final(self, fields: Mapping[str, int]) -> None:
        """Send the final report; RuntimeError if it cannot be written within the budget."""
        if self._sink is None:
            return
        report = _report(fields, done=True)
        deadline = self._clock() + retry_budget_seconds()
        wait = _FIRST_RETRY_SECONDS
        while True:
            try:
                self._sink.send(self.key, report)
                return
            except Exception as e:
                if self._clock() + wait > deadline:
                    raise RuntimeError(
                        f"cannot write the final report {self.key} to the BertPretrainJob's "
                        f"status: {e}"
                    ) from e
                log.warning("final preparation report failed; retrying", exc_info=True)
                self._sleep(wait)
                wait = min(2 * wait, _MAX_RETRY_SECONDS)


def _report(fields: Mapping[str, int], *, done: bool) -> dict[str, Any]:
    unknown = set(fields) - set(contract.PREPARATION_REPORT_FIELDS)
    if unknown:
        raise ValueError(f"not report fields: {sorted(unknown)}")
    return {
        **{k: int(v) for k, v in fields.items()},
        "done": done,
        "updatedTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def make_reporter(job: JobRef | None, prepare_pass: str, index: int) -> PassReporter:
    sink = KubernetesReportSink(job) if job is not None and job.report_progress else None
    interval = job.min_report_interval_seconds if job is not None else 0.0
    return PassReporter(sink, prepare_pass, index, interval)
