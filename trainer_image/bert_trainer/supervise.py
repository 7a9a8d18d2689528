"""The thin parent process of a multi-host training worker.

JAX ends a host whose peer is lost (or whose coordinator is gone) with
``abort()`` once the heartbeat times out: the process dies of SIGABRT, not
with an exit code the operator understands. The worker therefore runs as a
child of this supervisor, which forwards SIGTERM and SIGINT (a preemption
notice must reach the training loop), passes the trainer's own exit codes
through, and turns any other ending into ``EXIT_INFRASTRUCTURE`` with a
termination message, so every host of the slice exits 20 and the operator
restarts the slice from the last checkpoint instead of waiting on a hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from types import FrameType

from bert_trainer import contract

FORWARDED = (signal.SIGTERM, signal.SIGINT)
_TRAINER_CODES = (
    contract.EXIT_OK,
    contract.EXIT_BAD_INPUT,
    contract.EXIT_INFRASTRUCTURE,
    contract.EXIT_PREEMPTED,
)


def supervise(
    argv: Sequence[str], worker_id: int, environ: Mapping[str, str] = os.environ
) -> tuple[int, str | None]:
    """Run ``python -m bert_trainer <argv>`` as a child; returns (exit code, message or None).

    The message, when there is one, is for the termination-message file: the
    child wrote its own for the codes the trainer chooses itself.
    """
    env = {**environ, contract.ENV_SUPERVISED: "1"}
    child = subprocess.Popen([sys.executable, "-m", "bert_trainer", *argv], env=env)

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code in _TRAINER_CODES:
        return code, None
    ending = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return contract.EXIT_INFRASTRUCTURE, (
        f"train: host {worker_id}: the training process ended with {ending}; JAX ends "
        "every host of a slice when one is lost (a preempted, evicted or failed peer), "
        "so the slice restarts from the last checkpoint"
    )
