"""The optimizers against reference arithmetic: standard LAMB, and Keras' AdamW as kept.

The references are written out here in NumPy from the published update rules, so a
change to either optimizer's arithmetic fails here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.trainer.helpers import train_config

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-6


def _optimizer(tmp_path: Any, kind: str, **overrides: Any) -> Any:
    from bert_trainer.train.optimizer import make_optimizer

    settings = train_config(tmp_path, optimizer=kind, **overrides)
    assert settings.train is not None
    return make_optimizer(settings.train)


def _run(optimizer: Any, start: dict[str, np.ndarray], grads: list[dict[str, np.ndarray]]) -> Any:
    import keras

    variables = {name: keras.Variable(value, name=name) for name, value in start.items()}
    optimizer.build(list(variables.values()))
    for step in grads:
        optimizer.apply([step[name] for name in variables], list(variables.values()))
    return {name: np.asarray(v.numpy()) for name, v in variables.items()}


def _lamb_reference(
    start: dict[str, np.ndarray],
    grads: list[dict[str, np.ndarray]],
    rates: list[float],
    decay: float,
    decayed: set[str],
) -> dict[str, np.ndarray]:
    """Standard LAMB (You et al.; NVIDIA's and TensorFlow Addons' implementation)."""
    w = {k: v.astype(np.float64) for k, v in start.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    for t, (step, lr) in enumerate(zip(grads, rates, strict=True), start=1):
        for k in w:
            g = step[k].astype(np.float64)
            m[k] = BETA_1 * m[k] + (1 - BETA_1) * g
            v2[k] = BETA_2 * v2[k] + (1 - BETA_2) * g * g
            update = (m[k] / (1 - BETA_1**t)) / (np.sqrt(v2[k] / (1 - BETA_2**t)) + EPSILON)
            if k in decayed:
                update = update + decay * w[k]
                w_norm, u_norm = np.linalg.norm(w[k]), np.linalg.norm(update)
                update = update * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
            w[k] = w[k] - lr * update
    return w


@pytest.mark.tensorflow
def test_lamb_is_standard_lamb(tmp_path: Any) -> None:
    """Decay inside the trust-ratio-scaled step; biases and LayerNorm: Adam's step only."""
    decay = 0.1
    # No warm-up and many steps: the rate stays near its peak (known from the schedule).
    optimizer = _optimizer(
        tmp_path, "lamb", learning_rate=0.01, warmup_steps=0, train_steps=1000, weight_decay=decay
    )
    rng = np.random.default_rng(0)
    start = {
        "kernel": rng.normal(size=(3, 2)).astype(np.float32),
        "bias": np.array([2.0, -1.0], dtype=np.float32),
        "gamma": np.array([1.0, 1.0], dtype=np.float32),
    }
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in start.items()}] * 3
    schedule = optimizer._learning_rate  # the WarmupLinearDecay it was given
    rates = [float(schedule(s)) for s in range(3)]
    got = _run(optimizer, start, grads)
    want = _lamb_reference(start, grads, rates, decay, decayed={"kernel"})
    for name in start:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # Keras' own LAMB would have scaled the bias' step by its trust ratio (||w|| / ||step||,
    # here about 1.6): the excluded bias moved by Adam's step only, about lr per step.
    moved = np.abs(got["bias"] - start["bias"])
    assert np.all(moved < 3 * 0.0101)


@pytest.mark.tensorflow
def test_adamw_keeps_keras_bias_correction(tmp_path: Any) -> None:
    """Pinned deviation: Google's AdamWeightDecayOptimizer has no bias correction.

    From zero moments, Keras' first step is lr * g / (|g| + eps), about lr; Google's
    would be lr * 0.1 g / (sqrt(0.001) |g|), about 3.16 lr (docs/training.md).
    """
    optimizer = _optimizer(tmp_path, "adamw", learning_rate=0.01, warmup_steps=0, train_steps=1000)
    start = {"bias": np.array([0.5], dtype=np.float32)}  # excluded: no decay
    got = _run(optimizer, start, [{"bias": np.array([1.0], dtype=np.float32)}])
    step = float(start["bias"][0] - got["bias"][0])
    assert step == pytest.approx(0.01, rel=1e-3)
    assert step < 3 * 0.01 / 2  # not Google's 3.16 lr


@pytest.mark.tensorflow
def test_the_clip_sees_the_true_norm_of_repeated_embedding_rows() -> None:
    """IndexedSlices with a row twice: the norm is that of their sum, not of the slices."""
    import tensorflow as tf

    from bert_trainer.train.optimizer import clip_gradients

    # Row 0 gets 3 and then 4: its gradient is 7 (norm 7), not 3 and 4 (norm 5).
    slices = tf.IndexedSlices(
        values=tf.constant([[3.0], [4.0]]), indices=tf.constant([0, 0]), dense_shape=[2, 1]
    )
    (clipped,) = clip_gradients([slices])
    np.testing.assert_allclose(np.asarray(clipped), [[1.0], [0.0]], rtol=1e-6)  # 7 -> 1
