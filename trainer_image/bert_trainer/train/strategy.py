"""Choosing the ``tf.distribute`` strategy from the machine the trainer runs on.

On a TPU VM (a GKE TPU node) the chips are local devices: connect to them and
use ``TPUStrategy``. Anywhere else (CPU pods, tests) the default strategy runs
one replica on the local device. Only the device files decide: the TPU
environment variables (``TPU_WORKER_ID``, ``TPU_WORKER_HOSTNAMES``) are also set
by the operator's Indexed Jobs on CPU pods and by the local pod runner.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bert_trainer import contract

log = logging.getLogger(__name__)

TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
"""TPU chips appear as /dev/accelN (v2-v4) or VFIO groups (v5e and later)."""


@dataclass(frozen=True)
class Placement:
    """Where this process sits in the job."""

    on_tpu: bool
    worker_id: int
    """This host's index; 0 writes summaries and progress."""

    @property
    def is_chief(self) -> bool:
        return self.worker_id == 0


def detect_placement(
    environ: Mapping[str, str] = os.environ,
    device_glob: Callable[[str], list[str]] = glob.glob,
) -> Placement:
    """Read the placement from the environment and the device files (pure for tests)."""
    on_tpu = any(device_glob(pattern) for pattern in TPU_DEVICE_GLOBS)
    try:
        worker_id = int(environ.get(contract.ENV_WORKER_ID, "0") or 0)
    except ValueError:
        worker_id = 0
    return Placement(on_tpu=on_tpu, worker_id=worker_id)


def make_strategy(placement: Placement) -> Any:
    """``TPUStrategy`` over the local TPU system, or the default strategy."""
    import tensorflow as tf  # detect_placement stays importable without TensorFlow

    if not placement.on_tpu:
        return tf.distribute.get_strategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
    log.info("TPUStrategy with %d replicas", strategy.num_replicas_in_sync)
    return strategy
