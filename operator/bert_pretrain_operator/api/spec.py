"""``BertPretrainJob.spec``: what a user asks for, one model per concern.

The docstring under each field is its ``kubectl explain`` text; the CRD in
``crds/`` is generated from these classes (``api/crd.py``). Cross-field rules
(``rules``) are written as CEL for the API server and as Python for offline
validation (``api/cel.py``); each message starts with the offending field.

Design choices worth knowing:

- Options that only shape corpus preparation (``vocabSize``, ``minFrequency``,
  ``maskedLmProb``, ``dupeFactor``, ``shortSeqProb``, ``wholeWordMasking``) have
  no schema default: with prepared ``tfrecords`` they are rejected rather than
  silently ignored, so a stored object never shows a setting that did nothing.
  Their defaults (``PREPARE_DEFAULTS``) are applied by the operator.
- ``model.initCheckpoint`` fixes the dimensions and the vocabulary: with it,
  ``model.size``/explicit dimensions and ``data.vocab``/``vocabSize``/
  ``minFrequency`` are rejected at admission. The checkpoint's bert_config.json
  and vocab.txt, which must sit beside it, are read at run time (a missing or
  malformed one fails the job with a BadInput condition). ``model.initFromOutput``
  (another job's output, whose train stage wrote those two files beside its
  checkpoints) follows the same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final

from pydantic import Field, StringConstraints

from bert_pretrain_operator import tpu_catalogue
from bert_pretrain_operator.api import quantity
from bert_pretrain_operator.api.cel import Reason, Rule, RuledModel, literal, not_together, present
from bert_pretrain_operator.api.quantity import QUANTITY_PATTERN
from bert_pretrain_operator.api.sizes import SIZES, Dimensions, ModelSize
from bert_pretrain_operator.tpu_catalogue import Accelerator

# === Value types ===

#: Longest gs:// URI accepted; bounds the CEL cost estimate of rules comparing them.
URI_MAX_LENGTH: Final = 1024
_BUCKET = r"gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]"
#: An object or glob inside a bucket: gs://bucket/path, not ending in "/".
# Spelled out instead of \S and \s: the API server's RE2 treats those as ASCII only and
# Python's re as Unicode, so the two would disagree on e.g. a no-break space.
_NON_SPACE = r"[^ \t\n\r\f\v]"
GCS_OBJECT_PATTERN: Final = rf"^{_BUCKET}/{_NON_SPACE}*[^/ \t\n\r\f\v]$"
#: A bucket or a prefix inside one: gs://bucket or gs://bucket/some/prefix.
GCS_PREFIX_PATTERN: Final = rf"^{_BUCKET}(/{_NON_SPACE}*)?$"
#: A DNS-1123 subdomain (service account names).
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A label value that is also a DNS-1123 subdomain (Kueue LocalQueue names).
QUEUE_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
#: ``AxB`` or ``AxBxC``; whether the accelerator offers it is a rule on ``TpuSpec``.
TOPOLOGY_PATTERN: Final = r"^[1-9][0-9]{0,2}(x[1-9][0-9]{0,2}){1,2}$"

GcsObject = Annotated[str, StringConstraints(pattern=GCS_OBJECT_PATTERN, max_length=URI_MAX_LENGTH)]
GcsPrefix = Annotated[str, StringConstraints(pattern=GCS_PREFIX_PATTERN, max_length=URI_MAX_LENGTH)]

# === Defaults applied by the operator (see the module docstring) ===

#: Corpus-preparation settings left out of the spec: google-research/bert's
#: create_pretraining_data.py defaults. A test checks they equal the trainer's.
PREPARE_DEFAULTS: Final = {
    "vocab_size": 30522,
    "min_frequency": 2,
    "masked_lm_prob": 0.15,
    "dupe_factor": 10,
    "short_seq_prob": 0.1,
    "whole_word_masking": False,
}
#: Warm-up when ``training.warmupSteps`` is left out, as a fraction of trainSteps
#: (BERT warmed up for 10,000 of its 1,000,000 steps).
DEFAULT_WARMUP_FRACTION: Final = 0.01


#: Sequence length and masked positions when spec.data leaves them out (BERT's phase 1).
DEFAULT_MAX_SEQ_LENGTH: Final = 128
DEFAULT_MAX_PREDICTIONS_PER_SEQ: Final = 20
#: Most phases of one job (each distinct length is a set of records to prepare).
MAX_PHASES: Final = 8


@dataclass(frozen=True, order=True)
class SequenceLength:
    """The shape of one set of records: tokens per sequence and masked positions."""

    max_seq_length: int
    max_predictions_per_seq: int


#: Most prepare worker pods one job may run at once (an explicit spec.data.preparation.workers).
MAX_PREPARE_WORKERS: Final = 64


class CpuResources(RuledModel):
    """CPU and memory of each pod of a CPU stage. Unset fields take the operator's defaults."""

    cpu: str | None = Field(default=None, max_length=32, pattern=QUANTITY_PATTERN)
    """cpu is the pod's CPU request (a Kubernetes quantity: 500m, 2, 4). The work of a
    pod is spread over its CPU cores. Defaults to the operator's setting (2 by default)."""
    memory: str | None = Field(default=None, max_length=32, pattern=QUANTITY_PATTERN)
    """memory is the pod's memory request and limit (a Kubernetes quantity: 4Gi,
    8Gi). A prepare worker holds one chunk of text (chunkBytes) and its word and
    token tables, so its peak grows with chunkBytes, not with the corpus (710 MiB
    measured with 32 MiB chunks). Defaults to the operator's
    setting (8Gi by default)."""


class PreparationSpec(RuledModel):
    """How the corpus preparation is spread over CPU pods. Only with spec.data.corpus."""

    workers: int | None = Field(default=None, ge=1, le=MAX_PREPARE_WORKERS)
    """workers is the number of CPU pods of each parallel pass (word counting, instance
    creation, shard writing). By default it is derived from the corpus' size, as the
    first pass measures it: one pod per GiB of text (the operator's setting), at most
    one per chunk, capped by the operator (32 by default). An explicit value wins."""
    chunk_bytes: int | None = Field(default=None, ge=1024, le=4 * 2**30)
    """chunkBytes is the text a pod reads and processes at once; files larger than a
    chunk are split at document boundaries. The random next sentences of
    next-sentence prediction are drawn from the same chunk. Defaults to 268435456
    (256 MiB)."""
    resources: CpuResources | None = None
    """resources are each preparation pod's CPU and memory."""


