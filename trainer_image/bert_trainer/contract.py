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
- A distributed prepare runs as one Indexed Job per pass (``PREPARE_PASSES``), each
  pod ``prepare --pass PASS --workers N`` with its index in ``JOB_COMPLETION_INDEX``.
  Each pod merge-patches only its own key of ``status.preparation.reports``
  (``preparation_report_key``; fields ``PREPARATION_REPORT_FIELDS``): progress best
  effort, the final report (``done: true``) retried and required, so a pass whose
  Job completed has a final report from every index.
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
EXIT_DIVERGED: Final = 12
"""The training loss became NaN or infinite. Nothing was saved from the diverged steps,
so the last checkpoint is the last good one; the same configuration would diverge again,
so the operator does not retry."""

#: Environment variables the trainer reads besides its config file.
ENV_CONFIG_PATH: Final = "BERT_TRAINER_CONFIG"
"""Overrides CONFIG_PATH (the local pod runner and tests use it)."""
ENV_TERMINATION_MESSAGE_PATH: Final = "BERT_TRAINER_TERMINATION_MESSAGE_PATH"
ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"
ENV_CPUS: Final = "BERT_TRAINER_CPUS"
"""A CPU stage pod's CPU request, rounded up (the downward API's ``requests.cpu``,
divisor 1): the processes of its pool, at most (``prepare/parallel.py``)."""
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
    "eval",
    "updatedTime",
)
#: Keys of ``status.progress.eval``: the latest held-out evaluation, by
#: google-research/bert's metric names in camelCase.
EVAL_FIELDS: Final = (
    "step",
    "maskedLmAccuracy",
    "maskedLmLoss",
    "nextSentenceAccuracy",
    "nextSentenceLoss",
)

#: The passes of a distributed prepare, in order; each is one Indexed Job.
#: - plan (1 pod): glob and size the corpus, write the chunk plan to the work dir,
#:   report files, bytesTotal and chunksTotal (the operator derives the workers from it);
#: - count (N pods, only when a vocab is trained): word counts of each chunk;
#: - vocab (1 pod, only when a vocab is trained): merge the counts, train WordPiece;
#: - records (N pods): instances of each chunk, dealt over the shards as fragments;
#: - shards (min(N, numShards) pods): concatenate, shuffle and write each shard.
PREPARE_PASSES: Final = ("plan", "count", "vocab", "records", "shards")
ENV_COMPLETION_INDEX: Final = "JOB_COMPLETION_INDEX"
"""The pod's index in an Indexed Job (set by the Job controller)."""

#: Keys of one ``status.preparation.reports[<pass>-<index>]`` entry (camelCase, as in the CRD).
PREPARATION_REPORT_FIELDS: Final = (
    "bytesDone",
    "bytesTotal",
    "chunksDone",
    "chunksTotal",
    "files",
    "instances",
    "vocabSize",
    "done",
    "updatedTime",
)


def preparation_report_key(prepare_pass: str, index: int) -> str:
    """The key of a prepare pod's entry in ``status.preparation.reports``.

    The progress admission policy lets a pod write this key only if its name starts
    with ``<job>-prep-<key>-``: the pods of index ``index`` of that pass's Job.
    """
    return f"{prepare_pass}-{index}"


#: The stem of a run's checkpoints under its output: ``ckpt-<step>.index`` (TensorFlow)
#: and ``ckpt-<step>.npz`` (the slice's arrays), as ``lastCheckpoint`` names them.
CHECKPOINT_NAME = "ckpt"
