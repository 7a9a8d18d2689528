"""``BertPretrainJob.status``: what the operator and the trainer report.

The operator owns everything but ``progress``, which worker 0 of the training
Job merge-patches (fields named in ``bert_trainer.contract.PROGRESS_FIELDS``),
and ``preparation.reports``, where each preparation pod writes its own entry.
Unlike the spec, status models ignore unknown fields when parsing, so an
operator reading a status written by a newer version does not fail; the API
server prunes fields the schema does not know anyway, except under ``kopf``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import ConfigDict, Field

from bert_pretrain_operator.api.cel import RuledModel

#: Kubernetes' pattern for a condition reason (metav1.Condition), CamelCase.
CONDITION_REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
#: A qualified name, as condition types are (metav1.Condition).
CONDITION_TYPE_PATTERN: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
#: Longest Job name (Job names become label values, at most 63 characters).
JOB_NAME_MAX_LENGTH: Final = 63


class _StatusModel(RuledModel):
    # Written by the operator and the trainer, not by users: parse leniently (ISO
    # strings to datetimes, unknown fields ignored) rather than mirror admission.
    model_config = ConfigDict(extra="ignore", strict=False)


class Phase(StrEnum):
    """Where the job is in its pipeline; ``Succeeded`` and ``Failed`` are final."""

    PENDING = "Pending"
    PREPARING = "Preparing"
    TRAINING = "Training"
    EXPORTING = "Exporting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionStatus(StrEnum):
    """A condition's status, as in every Kubernetes condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_StatusModel):
    """One aspect of the job's state, following Kubernetes' metav1.Condition."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)
    """type names the aspect, in CamelCase (e.g. Prepared, Trained, Failed)."""
    status: ConditionStatus
    """status is True, False or Unknown."""
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)
    """reason is a CamelCase word for the last transition, for tools (e.g. Preempted)."""
    message: str = Field(default="", max_length=32768)
    """message says what happened, for people."""
    last_transition_time: datetime
    """lastTransitionTime is when status last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """observedGeneration is the metadata.generation this condition was set for."""


class StageJobs(_StatusModel):
    """The batch/v1 Jobs the operator created for each stage (names in this namespace)."""

    check: str | None = Field(default=None, max_length=JOB_NAME_MAX_LENGTH)
    """check is the pre-flight check of the job's GCS inputs (CPU, the job's identity)."""
    prepare: str | None = Field(default=None, max_length=JOB_NAME_MAX_LENGTH)
    """prepare is the vocabulary and TFRecord preparation Job (CPU)."""
    train: str | None = Field(default=None, max_length=JOB_NAME_MAX_LENGTH)
    """train is the current training attempt's Indexed Job (TPU slice)."""
    export: str | None = Field(default=None, max_length=JOB_NAME_MAX_LENGTH)
    """export is the HuggingFace export Job (CPU)."""


class EvalProgress(_StatusModel):
    """The latest evaluation on held-out records (google-research/bert's do_eval metrics)."""

    step: int = Field(ge=0)
    """step is the training step the evaluation ran at."""
    masked_lm_accuracy: float | None = Field(default=None, ge=0, le=1)
    """maskedLmAccuracy is masked_lm_accuracy: correct masked tokens over masked tokens."""
    masked_lm_loss: float | None = None
    """maskedLmLoss is masked_lm_loss: their mean cross-entropy."""
    next_sentence_accuracy: float | None = Field(default=None, ge=0, le=1)
    """nextSentenceAccuracy is next_sentence_accuracy."""
    next_sentence_loss: float | None = None
    """nextSentenceLoss is next_sentence_loss."""


class TrainingProgress(_StatusModel):
    """Training progress, reported by worker 0 of the training Job (best effort)."""

    step: int | None = Field(default=None, ge=0)
    """step is the last completed optimizer step."""
    total_steps: int | None = Field(default=None, ge=0)
    """totalSteps is spec.training.trainSteps, or the sum of the phases' steps."""
    loss: float | None = None
    """loss is the total pretraining loss (masked LM + next sentence) at step."""
    mlm_accuracy: float | None = Field(default=None, ge=0, le=1)
    """mlmAccuracy is the masked-LM accuracy over recent steps."""
    nsp_accuracy: float | None = Field(default=None, ge=0, le=1)
    """nspAccuracy is the next-sentence-prediction accuracy over recent steps."""
    examples_per_second: float | None = Field(default=None, ge=0)
    """examplesPerSecond is the training throughput of the whole slice."""
    eta_seconds: float | None = Field(default=None, ge=0)
    """etaSeconds is the estimated time until trainSteps, at the current throughput."""
    last_checkpoint: str | None = Field(default=None, max_length=1024)
    """lastCheckpoint is the prefix of the latest checkpoint written."""
    last_checkpoint_step: int | None = Field(default=None, ge=0)
    """lastCheckpointStep is the step of lastCheckpoint; a resumed attempt starts there."""
    eval: EvalProgress | None = None
    """eval is the latest evaluation on the held-out records (with data.evalTfrecords or
    data.evalFraction): every training.evalEverySteps steps and at the end."""
    updated_time: datetime | None = None
    """updatedTime is when the trainer last wrote this progress."""