#: Settings of vocabulary training (camelCase): not allowed with a given vocabulary.
_VOCAB_TRAINING_FIELDS: Final = ("vocabSize", "minFrequency")
#: Settings of corpus preparation (camelCase): not allowed with prepared tfrecords.
_PREPARE_ONLY_FIELDS: Final = (
    *_VOCAB_TRAINING_FIELDS,
    "maskedLmProb",
    "dupeFactor",
    "shortSeqProb",
    "wholeWordMasking",
    "preparation",
    "evalFraction",
)


class DataSpec(RuledModel):
    """The pretraining text: raw corpus files to prepare, or records prepared before.

    With corpus, a CPU Job first builds a WordPiece vocabulary (unless one is
    given) and writes masked-LM/next-sentence TFRecords under spec.output; with
    tfrecords that step is skipped.
    """

    corpus: Annotated[list[GcsObject], Field(min_length=1, max_length=64)] | None = None
    """corpus lists gs:// globs of raw text files: one sentence per line, a blank line
    between documents (google-research/bert's input format). Exactly one of corpus
    and tfrecords is required."""
    tfrecords: GcsObject | None = None
    """tfrecords is a gs:// glob of TFRecord files already in google-research/bert's
    pretraining format (input_ids, input_mask, segment_ids, masked_lm_positions,
    masked_lm_ids, masked_lm_weights, next_sentence_labels). Skips preparation."""
    vocab: GcsObject | None = None
    """vocab is the gs:// URI of a WordPiece vocab.txt (one token per line). Leave it out
    to train a vocabulary on the corpus. Required with tfrecords (the vocabulary the
    records were made with) unless model.initCheckpoint provides one; not allowed
    with model.initCheckpoint, whose own vocab.txt is used."""
    vocab_size: int | None = Field(default=None, ge=16, le=262144)
    """vocabSize is the size of the WordPiece vocabulary trained on the corpus.
    Only when a vocabulary is trained. Defaults to 30522 (BERT's English vocab)."""
    lowercase: bool = True
    """lowercase lowercases and strips accents before tokenizing (an "uncased" model).
    Must match the vocabulary: false for cased vocabularies such as
    multi_cased_L-12_H-768_A-12."""
    min_frequency: int | None = Field(default=None, ge=1, le=1000000)
    """minFrequency is the fewest occurrences a token needs to enter a trained
    vocabulary. Only when a vocabulary is trained. Defaults to 2."""
    max_seq_length: int | None = Field(default=None, ge=8, le=512)
    """maxSeqLength is the number of tokens per training sequence (both segments,
    [CLS] and [SEP] included). At most 512, BERT's position embeddings. Defaults to
    128. Not allowed with spec.training.phases, where each phase sets its own."""
    max_predictions_per_seq: int | None = Field(default=None, ge=1, le=512)
    """maxPredictionsPerSeq is the most masked tokens predicted per sequence; must be
    less than maxSeqLength (BERT used 20 at length 128, 80 at 512). Defaults to 20.
    Not allowed with spec.training.phases, where each phase sets its own."""
    masked_lm_prob: float | None = Field(default=None, gt=0, lt=1)
    """maskedLmProb is the fraction of tokens masked when preparing the corpus.
    Only with corpus. Defaults to 0.15."""
    dupe_factor: int | None = Field(default=None, ge=1, le=100)
    """dupeFactor is how many times the corpus is masked, each time differently.
    Only with corpus. Defaults to 10."""
    short_seq_prob: float | None = Field(default=None, ge=0, le=1)
    """shortSeqProb is the probability of making a sequence shorter than maxSeqLength,
    to reduce the mismatch with short fine-tuning inputs. Only with corpus.
    Defaults to 0.1."""
    whole_word_masking: bool | None = None
    """wholeWordMasking masks all WordPieces of a word together. Only with corpus.
    Defaults to false."""
    preparation: PreparationSpec | None = None
    """preparation spreads the corpus preparation over CPU pods: how many, how much
    text each holds at once, their CPU and memory. Only with corpus."""
    eval_fraction: float | None = Field(default=None, gt=0, le=0.5)
    """evalFraction holds this fraction of the corpus' documents out of training: the
    preparation makes held-out records of them (at every phase's length), on which
    training evaluates (training.evalEverySteps). Each document is drawn with its own
    seeded chance, so the split depends only on the corpus, chunkBytes and the seed.
    Only with corpus; not with evalTfrecords."""
    eval_tfrecords: GcsObject | None = None
    """evalTfrecords is a gs:// glob of held-out records in the training records' format
    and length, on which training evaluates. Not with evalFraction, nor with
    spec.training.phases (records hold one length: use evalFraction)."""

    rules: ClassVar[tuple[Rule[DataSpec], ...]] = (
        Rule(
            rule="has(self.corpus) || has(self.tfrecords)",
            message="spec.data.corpus: one of spec.data.corpus or spec.data.tfrecords is required",
            holds=lambda d: d.corpus is not None or d.tfrecords is not None,
            field_path=".corpus",
            reason=Reason.REQUIRED,
        ),
        not_together(
            "corpus",
            "tfrecords",
            message="spec.data.tfrecords: must not be set together with spec.data.corpus "
            "(give raw text to prepare or prepared records, not both)",
        ),
        not_together(
            "evalFraction",
            "evalTfrecords",
            message="spec.data.evalTfrecords: must not be set together with "
            "spec.data.evalFraction (hold documents out, or name held-out records, not both)",
        ),
        *(
            not_together(
                "vocab",
                field,
                message=f"spec.data.{field}: only applies when a vocabulary is trained; "
                "remove it or remove spec.data.vocab",
            )
            for field in _VOCAB_TRAINING_FIELDS
        ),
        *(
            not_together(
                "tfrecords",
                field,
                message=f"spec.data.{field}: only applies when preparing spec.data.corpus; "
                "the records in spec.data.tfrecords are already made",
            )
            for field in _PREPARE_ONLY_FIELDS
        ),
        Rule(
            rule=f"(has(self.maxPredictionsPerSeq) ? self.maxPredictionsPerSeq : "
            f"{DEFAULT_MAX_PREDICTIONS_PER_SEQ}) < (has(self.maxSeqLength) ? "
            f"self.maxSeqLength : {DEFAULT_MAX_SEQ_LENGTH})",
            message="spec.data.maxPredictionsPerSeq: must be less than spec.data.maxSeqLength "
            f"(default {DEFAULT_MAX_SEQ_LENGTH})",
            holds=lambda d: (
                d.sequence_length().max_predictions_per_seq < d.sequence_length().max_seq_length
            ),
            field_path=".maxPredictionsPerSeq",
        ),
    )

    def sequence_length(self) -> SequenceLength:
        """The single-phase length: maxSeqLength and maxPredictionsPerSeq, or their defaults."""
        return SequenceLength(
            max_seq_length=DEFAULT_MAX_SEQ_LENGTH
            if self.max_seq_length is None
            else self.max_seq_length,
            max_predictions_per_seq=DEFAULT_MAX_PREDICTIONS_PER_SEQ
            if self.max_predictions_per_seq is None
            else self.max_predictions_per_seq,
        )

    def prepare_setting(self, name: str) -> Any:
        """A corpus-preparation setting (snake_case name), with the operator's default."""
        value = getattr(self, name)
        return PREPARE_DEFAULTS[name] if value is None else value


