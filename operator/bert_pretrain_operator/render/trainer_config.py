"""The trainer's configuration for a job: where everything lives in GCS, and how to run.

A job's outputs sit under ``spec.output``: the trained vocab, the prepared
records, checkpoints, TensorBoard summaries and the export. Inputs the user
gives (vocab, records, an init checkpoint) are read where they are.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from bert_pretrain_operator.api import BertPretrainJob, Dimensions
from bert_pretrain_operator.api.status import InputsStatus
from bert_trainer import contract
from bert_trainer.config import (
    BertModelConfig,
    CheckConfig,
    CheckReport,
    ExportConfig,
    JobRef,
    PrepareConfig,
    RecordSet,
    TrainConfig,
    TrainerConfig,
)

#: Shards of each held-out record set (spec.data.evalFraction).
HELD_OUT_SHARDS = 1
#: Vocabulary size when a vocab is trained and spec.data.vocabSize is unset.
DEFAULT_VOCAB_SIZE = 30522


@dataclass(frozen=True)
class ResolvedInputs:
    """Facts the spec alone cannot give, read from GCS before a stage starts.

    With ``model.initCheckpoint`` the checkpoint's bert_config.json gives the
    dimensions and vocabulary size; with a given ``data.vocab`` its line count is
    the vocabulary size. None means "take it from the spec".
    """

    vocab_size: int | None = None
    dimensions: Dimensions | None = None

    @classmethod
    def from_report(cls, report: CheckReport) -> ResolvedInputs:
        """What ``bpj render`` read from an init checkpoint itself."""
        return cls.from_status(InputsStatus.model_validate(report.model_dump()))

    @classmethod
    def from_status(cls, inputs: InputsStatus) -> ResolvedInputs:
        dims = inputs.dimensions
        return cls(
            vocab_size=inputs.vocab_size,
            dimensions=None if dims is None else Dimensions(**dims.model_dump()),
        )


@dataclass(frozen=True)
class OutputLayout:
    """Where a job's files live (``gs://`` URIs)."""

    vocab: str
    tfrecords_glob: str
    tfrecords_dir: str | None
    """Directory the prepare stage writes records to; None when records are given."""
    records_by_length: dict[int, str]
    """With spec.training.phases: each phase length's records directory,
    ``tfrecords/seq-<maxSeqLength>``."""

    def records_dir(self, length: int) -> str:
        """Where the preparation writes the records of ``length``."""
        assert self.tfrecords_dir is not None, "only a prepared job has records dirs"
        return self.records_by_length.get(length, self.tfrecords_dir)

    def held_out_dir(self, length: int) -> str:
        """Where the preparation writes the held-out records of ``length``."""
        return self.records_dir(length) + "/eval"

    prepare_work: str
    """The preparation's intermediates: its plan, word counts and record fragments."""
    checkpoints: str
    summaries: str
    export: str
    init_checkpoint_config: str | None
    init_checkpoints: str | None
    """Another job's checkpoints, with spec.model.initFromOutput."""


def layout(job: BertPretrainJob) -> OutputLayout:
    spec = job.spec
    out = spec.output.rstrip("/")
    init = spec.model.init_checkpoint
    init_dir = posixpath.dirname(init) if init else None
    source = spec.model.init_from_output
    init_checkpoints = output_checkpoints(source) if source else None
    if spec.data.vocab:
        vocab = spec.data.vocab
    elif init_dir:
        vocab = init_dir + "/vocab.txt"
    elif init_checkpoints:
        vocab = init_checkpoints + "/vocab.txt"
    else:
        vocab = out + "/vocab.txt"
    records_dir = None if spec.data.tfrecords else out + "/tfrecords"
    by_length = {}
    if spec.training.phases is not None and records_dir is not None:
        by_length = {
            length.max_seq_length: f"{records_dir}/seq-{length.max_seq_length}"
            for length in spec.sequence_lengths()
        }
    return OutputLayout(
        vocab=vocab,
        tfrecords_glob=spec.data.tfrecords or f"{records_dir}/*.tfrecord",
        tfrecords_dir=records_dir,
        records_by_length=by_length,
        prepare_work=out + "/prepare",
        checkpoints=output_checkpoints(out),
        summaries=out + "/summaries",
        export=out + "/export/huggingface",
        init_checkpoint_config=init_dir + "/bert_config.json" if init_dir else None,
        init_checkpoints=init_checkpoints,
    )


