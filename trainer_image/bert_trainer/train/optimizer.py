"""AdamW (or LAMB) with BERT's learning-rate schedule and gradient handling.

The schedule rises linearly from 0 to the peak over the warm-up steps, then
falls linearly to 0 at the last step. Like google-research/bert, biases and
layer-norm parameters get no weight decay and gradients are clipped to a global
norm of 1.

Where the clip sits differs from Google's. Its optimization.py clips each TPU
core's own gradients (``tf.clip_by_global_norm`` right after ``tf.gradients``), and
only then does ``CrossShardOptimizer`` sum them across cores. Here the train step
sums across replicas first and clips the sum once. Google bounds each core's
gradient by 1 (so their sum by N cores); we bound the sum by 1, so with several
replicas ours clips harder, as soon as the replicas' gradients add up to a norm
above 1. The two agree on one replica. Not changed here: issue 17 lists it with
the other numerics to settle against Google's.

The step does the sum itself (clipping needs it), so the optimizers here skip
Keras' own all-reduce, which would otherwise add the already-summed gradients a
second time.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from bert_trainer.config import TrainConfig

CLIP_NORM = 1.0
NO_DECAY = ("bias", "gamma", "beta")
"""Variable-name fragments exempt from weight decay (biases and layer norms)."""


@keras.saving.register_keras_serializable(package="bert_trainer")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then linear decay to 0."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int) -> None:
        super().__init__()
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        decay_span = float(max(self.total_steps - self.warmup_steps, 1))
        rising = self.peak * step / warmup
        falling = self.peak * ops.maximum(float(self.total_steps) - step, 0.0) / decay_span
        return ops.where(step < float(self.warmup_steps), rising, falling)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


class _SummedGradients:
    """Mixin: gradients arrive already summed across replicas (and clipped)."""

    def _all_reduce_sum_gradients(self, grads_and_vars: Any) -> list[Any]:
        return list(grads_and_vars)


class AdamW(_SummedGradients, keras.optimizers.AdamW):  # type: ignore[misc]
    """Keras' AdamW, fed gradients the train step already all-reduced."""


class Lamb(_SummedGradients, keras.optimizers.Lamb):  # type: ignore[misc]
    """Keras' LAMB, fed gradients the train step already all-reduced."""


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer ``config`` names, with BERT's schedule and decay exemptions.

    Create it inside the distribution strategy's scope: its slots are variables.
    """
    if keras.backend.backend() == "tensorflow" and not hasattr(
        keras.optimizers.AdamW, "_all_reduce_sum_gradients"
    ):
        # Without this hook Keras would sum our summed gradients again on every
        # replica: fail loudly rather than train with N-times-too-large steps.
        # (On JAX the step's sharding does the sum; Keras adds none.)
        raise RuntimeError("this Keras has no _all_reduce_sum_gradients; see optimizer.py")
    schedule = learning_rate_schedule(config)
    kind = AdamW if config.optimizer == "adamw" else Lamb
    optimizer = kind(
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer


def learning_rate_schedule(config: TrainConfig) -> WarmupLinearDecay:
    return WarmupLinearDecay(config.learning_rate, config.warmup_steps, config.train_steps)


def clip_gradients(gradients: list[Any]) -> list[Any]:
    """Scale ``gradients`` down to a global norm of at most ``CLIP_NORM`` (TensorFlow step).

    ``tf.clip_by_global_norm`` because TensorFlow's embedding gradients are
    ``IndexedSlices``, which ``keras.ops`` cannot square.
    """
    import tensorflow as tf

    clipped, _ = tf.clip_by_global_norm(gradients, CLIP_NORM)
    return list(clipped)


def clip_dense_gradients(gradients: list[Any]) -> list[Any]:
    """``clip_gradients`` for dense gradients in any backend (the JAX step)."""
    norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g in gradients))
    scale = CLIP_NORM / ops.maximum(norm, CLIP_NORM)
    return [g * ops.cast(scale, g.dtype) for g in gradients]
