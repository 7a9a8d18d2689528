"""One pod's process: start it, supervise and stop it, and report how it ended.

``_PodWorker`` runs a pod on a thread of its own: it asks the runner to prepare
the pod, starts the container as a process in its own session, stops its process
group (SIGTERM, then SIGKILL after the grace period) when asked, and reports the
running and terminated status with the termination message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpj_devstack.podrunner.clock import _now
from bpj_devstack.podrunner.constants import (
    _FALLBACK_LOG_BYTES,
    _FALLBACK_LOG_LINES,
    _KILL_WAIT_SECONDS,
    _MAX_GRACE_SECONDS,
    _MAX_MESSAGE_BYTES,
    _POLL_SECONDS,
    _STATUS_ATTEMPTS,
)
from bpj_devstack.podrunner.errors import PodRejected
from bpj_devstack.podrunner.status import rejected_status, running_status, terminated_status

if TYPE_CHECKING:
    from bpj_devstack.podrunner.runner import PodRunner

log = logging.getLogger(__name__)


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - _FALLBACK_LOG_BYTES))
            data = f.read(_FALLBACK_LOG_BYTES)
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    return "".join(lines[-_FALLBACK_LOG_LINES:])


def termination_message(message_file: Path, log_file: Path, policy: str, exit_code: int) -> str:
    """What the kubelet would put in ``terminated.message``."""
    try:
        with message_file.open("rb") as f:
            message = f.read(_MAX_MESSAGE_BYTES).decode("utf-8", errors="replace")
    except OSError:
        message = ""
    if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
        return _tail(log_file)
    return message


def exit_code_of(returncode: int) -> int:
    """Popen's ``-N`` for a signal becomes ``128 + N``, as container runtimes report it."""
    return 128 - returncode if returncode < 0 else returncode


class _PodWorker:
    """Runs one pod: prepares it, supervises its process and reports its status.

    One thread per pod; the runner's watch thread only flips the flags below.
    """

    def __init__(self, runner: PodRunner, pod: Mapping[str, Any]) -> None:
        self._runner = runner
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._grace = _MAX_GRACE_SECONDS
        self._deleting = False  # the pod has a deletionTimestamp: finalise the deletion
        self._gone = False  # the pod is gone from the API: nothing left to report
        self._shutdown = False  # the runner stops: report a node shutdown
        self.finished = False  # guarded by the runner's lock; see PodRunner._on_pod_deleted
        self.thread = threading.Thread(
            target=self._run, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    def request_stop(
        self, grace: float, *, deleting: bool = False, gone: bool = False, shutdown: bool = False
    ) -> None:
        with self._lock:
            self._grace = min(self._grace, grace)
            self._deleting |= deleting
            self._gone |= gone
            self._shutdown |= shutdown
        self._wake.set()

    @property
    def gone(self) -> bool:
        with self._lock:
            return self._gone

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _run(self) -> None:
        try:
            self._run_pod()
        finally:
            self._runner._worker_finished(self)

    def _run_pod(self) -> None:
        container = self.pod["spec"]["containers"][0]
        try:
            launch = self._runner._prepare(self.pod, self._wake)
        except PodRejected as exc:
            log.warning("pod %s rejected: %s", self.label, exc)
            if not self._wake.is_set():
                self._report(rejected_status(str(exc)))
            return
        except Exception as exc:  # a bug or an API failure: fail the pod visibly, not silently
            log.exception("preparing pod %s failed", self.label)
            self._report(rejected_status(f"the local pod runner could not prepare the pod: {exc}"))
            return
        if self._wake.is_set():  # deleted or stopped while preparing: never start
            return
        started_at = _now()
        try:
            with launch.log_path.open("ab") as out:
                proc = subprocess.Popen(
                    launch.argv,
                    env=launch.env,
                    cwd=launch.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # Its own process group, so SIGTERM reaches the program and its children.
                    start_new_session=True,
                )
        except OSError as exc:
            log.warning("pod %s: cannot start %s: %s", self.label, launch.argv[0], exc)
            self._report(
                terminated_status(
                    container,
                    exit_code=128,
                    reason="StartError",
                    message=str(exc),
                    started_at=started_at,
                    pid=None,
                )
            )
            return
        log.info("pod %s: started pid %d: %s", self.label, proc.pid, " ".join(launch.argv))
        self._report(running_status(container, started_at, proc.pid))
        exit_code = self._supervise(proc)
        log.info("pod %s: pid %d exited with %d", self.label, proc.pid, exit_code)
        policy = container.get("terminationMessagePolicy", "File")
        message = termination_message(launch.message_path, launch.log_path, policy, exit_code)
        with self._lock:
            shutdown = self._shutdown and not self._deleting
        self._report(
            terminated_status(
                container,
                exit_code=exit_code,
                message=message,
                started_at=started_at,
                pid=proc.pid,
                node_shutdown=shutdown,
            )
        )

    def _supervise(self, proc: subprocess.Popen[bytes]) -> int:
        """Waits for the process, or stops it when asked; returns the container exit code."""
        # Bounded by the process's lifetime or a stop request, whichever comes first.
        while proc.poll() is None and not self._wake.wait(_POLL_SECONDS):
            pass
        if proc.returncode is None:
            with self._lock:
                grace = self._grace
            log.info("pod %s: SIGTERM to pid %d, grace %.0fs", self.label, proc.pid, grace)
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.info("pod %s: SIGKILL to pid %d", self.label, proc.pid)
                _signal_group(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(timeout=_KILL_WAIT_SECONDS)
                except subprocess.TimeoutExpired:
                    log.error("pod %s: pid %d survived SIGKILL", self.label, proc.pid)
                    return 137
        # A container's leftover children die with it; here they share its process group.
        _signal_group(proc.pid, signal.SIGKILL)
        assert proc.returncode is not None
        return exit_code_of(proc.returncode)

    def _report(self, status: dict[str, Any]) -> None:
        with self._lock:
            if self._gone:
                return
            # A stopping runner must not linger on retries: its own stopper's grace is short.
            attempts = 1 if self._shutdown else _STATUS_ATTEMPTS
        self._runner._patch_pod_status(self.namespace, self.name, self.uid, status, attempts)

    def must_finalise_deletion(self) -> bool:
        """Whether the pod awaits its deletion being finalised (asked once it finished)."""
        with self._lock:
            return self._deleting and not self._gone


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # ProcessLookupError: the group is gone; PermissionError: only a zombie leader is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