#: Explicit model dimensions (camelCase); the first three are required together.
_EXPLICIT_DIMENSIONS: Final = ("hiddenSize", "numLayers", "numHeads", "intermediateSize")
_REQUIRED_DIMENSIONS: Final = _EXPLICIT_DIMENSIONS[:3]
_ANY_DIMENSION_CEL: Final = " || ".join(f"has(self.{field})" for field in _EXPLICIT_DIMENSIONS)
#: The fields that start the model from trained weights, which fix its dimensions.
_STARTS_FROM: Final = ("initCheckpoint", "initFromOutput")
_STARTS_FROM_CEL: Final = " || ".join(f"has(self.{field})" for field in _STARTS_FROM)
# A checkpoint prefix names no file of the checkpoint itself (TF writes
# PREFIX.index, PREFIX.meta and PREFIX.data-00000-of-00001).
_CHECKPOINT_FILE_SUFFIX_RE: Final = r"[.](index|meta|data-[0-9]+-of-[0-9]+)$"
_CHECKPOINT_FILE_SUFFIX: Final = re.compile(_CHECKPOINT_FILE_SUFFIX_RE)


def _dimension_required(field: str) -> Rule[Any]:
    """``field`` is required once any explicit dimension is given (no size, no checkpoint)."""

    def holds(model: ModelSpec) -> bool:
        explicit = model.size is None and model.starts_from is None
        return not (explicit and model.explicit_dimensions_given) or present(model, field)

    return Rule(
        rule=f"has(self.size) || {_STARTS_FROM_CEL} || !({_ANY_DIMENSION_CEL}) "
        f"|| has(self.{field})",
        message=f"spec.model.{field}: required with explicit dimensions "
        "(hiddenSize, numLayers, numHeads); or use spec.model.size",
        holds=holds,
        field_path=f".{field}",
        reason=Reason.REQUIRED,
    )


class ModelSpec(RuledModel):
    """The BERT encoder to train: a named size, explicit dimensions, or a checkpoint.

    Exactly one of size, explicit dimensions (hiddenSize, numLayers, numHeads and
    optionally intermediateSize) or initCheckpoint.
    """

    size: ModelSize | None = Field(default=None, strict=False)
    """size is a named BERT size from google-research/bert: tiny (L-2/H-128),
    mini (L-4/H-256), small (L-4/H-512), medium (L-8/H-512), base (L-12/H-768) or
    large (L-24/H-1024); H/64 attention heads and a 4H feed-forward layer."""
    hidden_size: int | None = Field(default=None, ge=8, le=8192)
    """hiddenSize is the width of every layer (explicit dimensions; needs numLayers and
    numHeads, must be divisible by numHeads)."""
    num_layers: int | None = Field(default=None, ge=1, le=64)
    """numLayers is the number of transformer layers (explicit dimensions)."""
    num_heads: int | None = Field(default=None, ge=1, le=128)
    """numHeads is the number of attention heads per layer (explicit dimensions)."""
    intermediate_size: int | None = Field(default=None, ge=8, le=32768)
    """intermediateSize is the width of the feed-forward layer (explicit dimensions).
    Defaults to 4 x hiddenSize."""
    init_checkpoint: GcsObject | None = None
    """initCheckpoint continues pretraining from a Google TF1 BERT checkpoint prefix,
    e.g. gs://bucket/multi_cased_L-12_H-768_A-12/bert_model.ckpt. Its bert_config.json
    and vocab.txt must be in the same directory: they fix the dimensions and the
    vocabulary, so size, explicit dimensions and data.vocab/vocabSize/minFrequency
    are not allowed with it. Checked when the job runs."""
    init_from_output: GcsObject | None = None
    """initFromOutput continues pretraining from another BertPretrainJob's weights: its
    spec.output, e.g. gs://bucket/runs/base-phase1. Training starts from the newest
    readable checkpoint under its checkpoints/ (either runtime's format: ckpt-N written
    by TensorFlow, ckpt-N.npz by a TPU slice's JAX runtime; a JAX slice reads only the
    latter), with the bert_config.json and vocab.txt the train stage writes beside them,
    which fix the dimensions and the vocabulary as with initCheckpoint. Weights only: the
    step, the optimizer's moments and the learning-rate schedule start over, as with
    Google's init_checkpoint. Must not be spec.output itself (a job resumes from its own
    checkpoints without it). Checked when the job runs."""

    rules: ClassVar[tuple[Rule[ModelSpec], ...]] = (
        Rule(
            rule=f"has(self.size) || {_STARTS_FROM_CEL} || {_ANY_DIMENSION_CEL}",
            message="spec.model.size: one of spec.model.size, explicit dimensions "
            "(hiddenSize, numLayers, numHeads), spec.model.initCheckpoint or "
            "spec.model.initFromOutput is required",
            holds=lambda m: (
                m.size is not None or m.starts_from is not None or m.explicit_dimensions_given
            ),
            field_path=".size",
            reason=Reason.REQUIRED,
        ),
        *(
            not_together(
                "size",
                field,
                message=f"spec.model.{field}: must not be set together with spec.model.size "
                "(a named size fixes the dimensions)",
            )
            for field in _EXPLICIT_DIMENSIONS
        ),
        *(
            not_together(
                start,
                field,
                message=f"spec.model.{field}: must not be set with spec.model.{start} "
                "(the checkpoint's bert_config.json fixes the dimensions)",
            )
            for start in _STARTS_FROM
            for field in ("size", *_EXPLICIT_DIMENSIONS)
        ),
        not_together(
            "initCheckpoint",
            "initFromOutput",
            message="spec.model.initFromOutput: must not be set with spec.model.initCheckpoint "
            "(the model starts from one of them)",
        ),
        *(_dimension_required(field) for field in _REQUIRED_DIMENSIONS),
        Rule(
            rule="!has(self.hiddenSize) || !has(self.numHeads) "
            "|| self.hiddenSize % self.numHeads == 0",
            message="spec.model.hiddenSize: must be divisible by spec.model.numHeads "
            "(each head gets hiddenSize / numHeads units)",
            holds=lambda m: (
                m.hidden_size is None or m.num_heads is None or m.hidden_size % m.num_heads == 0
            ),
            field_path=".hiddenSize",
        ),
        Rule(
            rule=f"!has(self.initCheckpoint) "
            f"|| !self.initCheckpoint.matches({literal(_CHECKPOINT_FILE_SUFFIX_RE)})",
            message="spec.model.initCheckpoint: must be the checkpoint prefix "
            "(e.g. gs://bucket/uncased_L-12_H-768_A-12/bert_model.ckpt), "
            "not one of its .index, .meta or .data files",
            holds=lambda m: (
                m.init_checkpoint is None
                or _CHECKPOINT_FILE_SUFFIX.search(m.init_checkpoint) is None
            ),
            field_path=".initCheckpoint",
        ),
    )

    @property
    def starts_from(self) -> str | None:
        """initCheckpoint or initFromOutput: the trained weights the model starts from."""
        return self.init_checkpoint or self.init_from_output

    @property
    def starts_from_field(self) -> str:
        """The name of the field ``starts_from`` comes from, for messages."""
        return "initCheckpoint" if self.init_checkpoint else "initFromOutput"

    @property
    def explicit_dimensions_given(self) -> bool:
        """True when any of hiddenSize, numLayers, numHeads, intermediateSize is set."""
        return any(present(self, field) for field in _EXPLICIT_DIMENSIONS)

    def dimensions(self) -> Dimensions | None:
        """The encoder's dimensions; None with initCheckpoint (read from its bert_config.json)."""
        if self.size is not None:
            return SIZES[self.size]
        if self.hidden_size is None or self.num_layers is None or self.num_heads is None:
            return None
        return Dimensions(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size or 4 * self.hidden_size,
        )


