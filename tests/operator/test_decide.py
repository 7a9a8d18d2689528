"""The state machine, table by table, with an injected clock and fabricated children."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.api import (
    BertPretrainJob,
    BertPretrainJobStatus,
    InputsStatus,
    Phase,
    PreparationReport,
    PreparationStatus,
)
from bert_pretrain_operator.reconcile.decide import CHECK_REPORT_GRACE_SECONDS, Decision, decide
from bert_pretrain_operator.reconcile.observe import (
    Failure,
    FailureKind,
    JobState,
    Observed,
    ObservedJob,
    Trouble,
)
from bert_pretrain_operator.reconcile.preparation import Scale
from bert_trainer.contract import PREPARE_PASSES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PREEMPTED = Failure(FailureKind.INFRASTRUCTURE, "Preempted", "pod x: node shutdown")
BAD_INPUT = Failure(FailureKind.BAD_INPUT, "BadInput", "corrupt record in part-00001")


def make_job(*, checked: bool = True, **spec_updates: Any) -> BertPretrainJob:
    """The quickstart job with ``spec_updates``; ``checked``: its input check reported."""
    manifest = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    if checked:
        manifest["status"] = {"inputs": {}}
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
    assert d.status.jobs is not None and d.status.jobs.prepare == "quickstart-prep-plan"
    assert [e.reason for e in d.events] == ["Started", "Preparing"]


def test_the_same_observation_twice_creates_nothing_new() -> None:
    job = make_job()
    first = decide(job, Observed(), T0)
    again = decide(
        apply(job, first),
        Observed(prepare={"plan": ObservedJob("quickstart-prep-plan", JobState.RUNNING)}),
        T0,
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
    job, prepared = run_preparation(job, workers=1)
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


def reported(job: BertPretrainJob, **reports: dict[str, Any]) -> BertPretrainJob:
    """``job`` after preparation pods wrote their entries (keys ``plan_0`` for ``plan-0``)."""
    status = job.status or BertPretrainJobStatus()
    prep = status.preparation or PreparationStatus()
    entries = dict(prep.reports or {})
    for key, value in reports.items():
        entries[key.replace("_", "-")] = PreparationReport.model_validate(value)
    prep = prep.model_copy(update={"reports": entries})
    return job.model_copy(update={"status": status.model_copy(update={"preparation": prep})})


def run_preparation(
    job: BertPretrainJob, *, workers: int, corpus_bytes: int = 3 << 20
) -> tuple[BertPretrainJob, Observed]:
    """Every pass of ``job``'s preparation run to success; returns the job and what is seen."""
    seen: dict[str, ObservedJob] = {}
    for prepare_pass in ("plan", "count", "vocab", "records", "shards"):
        d = decide(job, Observed(prepare=dict(seen)), T0, SMALL)
        assert d.create == (("prepare", PREPARE_PASSES.index(prepare_pass)),)
        job = apply(job, d)
        name = f"quickstart-prep-{prepare_pass}"
        pods = 1 if prepare_pass in ("plan", "vocab") else min(workers, 8)
        for i in range(pods):
            report: dict[str, Any] = {
                "done": True,
                "instances": 100 if prepare_pass == "records" else None,
            }
            if prepare_pass == "plan":
                report.update(files=3, bytesTotal=corpus_bytes, chunksTotal=12)
            job = reported(job, **{f"{prepare_pass}_{i}": report})
        seen[prepare_pass] = ObservedJob(name, JobState.SUCCEEDED)
    return job, Observed(prepare=seen)


#: One worker per MiB of text, at most 4: small numbers for the tests.
SMALL = Scale(bytes_per_worker=1 << 20, max_workers=4)


