"""What the operator and the trainer agree on, in one place (no TensorFlow here).

- The trainer reads its configuration (``bert_trainer.config.TrainerConfig`` as
  JSON) from ``CONFIG_PATH``, a ConfigMap the operator mounts.
- Exit codes tell the operator whether to retry: ``EXIT_BAD_INPUT`` means the
  user's input or configuration is wrong and retrying cannot help (the job fails
  at once); ``EXIT_INFRASTRUCTURE`` and any other non-zero code mean the attempt
  may succeed on fresh hardware (resumed from the last checkpoint);
  ``EXIT_PREEMPTED`` means the trainer received SIGTERM and saved a checkpoint.
- Before exiting non-zero the trainer writes one line saying why to
  ``TERMINATION_MESSAGE_PATH`` (Kubernetes' terminationMessagePath), which the
  operator copies into the job's condition message.
- Worker 0 reports progress by merge-patching the BertPretrainJob's status
  subresource (``status.progress``, fields named in ``PROGRESS_FIELDS``) with
  the pod's own service account; best effort and rate-limited.
"""

from __future__ import annotations

from typing import Final

API_GROUP: Final = "pretraining.bert.dev"
API_VERSION: Final = "v1alpha1"
KIND: Final = "BertPretrainJob"
PLURAL: Final = "bertpretrainjobs"

CONFIG_DIR: Final = "/etc/bert-trainer"
CONFIG_PATH: Final = CONFIG_DIR + "/config.json"
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"

EXIT_OK: Final = 0
EXIT_BAD_INPUT: Final = 10
"""Invalid configuration or data (missing objects, vocab mismatch, corrupt records)."""
EXIT_INFRASTRUCTURE: Final = 20
"""Transient failure after retries (storage unreachable for longer than the retry
budget, see ``ENV_STORAGE_RETRY_SECONDS``; a lost peer worker)."""
EXIT_PREEMPTED: Final = 21
"""SIGTERM received (e.g. a spot VM's notice); a checkpoint was written before exit."""

#: Environment variables the trainer reads besides its config file.
ENV_CONFIG_PATH: Final = "BERT_TRAINER_CONFIG"
"""Overrides CONFIG_PATH (the local pod runner and tests use it)."""
ENV_TERMINATION_MESSAGE_PATH: Final = "BERT_TRAINER_TERMINATION_MESSAGE_PATH"
ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"
ENV_WORKER_ID: Final = "TPU_WORKER_ID"
"""Injected by GKE on TPU pods (and by the Indexed Job's completion index otherwise)."""
ENV_WORKER_HOSTNAMES: Final = "TPU_WORKER_HOSTNAMES"
ENV_STORAGE_RETRY_SECONDS: Final = "BERT_TRAINER_STORAGE_RETRY_SECONDS"
"""How long the trainer retries a failing storage call before exiting with
``EXIT_INFRASTRUCTURE`` (``bert_trainer.retry``; default 600, 0 disables). Set it for
every trainer pod with the operator's ``BPJ_TRAINER_ENV_<NAME>`` settings."""
"""Every host of the slice, comma-separated, in worker-id order (rendered by the operator)."""
ENV_COORDINATOR_PORT: Final = "JAX_COORDINATOR_PORT"
"""Where host 0 runs JAX's coordination service on a multi-host slice (JAX's own name)."""
DEFAULT_COORDINATOR_PORT: Final = 8482
"""JAX's default for Cloud TPU (``jax._src.clusters.cloud_tpu_cluster``)."""
ENV_RUNTIME: Final = "BERT_TRAINER_RUNTIME"
"""``tensorflow`` or ``jax``; unset: JAX on a multi-host slice, TensorFlow otherwise."""
ENV_DEVICE: Final = "BERT_TRAINER_DEVICE"
"""``tpu`` (rendered by the operator into every training pod: it runs on a TPU slice)
or ``cpu`` (development stacks whose TPU-shaped nodes have no chips). With ``tpu`` and
no TPU device, ``train`` exits with ``EXIT_BAD_INPUT`` at once (``train/device.py``)."""
ENV_SUPERVISED: Final = "BERT_TRAINER_SUPERVISED"
"""Set by the multi-host supervisor in the environment of the process it starts."""

#: Keys of ``status.progress`` written by worker 0 (camelCase, as in the CRD).
PROGRESS_FIELDS: Final = (
    "step",
    "totalSteps",
    "loss",
    "mlmAccuracy",
    "nspAccuracy",
    "examplesPerSecond",
    "etaSeconds",
    "lastCheckpoint",
    "lastCheckpointStep",
    "updatedTime",
)
