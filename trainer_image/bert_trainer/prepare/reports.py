"""A prepare pod's reports: its own entry of ``status.preparation.reports``.

Each pod merge-patches only ``reports[<pass>-<index>]`` (``contract.preparation_report_key``),
which the progress admission policy checks against the pod's name, with fields of
``contract.PREPARATION_REPORT_FIELDS`` only (non-negative integers, ``done``,
``updatedTime``; fields that do not apply to a pass are left out).

- Progress reports (``done: false``) are best effort, like training's: sent from a
  background thread at most once per ``job.min_report_interval_seconds``, failures
  logged and dropped (``bert_trainer.report.BackgroundReporter``), so a slow API
  never holds up the pass.
- The final report (``done: true``) is what the operator counts: a pass whose Job
  completed has one from every index, and the plan's ``chunksTotal`` sizes the later
  passes. It is sent synchronously, after any progress report in flight (so an older
  one cannot overwrite it), and retried for the storage retry budget
  (``bert_trainer.storage.retry_budget_seconds``). If it still fails, the pass raises
  ``RuntimeError`` (exit 20): the Job reruns the index, which finds its marker and only
  reports again.

Without a sink (no job in the config, ``reportProgress: false``, tests, ``run_prepare``)
nothing is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from bert_trainer import contract
from bert_trainer.config import JobRef
from bert_trainer.report import BackgroundReporter, StatusPatcher
from bert_trainer.storage import retry_budget_seconds

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0
COUNTED_FIELDS = tuple(
    f for f in contract.PREPARATION_REPORT_FIELDS if f not in ("done", "updatedTime")
)
"""The fields a pass sets: counts (``done`` and ``updatedTime`` are the reporter's)."""


class ReportSink(Protocol):
    """Where one pod's report entry goes."""

    def send(self, key: str, report: Mapping[str, Any]) -> None: ...


class KubernetesReportSink(StatusPatcher):
    """Merge-patches ``status.preparation.reports[key]`` through the pod's service account."""

    def send(self, key: str, report: Mapping[str, Any]) -> None:
        self.patch({"preparation": {"reports": {key: dict(report)}}})


class PassReporter:
    """The reports of one index of one pass; a None sink reports nothing."""

    def __init__(
        self,
        sink: ReportSink | None,
        prepare_pass: str,
        index: int,
        min_interval_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.key = contract.preparation_report_key(prepare_pass, index)
        self._sink = sink
        self._clock = clock
        self._sleep = sleep
        self._now = now
        self._background: BackgroundReporter[dict[str, int]] | None = None
        if sink is not None:
            self._background = BackgroundReporter(
                lambda fields: sink.send(self.key, self._render(fields, done=False)),
                min_interval_seconds,
                clock,
                name=f"report-{self.key}",
                dropped=f"preparation report {self.key} dropped",
            )

    def progress(self, **fields: int) -> None:
        """Queue a progress report (best effort, rate limited)."""
        checked = _checked(fields)
        if self._background is not None:
            self._background.report(checked)

    def final(self, fields: Mapping[str, int]) -> None:
        """Send the final report; RuntimeError if it cannot be written within the budget."""
        checked = _checked(fields)
        self.close()
        if self._sink is None:
            return
        deadline = self._clock() + retry_budget_seconds()
        wait = FIRST_RETRY_SECONDS
        attempts = 0
        while True:
            attempts += 1
            try:
                self._sink.send(self.key, self._render(checked, done=True))
                return
            except Exception as e:
                left = deadline - self._clock()
                if left <= 0:
                    raise RuntimeError(
                        f"cannot write the final report {self.key} to the BertPretrainJob's "
                        f"status ({attempts} attempts): {e}"
                    ) from e
                log.warning(
                    "final preparation report failed; retrying",
                    extra={"report": self.key, "attempt": attempts},
                    exc_info=True,
                )
                self._sleep(min(wait, left))
                wait = min(2 * wait, MAX_RETRY_SECONDS)

    def close(self) -> None:
        """Stop sending progress reports (idempotent); pending ones are dropped."""
        if self._background is not None:
            self._background.stop()
            self._background = None

    def _render(self, fields: Mapping[str, int], *, done: bool) -> dict[str, Any]:
        return {
            **fields,
            "done": done,
            "updatedTime": self._now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _checked(fields: Mapping[str, int]) -> dict[str, int]:
    unknown = set(fields) - set(COUNTED_FIELDS)
    if unknown:
        raise ValueError(f"not preparation report fields: {sorted(unknown)}")
    checked = {k: int(v) for k, v in fields.items()}
    negative = [k for k, v in checked.items() if v < 0]
    if negative:
        raise ValueError(f"negative preparation report fields: {negative}")
    return checked


def make_reporter(job: JobRef | None, prepare_pass: str, index: int) -> PassReporter:
    """The pod's reporter: it sends only for a job that wants reports."""
    if job is None or not job.report_progress:
        return PassReporter(None, prepare_pass, index)
    return PassReporter(
        KubernetesReportSink(job), prepare_pass, index, job.min_report_interval_seconds
    )
