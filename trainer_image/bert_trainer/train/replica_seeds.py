"""Each TensorFlow replica draws its own dropout masks.

Keras draws a dropout layer's seeds from its ``SeedGenerator``, whose state, created in
the strategy's scope, is one mirrored variable: every replica reads the same seed, so
under ``MirroredStrategy`` (or ``TPUStrategy``) each replica drew the same masks. Two
replicas given the same examples with dropout 0.3 computed the same loss to the last
bit. google-research/bert's TPU cores each draw their own (stateful dropout per core).

``install`` wraps the TensorFlow backend's seed drawing (``draw_seed``, which Keras'
TensorFlow random ops call by module attribute): inside a replica context of several
replicas, the seed's first word is offset by the replica's id, so replicas draw
independent masks while the generator's state still advances as one. Outside a replica
context (variable initialisers, one replica) it changes nothing. The JAX runtime (TPU
slices) is not concerned: it draws the masks of the whole global batch at once. If
Keras moves ``draw_seed``, ``install`` raises rather than train with shared masks.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

_MARK = "_bpj_per_replica"


def install() -> None:
    """Make Keras' TensorFlow random ops draw per-replica seeds (idempotent)."""
    from keras.src.backend.tensorflow import random as tf_random

    drawn_by: Any = getattr(tf_random, "draw_seed", None)
    if drawn_by is None:
        raise RuntimeError("keras' TensorFlow backend has no draw_seed: see replica_seeds.py")
    if getattr(drawn_by, _MARK, False):
        return

    def per_replica(seed: Any) -> Any:
        drawn = drawn_by(seed)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return drawn
        replica = tf.cast(context.replica_id_in_sync_group, drawn.dtype)
        return drawn + tf.stack([replica, tf.zeros_like(replica)])

    setattr(per_replica, _MARK, True)
    tf_random.draw_seed = per_replica
