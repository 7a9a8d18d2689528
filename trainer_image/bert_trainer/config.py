"""The trainer's configuration: rendered by the operator, parsed by the trainer pod.

Plain pydantic, no TensorFlow import. Paths are either ``gs://bucket/prefix``
or local paths (tests and the local pod runner). Field names are snake_case in
Python and camelCase in JSON, like the BertPretrainJob API they are derived from.
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class BertModelConfig(_Model):
    """BERT dimensions; the names follow google-research/bert's bert_config.json."""

    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    max_position_embeddings: int = Field(default=512, gt=0)
    type_vocab_size: int = Field(default=2, gt=0)
    hidden_dropout: float = Field(default=0.1, ge=0, lt=1)
    attention_dropout: float = Field(default=0.1, ge=0, lt=1)
    initializer_range: float = Field(default=0.02, gt=0)

    def google_config(self) -> dict[str, object]:
        """google-research/bert's bert_config.json for these dimensions.

        HuggingFace's BertConfig uses the same keys; its export overrides hidden_act.
        """
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "gelu",
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
        }

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> BertModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hiddenSize {self.hidden_size} is not divisible by numHeads {self.num_heads}"
            )
        return self


class RecordSet(_Model):
    """Records of one more sequence length, made from the same tokenized chunks."""

    max_seq_length: int = Field(ge=8)
    max_predictions_per_seq: int = Field(ge=1)
    output_tfrecords: str
    """Directory (prefix) that receives this length's shards."""
    held_out: bool = False
    """Made from the held-out documents (``PrepareConfig.eval_fraction``), not the rest."""
    num_shards: int | None = Field(default=None, ge=1)
    """This set's shard count; None: the config's ``num_shards``."""


class PrepareConfig(_Model):
    """Vocabulary training and pretraining-instance creation."""

    corpus: list[str] = Field(min_length=1)
    """Globs of raw text: one sentence per line, a blank line between documents."""
    vocab: str | None = None
    """An existing vocab.txt; when None a WordPiece vocab is trained on the corpus."""
    vocab_size: int = Field(default=30522, ge=16)
    lowercase: bool = True
    min_frequency: int = Field(default=2, ge=1)
    max_seq_length: int = Field(default=128, ge=8)
    max_predictions_per_seq: int = Field(default=20, ge=1)
    masked_lm_prob: float = Field(default=0.15, gt=0, lt=1)
    dupe_factor: int = Field(default=10, ge=1)
    short_seq_prob: float = Field(default=0.1, ge=0, le=1)
    whole_word_masking: bool = False
    seed: int = 12345
    num_shards: int = Field(default=8, ge=1)
    workers: int | None = None
    """Processes for instance creation; None means one per CPU core."""
    chunk_bytes: int = Field(default=256 * 2**20, ge=1)
    """Text a worker holds at once (256 MiB by default): the corpus is read and
    processed one chunk of whole documents at a time, and the random next
    segments of next-sentence prediction come from the same chunk."""
    output_vocab: str
    """Where the vocab used for the records is written (copied when given)."""
    output_tfrecords: str
    """Directory (prefix) that receives ``part-NNNNN-of-MMMMM.tfrecord`` shards."""
    work_dir: str | None = None
    """Prefix of the preparation's intermediates (its plan, word counts, record
    fragments): required by ``prepare --pass``; the operator renders
    ``<spec.output>/prepare``. None: a local temporary directory (one process)."""
    eval_fraction: float = Field(default=0.0, ge=0, lt=1)
    """The fraction of each chunk's documents held out of the training records, for
    the record sets marked ``held_out`` (a seeded draw per document)."""
    extra_lengths: list[RecordSet] = Field(default_factory=list)
    """More sequence lengths to write records for (the phases of a job): each chunk is
    read and tokenized once, then made into instances of every length."""

    def record_sets(self) -> list[RecordSet]:
        """Every length to write: this config's own first, then ``extra_lengths``."""
        own = RecordSet(
            max_seq_length=self.max_seq_length,
            max_predictions_per_seq=self.max_predictions_per_seq,
            output_tfrecords=self.output_tfrecords,
        )
        return [own, *self.extra_lengths]

    def for_record_set(self, index: int) -> PrepareConfig:
        """This config with record set ``index``'s length and output as its own."""
        if index == 0:
            return self
        chosen = self.extra_lengths[index - 1]
        return self.model_copy(
            update={
                "max_seq_length": chosen.max_seq_length,
                "max_predictions_per_seq": chosen.max_predictions_per_seq,
                "output_tfrecords": chosen.output_tfrecords,
                "num_shards": chosen.num_shards or self.num_shards,
            }
        )

    @model_validator(mode="after")
    def _distinct_lengths(self) -> PrepareConfig:
        lengths = [(r.max_seq_length, r.held_out) for r in self.record_sets()]
        if len(set(lengths)) != len(lengths):
            raise ValueError(f"record sets of the same maxSeqLength: {lengths}")
        if any(r.held_out for r in self.extra_lengths) and not self.eval_fraction:
            raise ValueError("held-out record sets need an evalFraction above 0")
        outputs = [r.output_tfrecords.rstrip("/") for r in self.record_sets()]
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"record sets share an output directory: {outputs}")
        return self


