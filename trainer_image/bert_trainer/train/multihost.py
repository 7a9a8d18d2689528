"""Training across the hosts of a slice: the same Keras model on JAX.

Why JAX and not TensorFlow: ``docs/multi-host.md``. Every host runs this same
program (SPMD). Host 0 runs JAX's coordination service; ``jax.distributed``
connects the hosts; ``keras.distribution.DataParallel`` replicates the
variables over every chip of the slice and splits each global batch across
them, so the gradient of the global batch's loss is summed across hosts by
the compiled step itself (over ICI on TPU, over Gloo on CPU).

Each host reads its own TFRecord files (``data.pipeline_files``) into
``global_batch_size / hosts`` examples per step, which become one global array.
Hosts agree on every chunk of steps and on stopping (``TrainLoop``'s
``agree``), only host 0 writes checkpoints (``array_checkpoint``), summaries
and progress, and all hosts restore the same checkpoint.

``KERAS_BACKEND`` must be ``jax`` before Keras is first imported: the entry
point (``bert_trainer.__main__``) sets it before importing this module.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from bert_trainer import retry
from bert_trainer.config import TrainConfig, TrainerConfig
from bert_trainer.model import (
    STATISTICS,
    PretrainingMetrics,
    batch_totals,
    build_pretrainer,
    pretraining_loss,
)
from bert_trainer.storage import InputError
from bert_trainer.train import array_checkpoint
from bert_trainer.train.checkpoint import write_companions
from bert_trainer.train.cluster import SliceHosts, without_proxy_to_peers
from bert_trainer.train.data import RecordShape, make_dataset, pipeline_files
from bert_trainer.train.loop import LoopSettings, TrainLoop, TrainResult
from bert_trainer.train.optimizer import (
    clip_dense_gradients,
    learning_rate_schedule,
    make_optimizer,
)
from bert_trainer.train.progress import ProgressSink
from bert_trainer.train.run import (
    check_settings,
    dtype_policy,
    eval_batch_size,
    phase_eval_records,
    phase_name,
    phase_records,
    reporter_for,
    run_phases,
    start_step,
    summary_writer,
)
from bert_trainer.train.signals import StopFlag

log = logging.getLogger(__name__)

BATCH_AXIS = "batch"


def run_multihost(
    config: TrainerConfig,
    hosts: SliceHosts,
    *,
    progress_sink: ProgressSink | None = None,
    stop: StopFlag | None = None,
) -> TrainResult:
    """Join the slice's other hosts and train every phase to its ``train_steps`` with them."""
    phases = config.phases()
    if not phases:
        raise InputError("the trainer config has no 'train' section")
    for phase in phases:
        check_settings(phase)
    if keras.backend.backend() != "jax":
        raise RuntimeError("the multi-host runtime needs KERAS_BACKEND=jax before Keras loads")
    records = [phase_records(phase) for phase in phases]
    eval_records = [phase_eval_records(phase) for phase in phases]
    for phase in phases:
        if phase.global_batch_size % hosts.size:
            raise InputError(
                f"{phase_name(phase, phases)}globalBatchSize {phase.global_batch_size} is not "
                f"divisible by the {hosts.size} hosts of the slice"
            )
    _connect(hosts, phases[0])
    try:
        return _train(config, phases, hosts, records, eval_records, progress_sink, stop)
    finally:
        if hosts.size > 1:
            log.info("host %d leaving the slice", hosts.worker_id)
            jax.distributed.shutdown()


def _connect(hosts: SliceHosts, settings: TrainConfig) -> None:
    # Collectives between CPU processes (tests, CPU pods); TPUs ignore it and use
    # ICI. Set before anything asks for a device, which would fix the backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if hosts.size == 1:
        return
    log.info(
        "host %d of %d joining the slice at %s",
        hosts.worker_id,
        hosts.size,
        hosts.coordinator_address,
    )
    # gRPC reads the proxy variables when it opens the channel, from this process's env.
    os.environ.update(without_proxy_to_peers(hosts))
    jax.distributed.initialize(
        coordinator_address=hosts.coordinator_address,
        num_processes=hosts.size,
        process_id=hosts.worker_id,
        initialization_timeout=settings.startup_timeout_seconds,
        heartbeat_timeout_seconds=settings.peer_timeout_seconds,
    )


