"""The state machine: from (job, observed children, now) to the next status and actions.

Level-based: the decision depends only on what is observed now, never on which
event woke the operator, so repeating it is harmless and a restarted operator
picks up where the last one stopped. Stages run in order, each skipped when its
output is given:

    Pending (inputs checked) -> [Preparing] -> Training (attempt 1, 2, ...) -> [Exporting]
        -> Succeeded;  any -> Failed;  Suspended <-> any

Before any stage, a check Job reads the job's inputs under the job's own service
account (``bert_trainer.check``); what it found is kept in ``status.inputs``, and a
missing or inconsistent input fails the job (BadInput) before a TPU is requested.

A failed training attempt is classified (``observe.Failure``): infrastructure
failures (preemption, node loss) start a new attempt that resumes from the last
checkpoint, up to ``runPolicy.maxRestarts``; bad input and OOM fail at once.
Suspending deletes the running attempt and keeps everything in GCS; resuming
starts a new attempt (not counted as a restart).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import ValidationError

from bert_pretrain_operator.api import (
    BertPretrainJob,
    BertPretrainJobStatus,
    Condition,
    ConditionStatus,
    InputsStatus,
    Phase,
    PreparationStatus,
    StageJobs,
    TrainingPhaseStatus,
)
from bert_pretrain_operator.reconcile import preparation
from bert_pretrain_operator.reconcile.observe import (
    Failure,
    FailureKind,
    JobState,
    Observed,
    ObservedJob,
)
from bert_pretrain_operator.render import names
from bert_pretrain_operator.render.trainer_config import needs_prepare
from bert_trainer import contract
from bert_trainer.config import CheckReport

# Condition types (positive polarity, as Kubernetes conventions ask).
INPUTS_CHECKED: Final = "InputsChecked"
CHECKING: Final = "Checking"
PREPARED: Final = "Prepared"
TRAINED: Final = "Trained"
EXPORTED: Final = "Exported"
ADMITTED: Final = "Admitted"
SUSPENDED: Final = "Suspended"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"

FINAL_PHASES: Final = frozenset({Phase.SUCCEEDED, Phase.FAILED})
#: Seconds a succeeded check Job's pod report may lag behind the Job (two watches); a
#: report still missing after that is gone (its pod deleted), and fails the job.
CHECK_REPORT_GRACE_SECONDS: Final = 60.0

Stage = Literal["check", "prepare", "train", "export"]


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What to do now. The caller creates, deletes, then writes status, then emits events."""

    status: BertPretrainJobStatus
    create: tuple[tuple[Stage, int], ...] = ()
    """Stages to create: (stage, n); n is the training attempt, the index of the
    preparation pass in ``contract.PREPARE_PASSES``, or 0 for check and export. The objects are
    rendered from the job with this decision's status (it holds the worker count)."""
    delete_jobs: tuple[str, ...] = ()
    delete_self: bool = False
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    """Seconds until a time-based rule (deadline, TTL) needs another look."""


@dataclass
class _Builder:
    job: BertPretrainJob
    now: dt.datetime
    status: BertPretrainJobStatus
    create: list[tuple[Stage, int]] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_self: bool = False
    requeue_after: float | None = None

    def condition(self, kind: str, status: bool, reason: str, message: str) -> None:
        """Set a condition; lastTransitionTime moves only when its status changes."""
        value = ConditionStatus.TRUE if status else ConditionStatus.FALSE
        conditions = list(self.status.conditions or [])
        old = next((c for c in conditions if c.type == kind), None)
        since = old.last_transition_time if old is not None and old.status == value else self.now
        new = Condition(
            type=kind,
            status=value,
            reason=reason,
            message=message[:32768],
            last_transition_time=since,
            observed_generation=self.job.metadata.generation,
        )
        if old is not None:
            conditions[conditions.index(old)] = new
        else:
            conditions.append(new)
        self.status = self.status.model_copy(update={"conditions": conditions})

    def set(self, **fields: object) -> None:
        self.status = self.status.model_copy(update=fields)

    def jobs(self, **children: str | None) -> None:
        current = self.status.jobs or StageJobs()
        self.set(jobs=current.model_copy(update=children))

    def event(self, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(kind, reason, message))

    def phase(self, phase: Phase) -> None:
        self.set(phase=phase)

    def fail(self, reason: str, message: str) -> None:
        self.phase(Phase.FAILED)
        self.condition(FAILED, True, reason, message)
        self.set(completion_time=self.now)
        self.event("Warning", reason, message)

    def requeue(self, seconds: float) -> None:
        """Look again within ``seconds`` (the soonest of every rule's)."""
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds

    def build(self) -> Decision:
        return Decision(
            status=self.status,
            create=tuple(self.create),
            delete_jobs=tuple(self.delete_jobs),
            delete_self=self.delete_self,
            events=tuple(self.events),
            requeue_after=self.requeue_after,
        )


