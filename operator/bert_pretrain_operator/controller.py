"""One reconcile of one BertPretrainJob: read, observe, decide, act, report.

The order matters for safety: children are created before the status that
names them is written, and Events are recorded only after the status write
succeeded, so a crash at any point leaves either nothing or something the next
reconcile recognises by its deterministic name.

Cost. The job usually comes from the watch (``JobCache``), not from a GET. The
status patch names the resourceVersion it was decided on, so a decision made on
a stale copy fails with 409 Conflict and is made again on a fresh GET; so is any
decision to delete something. A job the operator never reconciled has no status
yet, hence no children of ours, unless a previous operator process died between
creating them and writing the status: its first reconcile therefore lists no
children and creates its first stage directly (409 Conflict: "found existing"),
which makes it three requests: ConfigMap, Job and status. Events are posted
after the status write, as before, but with ``events`` given they are posted
from that executor (one thread keeps their order) rather than by the worker,
like client-go's asynchronous event recorder: under a burst of new jobs they
trail the Jobs instead of delaying them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from pydantic import ValidationError

from bert_pretrain_operator import metrics
from bert_pretrain_operator.api import BertPretrainJob, BertPretrainJobStatus
from bert_pretrain_operator.children import Children
from bert_pretrain_operator.jobcache import JobCache
from bert_pretrain_operator.kube import ApiError, Kube
from bert_pretrain_operator.reconcile import preparation
from bert_pretrain_operator.reconcile.decide import FINAL_PHASES, Decision, decide
from bert_pretrain_operator.reconcile.observe import observe
from bert_pretrain_operator.render import render_stage, workloads
from bert_pretrain_operator.render.trainer_config import ResolvedInputs, trainer_config
from bert_pretrain_operator.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]

#: Status fields other writers own: the trainer (progress, the preparation pods'
#: reports) and kopf. A merge patch leaves what it does not name as it is.
_NOT_OURS: dict[str, Any] = {"progress": True, "kopf": True, "preparation": {"reports"}}
#: Reconcile passes on one job before giving up until the error backoff (each pass
#: after the first follows a 409 Conflict, i.e. the job changed meanwhile).
_PASSES = 3


class _Stale(Exception):
    """The copy of the job this pass decided on is not the stored one (or may not be)."""


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
        cache: JobCache | None = None,
        events: Executor | None = None,
        children: Children | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.cache = cache if cache is not None else JobCache()
        self._events = events
        self._children = children
        self._scale = preparation.Scale(
            bytes_per_worker=settings.prepare_bytes_per_worker,
            max_workers=settings.prepare_max_workers,
        )

    def reconcile(self, namespace: str, name: str) -> Decision | None:
        """Bring one job one step closer to its spec; returns what was decided."""
        key = (namespace, name)
        raw = self.cache.get(key)
        fresh = False
        for _ in range(_PASSES):
            if raw is None:
                raw, fresh = self.kube.read_job(namespace, name), True
                if raw is None:
                    self.cache.drop(key)
                    return None
                self.cache.put(raw)
            try:
                return self._reconcile(raw, fresh=fresh)
            except _Stale:
                raw = None
        raise RuntimeError(f"{namespace}/{name} kept changing during {_PASSES} reconcile passes")

    def _reconcile(self, raw: dict[str, Any], *, fresh: bool) -> Decision | None:
        """One pass on one copy of the job; ``_Stale`` if that copy must be read again."""
        meta = raw["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            return None
        try:
            job = BertPretrainJob.from_manifest(raw)
        except ValidationError as exc:
            # Admission validates the same model; this catches objects stored before
            # a schema change. They cannot run, so say why instead of retrying forever.
            self._report_invalid(raw, exc)
            return None
        if job.status is None or job.status.phase in (None, *FINAL_PHASES):
            # Never reconciled: nothing of ours to observe (see the module docstring).
            # Finished: decide() looks at nothing but the status and the TTL.
            jobs: list[dict[str, Any]] = []
            pods: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
        else:
            jobs, pods = self._read_children(namespace, name, job)
            events = self.kube.job_events(namespace, _jobs_missing_pods(jobs, pods))
        now = self.clock()
        decision = decide(job, observe(jobs, pods, events), now, self._scale)
        if not fresh and (decision.delete_jobs or decision.delete_self):
            raise _Stale  # deleting is decided on what is stored now, never on a copy
        if decision.create:
            self._create(job, decision)
        for job_name in decision.delete_jobs:
            log.info(
                "deleting Job %s/%s", namespace, job_name, extra={"bpj": f"{namespace}/{name}"}
            )
            self.kube.delete_job(namespace, job_name)
        old = status_patch(job.status or BertPretrainJobStatus())
        new = status_patch(decision.status)
        if new != old:
            self._patch_status(raw, new)
        for event in decision.events:
            log.info("%s: %s", event.reason, event.message, extra={"bpj": f"{namespace}/{name}"})
            self._record(raw, event.type, event.reason, event.message)
        if decision.delete_self:
            log.info(
                "ttlSecondsAfterFinished elapsed; deleting", extra={"bpj": f"{namespace}/{name}"}
            )
            self.kube.delete_bpj(namespace, name)
        return decision

    def _read_children(
        self, namespace: str, name: str, job: BertPretrainJob
    ) -> tuple[list[Any], list[Any]]:
        """The watches' copies of the children when they hold what the status names, else a LIST."""
        if self._children is not None:
            named = job.status.jobs if job.status is not None else None
            wanted = [n for n in (named.model_dump().values() if named else ()) if n]
            held = self._children.get((namespace, name), wanted)
            if held is not None:
                metrics.CHILDREN_READS.labels("watch").inc()
                return held
        metrics.CHILDREN_READS.labels("list").inc()
        return self.kube.children(namespace, name)

    def _record(self, raw: dict[str, Any], kind: str, reason: str, message: str) -> None:
        when = dt.datetime.now(dt.UTC)
        # Only what the Event names: a queued Event must not keep the whole job alive.
        meta = {k: raw["metadata"].get(k) for k in ("name", "namespace", "uid", "resourceVersion")}
        if self._events is None:
            self.kube.event(meta, kind, reason, message, when=when)
        else:
            self._events.submit(self.kube.event, meta, kind, reason, message, when=when)

    def _patch_status(self, raw: dict[str, Any], status: dict[str, Any]) -> None:
        """Write ``status`` if the job is still the copy it was decided on, else ``_Stale``."""
        meta = raw["metadata"]
        try:
            stored = self.kube.patch_status(
                meta["namespace"], meta["name"], status, resource_version=meta["resourceVersion"]
            )
        except ApiError as exc:
            if exc.status in (404, 409):  # changed since, or deleted: read it again
                raise _Stale from exc
            raise
        self.cache.put(stored)

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        """Drop what is kept about a deleted job."""
        self.cache.drop((namespace, name))

    def _create(self, job: BertPretrainJob, decision: Decision) -> None:
        # Until the check reported (status.inputs), the ConfigMap holds only its section.
        inputs = decision.status.inputs
        config = trainer_config(
            job,
            None if inputs is None else ResolvedInputs.from_status(inputs),
            report_interval=self.settings.progress_report_seconds,
        )
        # The ConfigMap is rewritten before each new stage or attempt, so spec edits
        # that admission allows (trainSteps, learningRate, ...) apply from then on. It
        # exists already unless this is the job's first stage.
        first_stage = job.status is None or job.status.jobs is None
        self.kube.write_config_map(workloads.config_map(job, config), exists=not first_stage)
        # Rendered from the job as this decision leaves it: it holds the worker count.
        job = job.model_copy(update={"status": decision.status})
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
        self._patch_status(
            raw,
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
        self._record(raw, "Warning", "InvalidSpec", message)