class Optimizer(StrEnum):
    """The optimizer of the training step."""

    ADAMW = "adamw"
    LAMB = "lamb"


class Precision(StrEnum):
    """Numeric precision of the computation (variables stay float32)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


class TrainingPhase(RuledModel):
    """One phase of training: its steps at one sequence length, batch and schedule."""

    train_steps: int = Field(ge=1, le=100000000)
    """trainSteps is the number of optimizer steps of this phase (NVIDIA's recipe:
    7,038 at length 128, then 1,563 at 512)."""
    max_seq_length: int = Field(ge=8, le=512)
    """maxSeqLength is the number of tokens per sequence in this phase; the
    preparation writes records of every phase's length from one reading of the corpus."""
    max_predictions_per_seq: int = Field(ge=1, le=512)
    """maxPredictionsPerSeq is the most masked tokens predicted per sequence in this
    phase; less than maxSeqLength (BERT: 20 at 128, 80 at 512)."""
    global_batch_size: int = Field(ge=1, le=1048576)
    """globalBatchSize is the number of sequences per step in this phase; it and its
    micro-batch must be divisible by the slice's chip count."""
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    """learningRate is this phase's peak learning rate. Defaults to
    spec.training.learningRate."""
    warmup_steps: int | None = Field(default=None, ge=0, le=100000000)
    """warmupSteps is this phase's linear warm-up, after which the rate decays linearly
    to zero at the phase's last step (each phase has its own schedule, as in NVIDIA's
    recipe). At most trainSteps. Defaults to 1% of the phase's trainSteps."""
    gradient_accumulation_steps: int | None = Field(default=None, ge=1, le=1024)
    """gradientAccumulationSteps splits this phase's globalBatchSize into micro-batches.
    Defaults to spec.training.gradientAccumulationSteps."""

    rules: ClassVar[tuple[Rule[TrainingPhase], ...]] = (
        Rule(
            rule="self.maxPredictionsPerSeq < self.maxSeqLength",
            message="spec.training.phases[].maxPredictionsPerSeq: must be less than the "
            "phase's maxSeqLength",
            holds=lambda p: p.max_predictions_per_seq < p.max_seq_length,
            field_path=".maxPredictionsPerSeq",
        ),
        Rule(
            rule="!has(self.warmupSteps) || self.warmupSteps <= self.trainSteps",
            message="spec.training.phases[].warmupSteps: must not exceed the phase's trainSteps",
            holds=lambda p: p.warmup_steps is None or p.warmup_steps <= p.train_steps,
            field_path=".warmupSteps",
        ),
    )


#: The single-phase fields that spec.training.phases replaces (under spec).
_SINGLE_PHASE_FIELDS: Final = (
    "training.trainSteps",
    "training.globalBatchSize",
    "training.warmupSteps",
    "data.maxSeqLength",
    "data.maxPredictionsPerSeq",
)
_ACCUMULATION_CEL: Final = (
    "(has(p.gradientAccumulationSteps) ? p.gradientAccumulationSteps "
    ": self.gradientAccumulationSteps)"
)


def _required_without_phases(field: str) -> Rule[Any]:
    return Rule(
        rule=f"has(self.phases) || has(self.{field})",
        message=f"spec.training.{field}: required unless spec.training.phases is given",
        holds=lambda t: t.phases is not None or present(t, field),
        field_path=f".{field}",
        reason=Reason.REQUIRED,
    )


