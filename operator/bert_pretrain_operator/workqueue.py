"""A de-duplicating work queue: each job is reconciled by one worker at a time.

Watch events for a job, its child Jobs and their pods arrive in bursts; they
all mean "look at this job again". Like client-go's workqueue, a key waiting
in the queue is not added twice, and a key that arrives while it is being
processed is processed once more afterwards (never concurrently).

Two priorities: urgent keys (jobs never reconciled yet) are taken before the
rest, in the order they arrived; a waiting key added again as urgent moves up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

Key = tuple[str, str]


class WorkQueue:
    def __init__(self) -> None:
        # One token per waiting key; a worker takes a token, then the first key in
        # the urgent lane, else in the normal lane. A lane may hold stale entries
        # (a key since moved up, or taken): an entry counts only while ``_waiting``
        # says the key waits in that lane.
        self._tokens: asyncio.Queue[None] = asyncio.Queue()
        self._lanes: dict[bool, deque[Key]] = {True: deque(), False: deque()}
        self._waiting: dict[Key, bool] = {}
        """Waiting keys: whether each is urgent."""
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def add(self, key: Key, *, urgent: bool = False) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._waiting:
            self._waiting[key] = urgent
            self._lanes[urgent].append(key)
            self._tokens.put_nowait(None)
        elif urgent and not self._waiting[key]:
            self._waiting[key] = True
            self._lanes[True].append(key)

    def _take(self) -> Key:
        for urgent in (True, False):
            lane = self._lanes[urgent]
            while lane:
                key = lane.popleft()
                if self._waiting.get(key) is urgent:
                    del self._waiting[key]
                    return key
        raise AssertionError("a token without a waiting key")

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
            await self._tokens.get()
            key = self._take()
            self._processing.add(key)
            try:
                await process(key)
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