def output_checkpoints(output: str) -> str:
    """Where a job whose spec.output is ``output`` keeps its checkpoints (and, beside
    them, the bert_config.json and vocab.txt that ``initFromOutput`` reads)."""
    return output.rstrip("/") + "/checkpoints"


def needs_prepare(job: BertPretrainJob) -> bool:
    """A corpus is given: records (and maybe a vocab) must be made first."""
    return job.spec.data.corpus is not None


def vocab_is_trained(job: BertPretrainJob) -> bool:
    return needs_prepare(job) and not job.spec.data.vocab and not job.spec.model.starts_from


def preparation_passes(job: BertPretrainJob) -> tuple[str, ...]:
    """The preparation passes this job runs, in order: count and vocab only when a
    vocab is trained (``reconcile.preparation``)."""
    trained = vocab_is_trained(job)
    return tuple(p for p in contract.PREPARE_PASSES if trained or p not in ("count", "vocab"))


def model_config(job: BertPretrainJob, resolved: ResolvedInputs) -> BertModelConfig:
    dims = resolved.dimensions or job.spec.model.dimensions()
    if dims is None:
        raise ValueError("the model's dimensions are unknown until the init checkpoint is read")
    vocab_size = resolved.vocab_size or job.spec.data.vocab_size or DEFAULT_VOCAB_SIZE
    return BertModelConfig(
        vocab_size=vocab_size,
        hidden_size=dims.hidden_size,
        num_layers=dims.num_layers,
        num_heads=dims.num_heads,
        intermediate_size=dims.intermediate_size,
        max_position_embeddings=max(
            512, *(length.max_seq_length for length in job.spec.sequence_lengths())
        ),
    )


def check_config(job: BertPretrainJob) -> CheckConfig:
    """The inputs the pre-flight check reads, as the spec names them."""
    data = job.spec.data
    return CheckConfig(
        corpus=list(data.corpus) if data.corpus else None,
        tfrecords=data.tfrecords,
        vocab=data.vocab,
        init_checkpoint=job.spec.model.init_checkpoint,
        init_from_output=job.spec.model.init_from_output,
    )