def _seconds(delta: dt.timedelta) -> float:
    return delta.total_seconds()


def _active_jobs(observed: Observed) -> list[str]:
    jobs = [observed.check, *observed.prepare.values(), observed.export, *observed.train.values()]
    return [
        j.name
        for j in jobs
        if j is not None and j.state not in (JobState.SUCCEEDED, JobState.FAILED)
    ]


def decide(
    job: BertPretrainJob,
    observed: Observed,
    now: dt.datetime,
    scale: preparation.Scale = preparation.DEFAULT_SCALE,
) -> Decision:
    """The next status and actions for ``job``; pure and idempotent."""
    b = _Builder(job, now, job.status or BertPretrainJobStatus())
    b.set(observed_generation=job.metadata.generation)
    if b.status.phase is None:
        b.phase(Phase.PENDING)

    if b.status.phase in FINAL_PHASES:
        _finished(b)
        return b.build()

    policy = job.spec.run_policy
    if policy.suspend:
        _suspend(b, observed)
        return b.build()
    if b.status.phase == Phase.SUSPENDED:
        b.condition(SUSPENDED, False, "Resumed", "spec.runPolicy.suspend was cleared")
        b.event("Normal", "Resumed", "resuming from the last checkpoint in GCS")
        # Resuming starts a fresh training attempt; it is not a restart after failure.
        if b.status.attempt:
            b.set(attempt=b.status.attempt + 1)
        b.phase(Phase.PENDING)

    if b.status.start_time is None:
        b.set(start_time=now)
        b.event("Normal", "Started", "the operator started the job")
    start = b.status.start_time
    assert start is not None
    if policy.active_deadline_seconds is not None:
        elapsed = _seconds(now - start)
        if elapsed >= policy.active_deadline_seconds:
            b.delete_jobs.extend(_active_jobs(observed))
            b.fail(
                "DeadlineExceeded",
                f"the job ran longer than spec.runPolicy.activeDeadlineSeconds "
                f"({policy.active_deadline_seconds}s)",
            )
            _finished(b)
            return b.build()
        b.requeue(policy.active_deadline_seconds - elapsed)

    if not _check(b, observed.check):
        return b.build()
    if needs_prepare(job) and not _prepare(b, observed, scale):
        return b.build()
    if not _train(b, observed):
        return b.build()
    if job.spec.export.hugging_face and not _cpu_stage(b, _EXPORT, observed.export):
        return b.build()
    b.phase(Phase.SUCCEEDED)
    b.set(completion_time=now, stage_progress="done")
    b.condition(SUCCEEDED, True, "Succeeded", "every stage completed")
    b.event(
        "Normal",
        "Succeeded",
        "pretraining finished"
        + (" and the model was exported" if job.spec.export.hugging_face else ""),
    )
    _finished(b)
    return b.build()


def _finished(b: _Builder) -> None:
    ttl = b.job.spec.run_policy.ttl_seconds_after_finished
    done = b.status.completion_time
    if ttl is None or done is None:
        return
    left = ttl - _seconds(b.now - done)
    if left <= 0:
        b.delete_self = True
    else:
        b.requeue(left)


def _suspend(b: _Builder, observed: Observed) -> None:
    active = _active_jobs(observed)
    b.delete_jobs.extend(active)
    if b.status.phase != Phase.SUSPENDED:
        b.phase(Phase.SUSPENDED)
        b.condition(
            SUSPENDED,
            True,
            "Suspended",
            "spec.runPolicy.suspend is true: running work was stopped; checkpoints and data "
            "stay in GCS and training resumes from the last checkpoint when it is cleared",
        )
        b.event("Normal", "Suspended", "stopped " + (", ".join(active) or "nothing (idle)"))