def test_passes_run_in_order_with_workers_derived_from_plans_report() -> None:
    job = make_job()
    d = decide(job, Observed(), T0, SMALL)
    job = apply(job, d)
    plan = {"plan": ObservedJob("quickstart-prep-plan", JobState.SUCCEEDED)}
    # The Job completed, but this copy of the job predates plan's report: wait for it.
    d = decide(job, Observed(prepare=plan), T0, SMALL)
    assert d.create == ()
    assert cond(d, "Prepared")[1] == "Planning"
    job = reported(job, plan_0={"done": True, "files": 3, "bytesTotal": 3 << 20, "chunksTotal": 12})
    d = decide(job, Observed(prepare=plan), T0, SMALL)
    assert d.create == (("prepare", PREPARE_PASSES.index("count")),)
    assert d.status.preparation is not None
    assert (d.status.preparation.workers, d.status.preparation.bytes) == (3, 3 << 20)
    assert d.status.jobs is not None and d.status.jobs.prepare == "quickstart-prep-count"
    assert "3 file(s), 3,145,728 bytes in 12 chunk(s)" in d.events[0].message
    job = apply(job, d)
    # Reports of a running pass add up in status and in the Progress column.
    job = reported(
        job, count_0={"bytesDone": 1 << 20, "done": True}, count_2={"bytesDone": 1 << 19}
    )
    running = {**plan, "count": ObservedJob("quickstart-prep-count", JobState.RUNNING)}
    d = decide(job, Observed(prepare=running), T0, SMALL)
    assert d.create == ()
    assert d.status.preparation is not None and d.status.preparation.bytes_done == 3 << 19
    assert d.status.stage_progress == "count 1.5/3.0 MiB"
    assert "1/3 pod(s) done" in cond(d, "Prepared")[2]


def test_worker_count_is_capped_by_chunks_and_the_operators_maximum() -> None:
    plan = {"plan": ObservedJob("quickstart-prep-plan", JobState.SUCCEEDED)}
    for corpus, chunks, expected in ((100 << 20, 12, 4), (100 << 20, 2, 2), (10, 12, 1)):
        job = apply(make_job(), decide(make_job(), Observed(), T0, SMALL))
        job = reported(
            job, plan_0={"done": True, "files": 1, "bytesTotal": corpus, "chunksTotal": chunks}
        )
        d = decide(job, Observed(prepare=plan), T0, SMALL)
        assert d.status.preparation is not None and d.status.preparation.workers == expected


def test_an_explicit_worker_count_wins() -> None:
    job = make_job(data__preparation={"workers": 7})
    job, _ = run_preparation(job, workers=7, corpus_bytes=1)
    assert job.status is not None and job.status.preparation is not None
    assert job.status.preparation.workers == 7


def test_given_vocab_skips_count_and_vocab_passes() -> None:
    job = make_job(data={"corpus": ["gs://bkt/corpus/*.txt"], "vocab": "gs://bkt/vocab.txt"})
    job = apply(job, decide(job, Observed(), T0, SMALL))
    job = reported(job, plan_0={"done": True, "files": 1, "bytesTotal": 5, "chunksTotal": 1})
    plan = {"plan": ObservedJob("quickstart-prep-plan", JobState.SUCCEEDED)}
    d = decide(job, Observed(prepare=plan), T0, SMALL)
    assert d.create == (("prepare", PREPARE_PASSES.index("records")),)


def test_a_failed_pass_fails_the_job_naming_its_job() -> None:
    job = apply(make_job(), decide(make_job(), Observed(), T0))
    failed = {"plan": ObservedJob("quickstart-prep-plan", JobState.FAILED, failure=None)}
    d = decide(job, Observed(prepare=failed), T0)
    assert d.status.phase == Phase.FAILED
    assert cond(d, "Failed")[1:] == ("PrepareFailed", "the prepare Job quickstart-prep-plan failed")


