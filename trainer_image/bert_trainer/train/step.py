"""The compiled training function: many optimizer steps per call.

One call of the ``tf.function`` runs ``num_steps`` steps in a graph loop
(``tf.range``), like Keras' ``steps_per_execution`` and the standard TPU
training loop: Python and the host are out of the way between steps. Each
step runs on every replica through ``strategy.run``; gradients are summed across
replicas once, clipped, and applied. Each replica's loss is its share of the global
batch's (``pretraining_loss`` with the global totals, all-reduced first), so the
summed gradient is the global batch's, as on the JAX path. The call returns the summed
``model.STATISTICS`` of its steps and, off TPU, the seconds the loop spent
waiting for input batches (measured in the graph with ``tf.timestamp``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from bert_trainer.model import STATISTICS, pretraining_loss
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
) -> TrainFunction:
    """Build the train function for ``model`` (created in ``strategy``'s scope).

    ``jit_compile`` compiles each replica's step with XLA (TPUs always do).
    ``measure_input_wait`` must be False on TPU, whose programs cannot read
    the host clock.
    """
    replicas = strategy.num_replicas_in_sync

    def replica_step(features: dict[str, Any], labels: dict[str, Any]) -> tf.Tensor:
        totals = None
        if replicas > 1:
            local = tf.stack(
                [
                    tf.reduce_sum(tf.cast(labels["masked_lm_weights"], tf.float32)),
                    tf.cast(tf.size(labels["next_sentence_labels"]), tf.float32),
                ]
            )
            summed = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, local
            )
            totals = (summed[0], summed[1])
        with tf.GradientTape() as tape:
            outputs = model(features, training=True)
            loss, statistics = pretraining_loss(outputs, labels, totals)
        variables = model.trainable_variables
        gradients = tape.gradient(loss, variables)
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