def _train(
    config: TrainerConfig,
    phases: list[TrainConfig],
    hosts: SliceHosts,
    records: list[tuple[list[str], RecordShape]],
    eval_records: list[tuple[list[str], RecordShape] | None],
    progress_sink: ProgressSink | None,
    stop: StopFlag | None,
) -> TrainResult:
    settings = phases[0]
    devices = jax.devices()
    for phase in phases:
        if phase.global_batch_size % (len(devices) * phase.gradient_accumulation_steps):
            raise InputError(
                f"{phase_name(phase, phases)}globalBatchSize {phase.global_batch_size} is not "
                f"divisible by {phase.gradient_accumulation_steps} micro-batches on each of "
                f"the {len(devices)} chips of the slice"
            )
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(settings.seed)  # every host draws the same initial weights
    model = build_pretrainer(settings.model, dtype=dtype_policy(settings))
    optimizer = make_optimizer(settings, phases)
    optimizer.build(model.trainable_variables)
    schedule = learning_rate_schedule(settings, phases)

    start = _restore(settings, model, optimizer, hosts)
    start = start_step(start, model, settings)
    if hosts.is_chief:
        write_companions(settings.checkpoint_dir, settings.model, settings.vocab)
    state = SlicedTrainer(
        model, optimizer, start, distribution, settings.gradient_accumulation_steps
    )
    checkpointer = ArrayCheckpointer(settings, state, writer=hosts.is_chief)
    checkpointer.current = (
        array_checkpoint.checkpoint_path(settings.checkpoint_dir, start) if start else None
    )
    reporter = reporter_for(config, hosts.is_chief, progress_sink)
    writer = summary_writer(settings) if hosts.is_chief else None
    context = tf.distribute.InputContext(
        num_input_pipelines=hosts.size,
        input_pipeline_id=hosts.worker_id,
        num_replicas_in_sync=len(devices),
    )

    def phase_loop(phase: TrainConfig, start: int) -> TrainLoop:
        files, shape = records[phases.index(phase)]
        state.start_phase(phase.gradient_accumulation_steps)
        mine = pipeline_files(files, hosts.size, hosts.worker_id)
        log.info(
            "host %d reads %d of %d TFRecord files",
            hosts.worker_id,
            len(mine),
            len(files),
            extra={"host": hosts.worker_id, "files": mine},
        )
        per_host = phase.global_batch_size // hosts.size
        dataset = make_dataset(
            files,
            shape,
            per_host,
            phase.seed + start,
            context,
            shuffle=phase.shuffle,
            skip_records=(start - phase.first_step) * per_host,
        )
        return TrainLoop(
            state.train_function,
            dataset.as_numpy_iterator(),
            state,
            checkpointer,
            LoopSettings.of(phase),
            reporter=reporter,
            summary_writer=writer,
            learning_rate=lambda at: float(schedule(at)),
            agree=_agree if hosts.size > 1 else None,
            evaluate=evaluator(phase),
        )

    def evaluator(phase: TrainConfig) -> Callable[[], PretrainingMetrics] | None:
        held_out = eval_records[phases.index(phase)]
        if held_out is None:
            return None
        files, shape = held_out
        dataset = make_dataset(
            files,
            shape,
            eval_batch_size(phase) // hosts.size,
            phase.seed,
            context,
            shuffle=False,
        )
        # A new iterator each time: every evaluation reads the same first batches.
        return lambda: state.evaluate(dataset.as_numpy_iterator(), phase.eval_batches)

    log.info("training on %d hosts", hosts.size)
    return run_phases(phases, start, phase_loop, stop, reporter, writer)


