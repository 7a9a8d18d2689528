"""Choosing the ``tf.distribute`` strategy from the machine the trainer runs on.

The entry point sends every TPU to the JAX runtime (``train/device.py``,
``docs/tpu-runtime.md``): the images' TensorFlow is the standard wheel, which does
not drive TPUs, so in them this path runs on CPU with the default strategy (one
replica on the local device). ``TPUStrategy`` stays for a TensorFlow built for TPUs
(``tensorflow-tpu``) on a TPU VM, where the chips are local devices. Only the device
files decide: the TPU environment variables (``TPU_WORKER_ID``,
``TPU_WORKER_HOSTNAMES``) are also set by the operator's Indexed Jobs on CPU pods.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bert_trainer import contract
from bert_trainer.train.device import TPU_DEVICE_GLOBS

log = logging.getLogger(__name__)


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
