"""Run as ``python -m tests.trainer.accumulation_jax difference DIR`` with KERAS_BACKEND=jax.

The slice's JAX step (``multihost.SlicedTrainer``) on two CPU devices: two SGD steps
on the same batch with and without gradient accumulation; prints the largest weight
difference (test_accumulation.py).
"""

from __future__ import annotations

import os
import sys

# Two devices on the one CPU, before JAX initialises: the step's batch is split over them.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
)


def difference() -> float:
    import jax
    import keras
    import numpy as np

    from bert_trainer.model import build_pretrainer
    from bert_trainer.train.multihost import SlicedTrainer
    from tests.trainer.helpers import TINY
    from tests.trainer.test_accumulation import MICRO_BATCHES, unequal_batch

    assert keras.backend.backend() == "jax" and len(jax.devices()) == 2
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    keras.distribution.set_distribution(distribution)
    still = TINY.model_copy(update={"hidden_dropout": 0.0, "attention_dropout": 0.0})
    batch = unequal_batch()
    keras.utils.set_random_seed(1)
    initial = [np.asarray(w) for w in build_pretrainer(still).get_weights()]

    def train(accumulation: int) -> list[np.ndarray]:
        model = build_pretrainer(still)
        model.set_weights(initial)
        optimizer = keras.optimizers.SGD(learning_rate=0.5)
        optimizer.build(model.trainable_variables)
        state = SlicedTrainer(model, optimizer, 0, distribution, accumulation)
        state.train_function(iter([batch, batch]), 2)
        return [np.asarray(jax.device_get(v)) for v in state._trainable]

    whole, micro = train(1), train(MICRO_BATCHES)
    model = build_pretrainer(still)
    model.set_weights(initial)
    moved = max(
        float(np.abs(a - np.asarray(b)).max())
        for a, b in zip(whole, model.trainable_weights, strict=True)
    )
    assert moved > 1e-3, "the steps did not move the weights"
    return max(float(np.abs(a - b).max()) for a, b in zip(whole, micro, strict=True))


if __name__ == "__main__":
    command, _ = sys.argv[1:]
    if command != "difference":
        raise SystemExit(f"unknown command {command}")
    print(f"max difference {difference()}")
