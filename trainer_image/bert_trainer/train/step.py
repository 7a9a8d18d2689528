"""The compiled training function: many optimizer steps per call.

One call of the ``tf.function`` runs ``num_steps`` steps in a graph loop
(``tf.range``), like Keras' ``steps_per_execution`` and the standard TPU
training loop: Python and the host are out of the way between steps. Each
step runs on every replica through ``strategy.run``; gradients are summed across
replicas once, clipped, and applied. Each replica's loss is its share of the global
batch's (``pretraining_loss`` with the global totals, all-reduced first), so the
summed gradient is the global batch's, as on the JAX path. With gradient
accumulation each replica's batch is split into micro-batches run one after the
other (a graph loop: one micro-batch's activations in memory at a time), each
contributing its share of the same global loss, so the summed gradients and the one
update they make are the full batch's. The call returns the summed
``model.STATISTICS`` of its steps and, off TPU, the seconds the loop spent
waiting for input batches (measured in the graph with ``tf.timestamp``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from bert_trainer.model import STATISTICS, batch_totals, pretraining_loss
from bert_trainer.train import replica_seeds
from bert_trainer.train.optimizer import clip_gradients

TrainFunction = Callable[[Any, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
"""``(distributed_iterator, num_steps) -> (statistics_sums, input_wait_seconds)``."""


def make_train_function(
    strategy: tf.distribute.Strategy,
    model: Any,
    optimizer: Any,
    step: tf.Variable,
    jit_compile: bool = False,
    measure_input_wait: bool = True,
    accumulation_steps: int = 1,
) -> TrainFunction:
    """Build the train function for ``model`` (created in ``strategy``'s scope).

    ``jit_compile`` compiles each replica's step with XLA (TPUs always do).
    ``measure_input_wait`` must be False on TPU, whose programs cannot read
    the host clock.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas > 1:
        replica_seeds.install()  # each replica its own dropout masks

    def global_totals(labels: dict[str, Any]) -> tuple[tf.Tensor, tf.Tensor] | None:
        if replicas == 1 and accumulation_steps == 1:
            return None  # the batch is the global batch: pretraining_loss's own sums
        local = tf.stack(batch_totals(labels))
        if replicas > 1:
            local = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, local
            )
        return local[0], local[1]

    def micro_step(
        features: dict[str, Any], labels: dict[str, Any], totals: Any
    ) -> tuple[list[Any], tf.Tensor]:
        with tf.GradientTape() as tape:
            outputs = model(features, training=True)
            loss, statistics = pretraining_loss(outputs, labels, totals)
        return tape.gradient(loss, model.trainable_variables), statistics

    def accumulated(
        features: dict[str, Any], labels: dict[str, Any], totals: Any
    ) -> tuple[list[Any], tf.Tensor]:
        def micro(batch: dict[str, Any]) -> dict[str, Any]:
            return {
                k: tf.reshape(v, [accumulation_steps, -1, *v.shape[1:]]) for k, v in batch.items()
            }

        split_features, split_labels = micro(features), micro(labels)
        sums = [tf.zeros_like(v) for v in model.trainable_variables]
        statistics = tf.zeros([len(STATISTICS)], tf.float32)
        for i in tf.range(accumulation_steps):
            gradients, micro_statistics = micro_step(
                {k: v[i] for k, v in split_features.items()},
                {k: v[i] for k, v in split_labels.items()},
                totals,
            )
            # Embedding gradients come as IndexedSlices: summed densely across micro-batches.
            sums = [s + tf.convert_to_tensor(g) for s, g in zip(sums, gradients, strict=True)]
            statistics += micro_statistics
        return sums, statistics

    def replica_step(features: dict[str, Any], labels: dict[str, Any]) -> tf.Tensor:
        totals = global_totals(labels)
        variables = model.trainable_variables
        if accumulation_steps == 1:
            gradients, statistics = micro_step(features, labels, totals)
        else:
            gradients, statistics = accumulated(features, labels, totals)
        if replicas > 1:
            gradients = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, gradients
            )
        optimizer.apply(clip_gradients(gradients), variables)
        return statistics

    step_fn = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

    def local_tensors(batch: Any) -> list[tf.Tensor]:
        return [
            tensor
            for value in tf.nest.flatten(batch)
            for tensor in strategy.experimental_local_results(value)
        ]

    def train_steps(iterator: Any, num_steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        sums = tf.zeros([len(STATISTICS)], tf.float32)
        waited = tf.constant(0.0, tf.float64)
        for _ in tf.range(num_steps):
            if measure_input_wait:
                # Start the clock only once the previous step's results exist,
                # so batches prefetched while it ran count as no wait at all.
                with tf.control_dependencies([sums]):
                    asked = tf.timestamp()
                with tf.control_dependencies([asked]):
                    features, labels = next(iterator)
                with tf.control_dependencies(local_tensors((features, labels))):
                    waited += tf.timestamp() - asked
            else:
                features, labels = next(iterator)
            per_replica = strategy.run(step_fn, args=(features, labels))
            sums += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            step.assign_add(1)
        return sums, waited

    compiled: TrainFunction = tf.function(train_steps)
    return compiled


EvalFunction = Callable[[Any], tf.Tensor]
"""``(distributed_iterator) -> statistics_sums`` over the evaluation's batches."""


def make_eval_function(strategy: tf.distribute.Strategy, model: Any, batches: int) -> EvalFunction:
    """Sum ``model.STATISTICS`` over ``batches`` held-out batches: no dropout, no update.

    Each replica's statistics are of its own batch; their sums give exact accuracies,
    and losses averaged over the replicas' equal batches.
    """

    def replica_eval(features: dict[str, Any], labels: dict[str, Any]) -> tf.Tensor:
        _, statistics = pretraining_loss(model(features, training=False), labels)
        return statistics

    def evaluate(iterator: Any) -> tf.Tensor:
        sums = tf.zeros([len(STATISTICS)], tf.float32)
        for _ in tf.range(batches):
            features, labels = next(iterator)
            per_replica = strategy.run(replica_eval, args=(features, labels))
            sums += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return sums

    compiled: EvalFunction = tf.function(evaluate)
    return compiled
