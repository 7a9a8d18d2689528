"""The preparation's passes: which run, how many pods each gets, what their reports add up to.

A corpus is prepared by up to five Indexed Jobs in turn (``contract.PREPARE_PASSES``):
plan (1 pod) sizes the corpus and cuts it into chunks; count (only when a vocab is
trained) counts each chunk's words; vocab (1 pod) trains WordPiece on the merged
counts; records writes each chunk's instances; shards shuffles and writes each
output shard. The parallel passes get the job's worker count: the spec's, or one
pod per ``bytes_per_worker`` of text as plan measured it, at most one per chunk
and at most ``max_workers``. The operator never reads the tenant's bucket itself:
plan's pod, running as the job, reports the corpus' size in its own entry of
``status.preparation.reports``.

Pure functions of the job's status; ``decide`` applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from bert_pretrain_operator.api import BertPretrainJob
from bert_pretrain_operator.api.status import PreparationReport, PreparationStatus
from bert_pretrain_operator.render.trainer_config import preparation_passes
from bert_pretrain_operator.render.workloads import NUM_SHARDS as NUM_SHARDS
from bert_pretrain_operator.render.workloads import pass_pods as pass_pods
from bert_trainer import contract


@dataclass(frozen=True)
class Scale:
    """The operator's defaults for a job that does not set its worker count."""

    bytes_per_worker: int = 1 << 30
    max_workers: int = 32


DEFAULT_SCALE: Final = Scale()


passes = preparation_passes


def report(
    status: PreparationStatus | None, prepare_pass: str, index: int
) -> PreparationReport | None:
    if status is None or status.reports is None:
        return None
    return status.reports.get(contract.preparation_report_key(prepare_pass, index))


def workers(job: BertPretrainJob, plan: PreparationReport | None, scale: Scale) -> int | None:
    """The worker count of the parallel passes; None until plan has reported the corpus."""
    preparation = job.spec.data.preparation
    if preparation is not None and preparation.workers is not None:
        return preparation.workers
    if plan is None or not plan.done or plan.bytes_total is None:
        return None
    wanted = math.ceil(plan.bytes_total / scale.bytes_per_worker)
    return max(1, min(wanted, scale.max_workers, plan.chunks_total or 1))


def measured(status: PreparationStatus) -> PreparationStatus:
    """``status`` with the corpus' size from plan's report."""
    plan = report(status, "plan", 0)
    if plan is None or not plan.done:
        return status
    return status.model_copy(
        update={"files": plan.files, "bytes": plan.bytes_total, "chunks": plan.chunks_total}
    )


def totals(status: PreparationStatus, prepare_pass: str, pods: int) -> PreparationStatus:
    """``status`` with the current pass' bytes and the instances written, over its pods."""
    reports = [report(status, prepare_pass, i) for i in range(pods)]
    written = [report(status, "records", i) for i in range(status.workers or 0)]
    return status.model_copy(
        update={
            "current_pass": prepare_pass,
            "bytes_done": sum(r.bytes_done or 0 for r in reports if r is not None)
            if prepare_pass in ("count", "records")
            else None,
            "instances": sum(r.instances or 0 for r in written if r is not None) or None,
        }
    )


def pods_done(status: PreparationStatus, prepare_pass: str, pods: int) -> int:
    return sum(
        1 for i in range(pods) if (r := report(status, prepare_pass, i)) is not None and r.done
    )


def summary(status: PreparationStatus, prepare_pass: str, pods: int) -> str:
    """The Progress column during preparation, e.g. ``records 12.0/48.0 MiB, 81,920 instances``."""
    if prepare_pass == "plan":
        return "plan: sizing the corpus"
    if prepare_pass == "vocab":
        return "vocab: training WordPiece on the word counts"
    if prepare_pass == "shards":
        done = sum(
            (r.chunks_done or 0)
            for i in range(pods)
            if (r := report(status, "shards", i)) is not None
        )
        text = f"shards {done}/{NUM_SHARDS}"
    else:
        text = f"{prepare_pass} {_sizes(status.bytes_done or 0, status.bytes or 0)}"
    if status.instances:
        text += f", {status.instances:,} instances"
    return text


def _sizes(done: int, total: int) -> str:
    """``done/total unit``, in the unit of the total."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if total >= scale:
            return f"{done / scale:.1f}/{total / scale:.1f} {unit}"
    return f"{done}/{total} B"
