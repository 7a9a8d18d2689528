"""One reconcile of one BertPretrainJob: read, observe, decide, act, report.

The order matters for safety: children are created before the status that
names them is written, and Events are recorded only after the status write
succeeded, so a crash at any point leaves either nothing or something the next
reconcile recognises by its deterministic name.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from bert_pretrain_operator import inputs
from bert_pretrain_operator.api import BertPretrainJob, BertPretrainJobStatus
from bert_pretrain_operator.kube import Kube
from bert_pretrain_operator.reconcile.decide import Decision, decide, fail_inputs
from bert_pretrain_operator.reconcile.observe import observe
from bert_pretrain_operator.render import render_stage, workloads
from bert_pretrain_operator.render.trainer_config import ResolvedInputs, trainer_config
from bert_pretrain_operator.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
Resolver = Callable[[BertPretrainJob], ResolvedInputs]

#: Status fields other writers own: the trainer (progress) and kopf.
_NOT_OURS = {"progress", "kopf"}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def status_patch(status: BertPretrainJobStatus) -> dict[str, Any]:
    """The operator's part of the status, as JSON for a merge patch."""
    patch: dict[str, Any] = status.model_dump(
        by_alias=True, exclude_none=True, mode="json", exclude=_NOT_OURS
    )
    return patch


def _jobs_missing_pods(
    jobs: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """Unfinished, unsuspended Jobs with fewer pods than they run at once.

    Only for these is it worth reading Events: a refused pod creation (a quota, an
    admission policy) leaves no pod to look at, only the Job controller's Event.
    """
    counts: dict[str, int] = {}
    for pod in pods:
        owner = pod.get("metadata", {}).get("labels", {}).get("job-name", "")
        counts[owner] = counts.get(owner, 0) + 1
    missing: list[tuple[str, str]] = []
    for job in jobs:
        spec, status = job.get("spec", {}), job.get("status", {})
        finished = any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        name = job["metadata"]["name"]
        if (
            not finished
            and not spec.get("suspend")
            and (counts.get(name, 0) < int(spec.get("parallelism") or 1))
        ):
            missing.append((name, job["metadata"]["uid"]))
    return missing


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        resolver: Resolver = inputs.resolve,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.resolver = resolver
        self._resolved: dict[tuple[str | None, int | None], ResolvedInputs] = {}

    def reconcile(self, namespace: str, name: str) -> Decision | None:
        """Bring one job one step closer to its spec; returns what was decided."""
        raw = self.kube.read_job(namespace, name)
        if raw is None or raw["metadata"].get("deletionTimestamp"):
            return None
        try:
            job = BertPretrainJob.from_manifest(raw)
        except ValidationError as exc:
            # Admission validates the same model; this catches objects stored before
            # a schema change. They cannot run, so say why instead of retrying forever.
            self._report_invalid(raw, exc)
            return None
        jobs, pods = self.kube.children(namespace, name)
        events = self.kube.job_events(namespace, _jobs_missing_pods(jobs, pods))
        now = self.clock()
        decision = decide(job, observe(jobs, pods, events), now)
        if decision.create:
            try:
                resolved = self._resolve(job)
            except inputs.InputProblem as problem:
                decision = fail_inputs(job, str(problem), now)
            else:
                self._create(job, decision, resolved)
        for job_name in decision.delete_jobs:
            log.info(
                "deleting Job %s/%s", namespace, job_name, extra={"bpj": f"{namespace}/{name}"}
            )
            self.kube.delete_job(namespace, job_name)
        old = status_patch(job.status or BertPretrainJobStatus())
        new = status_patch(decision.status)
        if new != old:
            self.kube.patch_status(namespace, name, new)
        for event in decision.events:
            log.info("%s: %s", event.reason, event.message, extra={"bpj": f"{namespace}/{name}"})
            self.kube.event(raw, event.type, event.reason, event.message)
        if decision.delete_self:
            log.info(
                "ttlSecondsAfterFinished elapsed; deleting", extra={"bpj": f"{namespace}/{name}"}
            )
            self.kube.delete_bpj(namespace, name)
        return decision

    def _resolve(self, job: BertPretrainJob) -> ResolvedInputs:
        key = (job.metadata.uid, job.metadata.generation)
        if key not in self._resolved:
            self._resolved[key] = self.resolver(job)
        return self._resolved[key]

    def _create(self, job: BertPretrainJob, decision: Decision, resolved: ResolvedInputs) -> None:
        config = trainer_config(
            job, resolved, report_interval=self.settings.progress_report_seconds
        )
        # The ConfigMap is rewritten before each new stage or attempt, so spec edits
        # that admission allows (trainSteps, learningRate, ...) apply from then on.
        self.kube.replace_config_map(workloads.config_map(job, config))
        for stage, attempt in decision.create:
            for manifest in render_stage(job, self.settings, stage, attempt):
                created = self.kube.create(manifest)
                log.info(
                    "%s %s %s",
                    "created" if created else "found existing",
                    manifest["kind"],
                    manifest["metadata"]["name"],
                    extra={"bpj": f"{job.metadata.namespace}/{job.metadata.name}"},
                )

    def _report_invalid(self, raw: dict[str, Any], exc: ValidationError) -> None:
        meta = raw["metadata"]
        message = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        status = raw.get("status") or {}
        if status.get("phase") == "Failed":
            return
        now = self.clock().isoformat()
        self.kube.patch_status(
            meta["namespace"],
            meta["name"],
            {
                "phase": "Failed",
                "observedGeneration": meta.get("generation"),
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "InvalidSpec",
                        "message": message[:32768],
                        "lastTransitionTime": now,
                    }
                ],
            },
        )
        self.kube.event(raw, "Warning", "InvalidSpec", message)
