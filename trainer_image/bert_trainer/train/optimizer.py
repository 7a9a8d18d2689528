"""AdamW (or LAMB) with BERT's learning-rate schedule and gradient handling.

The schedule is google-research/bert's (optimization.py): a linear decay from the
peak at step 0 to 0 at the last step T (``polynomial_decay`` with power 1, over all
T steps), which the warm-up overrides before step W with a linear rise from 0. So
at step W the rate drops from the peak to peak * (T - W) / T, as Google's does
(0.9x for 100k steps with 10k of warm-up). Like google-research/bert, biases and
layer-norm parameters get no weight decay and gradients are clipped to a global
norm of 1.

AdamW is Keras': decoupled weight decay as Google's, but with Adam's bias
correction, which Google's AdamWeightDecayOptimizer does not apply (so Google's
first steps are about 3x larger; the two converge within the first few thousand
steps). Kept, and said in docs/training.md; test_train.py pins it. LAMB is the
standard one (NVIDIA's, TensorFlow Addons'), not Keras' as it is: see ``Lamb``.

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

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from bert_trainer.config import TrainConfig

CLIP_NORM = 1.0
NO_DECAY = ("bias", "gamma", "beta")
"""Variable-name fragments exempt from weight decay (biases and layer norms)."""


@keras.saving.register_keras_serializable(package="bert_trainer")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """Google's schedule: ``peak * (1 - step / total)``, and before ``warmup_steps`` a rise.

    The decay runs over all ``total_steps`` from step 0, not from the end of warm-up
    (google-research/bert's ``polynomial_decay``, which the warm-up overrides).
    """

    def __init__(
        self, peak: float, warmup_steps: int, total_steps: int, first_step: int = 0
    ) -> None:
        super().__init__()
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.first_step = first_step
        """The run's step the schedule starts at (a later phase's first step)."""

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32") - float(self.first_step)
        warmup = float(max(self.warmup_steps, 1))
        total = float(max(self.total_steps, 1))
        rising = self.peak * step / warmup
        falling = self.peak * ops.maximum(total - step, 0.0) / total
        return ops.where(step < float(self.warmup_steps), rising, falling)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "first_step": self.first_step,
        }


@keras.saving.register_keras_serializable(package="bert_trainer")
class PhasedSchedule(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """One ``WarmupLinearDecay`` per phase, each from its phase's first step.

    As NVIDIA's recipe: every phase warms up and decays on its own, while the
    optimizer (and its moments) carries on from the phase before.
    """

    def __init__(self, phases: list[WarmupLinearDecay]) -> None:
        super().__init__()
        self.phases = phases

    def __call__(self, step: Any) -> Any:
        rate = self.phases[0](step)
        for phase in self.phases[1:]:
            rate = ops.where(
                ops.cast(step, "float32") >= float(phase.first_step), phase(step), rate
            )
        return rate

    def get_config(self) -> dict[str, Any]:
        return {"phases": [phase.get_config() for phase in self.phases]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PhasedSchedule:
        return cls([WarmupLinearDecay(**phase) for phase in config["phases"]])


class _SummedGradients:
    """Mixin: gradients arrive already summed across replicas (and clipped)."""

    def _all_reduce_sum_gradients(self, grads_and_vars: Any) -> list[Any]:
        return list(grads_and_vars)


class AdamW(_SummedGradients, keras.optimizers.AdamW):  # type: ignore[misc]
    """Keras' AdamW, fed gradients the train step already all-reduced."""