class TrainingSpec(RuledModel):
    """The optimisation: batch, steps, schedule, checkpoints; in one phase or several."""

    global_batch_size: int | None = Field(default=None, ge=1, le=1048576)
    """globalBatchSize is the number of sequences per step across the whole slice;
    must be divisible by the slice's chip count (BERT: 256 at length 128). Required
    unless phases are given."""
    train_steps: int | None = Field(default=None, ge=1, le=100000000)
    """trainSteps is the number of optimizer steps (BERT: 1,000,000). Required unless
    phases are given."""
    phases: Annotated[list[TrainingPhase], Field(min_length=1, max_length=MAX_PHASES)] | None = None
    """phases trains in several phases, one after the other, each at its own sequence
    length, batch and schedule (BERT: 90% of the steps at length 128, the rest at
    512). The weights and the optimizer's moments carry over from one phase to the
    next; each phase's learning rate warms up and decays on its own. Replaces
    trainSteps, globalBatchSize, warmupSteps, data.maxSeqLength and
    data.maxPredictionsPerSeq. Needs data.corpus. status.trainingPhase shows the phase
    that is training."""
    learning_rate: float = Field(default=0.0001, gt=0, le=1)
    """learningRate is the peak learning rate, reached after warm-up and decayed
    linearly to zero at trainSteps (the default of each phase's)."""
    warmup_steps: int | None = Field(default=None, ge=0, le=100000000)
    """warmupSteps is the number of steps of linear learning-rate warm-up; at most
    trainSteps. Defaults to 1% of trainSteps (BERT: 10,000 of 1,000,000)."""
    optimizer: Optimizer = Field(default=Optimizer.ADAMW, strict=False)
    """optimizer is adamw (BERT's Adam with decoupled weight decay) or lamb (for large
    batches, as in "Large Batch Optimization for Deep Learning")."""
    weight_decay: float = Field(default=0.01, ge=0, le=1)
    """weightDecay is the decoupled weight decay rate (not applied to LayerNorm and bias)."""
    checkpoint_every_steps: int = Field(default=1000, ge=1, le=100000000)
    """checkpointEverySteps is how often a checkpoint is written to spec.output; a
    preempted attempt resumes from the latest one."""
    keep_checkpoints: int = Field(default=3, ge=1, le=100)
    """keepCheckpoints is how many recent checkpoints are kept."""
    seed: int = Field(default=12345, ge=0, le=2147483647)
    """seed makes initialisation, data order and masking reproducible."""
    precision: Precision = Field(default=Precision.FLOAT32, strict=False)
    """precision is float32, or bfloat16 for mixed precision (float32 variables,
    bfloat16 compute), the TPU's native format."""
    eval_every_steps: int | None = Field(default=None, ge=1, le=100000000)
    """evalEverySteps is how often training evaluates on the held-out records
    (data.evalFraction or data.evalTfrecords), and it always does at the last step.
    The metrics carry google-research/bert's names (masked_lm_accuracy,
    masked_lm_loss, next_sentence_accuracy, next_sentence_loss) in TensorBoard (eval/)
    and in status.progress.eval. Defaults to checkpointEverySteps."""
    eval_batches: int | None = Field(default=None, ge=1, le=100000)
    """evalBatches is the number of held-out batches (of one micro-batch each) every
    evaluation reads, the same ones each time. Defaults to 100
    (google-research/bert's max_eval_steps)."""
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    """gradientAccumulationSteps splits each step's globalBatchSize into this many
    micro-batches, run one after the other, whose gradients are summed into one
    update: a batch larger than the slice's memory holds at once (NVIDIA's BERT
    recipe: 64k sequences). The update is the full batch's; only memory and time per
    step change, so it may be raised on a running job (after an OOM, say). The
    micro-batch (globalBatchSize / gradientAccumulationSteps) must be divisible by
    the slice's chip count. The default of each phase's."""

    rules: ClassVar[tuple[Rule[TrainingSpec], ...]] = (
        *(_required_without_phases(field) for field in ("trainSteps", "globalBatchSize")),
        *(
            not_together(
                "phases",
                field.removeprefix("training."),
                message=f"spec.{field}: must not be set with spec.training.phases (each "
                "phase sets its own)",
            )
            for field in _SINGLE_PHASE_FIELDS
            if field.startswith("training.")
        ),
        Rule(
            rule="!has(self.globalBatchSize) "
            "|| self.globalBatchSize % self.gradientAccumulationSteps == 0",
            message="spec.training.gradientAccumulationSteps: must divide "
            "spec.training.globalBatchSize",
            holds=lambda t: (
                t.global_batch_size is None
                or t.global_batch_size % t.gradient_accumulation_steps == 0
            ),
            field_path=".gradientAccumulationSteps",
        ),
        Rule(
            rule="!has(self.phases) || self.phases.all(p, "
            f"p.globalBatchSize % {_ACCUMULATION_CEL} == 0)",
            message="spec.training.phases[].gradientAccumulationSteps: must divide the "
            "phase's globalBatchSize",
            holds=lambda t: all(
                p.global_batch_size % t.phase_accumulation(p) == 0 for p in t.phases or ()
            ),
            field_path=".phases",
        ),
        Rule(
            rule="!has(self.phases) || self.phases.all(p, self.phases.all(q, "
            "p.maxSeqLength != q.maxSeqLength || "
            "p.maxPredictionsPerSeq == q.maxPredictionsPerSeq))",
            message="spec.training.phases[].maxPredictionsPerSeq: phases of the same "
            "maxSeqLength train on the same records, so they need the same "
            "maxPredictionsPerSeq",
            holds=lambda t: (
                len({(p.max_seq_length, p.max_predictions_per_seq) for p in t.phases or ()})
                == len({p.max_seq_length for p in t.phases or ()})
            ),
            field_path=".phases",
        ),
        Rule(
            rule="!has(self.warmupSteps) || !has(self.trainSteps) "
            "|| self.warmupSteps <= self.trainSteps",
            message="spec.training.warmupSteps: must not exceed spec.training.trainSteps",
            holds=lambda t: (
                t.warmup_steps is None or t.train_steps is None or t.warmup_steps <= t.train_steps
            ),
            field_path=".warmupSteps",
        ),
    )

    def phase_accumulation(self, phase: TrainingPhase) -> int:
        """A phase's gradientAccumulationSteps, or the training's."""
        if phase.gradient_accumulation_steps is not None:
            return phase.gradient_accumulation_steps
        return self.gradient_accumulation_steps

    @property
    def total_steps(self) -> int:
        """trainSteps, or the sum of the phases'."""
        if self.phases is not None:
            return sum(p.train_steps for p in self.phases)
        assert self.train_steps is not None, "a validated spec has trainSteps or phases"
        return self.train_steps

    @property
    def effective_warmup_steps(self) -> int:
        """warmupSteps, or its default: DEFAULT_WARMUP_FRACTION of trainSteps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.total_steps * DEFAULT_WARMUP_FRACTION)


#: "accelerator/topology" -> chips of every slice in the catalogue, as a CEL map literal.
#: Flat keys make a missing accelerator or topology one failed `in` test, so the rules
#: need no guard against CEL's "no such key" error.
_CHIPS_CEL: Final = literal(
    {
        f"{accelerator}/{topology}": tpu_catalogue.topology_chips(topology)
        for accelerator, generation in tpu_catalogue.CATALOGUE.items()
        for topology in generation.topologies
    }
)


#: The same map with the chip counts as strings, for messages: the API server's cost
#: estimator cannot bound the length of string(int), and rejects rules that use it
#: in a message expression.
_CHIPS_TEXT_CEL: Final = literal(
    {
        f"{accelerator}/{topology}": str(tpu_catalogue.topology_chips(topology))
        for accelerator, generation in tpu_catalogue.CATALOGUE.items()
        for topology in generation.topologies
    }
)


def _slice_key_cel(tpu: str) -> str:
    """CEL for the `_CHIPS_CEL` key of the TpuSpec at ``tpu`` (``self`` or ``self.tpu``)."""
    return f"({tpu}.accelerator + '/' + {tpu}.topology)"


#: accelerator -> "1x1, 2x2, ..." for error messages (generated from the catalogue).
_TOPOLOGY_LIST_CEL: Final = literal(
    {
        str(accelerator): ", ".join(generation.topologies)
        for accelerator, generation in tpu_catalogue.CATALOGUE.items()
    }
)


def _topology_list(accelerator: Accelerator) -> str:
    return ", ".join(tpu_catalogue.valid_topologies(accelerator))


def _vm_map(value: Any) -> str:
    """accelerator/topology -> ``value(shape)`` as a CEL map literal (from the catalogue)."""
    return literal(
        {
            f"{accelerator}/{topology}": value(shape)
            for accelerator, generation in tpu_catalogue.CATALOGUE.items()
            for topology in generation.topologies
            if (shape := generation.shape(topology)) is not None
        }
    )


#: accelerator/topology -> each VM's vCPUs, memory (quantities) and machine type. Flat
#: maps of strings: the API server's cost estimate of a rule grows with what it indexes.
_VM_CEL: Final = {
    "cpu": _vm_map(lambda shape: shape.vm.cpu),
    "memory": _vm_map(lambda shape: shape.vm.memory),
    "machineType": _vm_map(lambda shape: shape.machine_type),
}


class TpuHostResources(RuledModel):
    """CPU and memory of each training pod, on its TPU VM. Unset fields take the defaults."""

    cpu: str | None = Field(default=None, max_length=32, pattern=QUANTITY_PATTERN)
    """cpu is the pod's CPU request (a Kubernetes quantity). It feeds the input pipeline
    and checkpointing. Defaults to 80% of the VM's vCPUs (docs/gke.md has the table: 89
    on a v5e ct5lp-hightpu-4t); at most the VM's vCPUs."""
    memory: str | None = Field(default=None, max_length=32, pattern=QUANTITY_PATTERN)
    """memory is the pod's memory request and limit (a Kubernetes quantity). Defaults to
    75% of the VM's memory (144G on a ct5lp-hightpu-4t); at most the VM's memory."""