class SlicedTrainer:
    """The model's state as JAX arrays over the slice, and the compiled step.

    Keras' stateless API: the step takes and returns the variables' values, so
    XLA sees the whole update and places the cross-host gradient sum itself.
    Also the loop's step counter (``numpy()``).
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        step: int,
        distribution: Any,
        accumulation_steps: int = 1,
    ) -> None:
        self._model = model
        self._optimizer = optimizer
        self.step = step
        self._accumulation = accumulation_steps
        mesh = distribution.device_mesh.backend_mesh
        self._devices = mesh.devices.size
        self._batch_sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
        # Every variable whole on every chip; placed on the mesh explicitly, in
        # and out of the step alike, or the second step would compile again.
        replicated = NamedSharding(mesh, PartitionSpec())
        self._trainable, self._non_trainable, self._optimizer_state = (
            [jax.device_put(v.value, replicated) for v in variables]
            for variables in (
                model.trainable_variables,
                model.non_trainable_variables,
                optimizer.variables,
            )
        )
        self._replicated = replicated
        self._step_fn = self._compile()
        self._eval_fn: Any = None

    def _compile(self) -> Any:
        return jax.jit(self._step, donate_argnums=(0, 1, 2), out_shardings=self._replicated)

    def start_phase(self, accumulation_steps: int) -> None:
        """Train the next phase with its micro-batches: a step traced afresh.

        The variables' values carry over; a new sequence length or batch would retrace
        the step anyway, but the accumulation is read only while tracing.
        """
        if accumulation_steps != self._accumulation:
            self._accumulation = accumulation_steps
            self._step_fn = self._compile()

    def numpy(self) -> int:
        return self.step

    def evaluate(self, iterator: Any, batches: int) -> PretrainingMetrics:
        """The metrics of ``batches`` held-out batches: no dropout, no update."""
        if self._eval_fn is None:
            self._eval_fn = jax.jit(self._eval_step, out_shardings=self._replicated)
        sums = None
        for _ in range(batches):
            features, labels = next(iterator)
            statistics = self._eval_fn(
                self._trainable, self._non_trainable, self._global(features), self._global(labels)
            )
            sums = statistics if sums is None else sums + statistics
        assert sums is not None, "an evaluation has at least one batch"
        return PretrainingMetrics.from_statistics(_local_value(sums).tolist())

    def _eval_step(
        self,
        trainable: list[Any],
        non_trainable: list[Any],
        features: dict[str, Any],
        labels: dict[str, Any],
    ) -> Any:
        outputs, _ = self._model.stateless_call(trainable, non_trainable, features, training=False)
        return pretraining_loss(outputs, labels)[1]

    def _step(
        self,
        trainable: list[Any],
        non_trainable: list[Any],
        optimizer_state: list[Any],
        features: dict[str, Any],
        labels: dict[str, Any],
    ) -> tuple[list[Any], list[Any], list[Any], Any]:
        def loss_of(
            trainable: list[Any],
            non_trainable: list[Any],
            features: dict[str, Any],
            labels: dict[str, Any],
            totals: Any,
        ) -> tuple[Any, Any]:
            outputs, non_trainable = self._model.stateless_call(
                trainable, non_trainable, features, training=True
            )
            loss, statistics = pretraining_loss(outputs, labels, totals)
            return loss, (statistics, non_trainable)

        grad_of = jax.value_and_grad(loss_of, has_aux=True)
        if self._accumulation == 1:
            (_, (statistics, non_trainable)), gradients = grad_of(
                trainable, non_trainable, features, labels, None
            )
        else:
            gradients, statistics, non_trainable = self._accumulated(
                grad_of, trainable, non_trainable, features, labels
            )
        trainable, optimizer_state = self._optimizer.stateless_apply(
            optimizer_state, clip_dense_gradients(gradients), trainable
        )
        return trainable, non_trainable, optimizer_state, statistics

    def _accumulated(
        self,
        grad_of: Any,
        trainable: list[Any],
        non_trainable: list[Any],
        features: dict[str, Any],
        labels: dict[str, Any],
    ) -> tuple[list[Any], Any, list[Any]]:
        """The global batch's gradients, summed over micro-batches run one at a time.

        Micro-batch i takes the i-th part of every chip's rows, so each is spread over
        all chips as the whole batch is; each contributes its share of the global
        batch's loss (``totals``), so the sum is the whole batch's gradient.
        """
        k, chips = self._accumulation, self._devices
        totals = batch_totals(labels)

        def micro_batches(x: Any) -> Any:
            rows = x.shape[0]
            parts = x.reshape(chips, k, rows // (chips * k), *x.shape[1:])
            return jnp.swapaxes(parts, 0, 1).reshape(k, rows // k, *x.shape[1:])

        split = jax.tree_util.tree_map(micro_batches, (features, labels))
        zeros = [jnp.zeros_like(v) for v in trainable]

        def one(carry: Any, batch: Any) -> tuple[Any, None]:
            sums, statistics, non_trainable = carry
            (_, (micro_statistics, non_trainable)), gradients = grad_of(
                trainable, non_trainable, batch[0], batch[1], totals
            )
            sums = [s + g for s, g in zip(sums, gradients, strict=True)]
            return (sums, statistics + micro_statistics, non_trainable), None

        start = (zeros, jnp.zeros([len(STATISTICS)], "float32"), non_trainable)
        (gradients, statistics, non_trainable), _ = jax.lax.scan(one, start, split)
        return gradients, statistics, non_trainable

    def train_function(self, iterator: Any, num_steps: Any) -> tuple[np.ndarray, float]:
        """``num_steps`` steps; returns the summed statistics and seconds waited for input."""
        sums = None
        waited = 0.0
        for _ in range(int(num_steps)):
            asked = time.perf_counter()
            features, labels = next(iterator)
            waited += time.perf_counter() - asked
            features, labels = self._global(features), self._global(labels)
            self._trainable, self._non_trainable, self._optimizer_state, statistics = self._step_fn(
                self._trainable, self._non_trainable, self._optimizer_state, features, labels
            )
            sums = statistics if sums is None else sums + statistics
            self.step += 1
        assert sums is not None, "the loop never asks for zero steps"
        return _local_value(sums), waited

    def _global(self, local: dict[str, np.ndarray]) -> dict[str, Any]:
        # Each host holds its part of the batch; together they are one array.
        return {
            name: jax.make_array_from_process_local_data(self._batch_sharding, value)
            for name, value in local.items()
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Every value a checkpoint holds, by Keras variable path."""
        named: dict[str, np.ndarray] = {array_checkpoint.STEP_KEY: np.asarray(self.step)}
        groups = (
            ("model/", self._model.trainable_variables, self._trainable),
            ("seed/", self._model.non_trainable_variables, self._non_trainable),
            ("optimizer/", self._optimizer.variables, self._optimizer_state),
        )
        for prefix, variables, values in groups:
            for variable, value in zip(variables, values, strict=True):
                named[prefix + variable.path] = _local_value(value)
        return named