class PreparationReport(_StatusModel):
    """What one pod of a preparation pass reported (it may write only its own entry)."""

    bytes_done: int | None = Field(default=None, ge=0)
    """bytesDone is the text this pod has processed."""
    bytes_total: int | None = Field(default=None, ge=0)
    """bytesTotal is the text this pod processes in this pass (the whole corpus for plan)."""
    chunks_done: int | None = Field(default=None, ge=0)
    """chunksDone is the chunks (shards, in the shards pass) this pod has finished."""
    chunks_total: int | None = Field(default=None, ge=0)
    """chunksTotal is the chunks (shards) of this pod (of the whole corpus, for plan)."""
    files: int | None = Field(default=None, ge=0)
    """files is the number of corpus files (plan only)."""
    instances: int | None = Field(default=None, ge=0)
    """instances is the pretraining instances this pod has written."""
    vocab_size: int | None = Field(default=None, ge=0)
    """vocabSize is the size of the vocabulary (vocab only)."""
    done: bool | None = None
    """done is true once the pod finished its part of the pass."""
    updated_time: datetime | None = None
    """updatedTime is when the pod wrote this report."""


#: Most entries of status.preparation.reports: every pass of the largest preparation.
MAX_PREPARATION_REPORTS: Final = 512


class PreparationStatus(_StatusModel):
    """The corpus preparation: its passes, its scale and how far it got."""

    current_pass: str | None = Field(default=None, alias="pass", max_length=16)
    """pass is the preparation pass running now (or the last one): plan, count,
    vocab, records or shards."""
    workers: int | None = Field(default=None, ge=0)
    """workers is the number of pods of the parallel passes."""
    files: int | None = Field(default=None, ge=0)
    """files is the number of corpus files."""
    bytes: int | None = Field(default=None, ge=0)
    """bytes is the corpus' size."""
    chunks: int | None = Field(default=None, ge=0)
    """chunks is the number of chunks the corpus was cut into."""
    bytes_done: int | None = Field(default=None, ge=0)
    """bytesDone is the text the current pass has processed, over all its pods."""
    instances: int | None = Field(default=None, ge=0)
    """instances is the number of pretraining instances written."""
    reports: dict[str, PreparationReport] | None = Field(
        default=None, json_schema_extra={"maxProperties": MAX_PREPARATION_REPORTS}
    )
    """reports holds each preparation pod's own report, keyed <pass>-<index>; the
    operator sums them into the fields above."""


class ResolvedDimensions(_StatusModel):
    """The encoder's dimensions, as an init checkpoint's bert_config.json gives them."""

    hidden_size: int = Field(ge=1)
    """hiddenSize is bert_config.json's hidden_size."""
    num_layers: int = Field(ge=1)
    """numLayers is its num_hidden_layers."""
    num_heads: int = Field(ge=1)
    """numHeads is its num_attention_heads."""
    intermediate_size: int = Field(ge=1)
    """intermediateSize is its intermediate_size."""


class InputsStatus(_StatusModel):
    """What the job's inputs were checked to hold, before its first stage started."""

    vocab_size: int | None = Field(default=None, ge=1)
    """vocabSize is the given vocab's (or the init checkpoint's) number of tokens."""
    dimensions: ResolvedDimensions | None = None
    """dimensions are the init checkpoint's, from its bert_config.json."""


class TrainingPhaseStatus(_StatusModel):
    """Which phase of spec.training.phases is training (one phase without phases)."""

    number: int = Field(ge=1)
    """number is the phase, from 1 (kubectl get -o wide's Training Phase column)."""
    of: int = Field(ge=1)
    """of is the number of phases."""
    max_seq_length: int = Field(ge=1)
    """maxSeqLength is the phase's sequence length."""
    first_step: int = Field(ge=0)
    """firstStep is the run's step the phase starts after."""
    last_step: int = Field(ge=1)
    """lastStep is the run's step the phase ends at."""


class BertPretrainJobStatus(_StatusModel):
    """BertPretrainJobStatus is the observed state of a BertPretrainJob."""

    observed_generation: int | None = Field(default=None, ge=0)
    """observedGeneration is the metadata.generation the operator last acted on."""
    phase: Phase | None = None
    """phase is Pending, Preparing, Training, Exporting, Succeeded, Failed or Suspended."""
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    """conditions are the latest observations of the job's state, one per type."""
    jobs: StageJobs | None = None
    """jobs names the child Job of each stage."""
    attempt: int | None = Field(default=None, ge=0)
    """attempt is the current training attempt, from 1; absent before training starts."""
    restarts: int | None = Field(default=None, ge=0)
    """restarts counts training attempts restarted after preemption or node failure."""
    progress: TrainingProgress | None = None
    """progress is the trainer's latest report."""
    training_phase: TrainingPhaseStatus | None = None
    """trainingPhase is the phase of training the latest progress report is in (status.phase
    keeps its meaning: the job's stage)."""
    preparation: PreparationStatus | None = None
    """preparation is the corpus preparation's progress (with spec.data.corpus)."""
    inputs: InputsStatus | None = None
    """inputs is what the check of the job's inputs found, before the first stage: every
    stage of every attempt, and an operator restarted meanwhile, render from it
    instead of reading the inputs again."""
    stage_progress: str | None = Field(default=None, max_length=256)
    """stageProgress says in a few words how far the running stage is (kubectl get's
    Progress column): the preparation pass and its bytes or shards, or the
    training step."""
    start_time: datetime | None = None
    """startTime is when the operator started the first stage. Once set, spec.data,
    spec.model, spec.tpu, spec.output and spec.training.globalBatchSize/phases/optimizer
    can no longer change."""
    completion_time: datetime | None = None
    """completionTime is when the job succeeded or failed."""
    kopf: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """kopf is the operator framework's own bookkeeping (handler progress); not an API."""
