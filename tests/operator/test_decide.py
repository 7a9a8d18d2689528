"""The state machine, table by table, with an injected clock and fabricated children."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.api import BertPretrainJob, Phase
from bert_pretrain_operator.reconcile.decide import Decision, decide, fail_inputs
from bert_pretrain_operator.reconcile.observe import (
    Failure,
    FailureKind,
    JobState,
    Observed,
    ObservedJob,
    Trouble,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PREEMPTED = Failure(FailureKind.INFRASTRUCTURE, "Preempted", "pod x: node shutdown")
BAD_INPUT = Failure(FailureKind.BAD_INPUT, "BadInput", "corrupt record in part-00001")


def make_job(**spec_updates: Any) -> BertPretrainJob:
    manifest = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    manifest["metadata"].update(namespace="team-a", uid="uid-1", generation=1)
    for path, value in spec_updates.items():
        node = manifest["spec"]
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return BertPretrainJob.from_manifest(manifest)


def apply(job: BertPretrainJob, decision: Decision) -> BertPretrainJob:
    """The job as the next reconcile reads it, after the status write."""
    return job.model_copy(update={"status": decision.status})


def cond(decision: Decision, kind: str) -> tuple[str, str, str]:
    c = next(c for c in decision.status.conditions or [] if c.type == kind)
    return c.status.value, c.reason, c.message


def test_corpus_job_starts_with_prepare() -> None:
    d = decide(make_job(), Observed(), T0)
    assert d.create == (("prepare", 0),)
    assert d.status.phase == Phase.PREPARING
    assert d.status.start_time == T0
    assert d.status.jobs is not None and d.status.jobs.prepare == "quickstart-prepare"
    assert [e.reason for e in d.events] == ["Started", "Preparing"]


def test_the_same_observation_twice_creates_nothing_new() -> None:
    job = make_job()
    first = decide(job, Observed(), T0)
    again = decide(
        apply(job, first), Observed(prepare=ObservedJob("quickstart-prepare", JobState.RUNNING)), T0
    )
    assert again.create == ()
    assert again.events == ()
    assert again.status.phase == Phase.PREPARING


def test_prepared_records_skip_the_prepare_stage() -> None:
    job = make_job(data={"tfrecords": "gs://bkt/records/*.tfrecord", "vocab": "gs://bkt/vocab.txt"})
    d = decide(job, Observed(), T0)
    assert d.create == (("train", 1),)
    assert d.status.phase == Phase.TRAINING
    assert d.status.attempt == 1


def test_full_pipeline_reaches_succeeded() -> None:
    job = make_job()
    job = apply(job, decide(job, Observed(), T0))
    prepared = Observed(prepare=ObservedJob("quickstart-prepare", JobState.SUCCEEDED))
    d = decide(job, prepared, T0)
    assert d.create == (("train", 1),)
    assert cond(d, "Prepared")[0] == "True"
    job = apply(job, d)
    trained = Observed(
        prepare=prepared.prepare, train={1: ObservedJob("quickstart-train-1", JobState.SUCCEEDED)}
    )
    d = decide(job, trained, T0)
    assert d.create == (("export", 0),)
    assert d.status.phase == Phase.EXPORTING
    job = apply(job, d)
    done = Observed(
        prepare=prepared.prepare,
        train=trained.train,
        export=ObservedJob("quickstart-export", JobState.SUCCEEDED),
    )
    later = T0 + dt.timedelta(minutes=5)
    d = decide(job, done, later)
    assert d.status.phase == Phase.SUCCEEDED
    assert d.status.completion_time == later
    assert cond(d, "Succeeded")[0] == "True"
    assert "Succeeded" in [e.reason for e in d.events]


def test_preemption_starts_a_new_attempt_and_counts_a_restart() -> None:
    job = make_job(data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"})
    job = apply(job, decide(job, Observed(), T0))
    failed = Observed(
        train={1: ObservedJob("quickstart-train-1", JobState.FAILED, failure=PREEMPTED)}
    )
    d = decide(job, failed, T0)
    assert d.create == (("train", 2),)
    assert d.status.restarts == 1
    assert d.status.attempt == 2
    assert d.status.phase == Phase.TRAINING
    assert {e.reason for e in d.events} == {"Preempted", "Restarting"}


def test_exhausted_restarts_fail_the_job() -> None:
    job = make_job(
        data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"},
        runPolicy={"maxRestarts": 1},
    )
    job = apply(job, decide(job, Observed(), T0))
    job = apply(
        job,
        decide(
            job,
            Observed(
                train={1: ObservedJob("quickstart-train-1", JobState.FAILED, failure=PREEMPTED)}
            ),
            T0,
        ),
    )
    d = decide(
        job,
        Observed(
            train={
                1: ObservedJob("quickstart-train-1", JobState.FAILED, failure=PREEMPTED),
                2: ObservedJob("quickstart-train-2", JobState.FAILED, failure=PREEMPTED),
            }
        ),
        T0,
    )
    assert d.status.phase == Phase.FAILED
    assert d.create == ()
    status, reason, message = cond(d, "Failed")
    assert (status, reason) == ("True", "MaxRestartsExceeded")
    assert "maxRestarts (1)" in message


def test_bad_input_fails_at_once_without_retry() -> None:
    job = make_job(data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"})
    job = apply(job, decide(job, Observed(), T0))
    d = decide(
        job,
        Observed(train={1: ObservedJob("quickstart-train-1", JobState.FAILED, failure=BAD_INPUT)}),
        T0,
    )
    assert d.status.phase == Phase.FAILED
    assert d.create == ()
    assert d.status.restarts is None
    assert cond(d, "Failed")[1] == "BadInput"
    assert "corrupt record" in cond(d, "Failed")[2]


def test_unschedulable_names_the_accelerator_and_topology() -> None:
    job = make_job(data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"})
    job = apply(job, decide(job, Observed(), T0))
    pending = ObservedJob(
        "quickstart-train-1",
        JobState.PENDING,
        trouble=Trouble("Unschedulable", "0/9 nodes are available"),
    )
    d = decide(job, Observed(train={1: pending}), T0)
    status, reason, message = cond(d, "Trained")
    assert (status, reason) == ("False", "Unschedulable")
    assert "tpu-v4-podslice" in message and "2x2x1" in message
    assert "0/9 nodes are available" in message


def test_suspend_deletes_the_running_attempt_and_resume_starts_the_next() -> None:
    job = make_job(data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"})
    job = apply(job, decide(job, Observed(), T0))
    running = Observed(train={1: ObservedJob("quickstart-train-1", JobState.RUNNING)})
    suspended_spec = make_job(
        data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"},
        runPolicy={"suspend": True},
    )
    d = decide(suspended_spec.model_copy(update={"status": job.status}), running, T0)
    assert d.delete_jobs == ("quickstart-train-1",)
    assert d.status.phase == Phase.SUSPENDED
    job = apply(job, d)
    d = decide(
        job,
        Observed(train={1: ObservedJob("quickstart-train-1", JobState.FAILED, failure=PREEMPTED)}),
        T0,
    )
    assert d.create == (("train", 2),)
    assert d.status.restarts is None  # a resume is not a restart
    assert cond(d, "Suspended")[:2] == ("False", "Resumed")


def test_deadline_fails_and_stops_children() -> None:
    job = make_job(
        data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"},
        runPolicy={"activeDeadlineSeconds": 60},
    )
    first = decide(job, Observed(), T0)
    assert first.requeue_after == pytest.approx(60)
    job = apply(job, first)
    running = Observed(train={1: ObservedJob("quickstart-train-1", JobState.RUNNING)})
    d = decide(job, running, T0 + dt.timedelta(seconds=61))
    assert d.status.phase == Phase.FAILED
    assert cond(d, "Failed")[1] == "DeadlineExceeded"
    assert d.delete_jobs == ("quickstart-train-1",)


def test_ttl_after_finished_deletes_the_job() -> None:
    job = make_job(
        data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"},
        runPolicy={"ttlSecondsAfterFinished": 30},
        export={"huggingFace": False},
    )
    job = apply(job, decide(job, Observed(), T0))
    done = Observed(train={1: ObservedJob("quickstart-train-1", JobState.SUCCEEDED)})
    finished = decide(job, done, T0)
    assert finished.status.phase == Phase.SUCCEEDED
    assert finished.requeue_after == pytest.approx(30)
    assert not finished.delete_self
    assert decide(apply(job, finished), done, T0 + dt.timedelta(seconds=31)).delete_self


def test_kueue_queued_job_reports_waiting_for_admission() -> None:
    job = make_job(
        data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"},
        queueName="team-a-tpu",
    )
    job = apply(job, decide(job, Observed(), T0))
    d = decide(job, Observed(train={1: ObservedJob("quickstart-train-1", JobState.QUEUED)}), T0)
    assert d.status.phase == Phase.PENDING
    status, reason, message = cond(d, "Admitted")
    assert (status, reason) == ("False", "WaitingForAdmission")
    assert "team-a-tpu" in message


def test_input_problem_fails_with_bad_input() -> None:
    d = fail_inputs(make_job(), "spec.data.corpus[0]: no object matches gs://x/*.txt", T0)
    assert d.status.phase == Phase.FAILED
    assert cond(d, "Failed")[:2] == ("True", "BadInput")
    assert [e.type for e in d.events] == ["Warning"]


def test_condition_transition_time_moves_only_on_status_change() -> None:
    job = make_job(data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"})
    job = apply(job, decide(job, Observed(), T0))
    running = Observed(train={1: ObservedJob("quickstart-train-1", JobState.RUNNING)})
    later = T0 + dt.timedelta(minutes=3)
    d = decide(job, running, later)
    trained = next(c for c in d.status.conditions or [] if c.type == "Trained")
    assert trained.reason == "Running"
    assert trained.last_transition_time == T0
