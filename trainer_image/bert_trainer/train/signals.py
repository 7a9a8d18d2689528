"""SIGTERM as a preemption notice: finish the current steps, checkpoint, exit.

Kubernetes sends SIGTERM before it kills a pod (a spot VM's reclaim notice, a
node drain, a deleted Job) and waits ``terminationGracePeriodSeconds``. The
handler only sets a flag; the training loop checks it between calls of the
compiled step function, writes a checkpoint and raises :class:`Preempted`,
whose exit code tells the operator to resume the run on fresh hardware.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from bert_trainer import contract

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """Training stopped on SIGTERM after saving a checkpoint.

    A ``SystemExit`` so that generic ``except Exception`` handlers on the way
    out leave it alone and the process exits with ``EXIT_PREEMPTED``.
    """

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(contract.EXIT_PREEMPTED)
        self.step = step
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return f"preempted (SIGTERM) at step {self.step}; checkpoint {self.checkpoint}"


class StopFlag:
    """Set by SIGTERM while installed (a context manager); restores the old handler after."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> None:
        self._signals = signals
        self._event = threading.Event()
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def __enter__(self) -> StopFlag:
        # signal.signal only works in the main thread; elsewhere (a test
        # harness's worker thread) the flag still works when set directly.
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.warning("received %s: checkpointing and exiting", signal.Signals(signum).name)
        self._event.set()
