"""A de-duplicating work queue: each job is reconciled by one worker at a time.

Watch events for a job, its child Jobs and their pods arrive in bursts; they
all mean "look at this job again". Like client-go's workqueue, a key waiting
in the queue is not added twice, and a key that arrives while it is being
processed is processed once more afterwards (never concurrently).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Key = tuple[str, str]


class WorkQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._waiting: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def add(self, key: Key) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        """Add ``key`` after ``delay`` seconds (keeps the earliest pending timer)."""
        loop = asyncio.get_running_loop()
        timer = self._timers.get(key)
        when = loop.time() + max(delay, 0.0)
        if timer is not None and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def __len__(self) -> int:
        return len(self._waiting)

    async def run_worker(self, process: Callable[[Key], Awaitable[None]]) -> None:
        """Take keys forever; ``process`` must not raise (the caller logs and requeues)."""
        while True:
            key = await self._queue.get()
            self._waiting.discard(key)
            self._processing.add(key)
            try:
                await process(key)
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
