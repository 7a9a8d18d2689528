"""Deterministic names and labels of a job's children.

Names are derived from the BertPretrainJob's name (and the training attempt), so
an operator restarted at any point finds what it created instead of creating it
again. The API limits job names so that every derived name stays a valid label
value (at most 63 characters).
"""

from __future__ import annotations

from typing import Final

from bert_trainer import contract

LABEL_PREFIX: Final = contract.API_GROUP + "/"
LABEL_JOB: Final = LABEL_PREFIX + "job"
"""Value: the owning BertPretrainJob's name. Children are listed by it."""
LABEL_STAGE: Final = LABEL_PREFIX + "stage"
"""Value: check, prepare, train or export."""
LABEL_ATTEMPT: Final = LABEL_PREFIX + "attempt"
"""Value: the training attempt (1, 2, ...) of a train Job and its pods."""
LABEL_PASS: Final = LABEL_PREFIX + "pass"
"""Value: the preparation pass (``contract.PREPARE_PASSES``) of a prepare Job and its pods."""
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "bert-pretrain-operator"
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"

STAGE_CHECK: Final = "check"
STAGE_PREPARE: Final = "prepare"
STAGE_TRAIN: Final = "train"
STAGE_EXPORT: Final = "export"


def config_map(job: str) -> str:
    return f"{job}-trainer-config"


def check_job(job: str) -> str:
    """The pre-flight check of the job's inputs, run before any stage."""
    return f"{job}-check"


def prepare_job(job: str, prepare_pass: str) -> str:
    """One pass's Indexed Job. Short: the Job controller cuts a pod's generated name at
    58 characters, and the progress policy matches ``<job>-prep-<pass>-<index>-`` in it
    (a 40-character job name, the longest pass and a two-digit index make 57)."""
    return f"{job}-prep-{prepare_pass}"


def train_job(job: str, attempt: int) -> str:
    return f"{job}-train-{attempt}"


def export_job(job: str) -> str:
    return f"{job}-export"


def workers_service(job: str) -> str:
    """The headless Service that gives a multi-host slice's pods stable hostnames."""
    return f"{job}-workers"


def child_labels(
    job: str,
    stage: str | None = None,
    attempt: int | None = None,
    prepare_pass: str | None = None,
) -> dict[str, str]:
    labels = {LABEL_JOB: job, LABEL_MANAGED_BY: MANAGED_BY}
    if stage is not None:
        labels[LABEL_STAGE] = stage
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    if prepare_pass is not None:
        labels[LABEL_PASS] = prepare_pass
    return labels