def test_a_single_prepare_job_from_before_the_upgrade_is_finished_not_run_beside_passes() -> None:
    # An operator before the passes created one Job, <job>-prepare, without a pass label.
    job = make_job()
    job = apply(job, decide(job, Observed(), T0)).model_copy(
        update={"status": BertPretrainJobStatus(phase=Phase.PREPARING, inputs=InputsStatus())}
    )
    single = ObservedJob("quickstart-prepare", JobState.RUNNING)
    d = decide(job, Observed(single_prepare=single), T0)
    assert d.create == ()
    assert d.status.phase == Phase.PREPARING
    assert cond(d, "Prepared")[0] == "False" and "quickstart-prepare" in cond(d, "Prepared")[2]

    done = ObservedJob("quickstart-prepare", JobState.SUCCEEDED)
    d = decide(apply(job, d), Observed(single_prepare=done), T0)
    assert d.create == (("train", 1),)
    assert cond(d, "Prepared")[0] == "True" and "quickstart-prepare" in cond(d, "Prepared")[2]

    failed = ObservedJob("quickstart-prepare", JobState.FAILED, failure=BAD_INPUT)
    d = decide(job, Observed(single_prepare=failed), T0)
    assert d.status.phase == Phase.FAILED
    assert cond(d, "Failed")[1:] == ("BadInput", BAD_INPUT.message)


def test_preparation_totals_instances_and_ends_prepared() -> None:
    job = apply(make_job(), decide(make_job(), Observed(), T0, SMALL))
    job, seen = run_preparation(job, workers=3)
    d = decide(job, seen, T0, SMALL)
    assert cond(d, "Prepared")[0] == "True"
    assert d.status.preparation is not None and d.status.preparation.instances == 300
    assert d.create == (("train", 1),)


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


CHECKPOINT = {
    "model": {"initCheckpoint": "gs://bkt/ckpt/bert_model.ckpt"},
    "data": {"corpus": ["gs://bkt/corpus/*.txt"]},
}
CHECK_JOB = "quickstart-check"


def checked(result: str | None, completed_at: dt.datetime = T0) -> Observed:
    return Observed(
        check=ObservedJob(CHECK_JOB, JobState.SUCCEEDED, result=result, completed_at=completed_at)
    )


def test_the_first_stage_is_the_input_check_and_nothing_else_starts_before_it() -> None:
    job = make_job(checked=False)
    d = decide(job, Observed(), T0)
    assert d.create == (("check", 0),)
    assert d.status.phase == Phase.PENDING
    assert d.status.jobs is not None and d.status.jobs.check == CHECK_JOB
    assert cond(d, "InputsChecked")[:2] == ("False", "Checking")
    assert [e.reason for e in d.events] == ["Started", "CheckingInputs"]
    job = apply(job, d)
    for state in (JobState.PENDING, JobState.RUNNING):
        d = decide(job, Observed(check=ObservedJob(CHECK_JOB, state)), T0)
        assert d.create == ()
        assert d.status.inputs is None
        # The same condition throughout: no status write as its pod starts.
        assert d.status == job.status, state
    stuck = Trouble("Unschedulable", "0/3 nodes are available")
    d = decide(job, Observed(check=ObservedJob(CHECK_JOB, JobState.PENDING, trouble=stuck)), T0)
    assert cond(d, "InputsChecked")[:2] == ("False", "Unschedulable")
    assert stuck.message in cond(d, "InputsChecked")[2]


def test_a_checkpoints_report_is_kept_and_the_first_stage_starts_at_once() -> None:
    job = apply(
        make_job(checked=False, **CHECKPOINT),
        decide(make_job(checked=False, **CHECKPOINT), Observed(), T0),
    )
    report = (
        '{"vocabSize": 99, "dimensions": {"hiddenSize": 64, "numLayers": 2, "numHeads": 2, '
        '"intermediateSize": 256}}'
    )
    d = decide(job, checked(report), T0)
    assert d.status.inputs is not None and d.status.inputs.vocab_size == 99
    assert d.status.inputs.dimensions is not None and d.status.inputs.dimensions.hidden_size == 64
    assert cond(d, "InputsChecked")[0] == "True"
    assert d.create == (("prepare", 0),)
    assert d.status.phase == Phase.PREPARING
    # Kept: the next reconcile no longer looks at the check.
    later = decide(apply(job, d), Observed(), T0)
    assert later.status.inputs == d.status.inputs