class Lamb(_SummedGradients, keras.optimizers.Lamb):  # type: ignore[misc]
    """Standard LAMB (NVIDIA's, TensorFlow Addons'), fed already all-reduced gradients.

    Keras' own LAMB decays every decayed weight apart from the step (``w -= lr * wd * w``)
    and scales every variable's Adam step by its trust ratio ||w|| / ||step||, biases
    and LayerNorm included. Standard LAMB, the one NVIDIA's BERT recipe tunes its
    learning rate and decay for, adds the decay to the step the trust ratio scales,
    and gives the variables excluded from decay neither decay nor a trust ratio: their
    step is Adam's. With Keras' form, the decay was not bounded by the trust ratio, so
    at NVIDIA's settings (decay 0.01, rates near 6e-3) it was many times stronger.
    Both keep Adam's bias correction, as NVIDIA's does.
    """

    def __init__(self, *, weight_decay: float | None = None, **kwargs: Any) -> None:
        # Keras would apply the decay on its own, outside the trust ratio: do it here.
        super().__init__(weight_decay=None, **kwargs)
        self.lamb_weight_decay = float(weight_decay or 0.0)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        m_hat = ops.divide(m, 1.0 - ops.power(ops.cast(self.beta_1, dtype), step))
        v_hat = ops.divide(v, 1.0 - ops.power(ops.cast(self.beta_2, dtype), step))
        update = ops.divide(m_hat, ops.add(ops.sqrt(v_hat), self.epsilon))
        if self._use_weight_decay(variable):
            update = ops.add(update, ops.multiply(variable, self.lamb_weight_decay))
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            u_norm = ops.sqrt(ops.sum(ops.square(update)))
            ratio = ops.where(
                ops.greater(w_norm, 0),
                ops.where(ops.greater(u_norm, 0), ops.divide(w_norm, u_norm), 1.0),
                1.0,
            )
            update = ops.multiply(update, ratio)
        self.assign_sub(variable, ops.multiply(lr, update))


def make_optimizer(
    config: TrainConfig, phases: Sequence[TrainConfig] = ()
) -> keras.optimizers.Optimizer:
    """The optimizer ``config`` names, with BERT's schedule and decay exemptions.

    With ``phases`` (a run of several), the schedule is each phase's in turn.
    Create it inside the distribution strategy's scope: its slots are variables.
    """
    if keras.backend.backend() == "tensorflow" and not hasattr(
        keras.optimizers.AdamW, "_all_reduce_sum_gradients"
    ):
        # Without this hook Keras would sum our summed gradients again on every
        # replica: fail loudly rather than train with N-times-too-large steps.
        # (On JAX the step's sharding does the sum; Keras adds none.)
        raise RuntimeError("this Keras has no _all_reduce_sum_gradients; see optimizer.py")
    schedule = learning_rate_schedule(config, phases)
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


def learning_rate_schedule(
    config: TrainConfig, phases: Sequence[TrainConfig] = ()
) -> WarmupLinearDecay | PhasedSchedule:
    """``config``'s schedule; over ``phases``, when there are several, each phase's."""
    if len(phases) > 1:
        return PhasedSchedule([_phase_schedule(phase) for phase in phases])
    return _phase_schedule(config)


def _phase_schedule(config: TrainConfig) -> WarmupLinearDecay:
    return WarmupLinearDecay(
        config.learning_rate,
        config.warmup_steps,
        config.train_steps - config.first_step,
        config.first_step,
    )


def clip_gradients(gradients: list[Any]) -> list[Any]:
    """Scale ``gradients`` down to a global norm of at most ``CLIP_NORM`` (TensorFlow step).

    TensorFlow's embedding gradients come as ``IndexedSlices`` with one slice per token
    occurrence, repeated indices included; the norm of those slices is not the norm of
    the gradient they sum to (two occurrences of a token count as a² + b², not
    (a + b)²). They are made dense first, as Google's TPU embeddings' (one-hot matmul)
    gradients are, so the clip sees the true global norm whether or not the gradient
    was accumulated over micro-batches (which sums it densely).
    """
    import tensorflow as tf

    dense = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]
    clipped, _ = tf.clip_by_global_norm(dense, CLIP_NORM)
    return list(clipped)


def clip_dense_gradients(gradients: list[Any]) -> list[Any]:
    """``clip_gradients`` for dense gradients in any backend (the JAX step)."""
    norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g in gradients))
    scale = CLIP_NORM / ops.maximum(norm, CLIP_NORM)
    return [g * ops.cast(scale, g.dtype) for g in gradients]