def _stage_in_progress(b: _Builder, child: ObservedJob, cond: str, what: str) -> None:
    if child.trouble is not None:
        b.condition(cond, False, child.trouble.reason, f"{what}: {child.trouble.message}")
    else:
        b.condition(cond, False, child.state.value, f"{what} {child.state.value.lower()}")


def _failed_stage(b: _Builder, failure: Failure | None, stage: str, job: str) -> None:
    if failure is None:
        b.fail(f"{stage.capitalize()}Failed", f"the {stage} Job {job} failed")
    elif failure.retriable:
        b.fail(f"{stage.capitalize()}Failed", f"the {stage} Job {job} failed: {failure.message}")
    else:
        b.fail(failure.reason, failure.message)


def _check(b: _Builder, child: ObservedJob | None) -> bool:
    """Check the inputs under the job's identity, once; True once ``status.inputs`` holds
    what the check found."""
    if b.status.inputs is not None:
        return True
    name = names.check_job(_name(b))
    if child is None:
        b.create.append(("check", 0))
        b.jobs(check=name)
        b.set(stage_progress="checking the inputs")
        b.condition(INPUTS_CHECKED, False, CHECKING, _checking(name))
        b.event("Normal", "CheckingInputs", f"created the input check Job {name}")
        return False
    if child.state is JobState.FAILED:
        failure = child.failure
        if failure is not None and failure.kind is FailureKind.BAD_INPUT:
            b.fail("BadInput", failure.message)
        else:
            why = f": {failure.message}" if failure is not None else ""
            b.fail("InputCheckFailed", f"the input check Job {name} failed{why}")
        return False
    if child.state is not JobState.SUCCEEDED:
        if child.trouble is not None:
            _stage_in_progress(b, child, INPUTS_CHECKED, f"the input check Job {name} is")
        else:
            # Pending or running alike: the check takes seconds, and each change of the
            # condition would be one more status write per job.
            b.condition(INPUTS_CHECKED, False, CHECKING, _checking(name))
        return False
    waited = _seconds(b.now - (child.completed_at or b.now))
    if child.result is None and waited < CHECK_REPORT_GRACE_SECONDS:
        # The pod's final status comes on the pod watch, the Job's on the Job watch: the
        # Job may be seen Complete first. Its pod's next event, or this timer, comes back.
        b.condition(
            INPUTS_CHECKED,
            False,
            "ReadingReport",
            f"the input check Job {name} succeeded; waiting for its pod's report",
        )
        b.requeue(CHECK_REPORT_GRACE_SECONDS - waited)
        return False
    found = _check_report(b.job, child.result)
    if isinstance(found, str):
        b.fail("InputCheckFailed", f"the input check Job {name} succeeded, but {found}")
        return False
    b.set(inputs=found)
    b.condition(
        INPUTS_CHECKED,
        True,
        INPUTS_CHECKED,
        f"the input check Job {name} read every input with the job's service account",
    )
    b.event("Normal", INPUTS_CHECKED, f"the input check Job {name} succeeded")
    return True


def _checking(name: str) -> str:
    return f"the input check Job {name} is reading the inputs with the job's service account"


def _check_report(job: BertPretrainJob, result: str | None) -> InputsStatus | str:
    """The check pod's report as ``status.inputs``, or what is wrong with it."""
    if result is None:
        return "its pod's report (the termination message) is gone"
    try:
        report = CheckReport.model_validate_json(result)
    except ValidationError:
        return "its pod's report (the termination message) is not a check report"
    model, data = job.spec.model, job.spec.data
    if model.starts_from and (report.dimensions is None or report.vocab_size is None):
        return (
            f"its report lacks spec.model.{model.starts_from_field}'s dimensions and "
            "vocabulary size"
        )
    if data.vocab and report.vocab_size is None:
        return "its report lacks spec.data.vocab's size"
    return InputsStatus.model_validate(report.model_dump())


