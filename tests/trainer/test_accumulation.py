"""Gradient accumulation: one update on accumulated micro-batches is the full batch's.

The batch's examples carry different numbers of masked positions from one
micro-batch to the next (all of them in the first, one in the others), so the
micro-batches agree with the full batch only if each contributes its share of the
full batch's loss (normalised by the full batch's totals), not its own mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.trainer.helpers import PREDICTIONS, TINY, batch_of, make_instance, run_in_fresh_process

BATCH, MICRO_BATCHES = 8, 4


def unequal_batch() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    instances = [make_instance(rng) for _ in range(BATCH)]
    for i, instance in enumerate(instances):
        full = i < BATCH // MICRO_BATCHES  # the first micro-batch
        instance["masked_lm_weights"] = [1.0] + [1.0 if full else 0.0] * (PREDICTIONS - 1)
    return batch_of(instances)


def tensorflow_difference() -> float:
    """Two SGD steps, with and without accumulation, from the same weights.

    Plain SGD: its update is linear in the gradient, so the comparison sees the
    gradients themselves (Adam's first steps, g / (|g| + eps), would magnify float32
    rounding in near-zero gradients into differences of the order of the rate).
    """
    import keras
    import tensorflow as tf

    from bert_trainer.model import build_pretrainer
    from bert_trainer.train.optimizer import _SummedGradients
    from bert_trainer.train.step import make_train_function

    class SGD(_SummedGradients, keras.optimizers.SGD):  # type: ignore[misc]
        pass

    still = TINY.model_copy(update={"hidden_dropout": 0.0, "attention_dropout": 0.0})
    features, labels = unequal_batch()
    dataset = tf.data.Dataset.from_tensors((features, labels)).repeat()
    keras.utils.set_random_seed(1)
    initial = [np.asarray(w) for w in build_pretrainer(still).get_weights()]

    def train(accumulation: int) -> list[np.ndarray]:
        strategy = tf.distribute.get_strategy()
        model = build_pretrainer(still)
        model.set_weights(initial)
        optimizer = SGD(learning_rate=0.5)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64)
        function = make_train_function(
            strategy, model, optimizer, step, accumulation_steps=accumulation
        )
        function(iter(dataset), tf.constant(2))
        return [np.asarray(w) for w in model.get_weights()]

    whole, micro = train(1), train(MICRO_BATCHES)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(whole, initial, strict=True))
    assert moved > 1e-3, "the steps did not move the weights"
    return max(float(np.abs(a - b).max()) for a, b in zip(whole, micro, strict=True))


@pytest.mark.tensorflow
def test_tensorflow_accumulated_micro_batches_update_as_the_full_batch() -> None:
    assert tensorflow_difference() < 1e-5


def _jax(command: str, tmp_path: Path) -> str:
    env = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    return run_in_fresh_process("tests.trainer.accumulation_jax", command, str(tmp_path), env=env)


@pytest.mark.tensorflow
def test_jax_accumulated_micro_batches_update_as_the_full_batch(tmp_path: Path) -> None:
    """The slice's step (Keras on JAX, two CPU devices), with and without accumulation."""
    out = _jax("difference", tmp_path)
    assert float(out.split("max difference ")[1]) < 1e-5
