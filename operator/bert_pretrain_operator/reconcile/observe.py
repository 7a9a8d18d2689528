"""Fold a job's child Jobs and their pods into what the decision needs to know.

Kubernetes objects arrive as plain dicts (as the API returns them). Each child
Job becomes an ``ObservedJob``: its state, and for a failed one *why* it failed,
because that decides between retrying (preemption, a lost node) and failing
the whole BertPretrainJob (bad input, out of memory).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from bert_pretrain_operator.render import names
from bert_trainer import contract

Obj = Mapping[str, Any]

#: Container waiting reasons that mean the image cannot be pulled or started.
IMAGE_TROUBLE: Final = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_TROUBLE: Final = frozenset({"CreateContainerConfigError", "CreateContainerError"})


class JobState(StrEnum):
    QUEUED = "Queued"
    """Created suspended, waiting for Kueue to admit it."""
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class FailureKind(StrEnum):
    BAD_INPUT = "BadInput"
    """The trainer said the input or configuration is wrong: retrying cannot help."""
    OUT_OF_MEMORY = "OOMKilled"
    """Deterministic for the same configuration: retrying cannot help either."""
    DIVERGED = "Diverged"
    """The training loss became NaN or infinite: the same settings diverge again."""
    OUT_OF_STORAGE = "LocalStorageExceeded"
    """The pod wrote more to /tmp than its sizeLimit: deterministic as well."""
    INFRASTRUCTURE = "Infrastructure"
    """Preemption, a lost node, a transient error: a new attempt may succeed."""


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    reason: str
    """CamelCase, for the condition: BadInput, OOMKilled, Preempted, NodeLost, ..."""
    message: str

    @property
    def retriable(self) -> bool:
        return self.kind is FailureKind.INFRASTRUCTURE


@dataclass(frozen=True)
class Trouble:
    """Why pods of a not-yet-running Job are stuck (shown in a condition message)."""

    reason: str
    message: str


@dataclass(frozen=True)
class ObservedJob:
    name: str
    state: JobState
    failure: Failure | None = None
    trouble: Trouble | None = None
    result: str | None = None
    """A succeeded Job's report: its succeeded pod's termination message (the check's)."""
    completed_at: dt.datetime | None = None
    """A succeeded Job's ``status.completionTime``."""


@dataclass(frozen=True)
class Observed:
    """Everything the operator read about a job's children in one reconcile."""

    check: ObservedJob | None = None
    prepare: Mapping[str, ObservedJob] = field(default_factory=dict)
    """The preparation's Jobs by pass (``contract.PREPARE_PASSES``)."""
    train: Mapping[int, ObservedJob] = field(default_factory=dict)
    export: ObservedJob | None = None
    single_prepare: ObservedJob | None = None
    """The one prepare Job of an operator from before the passes (no pass label),
    found after an upgrade: finished, not run beside the passes (``decide``)."""


def _conditions(obj: Obj) -> list[Obj]:
    return list(obj.get("status", {}).get("conditions") or [])


def _condition_true(obj: Obj, kind: str) -> Obj | None:
    return next(
        (c for c in _conditions(obj) if c.get("type") == kind and c.get("status") == "True"), None
    )


def _terminated(pod: Obj) -> list[Obj]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return [s["state"]["terminated"] for s in statuses if s.get("state", {}).get("terminated")]


#: Fragments of the kubelet's eviction messages for a pod over its own storage limits
#: (pkg/kubelet/eviction: an emptyDir over its sizeLimit; containers over their limits).
_OWN_STORAGE_LIMITS: Final = ("EmptyDir volume", "exceeds the total limit of containers")


def classify_pod_failure(pod: Obj) -> Failure | None:
    """Why a pod failed; None if it did not."""
    if pod.get("status", {}).get("phase") != "Failed":
        return None
    pod_name = pod.get("metadata", {}).get("name", "?")
    for term in _terminated(pod):
        code = term.get("exitCode")
        text = (term.get("message") or "").strip()
        if code == contract.EXIT_BAD_INPUT:
            return Failure(
                FailureKind.BAD_INPUT,
                "BadInput",
                text or f"pod {pod_name}: the trainer rejected its input",
            )
        if code == contract.EXIT_DIVERGED:
            return Failure(
                FailureKind.DIVERGED,
                "Diverged",
                text or f"pod {pod_name}: the training loss became NaN or infinite",
            )
        if term.get("reason") == "OOMKilled":
            return Failure(
                FailureKind.OUT_OF_MEMORY,
                "OOMKilled",
                f"pod {pod_name}: the trainer ran out of memory (OOMKilled); "
                "lower spec.training.globalBatchSize or spec.data.maxSeqLength",
            )
    status = pod.get("status", {})
    evicted = str(status.get("message") or "")
    # The kubelet's words when a pod exceeds its own storage limits; a node short of
    # disk ("The node was low on resource: ephemeral-storage") is the node's problem.
    if status.get("reason") == "Evicted" and any(m in evicted for m in _OWN_STORAGE_LIMITS):
        return Failure(
            FailureKind.OUT_OF_STORAGE,
            "LocalStorageExceeded",
            f"pod {pod_name}: wrote more to /tmp than its limit allows ({evicted.strip()}); "
            "raise the operator's BPJ_TMP_SIZE_LIMIT (chart: operator.tmpSizeLimit)",
        )
    disruption = _condition_true(pod, "DisruptionTarget")
    if disruption is not None:
        return Failure(
            FailureKind.INFRASTRUCTURE,
            "Preempted",
            f"pod {pod_name}: {disruption.get('message') or disruption.get('reason')}",
        )
    for term in _terminated(pod):
        code = term.get("exitCode")
        text = (term.get("message") or "").strip()
        if code == contract.EXIT_PREEMPTED:
            return Failure(
                FailureKind.INFRASTRUCTURE,
                "Preempted",
                f"pod {pod_name}: the trainer was asked to stop (SIGTERM) and saved a checkpoint",
            )
        if code not in (None, 0):
            return Failure(
                FailureKind.INFRASTRUCTURE,
                "ContainerFailed",
                f"pod {pod_name}: exit code {code}" + (f": {text}" if text else ""),
            )
    return Failure(
        FailureKind.INFRASTRUCTURE,
        "PodFailed",
        f"pod {pod_name}: {pod.get('status', {}).get('message') or 'failed'}",
    )


_SEVERITY: Final = {
    FailureKind.BAD_INPUT: 0,
    FailureKind.OUT_OF_MEMORY: 1,
    FailureKind.OUT_OF_STORAGE: 1,
    FailureKind.DIVERGED: 1,
    FailureKind.INFRASTRUCTURE: 2,
}


def classify_job_failure(job: Obj, pods: Iterable[Obj]) -> Failure:
    """The root cause of a failed Job: a non-retriable pod failure wins over the rest."""
    failures = [f for f in map(classify_pod_failure, pods) if f is not None]
    if failures:
        return min(failures, key=lambda f: _SEVERITY[f.kind])
    failed = _condition_true(job, "Failed") or _condition_true(job, "FailureTarget") or {}
    # A failed Job without failed pods lost them with their node (pod GC deleted them).
    return Failure(
        FailureKind.INFRASTRUCTURE,
        "NodeLost",
        f"job {job.get('metadata', {}).get('name')}: "
        f"{failed.get('message') or 'its pods were lost with their node'}",
    )


def pod_trouble(pods: Iterable[Obj]) -> Trouble | None:
    """The first reason that keeps pods from running: scheduling, image, configuration."""
    for pod in pods:
        status = pod.get("status", {})
        for cond in status.get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                return Trouble("Unschedulable", cond.get("message") or "no node fits the pod")
        for cs in status.get("containerStatuses") or []:
            waiting = cs.get("state", {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in IMAGE_TROUBLE:
                return Trouble(
                    "ImagePullFailure",
                    f"cannot pull image {cs.get('image')}: {waiting.get('message') or reason}",
                )
            if reason in CONFIG_TROUBLE:
                return Trouble("ContainerConfigError", waiting.get("message") or reason)
    return None


def creation_trouble(events: Iterable[Obj]) -> Trouble | None:
    """Why the Job controller could not create pods (its FailedCreate events), newest first."""
    failed = [e for e in events if e.get("reason") == "FailedCreate"]
    if not failed:
        return None
    newest = max(failed, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    message = str(newest.get("message") or "the Job controller could not create pods")
    # Each retry names a new random pod; keep the stable part so the condition does not
    # change (and the status is not rewritten) on every retry.
    message = message.removeprefix("(combined from similar events): ")
    message = message.split(" is forbidden: ", 1)[-1]
    # ResourceQuota admission words it "exceeded quota"; everything else is kept as said.
    reason = "QuotaExceeded" if "exceeded quota" in message else "FailedCreate"
    return Trouble(reason, message)


def _time(value: object) -> dt.datetime | None:
    """An API timestamp (RFC 3339, ``Z``), or None when there is none or it is not one."""
    try:
        return dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _succeeded_message(pods: Iterable[Obj]) -> str | None:
    for pod in pods:
        if pod.get("status", {}).get("phase") != "Succeeded":
            continue
        for term in _terminated(pod):
            if term.get("exitCode") == 0 and term.get("message"):
                return str(term["message"])
    return None


def observe_job(job: Obj, pods: Iterable[Obj], events: Iterable[Obj] = ()) -> ObservedJob:
    """One child Job; ``events`` are the Job's own Events (pod-creation failures)."""
    pods = list(pods)
    name = job.get("metadata", {}).get("name", "")
    if _condition_true(job, "Complete"):
        return ObservedJob(
            name,
            JobState.SUCCEEDED,
            result=_succeeded_message(pods),
            completed_at=_time(job.get("status", {}).get("completionTime")),
        )
    if _condition_true(job, "Failed") or _condition_true(job, "FailureTarget"):
        return ObservedJob(name, JobState.FAILED, failure=classify_job_failure(job, pods))
    if job.get("spec", {}).get("suspend"):
        return ObservedJob(name, JobState.QUEUED)
    phases = [p.get("status", {}).get("phase") for p in pods]
    present = [ph for ph in phases if ph in ("Pending", "Running", "Succeeded")]
    wanted = int(job.get("spec", {}).get("parallelism") or 1)
    if len(present) < wanted:
        # Some pods do not even exist: a quota or an admission policy refused them.
        trouble = creation_trouble(events) or pod_trouble(pods)
        return ObservedJob(name, JobState.PENDING, trouble=trouble)
    if "Running" in present and "Pending" not in present:
        return ObservedJob(name, JobState.RUNNING)
    return ObservedJob(name, JobState.PENDING, trouble=pod_trouble(pods))


def observe(jobs: Iterable[Obj], pods: Iterable[Obj], events: Iterable[Obj] = ()) -> Observed:
    """Group a BertPretrainJob's child Jobs by stage (and attempt) and observe each.

    ``events`` are Events whose involvedObject is one of the Jobs.
    """
    events_by_job: dict[str, list[Obj]] = {}
    for event in events:
        events_by_job.setdefault(event.get("involvedObject", {}).get("name", ""), []).append(event)
    pods_by_job: dict[str, list[Obj]] = {}
    for pod in pods:
        job_name = pod.get("metadata", {}).get("labels", {}).get("job-name")
        if job_name:
            pods_by_job.setdefault(job_name, []).append(pod)
    check = export = single_prepare = None
    prepare: dict[str, ObservedJob] = {}
    train: dict[int, ObservedJob] = {}
    for job in jobs:
        meta = job.get("metadata", {})
        labels = meta.get("labels", {})
        observed = observe_job(
            job,
            pods_by_job.get(meta.get("name", ""), []),
            events_by_job.get(meta.get("name", ""), []),
        )
        stage = labels.get(names.LABEL_STAGE)
        if stage == names.STAGE_PREPARE:
            if labels.get(names.LABEL_PASS) in contract.PREPARE_PASSES:
                prepare[labels[names.LABEL_PASS]] = observed
            elif names.LABEL_PASS not in labels:
                single_prepare = observed
        elif stage == names.STAGE_CHECK:
            check = observed
        elif stage == names.STAGE_EXPORT:
            export = observed
        elif stage == names.STAGE_TRAIN:
            try:
                train[int(labels.get(names.LABEL_ATTEMPT, ""))] = observed
            except ValueError:
                continue
    return Observed(
        check=check, prepare=prepare, train=train, export=export, single_prepare=single_prepare
    )