class ArrayCheckpointer:
    """The loop's ``Saver`` on a slice: host 0 writes, every host knows the path."""

    def __init__(self, settings: TrainConfig, state: SlicedTrainer, writer: bool) -> None:
        self._settings = settings
        self._state = state
        self._writer = writer
        self.current: str | None = None

    def save(self) -> str:
        path = array_checkpoint.checkpoint_path(self._settings.checkpoint_dir, self._state.step)
        if self._writer:
            arrays = self._state.arrays()

            def write() -> None:  # idempotent, so a retry after a storage error is safe
                array_checkpoint.write_arrays(path, arrays)
                array_checkpoint.remove_older(
                    self._settings.checkpoint_dir, self._settings.keep_checkpoints
                )

            retry.retry_transient(
                write, what=f"saving checkpoint {path}", budget_seconds=retry.budget_seconds()
            )
            log.info("saved checkpoint %s", path)
        self.current = path
        return path


def _restore(settings: TrainConfig, model: Any, optimizer: Any, hosts: SliceHosts) -> int | None:
    """Load the newest checkpoint into the Keras variables; every host must load the same."""

    def load(arrays: dict[str, np.ndarray]) -> None:
        if array_checkpoint.STEP_KEY not in arrays:
            raise ValueError(f"no {array_checkpoint.STEP_KEY!r} array")
        array_checkpoint.assign(model.trainable_variables, arrays, "model/")
        array_checkpoint.assign(model.non_trainable_variables, arrays, "seed/")
        array_checkpoint.assign(optimizer.variables, arrays, "optimizer/")

    restored = retry.retry_transient(
        lambda: array_checkpoint.restore_newest(settings.checkpoint_dir, load),
        what=f"restoring the latest checkpoint in {settings.checkpoint_dir}",
        budget_seconds=retry.budget_seconds(),
    )
    step = int(restored[1][array_checkpoint.STEP_KEY]) if restored else None
    if restored:
        log.info("restored %s at step %d", restored[0], step)
    if hosts.size > 1:
        steps = multihost_utils.process_allgather(np.asarray(-1 if step is None else step))
        if len(set(np.asarray(steps).ravel().tolist())) != 1:
            # A retry sees a settled directory; training on different weights cannot work.
            raise RuntimeError(f"the hosts restored different checkpoints (steps {steps})")
    return step


def _agree(steps: int, stop: bool) -> tuple[int, bool]:
    wanted = np.asarray(multihost_utils.process_allgather(np.asarray([steps, int(stop)])))
    wanted = wanted.reshape(-1, 2)
    return int(wanted[:, 0].min()), bool(wanted[:, 1].any())


def _local_value(array: Any) -> np.ndarray:
    # Replicated over the slice: this host's copy is the whole value.
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return np.asarray(array.addressable_data(0))
    return np.asarray(array)
