"""The pretraining objective and its metrics, as google-research/bert defines them.

Masked-LM: cross-entropy over the predicted positions, weighted by
``masked_lm_weights`` (0 marks padding predictions), divided by the weight sum.
Next sentence: mean cross-entropy over the two classes. The total loss is their
sum. Metrics leave the step as sums so they can be added across replicas and
steps, then divided once (a mean of means would weight short batches wrongly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

STATISTICS = (
    "loss",
    "mlm_loss",
    "nsp_loss",
    "replica_steps",
    "mlm_correct",
    "mlm_weight",
    "nsp_correct",
    "nsp_count",
)
"""The entries of the statistics vector, in order."""

_EPSILON = 1e-5  # Google's: keeps a batch without predictions from dividing by 0.


def pretraining_loss(
    outputs: Mapping[str, Any], labels: Mapping[str, Any]
) -> tuple[tf.Tensor, tf.Tensor]:
    """The loss of one replica's batch and a float32 vector of ``STATISTICS``.

    ``outputs`` holds ``mlm_logits`` and ``nsp_logits``; ``labels`` holds
    ``masked_lm_ids``, ``masked_lm_weights`` and ``next_sentence_labels``
    (shape ``[batch]`` or ``[batch, 1]``).
    """
    mlm_logits = tf.cast(outputs["mlm_logits"], tf.float32)
    nsp_logits = tf.cast(outputs["nsp_logits"], tf.float32)
    mlm_ids = tf.cast(labels["masked_lm_ids"], tf.int32)
    weights = tf.cast(labels["masked_lm_weights"], tf.float32)
    nsp_labels = tf.reshape(tf.cast(labels["next_sentence_labels"], tf.int32), [-1])

    mlm_nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=mlm_ids, logits=mlm_logits)
    weight_sum = tf.reduce_sum(weights)
    mlm_loss = tf.reduce_sum(mlm_nll * weights) / (weight_sum + _EPSILON)
    nsp_loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=nsp_labels, logits=nsp_logits)
    )
    loss = mlm_loss + nsp_loss

    mlm_hits = tf.cast(
        tf.equal(tf.argmax(mlm_logits, -1, output_type=tf.int32), mlm_ids), tf.float32
    )
    nsp_hits = tf.cast(
        tf.equal(tf.argmax(nsp_logits, -1, output_type=tf.int32), nsp_labels), tf.float32
    )
    statistics = tf.stack(
        [
            loss,
            mlm_loss,
            nsp_loss,
            tf.constant(1.0),
            tf.reduce_sum(mlm_hits * weights),
            weight_sum,
            tf.reduce_sum(nsp_hits),
            tf.cast(tf.size(nsp_labels), tf.float32),
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
        replica_steps = max(named["replica_steps"], 1.0)
        return cls(
            loss=named["loss"] / replica_steps,
            mlm_loss=named["mlm_loss"] / replica_steps,
            nsp_loss=named["nsp_loss"] / replica_steps,
            mlm_accuracy=named["mlm_correct"] / max(named["mlm_weight"], _EPSILON),
            nsp_accuracy=named["nsp_correct"] / max(named["nsp_count"], 1.0),
        )