@dataclass(frozen=True)
class _CpuStage:
    """What differs between the two CPU stages (prepare and export); the logic does not."""

    stage: Literal["prepare", "export"]
    phase: Phase
    condition: str
    started_reason: str
    done_message: str


_EXPORT = _CpuStage(
    "export", Phase.EXPORTING, EXPORTED, "Exporting", "the HuggingFace checkpoint is in GCS"
)


def _cpu_stage(b: _Builder, spec: _CpuStage, child: ObservedJob | None) -> bool:
    """Run a CPU stage's Job; True once it succeeded."""
    name = names.export_job(_name(b))
    if child is None:
        b.create.append((spec.stage, 0))
        b.jobs(**{spec.stage: name})
        b.set(stage_progress="exporting the HuggingFace checkpoint")
        b.phase(spec.phase)
        b.condition(spec.condition, False, "Creating", f"creating the {spec.stage} Job {name}")
        b.event("Normal", spec.started_reason, f"created the {spec.stage} Job {name}")
        return False
    if child.state is JobState.SUCCEEDED:
        if not _is_true(b, spec.condition):
            b.condition(spec.condition, True, spec.condition, spec.done_message)
            b.event("Normal", spec.condition, f"the {spec.stage} Job {name} succeeded")
        return True
    if child.state is JobState.FAILED:
        _failed_stage(b, child.failure, spec.stage, name)
        return False
    b.phase(spec.phase)
    _stage_in_progress(b, child, spec.condition, f"the {spec.stage} Job {name} is")
    return False


def _prepare(b: _Builder, observed: Observed, scale: preparation.Scale) -> bool:
    """Run the preparation's passes one after the other; True once the last succeeded."""
    if observed.single_prepare is not None and not observed.prepare:
        return _single_prepare(b, observed.single_prepare)
    job = b.job
    status = preparation.measured(b.status.preparation or PreparationStatus())
    workers = status.workers or preparation.workers(
        job, preparation.report(status, "plan", 0), scale
    )
    passes = preparation.passes(job)
    for position, prepare_pass in enumerate(passes):
        name = names.prepare_job(_name(b), prepare_pass)
        pods = preparation.pass_pods(prepare_pass, workers or 1)
        child = observed.prepare.get(prepare_pass)
        if child is not None and child.state is JobState.SUCCEEDED:
            continue
        if child is None:
            if prepare_pass != "plan" and workers is None:
                # plan's Job completed after its pod's final report was stored; this
                # copy of the job predates it. Its status event brings the report.
                b.set(preparation=status)
                b.condition(
                    PREPARED, False, "Planning", "waiting for the plan pass' report of the corpus"
                )
                return False
            status = status.model_copy(update={"workers": workers} if workers else {})
            b.set(preparation=preparation.totals(status, prepare_pass, pods))
            b.create.append(("prepare", contract.PREPARE_PASSES.index(prepare_pass)))
            b.jobs(prepare=name)
            b.phase(Phase.PREPARING)
            done = f"{passes[position - 1]} finished; " if position else ""
            b.condition(
                PREPARED,
                False,
                "Creating",
                f"{done}creating the {prepare_pass} pass Job {name} ({pods} pod(s))",
            )
            b.event(
                "Normal",
                "Preparing",
                f"{done}{_measure(status) if prepare_pass != 'plan' else ''}"
                f"pass {position + 1} of {len(passes)} ({prepare_pass}): created the Job "
                f"{name} with {pods} pod(s)",
            )
            b.set(
                stage_progress=preparation.summary(
                    b.status.preparation or status, prepare_pass, pods
                )
            )
            return False
        status = preparation.totals(status, prepare_pass, pods)
        b.set(preparation=status, stage_progress=preparation.summary(status, prepare_pass, pods))
        if child.state is JobState.FAILED:
            _failed_stage(b, child.failure, "prepare", name)
            return False
        b.phase(Phase.PREPARING)
        finished = preparation.pods_done(status, prepare_pass, pods)
        _stage_in_progress(
            b,
            child,
            PREPARED,
            f"pass {position + 1} of {len(passes)} ({prepare_pass}, {finished}/{pods} pod(s) "
            "done): "
            f"the Job {name} is",
        )
        return False
    if not _is_true(b, PREPARED):
        status = preparation.totals(status, passes[-1], 0)
        b.set(preparation=status)
        b.condition(
            PREPARED,
            True,
            PREPARED,
            f"vocabulary and {status.instances or 0:,} instances in "
            f"{preparation.NUM_SHARDS} TFRecord shards are in GCS",
        )
        b.event(
            "Normal",
            PREPARED,
            f"the preparation wrote {status.instances or 0:,} instances "
            f"with {status.workers or 1} worker(s)",
        )
    return True


