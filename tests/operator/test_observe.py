"""Child Jobs and pods, as the API returns them, folded into states and failure causes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bert_pretrain_operator.reconcile.observe import (
    FailureKind,
    JobState,
    classify_job_failure,
    observe,
    observe_job,
    pod_trouble,
)
from bert_pretrain_operator.render import names
from bert_trainer import contract


def job(
    name: str, stage: str, attempt: int | None = None, *conditions: str, suspend: bool = False
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": names.child_labels("bpj", stage, attempt)},
        "spec": {"suspend": suspend},
        "status": {"conditions": [{"type": c, "status": "True"} for c in conditions]},
    }


def pod(
    job_name: str,
    phase: str,
    *,
    exit_code: int | None = None,
    reason: str = "Error",
    message: str = "",
    conditions: list[dict[str, Any]] | None = None,
    waiting: dict[str, str] | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}}
    elif waiting:
        state = {"waiting": waiting}
    return {
        "metadata": {"name": f"{job_name}-0-abc", "labels": {"job-name": job_name}},
        "status": {
            "phase": phase,
            "conditions": conditions or [],
            "containerStatuses": [{"image": "img:1", "state": state}],
        },
    }


def test_stages_and_attempts_are_grouped_by_label() -> None:
    observed = observe(
        [
            # The single prepare Job of an operator from before the passes.
            job("bpj-prepare", "prepare", None, "Complete"),
            {
                **job("bpj-prep-bogus", "prepare"),
                "metadata": {
                    "name": "bpj-prep-bogus",
                    "labels": names.child_labels("bpj", "prepare", prepare_pass="bogus"),
                },
            },
            {
                **job("bpj-prep-count", "prepare"),
                "metadata": {
                    "name": "bpj-prep-count",
                    "labels": names.child_labels("bpj", "prepare", prepare_pass="count"),
                },
            },
            job("bpj-train-1", "train", 1, "Failed"),
            job("bpj-train-2", "train", 2),
        ],
        [
            pod(
                "bpj-train-1",
                "Failed",
                exit_code=137,
                conditions=[
                    {"type": "DisruptionTarget", "status": "True", "message": "node shutdown"}
                ],
            ),
            pod("bpj-train-2", "Running"),
        ],
    )
    assert observed.prepare["count"].state is JobState.PENDING
    assert set(observed.prepare) == {"count"}  # a Job of an unknown pass is not ours
    assert observed.single_prepare is not None
    assert observed.single_prepare.name == "bpj-prepare"
    assert observed.single_prepare.state is JobState.SUCCEEDED
    assert observed.train[1].state is JobState.FAILED
    assert observed.train[1].failure is not None
    assert observed.train[1].failure.reason == "Preempted"
    assert observed.train[2].state is JobState.RUNNING
    assert observed.export is None


def test_a_succeeded_check_carries_its_pods_termination_message() -> None:
    report = '{"vocabSize": 6}'
    observed = observe(
        [job("bpj-check", "check", None, "Complete")],
        [
            # A retried pod that failed first, then the one that succeeded and reported.
            pod("bpj-check", "Failed", exit_code=20, message="check: storage unavailable"),
            pod("bpj-check", "Succeeded", exit_code=0, reason="Completed", message=report),
        ],
    )
    assert observed.check is not None and observed.check.state is JobState.SUCCEEDED
    assert observed.check.result == report
    assert observed.check.completed_at is None  # no completionTime given
    done = job("bpj-check", "check", None, "Complete")
    done["status"]["completionTime"] = "2026-12-03T13:11:41Z"
    unreported = observe([done], [])
    assert unreported.check is not None and unreported.check.result is None
    assert unreported.check.completed_at == dt.datetime(2026, 12, 3, 13, 11, 41, tzinfo=dt.UTC)


def test_bad_input_exit_code_wins_over_disruption_of_another_pod() -> None:
    failure = classify_job_failure(
        job("j", "train", 1, "Failed"),
        [
            pod(
                "j",
                "Failed",
                conditions=[{"type": "DisruptionTarget", "status": "True"}],
                exit_code=137,
            ),
            pod("j", "Failed", exit_code=contract.EXIT_BAD_INPUT, message="vocab mismatch"),
        ],
    )
    assert failure.kind is FailureKind.BAD_INPUT
    assert failure.message == "vocab mismatch"
    assert not failure.retriable


def test_oom_is_not_retriable_and_says_what_to_change() -> None:
    failure = classify_job_failure(
        job("j", "train", 1, "Failed"), [pod("j", "Failed", exit_code=137, reason="OOMKilled")]
    )
    assert failure.kind is FailureKind.OUT_OF_MEMORY
    assert "globalBatchSize" in failure.message


def test_a_diverged_loss_is_not_retried() -> None:
    from bert_trainer import contract

    failed = pod("j", "Failed", exit_code=contract.EXIT_DIVERGED, message="training diverged")
    failure = classify_job_failure(job("j", "train", 1, "Failed"), [failed])
    assert failure.kind is FailureKind.DIVERGED and failure.reason == "Diverged"
    assert not failure.retriable and failure.message == "training diverged"


def _evicted(message: str) -> dict[str, Any]:
    evicted = pod("j", "Failed")
    evicted["status"].update(reason="Evicted", message=message)
    return evicted


def test_a_pod_over_its_tmp_limit_is_not_retried_and_a_full_node_is() -> None:
    # The kubelet's messages (pkg/kubelet/eviction/helpers.go).
    own = [
        'Usage of EmptyDir volume "tmp" exceeds the limit "20Gi". ',
        "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi. ",
    ]
    for message in own:
        failure = classify_job_failure(job("j", "train", 1, "Failed"), [_evicted(message)])
        assert failure.kind is FailureKind.OUT_OF_STORAGE and not failure.retriable
        assert "BPJ_TMP_SIZE_LIMIT" in failure.message and message.strip() in failure.message
    node = "The node was low on resource: ephemeral-storage. "
    failure = classify_job_failure(job("j", "train", 1, "Failed"), [_evicted(node)])
    assert failure.retriable


def test_a_failed_job_without_pods_lost_its_node() -> None:
    failure = classify_job_failure(job("j", "train", 1, "Failed"), [])
    assert failure.reason == "NodeLost"
    assert failure.retriable


def test_other_exit_codes_are_retriable_and_keep_the_message() -> None:
    failure = classify_job_failure(
        job("j", "train", 1, "Failed"),
        [pod("j", "Failed", exit_code=contract.EXIT_INFRASTRUCTURE, message="gcs down")],
    )
    assert failure.retriable
    assert "gcs down" in failure.message


def test_queued_and_pending_states() -> None:
    assert observe_job(job("j", "train", 1, suspend=True), []).state is JobState.QUEUED
    pending = observe_job(job("j", "train", 1), [pod("j", "Pending")])
    assert pending.state is JobState.PENDING
    assert pending.trouble is None


def test_unschedulable_and_image_pull_trouble() -> None:
    unschedulable = pod(
        "j",
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/5 nodes are available",
            }
        ],
    )
    trouble = pod_trouble([unschedulable])
    assert trouble is not None and trouble.reason == "Unschedulable"
    image = pod("j", "Pending", waiting={"reason": "ImagePullBackOff", "message": "not found"})
    trouble = pod_trouble([image])
    assert trouble is not None and trouble.reason == "ImagePullFailure"
    assert "img:1" in trouble.message


def test_a_quota_refusing_pods_is_named_from_the_jobs_events() -> None:
    train = job("bpj-train-1", "train", 1)
    train["spec"]["parallelism"] = 2
    quota = {
        "involvedObject": {"kind": "Job", "name": "bpj-train-1"},
        "reason": "FailedCreate",
        "lastTimestamp": "2026-01-01T00:00:05Z",
        "message": 'Error creating: pods "bpj-train-1-1-x" is forbidden: exceeded quota: '
        "tpu, requested: requests.google.com/tpu=4, used: 4, limited: 4",
    }
    observed = observe([train], [pod("bpj-train-1", "Running")], [quota])
    assert observed.train[1].state is JobState.PENDING
    trouble = observed.train[1].trouble
    assert trouble is not None and trouble.reason == "QuotaExceeded"
    assert "requests.google.com/tpu=4" in trouble.message


def test_all_pods_running_is_running_even_with_old_creation_events() -> None:
    train = job("bpj-train-1", "train", 1)
    stale = {
        "involvedObject": {"name": "bpj-train-1"},
        "reason": "FailedCreate",
        "message": "exceeded quota",
    }
    observed = observe([train], [pod("bpj-train-1", "Running")], [stale])
    assert observed.train[1].state is JobState.RUNNING