class TrainConfig(_Model):
    """Masked-LM + next-sentence pretraining."""

    tfrecords: str
    """Glob of TFRecord files in the google-research/bert feature format."""
    model: BertModelConfig
    max_seq_length: int = Field(default=128, ge=8)
    max_predictions_per_seq: int = Field(default=20, ge=1)
    global_batch_size: int = Field(gt=0)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Micro-batches per step, whose gradients are summed into one update."""
    train_steps: int = Field(gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    warmup_steps: int = Field(default=10000, ge=0)
    optimizer: Literal["adamw", "lamb"] = "adamw"
    weight_decay: float = Field(default=0.01, ge=0)
    checkpoint_every_steps: int = Field(default=1000, gt=0)
    keep_checkpoints: int = Field(default=3, ge=1)
    seed: int = 12345
    precision: Literal["float32", "bfloat16"] = "float32"
    checkpoint_dir: str
    summary_dir: str | None = None
    init_checkpoint: str | None = None
    """A Google TF1 BERT checkpoint prefix (e.g. .../bert_model.ckpt) to start from."""
    init_checkpoint_config: str | None = None
    """The checkpoint's bert_config.json; its dimensions must equal ``model``."""
    init_checkpoints: str | None = None
    """Another run's checkpoint directory to start from: the newest readable checkpoint,
    weights only (the step, the optimizer state and the schedule start over)."""
    vocab: str | None = None
    """The vocab the records were made with; checked against the init checkpoint's."""
    shuffle: bool = True
    """False reads files and records in order (reproducible runs and comparisons); a
    resumed run then goes on from the record where the last checkpoint stopped."""
    eval_tfrecords: str | None = None
    """Glob of held-out records of this phase's shape; None: no evaluation."""
    eval_every_steps: int | None = Field(default=None, gt=0)
    """Evaluate every this many steps, and at the phase's last step; None: last only."""
    eval_batches: int = Field(default=100, gt=0)
    """Batches of the held-out records per evaluation, the same ones each time
    (google-research/bert's max_eval_steps: 100)."""
    first_step: int = Field(default=0, ge=0)
    """The run's step this phase starts at: its learning-rate schedule and its reading
    of ``tfrecords`` start there (0 for a single-phase run)."""
    run_steps: int | None = Field(default=None, gt=0)
    """The whole run's steps, over every phase (progress reports); None: train_steps."""
    phase: int = Field(default=0, ge=0)
    """Which phase of the run this is, from 0 (logs and summaries)."""
    startup_timeout_seconds: int = Field(default=600, ge=1)
    """Multi-host: how long the hosts of a slice wait for each other at start-up."""
    peer_timeout_seconds: int = Field(default=60, ge=2)
    """Multi-host: a host silent this long is lost; every host then exits with
    ``EXIT_INFRASTRUCTURE`` so the operator restarts the slice."""