@pytest.mark.parametrize(
    ("model", "result", "words"),
    [
        ({}, "check: done", "is not a check report"),
        ({}, '{"vocabSize": 0}', "is not a check report"),
        (CHECKPOINT, "{}", "lacks spec.model.initCheckpoint's dimensions"),
        (
            {"model": {"initFromOutput": "gs://bkt/runs/a"}, "data": CHECKPOINT["data"]},
            '{"vocabSize": 99}',
            "lacks spec.model.initFromOutput's dimensions",
        ),
    ],
)
def test_a_missing_or_unusable_report_fails_the_job_instead_of_guessing(
    model: dict[str, Any], result: str | None, words: str
) -> None:
    job = make_job(checked=False, **model)
    d = decide(apply(job, decide(job, Observed(), T0)), checked(result), T0)
    assert d.status.phase == Phase.FAILED
    status, reason, message = cond(d, "Failed")
    assert (status, reason) == ("True", "InputCheckFailed")
    assert words in message and CHECK_JOB in message
    assert d.create == ()


def test_a_report_that_lags_its_job_is_awaited_then_given_up_on() -> None:
    job = make_job(checked=False)
    job = apply(job, decide(job, Observed(), T0))
    # Seen Complete before its pod's last status reached the pod watch: wait, not fail.
    early = decide(job, checked(None), T0 + dt.timedelta(seconds=10))
    assert early.status.phase == Phase.PENDING
    assert cond(early, "InputsChecked")[:2] == ("False", "ReadingReport")
    assert early.requeue_after == pytest.approx(CHECK_REPORT_GRACE_SECONDS - 10)
    assert early.create == ()
    job = apply(job, early)
    late = T0 + dt.timedelta(seconds=CHECK_REPORT_GRACE_SECONDS)
    d = decide(job, checked(None), late)
    assert d.status.phase == Phase.FAILED
    status, reason, message = cond(d, "Failed")
    assert (status, reason) == ("True", "InputCheckFailed")
    assert "report (the termination message) is gone" in message and CHECK_JOB in message


def test_a_bad_input_found_by_the_check_fails_with_its_words_and_creates_nothing() -> None:
    job = make_job(checked=False)
    job = apply(job, decide(job, Observed(), T0))
    found = Failure(
        FailureKind.BAD_INPUT, "BadInput", "check: spec.data.corpus[0]: no object matches gs://x/*"
    )
    d = decide(job, Observed(check=ObservedJob(CHECK_JOB, JobState.FAILED, failure=found)), T0)
    assert d.status.phase == Phase.FAILED
    assert cond(d, "Failed") == ("True", "BadInput", found.message)
    assert [e.type for e in d.events] == ["Warning"]
    assert d.create == ()
    lost = Observed(check=ObservedJob(CHECK_JOB, JobState.FAILED, failure=PREEMPTED))
    d = decide(job, lost, T0)
    assert cond(d, "Failed")[1] == "InputCheckFailed"
    assert PREEMPTED.message in cond(d, "Failed")[2]


def test_suspending_during_the_check_stops_it_and_resuming_checks_again() -> None:
    job = make_job(checked=False)
    job = apply(job, decide(job, Observed(), T0))
    running = Observed(check=ObservedJob(CHECK_JOB, JobState.RUNNING))
    suspended = job.model_copy(
        update={
            "spec": job.spec.model_copy(
                update={"run_policy": job.spec.run_policy.model_copy(update={"suspend": True})}
            )
        }
    )
    d = decide(suspended, running, T0)
    assert d.delete_jobs == (CHECK_JOB,)
    resumed = apply(job, d)
    d = decide(resumed, Observed(), T0)
    assert d.create == (("check", 0),)