def _fits(t: TpuSpec, capacity: str) -> bool:
    """The pod's ``capacity`` (cpu, memory) is at most its VM's, when both are known."""
    given = getattr(t.resources, capacity, None)
    shape = t.shape()
    if given is None or shape is None:
        return True
    return quantity.parse(given) <= quantity.parse(getattr(shape.vm, capacity))


def _over_capacity_rule(capacity: str, unit: str) -> Rule[TpuSpec]:
    key = _slice_key_cel("self")
    limit = f"{_VM_CEL[capacity]}[{key}]"
    field = f"self.resources.{capacity}"
    return Rule(
        rule=f"!has(self.resources) || !has({field}) || !({key} in {_VM_CEL[capacity]}) "
        f"|| quantity({field}).compareTo(quantity({limit})) <= 0",
        message=f"spec.tpu.resources.{capacity}: more than the {unit} of the slice's TPU VM",
        message_expression=f"'spec.tpu.resources.{capacity}: ' + {field} + ' is more than the ' "
        f"+ {limit} + ' {unit} of each ' + {_VM_CEL['machineType']}[{key}] + ' VM of a ' "
        f"+ self.accelerator + ' ' + self.topology + ' slice'",
        explain=lambda t: _over_capacity(t, capacity, unit),
        holds=lambda t: _fits(t, capacity),
        field_path=f".resources.{capacity}",
    )


def _over_capacity(t: TpuSpec, capacity: str, unit: str) -> str:
    """The Python twin of the rule's message (only called when ``_fits`` is false)."""
    shape = t.shape()
    assert shape is not None
    return (
        f"spec.tpu.resources.{capacity}: {getattr(t.resources, capacity)} is more than the "
        f"{getattr(shape.vm, capacity)} {unit} of each {shape.machine_type} VM of a "
        f"{t.accelerator} {t.topology} slice"
    )


class TpuSpec(RuledModel):
    """The GKE TPU slice that trains the model (one pod per TPU VM)."""

    accelerator: Accelerator = Field(strict=False)
    """accelerator is the TPU generation, as GKE's cloud.google.com/gke-tpu-accelerator
    node label: tpu-v4-podslice (v4), tpu-v5-lite-podslice (v5e), tpu-v5p-slice (v5p)
    or tpu-v6e-slice (v6e)."""
    topology: str = Field(max_length=16, pattern=TOPOLOGY_PATTERN)
    """topology is the slice shape, as GKE's cloud.google.com/gke-tpu-topology node
    label: AxB on v5e and v6e (1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16), AxBxC
    on v4 and v5p (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...). Slices larger than one
    chip have 4 chips per VM, so a 4x4 slice runs 4 worker pods."""
    spot: bool = False
    """spot schedules onto Spot VMs (cloud.google.com/gke-spot=true): cheaper, and
    preemptible; a preempted attempt resumes from the last checkpoint, up to
    runPolicy.maxRestarts times."""
    resources: TpuHostResources | None = None
    """resources are each training pod's CPU and memory on its TPU VM (the TPU chips are
    requested apart, as google.com/tpu). Defaults suit each machine type."""

    rules: ClassVar[tuple[Rule[TpuSpec], ...]] = (
        Rule(
            rule=f"{_slice_key_cel('self')} in {_CHIPS_CEL}",
            message="spec.tpu.topology: not a valid topology for spec.tpu.accelerator",
            message_expression=f"'spec.tpu.topology: ' + self.topology "
            f"+ ' is not a valid topology for ' + self.accelerator "
            f"+ '; valid: ' + {_TOPOLOGY_LIST_CEL}[self.accelerator]",
            explain=lambda t: (
                f"spec.tpu.topology: {t.topology} is not a valid topology for "
                f"{t.accelerator}; valid: {_topology_list(t.accelerator)}"
            ),
            holds=lambda t: t.shape() is not None,
            field_path=".topology",
        ),
        _over_capacity_rule("cpu", "vCPUs"),
        _over_capacity_rule("memory", "memory"),
    )

    def shape(self) -> tpu_catalogue.SliceShape | None:
        """The slice shape from the TPU catalogue; None if the topology is not listed."""
        return tpu_catalogue.slice_shape(self.accelerator, self.topology)


