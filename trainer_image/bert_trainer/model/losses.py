"""The pretraining objective and its metrics, as google-research/bert defines them.

Masked-LM: cross-entropy over the predicted positions, weighted by
``masked_lm_weights`` (0 marks padding predictions), divided by the weight sum.
Next sentence: mean cross-entropy over the two classes. The total loss is their
sum. Metrics leave the step as sums so they can be added across replicas and
steps, then divided once (a mean of means would weight short batches wrongly).

Both runtimes normalise over the **global** batch: the JAX step computes the loss
on the global array; each TensorFlow replica computes its share of it (divided by
the global batch's weight sum and example count, ``totals``), and the shares add up.
google-research/bert normalises per TPU core instead, then averages the cores, so
there a core with few masked positions weighs as much as one with many; here every
masked position weighs the same, and a run's numbers do not depend on how many
replicas it has (docs/training.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keras import ops

STATISTICS = (
    "loss",
    "mlm_loss",
    "nsp_loss",
    "steps",
    "mlm_correct",
    "mlm_weight",
    "nsp_correct",
    "nsp_count",
)
"""The entries of the statistics vector, in order."""

_EPSILON = 1e-5  # Google's: keeps a batch without predictions from dividing by 0.


def batch_totals(labels: Mapping[str, Any]) -> tuple[Any, Any]:
    """A batch's masked-LM weight sum and example count, the loss's two denominators.

    A replica's or a micro-batch's, summed over the global batch, are the ``totals``
    that ``pretraining_loss`` divides its share by.
    """
    weights = ops.cast(labels["masked_lm_weights"], "float32")
    return ops.sum(weights), ops.cast(ops.size(labels["next_sentence_labels"]), "float32")


def pretraining_loss(
    outputs: Mapping[str, Any],
    labels: Mapping[str, Any],
    totals: tuple[Any, Any] | None = None,
) -> tuple[Any, Any]:
    """The loss of a batch and a float32 vector of ``STATISTICS``.

    ``outputs`` holds ``mlm_logits`` and ``nsp_logits``; ``labels`` holds
    ``masked_lm_ids``, ``masked_lm_weights`` and ``next_sentence_labels``
    (shape ``[batch]`` or ``[batch, 1]``). Written with ``keras.ops`` so the
    TensorFlow step and the JAX step (multi-host slices) share one objective.

    With ``totals`` (the global batch's masked-LM weight sum and example count) the
    batch is one replica's part of a global batch, and the loss is its share of the
    global batch's loss: the replicas' losses, their gradients and their statistics
    add up to the global batch's (the ``steps`` entry is the share, so a step counts
    once however many replicas it ran on).
    """
    mlm_logits = ops.cast(outputs["mlm_logits"], "float32")
    nsp_logits = ops.cast(outputs["nsp_logits"], "float32")
    mlm_ids = ops.cast(labels["masked_lm_ids"], "int32")
    weights = ops.cast(labels["masked_lm_weights"], "float32")
    nsp_labels = ops.reshape(ops.cast(labels["next_sentence_labels"], "int32"), [-1])

    mlm_nll = ops.sparse_categorical_crossentropy(mlm_ids, mlm_logits, from_logits=True)
    weight_sum, count = batch_totals(labels)
    weight_total, count_total = (weight_sum, count) if totals is None else totals
    mlm_loss = ops.sum(mlm_nll * weights) / (weight_total + _EPSILON)
    nsp_loss = ops.sum(
        ops.sparse_categorical_crossentropy(nsp_labels, nsp_logits, from_logits=True)
    ) / ops.maximum(count_total, 1.0)
    loss = mlm_loss + nsp_loss

    mlm_hits = ops.cast(ops.equal(ops.argmax(mlm_logits, axis=-1), mlm_ids), "float32")
    nsp_hits = ops.cast(ops.equal(ops.argmax(nsp_logits, axis=-1), nsp_labels), "float32")
    statistics = ops.stack(
        [
            loss,
            mlm_loss,
            nsp_loss,
            count / ops.maximum(count_total, 1.0),
            ops.sum(mlm_hits * weights),
            weight_sum,
            ops.sum(nsp_hits),
            count,
        ]
    )
    return loss, statistics


@dataclass(frozen=True)
class PretrainingMetrics:
    """Means over everything a statistics vector summed."""

    loss: float
    mlm_loss: float
    nsp_loss: float
    mlm_accuracy: float
    nsp_accuracy: float

    @classmethod
    def from_statistics(cls, sums: Sequence[float]) -> PretrainingMetrics:
        named = dict(zip(STATISTICS, (float(value) for value in sums), strict=True))
        steps = max(named["steps"], 1e-9)
        return cls(
            loss=named["loss"] / steps,
            mlm_loss=named["mlm_loss"] / steps,
            nsp_loss=named["nsp_loss"] / steps,
            mlm_accuracy=named["mlm_correct"] / max(named["mlm_weight"], _EPSILON),
            nsp_accuracy=named["nsp_correct"] / max(named["nsp_count"], 1.0),
        )