def _single_prepare(b: _Builder, child: ObservedJob) -> bool:
    """The one prepare Job an operator from before the passes created, found after an
    upgrade: it writes the same outputs, so it is waited for, never run beside the
    passes (both would write the shards); True once it succeeded."""
    b.jobs(prepare=child.name)
    if child.state is JobState.SUCCEEDED:
        if not _is_true(b, PREPARED):
            b.condition(
                PREPARED,
                True,
                PREPARED,
                f"the vocabulary and TFRecord shards are in GCS (written by {child.name}, "
                "the single prepare Job of the operator before the upgrade)",
            )
            b.event("Normal", PREPARED, f"the prepare Job {child.name} succeeded")
        return True
    if child.state is JobState.FAILED:
        _failed_stage(b, child.failure, "prepare", child.name)
        return False
    b.phase(Phase.PREPARING)
    b.set(stage_progress=f"prepare Job {child.name} (from before the upgrade)")
    _stage_in_progress(
        b,
        child,
        PREPARED,
        f"the prepare Job {child.name}, created before the operator's upgrade, is",
    )
    return False


def _measure(status: PreparationStatus) -> str:
    if status.bytes is None:
        return ""
    return (
        f"the corpus has {status.files} file(s), {status.bytes:,} bytes in "
        f"{status.chunks} chunk(s); "
    )


def _train(b: _Builder, observed: Observed) -> bool:
    """Run training attempts; True once one succeeded."""
    job = b.job
    attempt = b.status.attempt or 0
    child = observed.train.get(attempt) if attempt else None
    if child is None:
        attempt = max(attempt, 1)
        _start_attempt(b, attempt, "Training", f"starting training attempt {attempt}")
        return False
    if child.state is JobState.SUCCEEDED:
        if not _is_true(b, TRAINED):
            b.condition(
                TRAINED,
                True,
                "Trained",
                f"training attempt {attempt} reached {_steps_done(job)}{_held_out(b)}",
            )
            b.event("Normal", "Trained", f"the training Job {child.name} succeeded")
        return True
    if child.state is JobState.FAILED:
        _failed_attempt(b, attempt, child)
        return False
    if child.state is JobState.QUEUED:
        b.phase(Phase.PENDING)
        b.condition(
            ADMITTED,
            False,
            "WaitingForAdmission",
            f"the training Job {child.name} waits in Kueue LocalQueue "
            f"{job.spec.queue_name} for quota",
        )
        b.condition(TRAINED, False, "Queued", f"the training Job {child.name} is queued")
        return False
    if child.trouble is not None and child.trouble.reason == "QuotaExceeded":
        # No TPU is held yet: to the user the job still waits, like one queued in Kueue.
        b.phase(Phase.PENDING)
        if _reason(b, TRAINED) != "QuotaExceeded":
            b.event(
                "Warning",
                "QuotaExceeded",
                f"the training Job {child.name} cannot create its pods: {child.trouble.message}",
            )
        b.condition(
            TRAINED,
            False,
            "QuotaExceeded",
            f"the training Job {child.name} cannot create its pods: {child.trouble.message}; "
            "it retries when the namespace's TPU quota frees up",
        )
        return False
    b.phase(Phase.TRAINING)
    if job.spec.queue_name:
        b.condition(ADMITTED, True, "Admitted", f"Kueue admitted {child.name}")
    if child.trouble is not None and child.trouble.reason == "Unschedulable":
        tpu = job.spec.tpu
        spot = " (spot)" if tpu.spot else ""
        b.condition(
            TRAINED,
            False,
            "Unschedulable",
            f"no node fits the training pods: no TPU node pool with accelerator "
            f"{tpu.accelerator.value} and topology {tpu.topology}{spot} has free "
            f"google.com/tpu capacity. Scheduler: {child.trouble.message}",
        )
    else:
        _stage_in_progress(b, child, TRAINED, f"training attempt {attempt} ({child.name}) is")
    progress = b.status.progress
    if progress is not None and progress.step is not None:
        total = progress.total_steps or job.spec.training.total_steps
        phase = _training_phase(job, progress.step)
        b.set(training_phase=phase)
        if phase.of > 1:
            b.set(
                stage_progress=f"phase {phase.number}/{phase.of} (length "
                f"{phase.max_seq_length}): step {progress.step}/{total}"
            )
        else:
            b.set(stage_progress=f"step {progress.step}/{total}")
    return False


