"""The ``train`` command: wire config, strategy, data, model and loop together.

Order matters for failing fast and cheaply: the configuration and the records
are checked before a TPU is initialised, and a checkpoint in ``checkpoint_dir``
wins over ``init_checkpoint`` (a resumed run must not start over from Google's
weights).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from bert_trainer.config import TrainConfig, TrainerConfig
from bert_trainer.model import PretrainingMetrics, build_pretrainer
from bert_trainer.storage import InputError
from bert_trainer.train.checkpoint import Checkpointer, restore_model, write_companions
from bert_trainer.train.data import RecordShape, list_records, make_dataset
from bert_trainer.train.loop import LoopSettings, TrainLoop, TrainResult
from bert_trainer.train.optimizer import make_optimizer
from bert_trainer.train.progress import ProgressReporter, ProgressSink, make_reporter
from bert_trainer.train.signals import StopFlag
from bert_trainer.train.step import make_eval_function, make_train_function
from bert_trainer.train.strategy import Placement, detect_placement, make_strategy
from bert_trainer.train.tf1_init import init_from_tf1_checkpoint

log = logging.getLogger(__name__)


def run_train(config: TrainerConfig) -> None:
    """Train to ``config.train.train_steps``, resuming from the latest checkpoint.

    Raises InputError for a wrong configuration or data, ``Preempted`` (exit
    code ``EXIT_PREEMPTED``) after checkpointing on SIGTERM; anything else is
    an infrastructure failure worth a retry.
    """
    train(config)


def train(
    config: TrainerConfig,
    *,
    progress_sink: ProgressSink | None = None,
    placement: Placement | None = None,
    jit_compile: bool = False,
    stop: StopFlag | None = None,
) -> TrainResult:
    """``run_train`` with its collaborators open for tests and benchmarks.

    ``progress_sink`` replaces the Kubernetes status API; ``jit_compile``
    compiles each step with XLA off TPU (faster steps, a slow first call);
    ``stop`` replaces the SIGTERM-driven flag.
    """
    phases = config.phases()
    if not phases:
        raise InputError("the trainer config has no 'train' section")
    for phase in phases:
        check_settings(phase)
    settings = phases[0]
    placement = placement or detect_placement()
    records = [phase_records(phase) for phase in phases]
    eval_records = [phase_eval_records(phase) for phase in phases]

    strategy = make_strategy(placement)
    for phase in phases:
        micro_batches = phase.gradient_accumulation_steps * strategy.num_replicas_in_sync
        if phase.global_batch_size % micro_batches:
            raise InputError(
                f"{phase_name(phase, phases)}globalBatchSize {phase.global_batch_size} is not "
                f"divisible by {phase.gradient_accumulation_steps} micro-batches on each of "
                f"the {strategy.num_replicas_in_sync} replicas"
            )
    keras.utils.set_random_seed(settings.seed)
    with strategy.scope():
        model = build_pretrainer(settings.model, dtype=dtype_policy(settings))
        optimizer = make_optimizer(settings, phases)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(
            0,
            dtype=tf.int64,
            trainable=False,
            name="step",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        checkpointer = Checkpointer(
            settings.checkpoint_dir, model, optimizer, step, settings.keep_checkpoints
        )
    start = checkpointer.restore_latest()
    start = start_step(start, model, settings)
    if placement.is_chief:
        write_companions(settings.checkpoint_dir, settings.model, settings.vocab)
    reporter = reporter_for(config, placement.is_chief, progress_sink)
    writer = summary_writer(settings) if placement.is_chief else None

    def phase_loop(phase: TrainConfig, start: int) -> TrainLoop:
        files, shape = records[phases.index(phase)]
        # A resumed run reshuffles differently, rather than replaying the examples it
        # saw first in the attempt before; one reading in order goes on where it was.
        seed = phase.seed + start
        consumed = (start - phase.first_step) * phase.global_batch_size
        dataset = strategy.distribute_datasets_from_function(
            lambda context: make_dataset(
                files,
                shape,
                context.get_per_replica_batch_size(phase.global_batch_size),
                seed,
                context,
                shuffle=phase.shuffle,
                skip_records=consumed // context.num_input_pipelines,
            )
        )
        train_function = make_train_function(
            strategy,
            model,
            optimizer,
            step,
            jit_compile=jit_compile and not placement.on_tpu,
            measure_input_wait=not placement.on_tpu,
            accumulation_steps=phase.gradient_accumulation_steps,
        )
        return TrainLoop(
            train_function,
            iter(dataset),
            step,
            checkpointer,
            LoopSettings.of(phase),
            reporter=reporter,
            summary_writer=writer,
            learning_rate=lambda at: float(optimizer.learning_rate),
            evaluate=evaluator(phase),
        )

    def evaluator(phase: TrainConfig) -> Callable[[], PretrainingMetrics] | None:
        held_out = eval_records[phases.index(phase)]
        if held_out is None:
            return None
        files, shape = held_out
        batch = eval_batch_size(phase)
        dataset = strategy.distribute_datasets_from_function(
            lambda context: make_dataset(
                files,
                shape,
                context.get_per_replica_batch_size(batch),
                phase.seed,
                context,
                shuffle=False,
            )
        )
        evaluate = make_eval_function(strategy, model, phase.eval_batches)
        # A new iterator each time: every evaluation reads the same first batches.
        return lambda: PretrainingMetrics.from_statistics(evaluate(iter(dataset)).numpy().tolist())

    return run_phases(phases, start, phase_loop, stop, reporter, writer)


def phase_records(phase: TrainConfig) -> tuple[list[str], RecordShape]:
    """The phase's TFRecord files and their shape (InputError if none match)."""
    shape = RecordShape(phase.max_seq_length, phase.max_predictions_per_seq)
    files = list_records(phase.tfrecords, shape)
    log.info("%d TFRecord files match %s", len(files), phase.tfrecords)
    return files, shape


