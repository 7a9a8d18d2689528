"""Riding out a storage outage: retry a call with bounded exponential backoff.

TensorFlow's ``gs://`` filesystem already retries each HTTP request
(``GCS_RETRY_CONFIG_*``: by default 10 times, backing off to 32 s) and then
gives up with ``AbortedError: All N retry attempts failed. The last failure:
...`` (a 502/503 from GCS, or libcurl's "Could not connect"); a stalled
connection is cut after ``GCS_REQUEST_IDLE_TIMEOUT_SECS`` (60 s) and retried the
same way. :func:`retry_transient` adds the trainer's own, longer layer on top:
the call is repeated, 1 s, 2 s, 4 s ... apart (at most 30 s, with jitter so the
hosts of a slice do not retry in lockstep), until it succeeds or storage has
been failing for longer than the budget. Then :class:`StorageUnavailable`
ends the process with ``contract.EXIT_INFRASTRUCTURE`` and a termination
message naming the operation and its path; the operator starts a new attempt
from the last checkpoint.

The budget is ``$BERT_TRAINER_STORAGE_RETRY_SECONDS`` (default
:data:`DEFAULT_BUDGET_SECONDS`; 0 disables the retries). It counts from the
start of the first failed call of one operation, so the process never waits
much longer than the budget for any single save or read.

Only errors that say "try again later" are retried: ``UnavailableError``,
``DeadlineExceededError`` and the ``AbortedError`` that TensorFlow's own
retries end with. Anything else (a missing object, no permission, corrupt
data) is raised at once.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

import tensorflow as tf

from bert_trainer import contract
from bert_trainer.storage import (
    DEFAULT_RETRY_BUDGET_SECONDS,
    retry_budget_seconds,
)

log = logging.getLogger(__name__)

DEFAULT_BUDGET_SECONDS = DEFAULT_RETRY_BUDGET_SECONDS
budget_seconds = retry_budget_seconds
"""The retry budget from ``$BERT_TRAINER_STORAGE_RETRY_SECONDS`` (``bert_trainer.storage``)."""
FIRST_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0

_TF_GAVE_UP = "retry attempts failed"
"""In the AbortedError TensorFlow's RetryingFileSystem raises after its own retries."""

_NOISE = ("Graph execution error", "Detected at node", "File ", "[[")
_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}")

_T = TypeVar("_T")


class StorageUnavailable(SystemExit):
    """Storage kept failing for longer than the budget.

    A ``SystemExit`` (like ``Preempted``) so that generic ``except Exception``
    handlers leave it alone and the process exits with ``EXIT_INFRASTRUCTURE``.
    """

    def __init__(
        self, what: str, seconds: float, attempts: int, budget: float, error: BaseException
    ) -> None:
        super().__init__(contract.EXIT_INFRASTRUCTURE)
        self.what = what
        self.seconds = seconds
        self.attempts = attempts
        self.budget = budget
        self.error = error

    def __str__(self) -> str:
        return (
            f"storage unavailable for {self.seconds:.0f}s (retry budget {self.budget:.0f}s, "
            f"{self.attempts} attempts) while {self.what}: {describe(self.error)}"
        )


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` says storage may work again later."""
    if isinstance(error, tf.errors.UnavailableError | tf.errors.DeadlineExceededError):
        return True
    return isinstance(error, tf.errors.AbortedError) and _TF_GAVE_UP in str(error)


def retry_transient(
    fn: Callable[[], _T],
    *,
    what: str,
    budget_seconds: float,
    first_delay_seconds: float = FIRST_DELAY_SECONDS,
    max_delay_seconds: float = MAX_DELAY_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> _T:
    """``fn()``, called again after transient storage errors until ``budget_seconds`` run out.

    ``what`` says what the call does, with its path ("saving checkpoint
    gs://b/run/ckpt-100"); it names the operation in the retry warnings and in
    the :class:`StorageUnavailable` raised once the budget is spent. The
    delays double from ``first_delay_seconds`` up to ``max_delay_seconds``;
    each is jittered down by up to half.
    """
    outage_started: float | None = None
    attempts = 0
    delay = first_delay_seconds
    while True:
        started = clock()
        try:
            result = fn()
        except Exception as error:
            if not is_transient(error):
                raise
            attempts += 1
            if outage_started is None:
                outage_started = started
            elapsed = clock() - outage_started
            if elapsed >= budget_seconds:
                log.error(
                    "%s: giving up after %.1fs of storage errors (%d attempts)",
                    what,
                    elapsed,
                    attempts,
                    extra={"storage_outage_seconds": round(elapsed, 1)},
                )
                raise StorageUnavailable(what, elapsed, attempts, budget_seconds, error) from error
            wait = min(delay * random.uniform(0.5, 1.0), budget_seconds - elapsed)
            log.warning(
                "%s failed (attempt %d, storage failing for %.1fs of a %.0fs budget); "
                "retrying in %.1fs: %s",
                what,
                attempts,
                elapsed,
                budget_seconds,
                wait,
                describe(error),
                extra={"storage_outage_seconds": round(elapsed, 1), "retry_attempt": attempts},
            )
            sleep(wait)
            delay = min(delay * 2, max_delay_seconds)
            continue
        if outage_started is not None:
            elapsed = clock() - outage_started
            log.warning(
                "%s succeeded after %d failed attempts; storage was failing for %.1fs",
                what,
                attempts,
                elapsed,
                extra={"storage_outage_seconds": round(elapsed, 1), "retry_attempt": attempts},
            )
        return result


def describe(error: BaseException) -> str:
    """One line saying what failed, without TensorFlow's graph-error preamble and node traces.

    "Graph execution error: Detected at node ... File ..." becomes e.g. "All 3
    retry attempts failed. The last failure: ... when reading gs://b/part-0".
    """
    kept = []
    for line in str(error).splitlines():
        text = _FUNCTION_NODE.sub("", line).strip()
        if text and not text.startswith(_NOISE):
            kept.append(text)
    text = " ".join(kept) or type(error).__name__
    return text if len(text) <= 600 else text[:597] + "..."