def _steps_of(config: TrainConfig) -> None:
    if config.first_step >= config.train_steps:
        raise ValueError(
            f"the phase's firstStep {config.first_step} is not before its trainSteps "
            f"{config.train_steps} (trainSteps counts the whole run's steps)"
        )
    if config.run_steps is not None and config.run_steps < config.train_steps:
        raise ValueError(f"runSteps {config.run_steps} is less than trainSteps")


class ExportConfig(_Model):
    """Export the latest checkpoint as a HuggingFace BERT directory."""

    checkpoint_dir: str
    model: BertModelConfig
    vocab: str
    lowercase: bool = True
    output_dir: str


class JobRef(_Model):
    """The BertPretrainJob this run belongs to, for progress reports."""

    namespace: str
    name: str
    uid: str | None = None
    report_progress: bool = True
    min_report_interval_seconds: float = Field(default=10.0, ge=0)


class CheckConfig(_Model):
    """The job's GCS inputs, as its spec names them, for the pre-flight check (``check``).

    The check runs under the job's own service account, so it reads only what the
    job's stages could read; its findings go back in the pod's termination message.
    """

    corpus: list[str] | None = None
    tfrecords: str | None = None
    vocab: str | None = None
    init_checkpoint: str | None = None
    init_from_output: str | None = None
    """Another job's spec.output, whose checkpoints the job starts from."""

    @model_validator(mode="after")
    def _has_data(self) -> CheckConfig:
        if not self.corpus and not self.tfrecords:
            raise ValueError("the check needs corpus or tfrecords")
        return self


class CheckedDimensions(_Model):
    """An init checkpoint's dimensions, from its bert_config.json."""

    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)


class CheckReport(_Model):
    """What the check found: the facts the spec alone cannot give (None: from the spec).

    The check pod writes it as JSON to its termination message (at most 4 KiB, which
    this always fits); the operator keeps it in the job's ``status.inputs``.
    """

    vocab_size: int | None = Field(default=None, gt=0)
    dimensions: CheckedDimensions | None = None


class TrainerConfig(_Model):
    """Everything one trainer pod needs; the command picks its section."""

    job: JobRef | None = None
    check: CheckConfig | None = None
    prepare: PrepareConfig | None = None
    train: TrainConfig | None = None
    train_phases: list[TrainConfig] | None = Field(default=None, min_length=1)
    """A run of several phases, in order, instead of ``train``; each counts its steps
    over the whole run (``first_step`` to ``train_steps``) in one checkpoint directory."""
    export: ExportConfig | None = None

    def phases(self) -> list[TrainConfig]:
        """The run's phases: ``train_phases``, or ``train`` alone (none without either)."""
        if self.train_phases is not None:
            return list(self.train_phases)
        return [] if self.train is None else [self.train]

    @model_validator(mode="after")
    def _consistent_phases(self) -> TrainerConfig:
        if self.train is not None and self.train_phases is not None:
            raise ValueError("give train or trainPhases, not both")
        phases = self.phases()
        for phase in phases:
            _steps_of(phase)
        end = phases[-1].train_steps if phases else 0
        for i, (before, after) in enumerate(itertools.pairwise(phases), start=1):
            if after.first_step != before.train_steps:
                raise ValueError(
                    f"phase {i} starts at step {after.first_step}, not where phase {i - 1} "
                    f"ends ({before.train_steps})"
                )
            if after.checkpoint_dir != before.checkpoint_dir or after.model != before.model:
                raise ValueError(f"phase {i} has another model or checkpointDir than phase 0")
        for phase in phases:
            if phase.run_steps is not None and phase.run_steps != end:
                raise ValueError(f"runSteps {phase.run_steps} is not the last phase's end {end}")
        return self