def test_condition_transition_time_moves_only_on_status_change() -> None:
    job = make_job(data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"})
    job = apply(job, decide(job, Observed(), T0))
    running = Observed(train={1: ObservedJob("quickstart-train-1", JobState.RUNNING)})
    later = T0 + dt.timedelta(minutes=3)
    d = decide(job, running, later)
    trained = next(c for c in d.status.conditions or [] if c.type == "Trained")
    assert trained.reason == "Running"
    assert trained.last_transition_time == T0


def test_training_phase_follows_the_reported_step_and_the_trained_message_names_the_phases() -> (
    None
):
    phases = [
        {"trainSteps": 12, "maxSeqLength": 64, "maxPredictionsPerSeq": 10, "globalBatchSize": 8},
        {"trainSteps": 8, "maxSeqLength": 128, "maxPredictionsPerSeq": 20, "globalBatchSize": 4},
    ]
    data = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())["spec"]["data"]
    for single in ("maxSeqLength", "maxPredictionsPerSeq"):
        data.pop(single, None)
    job = make_job(training={"phases": phases}, data=data)
    job, prepared = run_preparation(apply(job, decide(job, Observed(), T0)), workers=1)
    job = apply(job, decide(job, prepared, T0))
    running = Observed(
        prepare=prepared.prepare, train={1: ObservedJob("quickstart-train-1", JobState.RUNNING)}
    )

    def at(step: int) -> BertPretrainJobStatus:
        status = job.status or BertPretrainJobStatus()
        progress = {"step": step, "totalSteps": 20}
        reported = status.model_copy(update={"progress": status.progress})
        reported = BertPretrainJobStatus.model_validate(
            {**reported.model_dump(by_alias=True, exclude_none=True), "progress": progress}
        )
        return decide(job.model_copy(update={"status": reported}), running, T0).status

    first, boundary, second = at(5), at(12), at(15)
    assert first.training_phase is not None and second.training_phase is not None
    assert (first.training_phase.number, first.training_phase.of) == (1, 2)
    assert (first.training_phase.first_step, first.training_phase.last_step) == (0, 12)
    assert first.stage_progress == "phase 1/2 (length 64): step 5/20"
    # The first phase's last step done: the second is next.
    assert boundary.training_phase is not None and boundary.training_phase.number == 2
    assert (second.training_phase.max_seq_length, second.training_phase.last_step) == (128, 20)
    assert second.stage_progress == "phase 2/2 (length 128): step 15/20"

    done = Observed(
        prepare=prepared.prepare, train={1: ObservedJob("quickstart-train-1", JobState.SUCCEEDED)}
    )
    d = decide(job, done, T0)
    assert cond(d, "Trained")[2] == (
        "training attempt 1 reached 20 steps in 2 phases (lengths 64, then 128)"
    )


def test_a_single_phase_job_shows_its_one_phase() -> None:
    job = make_job(data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"})
    job = apply(job, decide(job, Observed(), T0))
    status = BertPretrainJobStatus.model_validate(
        {
            **(job.status or BertPretrainJobStatus()).model_dump(by_alias=True, exclude_none=True),
            "progress": {"step": 4, "totalSteps": 20},
        }
    )
    running = Observed(train={1: ObservedJob("quickstart-train-1", JobState.RUNNING)})
    d = decide(job.model_copy(update={"status": status}), running, T0)
    assert d.status.stage_progress == "step 4/20"
    assert d.status.training_phase is not None
    assert (d.status.training_phase.number, d.status.training_phase.of) == (1, 1)
    assert d.status.training_phase.max_seq_length == 128


def test_the_trained_message_gives_the_final_held_out_figures() -> None:
    job = make_job(data={"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/v.txt"})
    job = apply(job, decide(job, Observed(), T0))
    held = {
        "step": 20,
        "maskedLmAccuracy": 0.41234,
        "maskedLmLoss": 3.5,
        "nextSentenceAccuracy": 0.8,
        "nextSentenceLoss": 0.45,
    }
    status = BertPretrainJobStatus.model_validate(
        {
            **(job.status or BertPretrainJobStatus()).model_dump(by_alias=True, exclude_none=True),
            "progress": {"step": 20, "totalSteps": 20, "eval": held},
        }
    )
    done = Observed(train={1: ObservedJob("quickstart-train-1", JobState.SUCCEEDED)})
    d = decide(job.model_copy(update={"status": status}), done, T0)
    assert cond(d, "Trained")[2] == (
        "training attempt 1 reached 20 steps; held-out eval at step 20: masked_lm_accuracy "
        "0.4123, masked_lm_loss 3.5000, next_sentence_accuracy 0.8000, next_sentence_loss 0.4500"
    )