def _training_phase(job: BertPretrainJob, step: int) -> TrainingPhaseStatus:
    """The phase the run's ``step`` is in; a phase's last step counts as the next's start."""
    phases = job.spec.training_phases()
    current = next((p for p in phases if step < p.end_step), phases[-1])
    return TrainingPhaseStatus(
        number=current.index + 1,
        of=len(phases),
        max_seq_length=current.length.max_seq_length,
        first_step=current.first_step,
        last_step=current.end_step,
    )


def _held_out(b: _Builder) -> str:
    """The final held-out figures, by google-research/bert's names ('' without any)."""
    progress = b.status.progress
    held = progress.eval if progress is not None else None
    if held is None:
        return ""
    figures = (
        ("masked_lm_accuracy", held.masked_lm_accuracy),
        ("masked_lm_loss", held.masked_lm_loss),
        ("next_sentence_accuracy", held.next_sentence_accuracy),
        ("next_sentence_loss", held.next_sentence_loss),
    )
    shown = ", ".join(f"{name} {value:.4f}" for name, value in figures if value is not None)
    return f"; held-out eval at step {held.step}: {shown}"


def _steps_done(job: BertPretrainJob) -> str:
    phases = job.spec.training_phases()
    steps = f"{phases[-1].end_step} steps"
    if len(phases) == 1:
        return steps
    lengths = ", then ".join(str(p.length.max_seq_length) for p in phases)
    return f"{steps} in {len(phases)} phases (lengths {lengths})"


def _start_attempt(b: _Builder, attempt: int, reason: str, message: str) -> None:
    name = names.train_job(_name(b), attempt)
    b.create.append(("train", attempt))
    b.set(attempt=attempt)
    b.jobs(train=name)
    b.phase(Phase.TRAINING)
    b.condition(TRAINED, False, "Creating", f"{message}: creating {name}")
    b.set(stage_progress=f"training attempt {attempt} starting")
    b.event("Normal", reason, f"{message} ({name})")


def _failed_attempt(b: _Builder, attempt: int, child: ObservedJob) -> None:
    failure = child.failure
    assert failure is not None
    if not failure.retriable:
        b.fail(failure.reason, f"training attempt {attempt} failed: {failure.message}")
        return
    restarts = b.status.restarts or 0
    limit = b.job.spec.run_policy.max_restarts
    if restarts >= limit:
        b.fail(
            "MaxRestartsExceeded",
            f"training attempt {attempt} failed ({failure.reason}: {failure.message}) and "
            f"spec.runPolicy.maxRestarts ({limit}) restarts were used",
        )
        return
    b.set(restarts=restarts + 1)
    b.event("Warning", failure.reason, f"training attempt {attempt} failed: {failure.message}")
    _start_attempt(
        b,
        attempt + 1,
        "Restarting",
        f"restart {restarts + 1} of {limit}: attempt {attempt + 1} resumes from the last "
        "checkpoint",
    )


def _reason(b: _Builder, kind: str) -> str | None:
    return next((c.reason for c in b.status.conditions or [] if c.type == kind), None)


def _is_true(b: _Builder, kind: str) -> bool:
    return any(
        c.type == kind and c.status == ConditionStatus.TRUE for c in b.status.conditions or []
    )


def _name(b: _Builder) -> str:
    name = b.job.metadata.name
    assert name
    return name