def phase_eval_records(phase: TrainConfig) -> tuple[list[str], RecordShape] | None:
    """The phase's held-out records and their shape, None without (InputError if given
    and none match)."""
    if phase.eval_tfrecords is None:
        return None
    shape = RecordShape(phase.max_seq_length, phase.max_predictions_per_seq)
    files = list_records(phase.eval_tfrecords, shape)
    log.info("%d held-out TFRecord files match %s", len(files), phase.eval_tfrecords)
    return files, shape


def eval_batch_size(phase: TrainConfig) -> int:
    """Sequences per evaluation batch: a training micro-batch, which fits in memory."""
    return phase.global_batch_size // phase.gradient_accumulation_steps


def phase_name(phase: TrainConfig, phases: list[TrainConfig]) -> str:
    """``"phase 2 of 3: "`` in messages about one phase of several, else nothing."""
    return f"phase {phase.phase + 1} of {len(phases)}: " if len(phases) > 1 else ""


def run_phases(
    phases: list[TrainConfig],
    start: int,
    phase_loop: Callable[[TrainConfig, int], TrainLoop],
    stop: StopFlag | None,
    reporter: ProgressReporter | None,
    writer: Any,
) -> TrainResult:
    """Run each phase's loop from the one ``start`` is in, under SIGTERM's flag; close the
    reporter and the summary writer after.

    A restart resumes in the phase of its checkpoint: the phases before it are done
    (the last phase's loop always runs, if only to report that it is done).
    """
    result: TrainResult | None = None
    first = start
    try:
        with stop or StopFlag() as flag:
            for phase in phases:
                if start >= phase.train_steps and phase is not phases[-1]:
                    continue
                if len(phases) > 1:
                    log.info(
                        "phase %d of %d: steps %d to %d at length %d, batch %d",
                        phase.phase + 1,
                        len(phases),
                        start,
                        phase.train_steps,
                        phase.max_seq_length,
                        phase.global_batch_size,
                    )
                else:
                    log.info("training from step %d to %d", start, phase.train_steps)
                result = phase_loop(phase, start).run(flag)
                start = result.final_step
    finally:
        if reporter is not None:
            reporter.close()
        if writer is not None:
            writer.close()
    assert result is not None, "the last phase always runs"
    result = dataclasses.replace(result, first_step=first)
    log.info(
        "finished at step %d: %s examples/s, input wait %s",
        result.final_step,
        result.examples_per_second,
        result.input_wait_fraction,
    )
    return result


def start_step(restored: int | None, model: Any, settings: TrainConfig) -> int:
    """The step training starts at: the restored checkpoint's, else 0.

    Only a run with no checkpoint of its own starts from Google's weights or another
    run's: a resumed run must not start over from them.
    """
    if restored is None and settings.init_checkpoint:
        init_from_tf1_checkpoint(
            model,
            settings.model,
            settings.init_checkpoint,
            bert_config=settings.init_checkpoint_config,
            vocab=settings.vocab,
        )
    elif restored is None and settings.init_checkpoints:
        path = restore_model(settings.init_checkpoints, model)
        log.info("starting from the weights of %s (step 0, a new optimizer state)", path)
    return restored or 0


def check_settings(settings: TrainConfig) -> None:
    if settings.max_seq_length > settings.model.max_position_embeddings:
        raise InputError(
            f"maxSeqLength {settings.max_seq_length} exceeds the model's "
            f"maxPositionEmbeddings {settings.model.max_position_embeddings}"
        )
    if settings.max_predictions_per_seq > settings.max_seq_length:
        raise InputError(
            f"maxPredictionsPerSeq {settings.max_predictions_per_seq} exceeds "
            f"maxSeqLength {settings.max_seq_length}"
        )
    if settings.init_checkpoint_config and not settings.init_checkpoint:
        raise InputError("initCheckpointConfig is given without initCheckpoint")
    if settings.init_checkpoint and settings.init_checkpoints:
        raise InputError("initCheckpoint and initCheckpoints are given: start from one")


def dtype_policy(settings: TrainConfig) -> str:
    return "mixed_bfloat16" if settings.precision == "bfloat16" else "float32"


def reporter_for(
    config: TrainerConfig, is_chief: bool, sink: ProgressSink | None
) -> ProgressReporter | None:
    """Worker 0's progress reporter: to ``sink`` if given, else to the job's status."""
    if sink is None:
        return make_reporter(config.job, is_chief)
    interval = config.job.min_report_interval_seconds if config.job else 0.0
    return ProgressReporter(sink, interval) if is_chief else None


def summary_writer(settings: TrainConfig) -> Any:
    directory = settings.summary_dir or tf.io.gfile.join(settings.checkpoint_dir, "summaries")
    return tf.summary.create_file_writer(directory)
