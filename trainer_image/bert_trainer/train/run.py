"""The ``train`` command: wire config, strategy, data, model and loop together.

Order matters for failing fast and cheaply: the configuration and the records
are checked before a TPU is initialised, and a checkpoint in ``checkpoint_dir``
wins over ``init_checkpoint`` (a resumed run must not start over from Google's
weights).
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import tensorflow as tf

from bert_trainer.config import TrainConfig, TrainerConfig
from bert_trainer.model import build_pretrainer
from bert_trainer.storage import InputError
from bert_trainer.train.checkpoint import Checkpointer, restore_model, write_companions
from bert_trainer.train.data import RecordShape, list_records, make_dataset
from bert_trainer.train.loop import LoopSettings, TrainLoop, TrainResult
from bert_trainer.train.optimizer import make_optimizer
from bert_trainer.train.progress import ProgressReporter, ProgressSink, make_reporter
from bert_trainer.train.signals import StopFlag
from bert_trainer.train.step import make_train_function
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
    settings = config.train
    if settings is None:
        raise InputError("the trainer config has no 'train' section")
    check_settings(settings)
    placement = placement or detect_placement()
    shape = RecordShape(settings.max_seq_length, settings.max_predictions_per_seq)
    files = list_records(settings.tfrecords, shape)
    log.info("%d TFRecord files match %s", len(files), settings.tfrecords)

    strategy = make_strategy(placement)
    micro_batches = settings.gradient_accumulation_steps * strategy.num_replicas_in_sync
    if settings.global_batch_size % micro_batches:
        raise InputError(
            f"globalBatchSize {settings.global_batch_size} is not divisible by "
            f"{settings.gradient_accumulation_steps} micro-batches on each of the "
            f"{strategy.num_replicas_in_sync} replicas"
        )
    keras.utils.set_random_seed(settings.seed)
    with strategy.scope():
        model = build_pretrainer(settings.model, dtype=dtype_policy(settings))
        optimizer = make_optimizer(settings)
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

    # A resumed run reshuffles differently, rather than replaying the examples
    # it saw first in the attempt before; one reading in order goes on where it was.
    seed = settings.seed + start
    dataset = strategy.distribute_datasets_from_function(
        lambda context: make_dataset(
            files,
            shape,
            context.get_per_replica_batch_size(settings.global_batch_size),
            seed,
            context,
            shuffle=settings.shuffle,
            skip_records=start * settings.global_batch_size // context.num_input_pipelines,
        )
    )
    train_function = make_train_function(
        strategy,
        model,
        optimizer,
        step,
        jit_compile=jit_compile and not placement.on_tpu,
        measure_input_wait=not placement.on_tpu,
        accumulation_steps=settings.gradient_accumulation_steps,
    )
    reporter = reporter_for(config, placement.is_chief, progress_sink)
    writer = summary_writer(settings) if placement.is_chief else None
    loop = TrainLoop(
        train_function,
        iter(dataset),
        step,
        checkpointer,
        LoopSettings.of(settings),
        reporter=reporter,
        summary_writer=writer,
        learning_rate=lambda at: float(optimizer.learning_rate),
    )
    log.info("training from step %d to %d", start, settings.train_steps)
    return run_loop(loop, stop, reporter, writer)


def run_loop(
    loop: TrainLoop, stop: StopFlag | None, reporter: ProgressReporter | None, writer: Any
) -> TrainResult:
    """Run ``loop`` under SIGTERM's flag; close the reporter and the summary writer after."""
    try:
        with stop or StopFlag() as flag:
            result = loop.run(flag)
    finally:
        if reporter is not None:
            reporter.close()
        if writer is not None:
            writer.close()
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
