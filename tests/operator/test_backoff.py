"""Failing reconciles back off per job: exponential, jittered, capped; one log line per streak."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bert_pretrain_operator import handlers
from bert_pretrain_operator.backoff import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_cap_per_job() -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.0, clock=Clock())
    error = ConnectionError("refused")
    delays = [backoff.failed("a", error)[0] for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    # Another job's failures start their own sequence.
    assert backoff.failed("b", error)[0] == 1.0
    assert backoff.failing() == 2


@pytest.mark.parametrize(("draw", "scale"), [(0.0, 0.8), (0.5, 1.0), (1.0, 1.2)])
def test_jitter_scales_each_delay_within_its_bounds(draw: float, scale: float) -> None:
    backoff = Backoff(base=2.0, jitter=0.2, clock=Clock(), random=lambda: draw)
    error = TimeoutError("slow")
    assert backoff.failed("a", error)[0] == pytest.approx(2.0 * scale)
    assert backoff.failed("a", error)[0] == pytest.approx(4.0 * scale)


def test_a_success_ends_the_streak_with_its_count_and_duration() -> None:
    clock = Clock()
    backoff = Backoff(jitter=0.0, clock=clock)
    assert backoff.succeeded("a") is None  # no streak: nothing to log
    first = backoff.failed("a", ConnectionError("refused"))[1]
    assert first.failures == 1
    clock.now += 42.0
    streak = backoff.failed("a", RuntimeError("conflict"))[1]
    assert streak.failures == 2 and streak.last_error == "RuntimeError: conflict"
    ended = backoff.succeeded("a")
    assert ended is not None and ended[1] == 42.0 and ended[0].failures == 2
    assert backoff.failing() == 0
    # The next failure starts again from the base delay.
    assert backoff.failed("a", ConnectionError("refused"))[0] == 1.0


class FlakyController:
    """Raises ``failures`` times, then reconciles (returns no decision: the job is gone)."""

    def __init__(self, failures: int) -> None:
        self.left = failures

    def reconcile(self, namespace: str, name: str) -> Any:
        if self.left:
            self.left -= 1
            raise ConnectionError("the API server is unreachable")
        return None


def test_the_operator_logs_a_streak_once_and_retries_later_each_time(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    runtime = handlers.Runtime(
        controller=FlakyController(4),  # type: ignore[arg-type]
        executor=ThreadPoolExecutor(1),
        events=ThreadPoolExecutor(1),
        backoff=Backoff(base=1.0, jitter=0.0, clock=clock),
    )
    monkeypatch.setattr(handlers, "_runtime", runtime)
    key = ("team-a", "bert")
    waits: list[float] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(5):
            await handlers._process(key)
            timer = runtime.queue._timers.pop(key, None)
            if timer is not None:
                waits.append(round(timer.when() - loop.time()))
                timer.cancel()
            clock.now += 10

    with caplog.at_level(logging.DEBUG, logger=handlers.log.name):
        asyncio.run(run())
    assert waits == [1, 2, 4, 8]  # four failures, each retried later than the last
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    failing = [m for m in messages if m[0] >= logging.WARNING]
    assert len(failing) == 1 and "reconcile failing" in failing[0][1]
    assert next(r for r in caplog.records if r.levelno >= logging.WARNING).exc_info
    recovered = [m for level, m in messages if level == logging.INFO]
    assert recovered == [
        "reconcile recovered after 4 failure(s) in 40s (last: ConnectionError: "
        "the API server is unreachable)"
    ]
    runtime.executor.shutdown()
    runtime.events.shutdown()
