"""Pure rendering of a job's children: what the operator creates, and what `bpj render` prints.

- ``names``: deterministic names and labels.
- ``trainer_config``: the trainer's configuration and the job's GCS layout.
- ``workloads``: the Jobs, the headless Service and the ConfigMap.
"""

from __future__ import annotations

from typing import Any

from bert_pretrain_operator.api import BertPretrainJob
from bert_pretrain_operator.render import workloads
from bert_pretrain_operator.render.trainer_config import (
    ResolvedInputs,
    needs_prepare,
    preparation_passes,
    trainer_config,
)
from bert_pretrain_operator.settings import Settings
from bert_trainer import contract

Manifest = dict[str, Any]

#: Stands in for the uid the API server assigns, in `bpj render` output.
UID_PLACEHOLDER = "<uid of the BertPretrainJob>"


def render_stage(
    job: BertPretrainJob, settings: Settings, stage: str, attempt: int
) -> list[Manifest]:
    """The objects one stage needs besides the shared ConfigMap.

    ``attempt`` is the training attempt, or for prepare the pass' index in
    ``contract.PREPARE_PASSES``.
    """
    if stage == "check":
        return [workloads.check_job(job, settings)]
    if stage == "prepare":
        return [workloads.prepare_job(job, settings, contract.PREPARE_PASSES[attempt])]
    if stage == "export":
        return [workloads.export_job(job, settings)]
    objects = []
    if workloads.slice_shape(job).multi_host:
        objects.append(workloads.workers_service(job))
    objects.append(workloads.train_job(job, settings, attempt))
    return objects


def render_all(
    job: BertPretrainJob,
    settings: Settings | None = None,
    resolved: ResolvedInputs | None = None,
) -> list[Manifest]:
    """Everything the operator creates for ``job`` over a run without restarts."""
    settings = settings or Settings.from_env()
    meta = job.metadata.model_copy(
        update={
            "namespace": job.metadata.namespace or "default",
            "uid": job.metadata.uid or UID_PLACEHOLDER,
        }
    )
    job = job.model_copy(update={"metadata": meta})
    config = trainer_config(
        job, resolved or ResolvedInputs(), report_interval=settings.progress_report_seconds
    )
    objects = [workloads.config_map(job, config), *render_stage(job, settings, "check", 0)]
    if needs_prepare(job):
        for prepare_pass in preparation_passes(job):
            objects += render_stage(
                job, settings, "prepare", contract.PREPARE_PASSES.index(prepare_pass)
            )
    objects += render_stage(job, settings, "train", 1)
    if job.spec.export.hugging_face:
        objects += render_stage(job, settings, "export", 0)
    return objects