class ExportSpec(RuledModel):
    """What to produce after training, from the last checkpoint."""

    hugging_face: bool = True
    """huggingFace writes a HuggingFace transformers BERT directory (config.json,
    model weights, vocab.txt, tokenizer config) under spec.output/export/. When
    false the job ends after training."""
    resources: CpuResources | None = None
    """resources are the export pod's CPU and memory; it loads the whole model on CPU."""


class RunPolicy(RuledModel):
    """How the job is run: restarts after preemption, deadlines, clean-up, suspension."""

    max_restarts: int = Field(default=3, ge=0, le=100)
    """maxRestarts is how many times a training attempt lost to preemption or node
    failure is retried from the last checkpoint. Invalid input fails the job at once
    whatever this says."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=31536000)
    """activeDeadlineSeconds fails the job when it has run this long (all stages and
    attempts together). Unlimited when not set."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=31536000)
    """ttlSecondsAfterFinished deletes the BertPretrainJob (and its Jobs) this long
    after it succeeded or failed. Kept until deleted when not set."""
    suspend: bool = False
    """suspend stops the running stage (deleting its pods; training resumes from the
    last checkpoint) until set back to false."""


def _eval_setting(field: str) -> Rule[Any]:
    """``training.<field>`` is an evaluation setting: only with held-out records."""
    return Rule(
        rule=f"!has(self.training.{field}) || has(self.data.evalFraction) "
        "|| has(self.data.evalTfrecords)",
        message=f"spec.training.{field}: only applies with held-out records "
        "(spec.data.evalFraction or spec.data.evalTfrecords)",
        holds=lambda s: not present(s.training, field) or s.evaluates,
        field_path=f".training.{field}",
        reason=Reason.FORBIDDEN,
    )