def trainer_config(
    job: BertPretrainJob, resolved: ResolvedInputs | None, *, report_interval: float
) -> TrainerConfig:
    """The whole TrainerConfig for ``job``; each stage's pod reads its own section.

    ``resolved`` None: the inputs are not checked yet, so only the check's section
    (with an init checkpoint the model's dimensions are still unknown).
    """
    spec = job.spec
    paths = layout(job)
    meta = job.metadata
    assert meta.name and meta.namespace, "a job from the cluster has a name and namespace"
    ref = JobRef(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        min_report_interval_seconds=report_interval,
    )
    check = check_config(job)
    if resolved is None:
        return TrainerConfig(job=ref, check=check)
    prepare = None
    lengths = spec.sequence_lengths()
    if needs_prepare(job) and paths.tfrecords_dir is not None:
        data = spec.data
        assert data.corpus is not None
        first, *more = lengths
        records_dir = paths.records_dir(first.max_seq_length)
        extra = [
            RecordSet(
                max_seq_length=length.max_seq_length,
                max_predictions_per_seq=length.max_predictions_per_seq,
                output_tfrecords=paths.records_dir(length.max_seq_length),
            )
            for length in more
        ]
        if data.eval_fraction is not None:
            extra += [
                RecordSet(
                    max_seq_length=length.max_seq_length,
                    max_predictions_per_seq=length.max_predictions_per_seq,
                    output_tfrecords=paths.held_out_dir(length.max_seq_length),
                    held_out=True,
                    # One file, its records split between the hosts of a slice: a
                    # small held-out set never leaves a host with only empty shards.
                    num_shards=HELD_OUT_SHARDS,
                )
                for length in lengths
            ]
        prepare = PrepareConfig(
            corpus=list(data.corpus),
            vocab=None if vocab_is_trained(job) else paths.vocab,
            vocab_size=data.prepare_setting("vocab_size"),
            lowercase=data.lowercase,
            min_frequency=data.prepare_setting("min_frequency"),
            max_seq_length=lengths[0].max_seq_length,
            max_predictions_per_seq=lengths[0].max_predictions_per_seq,
            masked_lm_prob=data.prepare_setting("masked_lm_prob"),
            dupe_factor=data.prepare_setting("dupe_factor"),
            short_seq_prob=data.prepare_setting("short_seq_prob"),
            whole_word_masking=data.prepare_setting("whole_word_masking"),
            seed=spec.training.seed,
            output_vocab=paths.vocab
            if vocab_is_trained(job)
            else spec.output.rstrip("/") + "/vocab.txt",
            output_tfrecords=records_dir,
            extra_lengths=extra,
            eval_fraction=data.eval_fraction or 0.0,
            work_dir=paths.prepare_work,
            **(
                {"chunk_bytes": data.preparation.chunk_bytes}
                if data.preparation and data.preparation.chunk_bytes
                else {}
            ),
        )
    model = model_config(job, resolved)
    training = spec.training
    phases = spec.training_phases()
    run_steps = phases[-1].end_step
    trains = [
        TrainConfig(
            tfrecords=(
                f"{paths.records_by_length[phase.length.max_seq_length]}/*.tfrecord"
                if paths.records_by_length
                else paths.tfrecords_glob
            ),
            eval_tfrecords=(
                f"{paths.held_out_dir(phase.length.max_seq_length)}/*.tfrecord"
                if spec.data.eval_fraction is not None
                else spec.data.eval_tfrecords
            ),
            eval_every_steps=(training.eval_every_steps or training.checkpoint_every_steps)
            if spec.evaluates
            else None,
            **({"eval_batches": training.eval_batches} if training.eval_batches else {}),
            model=model,
            max_seq_length=phase.length.max_seq_length,
            max_predictions_per_seq=phase.length.max_predictions_per_seq,
            global_batch_size=phase.global_batch_size,
            gradient_accumulation_steps=phase.gradient_accumulation_steps,
            train_steps=phase.end_step,
            first_step=phase.first_step,
            run_steps=run_steps if len(phases) > 1 else None,
            phase=phase.index,
            learning_rate=phase.learning_rate,
            warmup_steps=phase.warmup_steps,
            optimizer=training.optimizer.value,
            weight_decay=training.weight_decay,
            checkpoint_every_steps=training.checkpoint_every_steps,
            keep_checkpoints=training.keep_checkpoints,
            seed=training.seed,
            precision=training.precision.value,
            checkpoint_dir=paths.checkpoints,
            summary_dir=paths.summaries,
            init_checkpoint=spec.model.init_checkpoint,
            init_checkpoint_config=paths.init_checkpoint_config,
            init_checkpoints=paths.init_checkpoints,
            vocab=paths.vocab,
        )
        for phase in phases
    ]
    export = None
    if spec.export.hugging_face:
        export = ExportConfig(
            checkpoint_dir=paths.checkpoints,
            model=model,
            vocab=paths.vocab,
            lowercase=spec.data.lowercase,
            output_dir=paths.export,
        )
    return TrainerConfig(
        job=ref,
        check=check,
        prepare=prepare,
        train=trains[0] if training.phases is None else None,
        train_phases=trains if training.phases is not None else None,
        export=export,
    )
