"""Per-job backoff of failing reconciles: exponential, jittered, capped; one log line per streak.

A reconcile that raises (the API server unreachable, a webhook down, a bug) is
retried after ``base * factor ** (failures - 1)`` seconds, at most ``cap``, each
delay scaled by a random factor in ``[1 - jitter, 1 + jitter]`` so that jobs
failing together do not retry together (client-go's per-item exponential rate
limiter, with jitter as its wait.Backoff has it). A success forgets the job's
failures. Each job's failures form a streak: the operator logs its first failure
with the traceback and its end with the count and the duration, not a traceback
per retry.

The clock and the random source are parameters, so tests drive the timing
without sleeping.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


@dataclass
class Streak:
    """The failures of one job since its last successful reconcile."""

    failures: int
    started: float
    """The clock's reading at the first failure."""
    last_error: str


@dataclass
class Backoff:
    base: float = 1.0
    """Seconds before the first retry (before jitter)."""
    factor: float = 2.0
    cap: float = 300.0
    """Seconds: no retry waits longer (before jitter)."""
    jitter: float = 0.2
    """Each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter]."""
    clock: Callable[[], float] = time.monotonic
    random: Callable[[], float] = random.random
    _streaks: dict[Hashable, Streak] = field(default_factory=dict)

    def failed(self, key: Hashable, error: BaseException) -> tuple[float, Streak]:
        """Record a failure of ``key``; the seconds to wait before retrying, and its streak.

        ``streak.failures == 1`` marks the first failure of a streak.
        """
        streak = self._streaks.get(key)
        if streak is None:
            streak = self._streaks[key] = Streak(0, self.clock(), "")
        streak.failures += 1
        streak.last_error = f"{type(error).__name__}: {error}"
        delay = min(self.cap, self.base * self.factor ** (streak.failures - 1))
        return delay * (1 - self.jitter + 2 * self.jitter * self.random()), streak

    def succeeded(self, key: Hashable) -> tuple[Streak, float] | None:
        """Forget ``key``'s failures; the streak it ended and its seconds, if there was one."""
        streak = self._streaks.pop(key, None)
        if streak is None:
            return None
        return streak, self.clock() - streak.started

    def failing(self) -> int:
        """Jobs whose last reconcile failed."""
        return len(self._streaks)