class BertPretrainJobSpec(RuledModel):
    """BertPretrainJobSpec asks for one BERT pretraining run on a GKE TPU slice."""

    data: DataSpec
    """data is the pretraining text and its preparation."""
    model: ModelSpec
    """model is the BERT encoder to pretrain."""
    training: TrainingSpec
    """training is the optimisation schedule."""
    tpu: TpuSpec
    """tpu is the TPU slice that runs training (preparation and export run on CPU nodes)."""
    output: GcsPrefix
    """output is the gs:// prefix that receives everything the job writes: vocab.txt
    and tfrecords/ (when prepared), checkpoints/, export/. Use one per job."""
    image: str | None = Field(default=None, min_length=1, max_length=512)
    """image is the trainer container image. Defaults to the operator's configured
    trainer image."""
    service_account_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN
    )
    """serviceAccountName is the Kubernetes service account of the job's pods; it needs
    access to the gs:// paths (e.g. through GKE Workload Identity). Defaults to the
    namespace's default account."""
    export: ExportSpec = Field(default_factory=ExportSpec, json_schema_extra={"default": {}})
    """export is what to produce after training."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy, json_schema_extra={"default": {}})
    """runPolicy controls restarts, deadlines, clean-up and suspension."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=QUEUE_NAME_PATTERN)
    """queueName is the Kueue LocalQueue that admits the job's workloads (the
    kueue.x-k8s.io/queue-name label). Not queued when not set."""

    rules: ClassVar[tuple[Rule[BertPretrainJobSpec], ...]] = (
        Rule(
            rule=f"!({_slice_key_cel('self.tpu')} in {_CHIPS_CEL}) "
            "|| !has(self.training.globalBatchSize) "
            f"|| self.training.globalBatchSize % {_CHIPS_CEL}[{_slice_key_cel('self.tpu')}] == 0",
            message="spec.training.globalBatchSize: must be divisible by the chips of the slice",
            message_expression=f"'spec.training.globalBatchSize: must be divisible by the ' "
            f"+ {_CHIPS_TEXT_CEL}[{_slice_key_cel('self.tpu')}] "
            f"+ ' chips of a ' + self.tpu.accelerator + ' ' + self.tpu.topology + ' slice'",
            explain=lambda s: (
                f"spec.training.globalBatchSize: must be divisible by the {_chips(s)} chips "
                f"of a {s.tpu.accelerator} {s.tpu.topology} slice"
            ),
            holds=lambda s: (
                (shape := s.tpu.shape()) is None
                or s.training.global_batch_size is None
                or s.training.global_batch_size % shape.chips == 0
            ),
            field_path=".training.globalBatchSize",
        ),
        Rule(
            rule=f"!({_slice_key_cel('self.tpu')} in {_CHIPS_CEL}) "
            "|| !has(self.training.globalBatchSize) "
            "|| self.training.globalBatchSize % self.training.gradientAccumulationSteps != 0 "
            "|| (self.training.globalBatchSize / self.training.gradientAccumulationSteps) "
            f"% {_CHIPS_CEL}[{_slice_key_cel('self.tpu')}] == 0",
            message="spec.training.gradientAccumulationSteps: the micro-batch (globalBatchSize "
            "/ gradientAccumulationSteps) must be divisible by the chips of the slice",
            message_expression="'spec.training.gradientAccumulationSteps: the micro-batch "
            "(globalBatchSize / gradientAccumulationSteps) must be divisible by the ' "
            f"+ {_CHIPS_TEXT_CEL}[{_slice_key_cel('self.tpu')}] "
            f"+ ' chips of a ' + self.tpu.accelerator + ' ' + self.tpu.topology + ' slice'",
            explain=lambda s: (
                "spec.training.gradientAccumulationSteps: the micro-batch (globalBatchSize / "
                f"gradientAccumulationSteps) must be divisible by the {_chips(s)} chips "
                f"of a {s.tpu.accelerator} {s.tpu.topology} slice"
            ),
            holds=lambda s: (
                (shape := s.tpu.shape()) is None
                or s.training.global_batch_size is None
                or s.training.global_batch_size % s.training.gradient_accumulation_steps != 0
                or (s.training.global_batch_size // s.training.gradient_accumulation_steps)
                % shape.chips
                == 0
            ),
            field_path=".training.gradientAccumulationSteps",
        ),
        Rule(
            rule=f"!({_slice_key_cel('self.tpu')} in {_CHIPS_CEL}) || !has(self.training.phases) "
            "|| self.training.phases.all(p, p.globalBatchSize "
            f"% {_ACCUMULATION_CEL.replace('self.', 'self.training.')} != 0 || "
            f"(p.globalBatchSize / {_ACCUMULATION_CEL.replace('self.', 'self.training.')}) "
            f"% {_CHIPS_CEL}[{_slice_key_cel('self.tpu')}] == 0)",
            message="spec.training.phases[].globalBatchSize: each phase's micro-batch "
            "(globalBatchSize / gradientAccumulationSteps) must be divisible by the chips "
            "of the slice",
            message_expression="'spec.training.phases[].globalBatchSize: each phase\\'s "
            "micro-batch (globalBatchSize / gradientAccumulationSteps) must be divisible by "
            f"the ' + {_CHIPS_TEXT_CEL}[{_slice_key_cel('self.tpu')}] "
            f"+ ' chips of a ' + self.tpu.accelerator + ' ' + self.tpu.topology + ' slice'",
            explain=lambda s: (
                "spec.training.phases[].globalBatchSize: each phase's micro-batch "
                "(globalBatchSize / gradientAccumulationSteps) must be divisible by the "
                f"{_chips(s)} chips of a {s.tpu.accelerator} {s.tpu.topology} slice"
            ),
            holds=lambda s: (
                (shape := s.tpu.shape()) is None
                or all(
                    p.global_batch_size % s.training.phase_accumulation(p) != 0
                    or (p.global_batch_size // s.training.phase_accumulation(p)) % shape.chips == 0
                    for p in s.training.phases or ()
                )
            ),
            field_path=".training.phases",
        ),
        *(
            not_together(
                "training.phases",
                field,
                message=f"spec.{field}: must not be set with spec.training.phases (each "
                "phase sets its own)",
            )
            for field in _SINGLE_PHASE_FIELDS
            if field.startswith("data.")
        ),
        not_together(
            "training.phases",
            "data.evalTfrecords",
            message="spec.data.evalTfrecords: must not be set with spec.training.phases "
            "(records hold one length); give spec.data.evalFraction, and the preparation "
            "holds documents out at every phase's length",
        ),
        *(_eval_setting(field) for field in ("evalEverySteps", "evalBatches")),
        not_together(
            "training.phases",
            "data.tfrecords",
            message="spec.data.tfrecords: must not be set with spec.training.phases; give "
            "spec.data.corpus, and the preparation writes records of every phase's length "
            "(prepared records hold one length)",
        ),
        *(
            not_together(
                f"model.{start}",
                f"data.{field}",
                message=f"spec.data.{field}: must not be set with spec.model.{start} "
                "(the checkpoint's own vocab.txt is used)",
            )
            for start in _STARTS_FROM
            for field in ("vocab", *_VOCAB_TRAINING_FIELDS)
        ),
        Rule(
            rule="!has(self.data.tfrecords) || has(self.data.vocab) "
            "|| has(self.model.initCheckpoint) || has(self.model.initFromOutput)",
            message="spec.data.vocab: required with spec.data.tfrecords (the vocab.txt the "
            "records were made with), unless spec.model.initCheckpoint or "
            "spec.model.initFromOutput provides it",
            holds=lambda s: (
                s.data.tfrecords is None
                or s.data.vocab is not None
                or s.model.starts_from is not None
            ),
            field_path=".data.vocab",
            reason=Reason.REQUIRED,
        ),
        Rule(
            rule="!has(self.model.initFromOutput) || "
            "self.model.initFromOutput.split('/').filter(p, p != '') "
            "!= self.output.split('/').filter(p, p != '')",
            message="spec.model.initFromOutput: must not be spec.output itself (a job resumes "
            "from its own checkpoints without it)",
            holds=lambda s: (
                s.model.init_from_output is None
                or _path_parts(s.model.init_from_output) != _path_parts(s.output)
            ),
            field_path=".model.initFromOutput",
        ),
    )

    def training_phases(self) -> list[ResolvedPhase]:
        """The phases of training with every default applied: one unless training.phases."""
        training = self.training
        if training.phases is None:
            assert training.train_steps is not None and training.global_batch_size is not None
            return [
                ResolvedPhase(
                    index=0,
                    first_step=0,
                    train_steps=training.train_steps,
                    length=self.data.sequence_length(),
                    global_batch_size=training.global_batch_size,
                    gradient_accumulation_steps=training.gradient_accumulation_steps,
                    learning_rate=training.learning_rate,
                    warmup_steps=training.effective_warmup_steps,
                )
            ]
        resolved, first = [], 0
        for index, phase in enumerate(training.phases):
            resolved.append(
                ResolvedPhase(
                    index=index,
                    first_step=first,
                    train_steps=phase.train_steps,
                    length=SequenceLength(phase.max_seq_length, phase.max_predictions_per_seq),
                    global_batch_size=phase.global_batch_size,
                    gradient_accumulation_steps=training.phase_accumulation(phase),
                    learning_rate=phase.learning_rate or training.learning_rate,
                    warmup_steps=phase.warmup_steps
                    if phase.warmup_steps is not None
                    else int(phase.train_steps * DEFAULT_WARMUP_FRACTION),
                )
            )
            first += phase.train_steps
        return resolved

    @property
    def evaluates(self) -> bool:
        """Training evaluates on held-out records (evalFraction or evalTfrecords)."""
        return self.data.eval_fraction is not None or self.data.eval_tfrecords is not None

    def sequence_lengths(self) -> list[SequenceLength]:
        """The distinct lengths the phases train at, in the order they first appear."""
        return list(dict.fromkeys(p.length for p in self.training_phases()))


@dataclass(frozen=True)
class ResolvedPhase:
    """One phase of training, defaults applied; steps are counted over the whole run."""

    index: int
    first_step: int
    """The run's step this phase starts at (the sum of the earlier phases' steps)."""
    train_steps: int
    """This phase's own steps."""
    length: SequenceLength
    global_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    warmup_steps: int

    @property
    def end_step(self) -> int:
        return self.first_step + self.train_steps


def _path_parts(uri: str) -> list[str]:
    """A gs:// URI's parts, so that a trailing or doubled slash makes no other prefix."""
    return [part for part in uri.split("/") if part]


def _chips(spec: BertPretrainJobSpec) -> int:
    shape = spec.tpu.shape()
    return 0 if shape is None else shape.chips
