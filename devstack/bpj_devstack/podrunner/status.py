"""Pod status documents as the kubelet reports them: running, terminated, rejected.

The runner's workers (``process``) and watch (``runner``) patch these into the
pod's ``status`` subresource.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bpj_devstack.podrunner.clock import _now
from bpj_devstack.podrunner.constants import LOCAL_IP


def _pod_status(
    phase: str,
    container: Mapping[str, Any],
    *,
    state: dict[str, Any],
    started_at: str,
    pid: int | None,
    now: str,
    not_ready_reason: str | None = None,
) -> dict[str, Any]:
    """A pod status with the one container in ``state``; ready while it runs."""
    ready = not_ready_reason is None
    conditions: list[dict[str, Any]] = []
    for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
        condition: dict[str, Any] = {"type": kind, "status": "True", "lastTransitionTime": now}
        if kind in ("ContainersReady", "Ready") and not ready:
            condition.update(status="False", reason=not_ready_reason)
        conditions.append(condition)
    container_status: dict[str, Any] = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": state,
    }
    if pid is not None:
        container_status["containerID"] = f"local://{pid}"
    return {
        "phase": phase,
        "conditions": conditions,
        "hostIP": LOCAL_IP,
        "hostIPs": [{"ip": LOCAL_IP}],
        "podIP": LOCAL_IP,
        "podIPs": [{"ip": LOCAL_IP}],
        "startTime": started_at,
        "containerStatuses": [container_status],
    }


def running_status(container: Mapping[str, Any], started_at: str, pid: int) -> dict[str, Any]:
    state = {"running": {"startedAt": started_at}}
    return _pod_status(
        "Running", container, state=state, started_at=started_at, pid=pid, now=started_at
    )


def terminated_status(
    container: Mapping[str, Any],
    *,
    exit_code: int,
    message: str,
    started_at: str,
    pid: int | None,
    reason: str | None = None,
    node_shutdown: bool = False,
) -> dict[str, Any]:
    """The final status once the process is gone.

    ``node_shutdown`` marks a process the runner killed because it stopped: the pod
    fails with the ``DisruptionTarget`` condition the kubelet sets on graceful node
    shutdown, so Jobs' podFailurePolicy and the operator see infrastructure loss
    rather than a failing program.
    """
    now = _now()
    succeeded = exit_code == 0 and not node_shutdown
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "message": message,
        "startedAt": started_at,
        "finishedAt": now,
    }
    if pid is not None:
        terminated["containerID"] = f"local://{pid}"
    status = _pod_status(
        "Succeeded" if succeeded else "Failed",
        container,
        # A strategic-merge null clears the running state reported before.
        state={"running": None, "terminated": terminated},
        started_at=started_at,
        pid=pid,
        now=now,
        not_ready_reason="PodCompleted" if succeeded else "PodFailed",
    )
    if node_shutdown:
        text = "Pod was terminated in response to imminent node shutdown."
        status["conditions"].append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "TerminationByKubelet",
                "message": text,
                "lastTransitionTime": now,
            }
        )
        status.update(reason="Terminated", message=text)
    return status


def rejected_status(message: str) -> dict[str, Any]:
    """A pod the runner refuses, shaped like a kubelet admission failure."""
    now = _now()
    return {
        "phase": "Failed",
        "reason": "UnsupportedByLocalRunner",
        "message": message,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
        ],
    }
