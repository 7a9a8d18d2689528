"""kopf wiring, kept thin: watch events enqueue a job; workers reconcile it.

Every watched kind maps to the BertPretrainJob it concerns: the job itself,
its child Jobs and their pods (by the ``pretraining.bert.dev/job`` label, which
the API server filters the child watches by). A periodic resync enqueues every
unfinished job, from the cache and without a request, so time-based rules
(deadline) fire without an event. kopf indexes the children it is sent
(``child_jobs``, ``child_pods``); reconciles read them there (``children``).
Reconciles run in threads (``Kube`` is synchronous), at most one per job at a
time.

The job's own watch events also refresh the controller's ``JobCache``, so a
reconcile starts from the job as the watch delivered it instead of a GET. An
event that is not newer than the cached copy changes nothing the operator does
not know: usually it is the echo of the operator's own status patch, whose
answer is cached already. It is not enqueued. Jobs the operator has never
reconciled (no status phase yet) jump the queue: a burst of new jobs gets its
training Jobs before the follow-up reconciles that their own creation triggers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import start_http_server

from bert_pretrain_operator import kopf_fixes, metrics
from bert_pretrain_operator.backoff import Backoff
from bert_pretrain_operator.children import Children, pack, slim_job, slim_pod
from bert_pretrain_operator.controller import Controller
from bert_pretrain_operator.jobcache import JobCache
from bert_pretrain_operator.kube import Kube, connection_info, credentials_source
from bert_pretrain_operator.render import names
from bert_pretrain_operator.settings import Settings
from bert_pretrain_operator.workqueue import Key, WorkQueue
from bert_trainer import contract

log = logging.getLogger(__name__)

#: Installed on import, before kopf's orchestrator spawns its first watcher (kopf_fixes).
KOPF_FIXED = kopf_fixes.install()

#: Seconds between a child Job's or pod's watch event and the reconcile it triggers.
#: A new stage's children change several times in its first second (Job created, pod
#: created, pod scheduled or not); waiting lets one reconcile see them all.
CHILD_EVENT_DELAY_SECONDS = 1.0
#: The child kinds the operator watches, and the label selector the API server applies
#: to their watches and lists: kopf's own ``labels=`` handler filter would be applied in
#: the process, after every pod and Job of the cluster had been sent to it.
CHILD_JOBS = ("batch", "v1", "jobs")
CHILD_PODS = ("", "v1", "pods")
CHILD_SELECTOR = names.LABEL_JOB
#: Seconds the operator waits, when stopping, for Events already decided to be posted.
EVENT_FLUSH_SECONDS = 5.0


@dataclass
class Runtime:
    controller: Controller
    executor: ThreadPoolExecutor
    events: ThreadPoolExecutor
    queue: WorkQueue = field(default_factory=WorkQueue)
    backoff: Backoff = field(default_factory=Backoff)
    """Failing reconciles, per job."""
    phases: dict[Key, str] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    reconciles: int = 0


_runtime: Runtime | None = None


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the operator has not started")
    return _runtime


def _enqueue(namespace: str | None, name: str | None) -> None:
    if _runtime is not None and namespace and name:
        _runtime.queue.add((namespace, name))


async def _process(key: Key) -> None:
    rt = runtime()
    namespace, name = key
    started = time.perf_counter()
    try:
        decision = await asyncio.get_running_loop().run_in_executor(
            rt.executor, rt.controller.reconcile, namespace, name
        )
    except Exception as exc:
        metrics.RECONCILE_ERRORS.inc()
        rt.queue.add_after(key, _failed(rt, key, exc, f"{namespace}/{name}"))
        return
    finally:
        rt.reconciles += 1
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        metrics.QUEUE_DEPTH.set(len(rt.queue))
    _recovered(rt, key, f"{namespace}/{name}")
    if decision is None:
        rt.phases.pop(key, None)
    else:
        if decision.status.phase:
            rt.phases[key] = decision.status.phase.value
        if any(e.reason == "Restarting" for e in decision.events):
            metrics.RESTARTS.inc()
        if decision.requeue_after is not None:
            rt.queue.add_after(key, decision.requeue_after + 0.5)
    for phase in (
        "Pending",
        "Preparing",
        "Training",
        "Exporting",
        "Succeeded",
        "Failed",
        "Suspended",
    ):
        metrics.JOBS_BY_PHASE.labels(phase).set(sum(1 for p in rt.phases.values() if p == phase))


def _failed(rt: Runtime, key: Key, exc: Exception, what: str) -> float:
    """Record a failure of ``key`` (logged at its streak's start only); the retry delay."""
    delay, streak = rt.backoff.failed(key, exc)
    metrics.FAILING_JOBS.set(rt.backoff.failing())
    about = {"bpj": what, "failures": streak.failures}
    if streak.failures == 1:
        log.exception("reconcile failing; retrying with backoff", extra=about)
    else:
        log.debug("reconcile failed again: %s", streak.last_error, extra=about)
    return delay


def _recovered(rt: Runtime, key: Key, what: str) -> None:
    ended = rt.backoff.succeeded(key)
    if ended is None:
        return
    streak, seconds = ended
    metrics.FAILING_JOBS.set(rt.backoff.failing())
    log.info(
        "reconcile recovered after %d failure(s) in %.0fs (last: %s)",
        streak.failures,
        seconds,
        streak.last_error,
        extra={"bpj": what, "failures": streak.failures},
    )


async def _resync(settings: Settings) -> None:
    """Enqueue every unfinished job the watch has delivered, every ``resync_seconds``.

    Like client-go's informer resync, this replays the cache and makes no request: the
    watch keeps the cache current (kopf lists again whenever its watch cannot resume),
    and a finished job has nothing left to do but its TTL, which its last reconcile
    scheduled (``Decision.requeue_after``).
    """
    rt = runtime()
    while True:
        await asyncio.sleep(settings.resync_seconds)
        for namespace, name in rt.controller.cache.unfinished():
            _enqueue(namespace, name)


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base for change detection, turned off: there is nothing to detect.

    The operator has only ``on.event`` handlers (and activities), which get every
    event as it is; kopf's default storage still deep-copies each event's body to
    diff it against the last one, which was a fifth of the operator's CPU time in
    a burst of new jobs (docs/benchmarks.md, section 3). An ``on.create``,
    ``on.update``, ``on.field`` or daemon handler would need the default back.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """$KUBECONFIG as it is now, else in-cluster: the same credentials ``Kube`` uses.

    kopf's own ``login_via_client`` loads the same way but reads the kubeconfig path
    the kubernetes library captured at import time, and tries in-cluster first; this
    honours a KUBECONFIG set later (the local stack and the tests set it per run).
    """
    return connection_info()


ChildEntry = dict[tuple[str, str], bytes] | None


def _under_its_job(
    namespace: str | None, labels: Mapping[str, str], slim: Callable[[], dict[str, Any]]
) -> ChildEntry:
    """The index entry of a child: its slim copy under its job's key (none without one)."""
    job = labels.get(names.LABEL_JOB)
    return {(namespace, job): pack(slim())} if namespace and job else None


@kopf.index(*CHILD_JOBS)
def child_jobs(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> ChildEntry:
    """Each job's child Jobs, slim (``children``); kopf runs no handler before it is full."""
    return _under_its_job(namespace, labels, lambda: slim_job(body))


@kopf.index(*CHILD_PODS)
def child_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> ChildEntry:
    """Each job's pods, slim."""
    return _under_its_job(namespace, labels, lambda: slim_pod(body))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    global _runtime
    ours = Settings.from_env()
    # Our own Events are precise; kopf's per-handler events would only repeat them.
    settings.posting.enabled = False
    # One line per watch event of every pod would drown the reconcile log.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    for child in (CHILD_JOBS, CHILD_PODS):
        settings.watching.label_selectors[child] = CHILD_SELECTOR
    if ours.exact_namespaces:
        # kopf would otherwise list and watch every namespace and every CRD of the
        # cluster to discover what to serve; named namespaces need neither, and the
        # chart then grants nothing cluster-wide (docs/operator.md, "Watches").
        settings.scanning.disabled = True
    if ours.peering_name:
        settings.peering.name = ours.peering_name
        settings.peering.mandatory = True
    events = ThreadPoolExecutor(1, thread_name_prefix="events")
    _runtime = Runtime(
        controller=Controller(
            Kube(pool_size=ours.workers + 2),
            ours,
            cache=JobCache(),
            events=events,
            # kopf passes each index by its function's name.
            children=Children.of_indices(
                asyncio.get_running_loop(), kwargs["child_jobs"], kwargs["child_pods"]
            ),
        ),
        executor=ThreadPoolExecutor(ours.workers, thread_name_prefix="reconcile"),
        events=events,
    )
    for _worker in range(ours.workers):
        _runtime.tasks.append(asyncio.create_task(_runtime.queue.run_worker(_process)))
    _runtime.tasks.append(asyncio.create_task(_resync(ours)))
    if ours.metrics_port:
        start_http_server(ours.metrics_port)
    log.info(
        "operator started: image=%s namespaces=%s credentials=%s",
        ours.trainer_image,
        ",".join(ours.namespaces) or "*",
        credentials_source(),
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    global _runtime
    if _runtime is None:
        return
    for task in _runtime.tasks:
        task.cancel()
    await asyncio.gather(*_runtime.tasks, return_exceptions=True)
    _runtime.executor.shutdown(wait=False, cancel_futures=True)
    # Events already decided are posted, for a few seconds at most.
    events = _runtime.events
    _runtime = None
    try:
        await asyncio.wait_for(asyncio.to_thread(events.shutdown), EVENT_FLUSH_SECONDS)
    except TimeoutError:
        log.warning("stopping with Events not yet posted")


@kopf.on.event(contract.API_GROUP, contract.API_VERSION, contract.PLURAL)
async def job_event(
    type: str | None, event: Mapping[str, Any], namespace: str | None, name: str, **_: Any
) -> None:
    rt = _runtime
    if rt is None or not namespace or not name:
        return
    body = event["object"]
    if type == "DELETED":
        rt.phases.pop((namespace, name), None)
        rt.controller.forget(namespace, name, (body.get("metadata") or {}).get("uid"))
        return
    if rt.controller.cache.put(body):
        new = not (body.get("status") or {}).get("phase")
        rt.queue.add((namespace, name), urgent=new)


def _child_changed(
    resource: str, namespace: str | None, labels: Mapping[str, str], *, finished: bool = False
) -> None:
    job = labels.get(names.LABEL_JOB)
    # Counted, not filtered: the API server already filters by CHILD_SELECTOR, so an
    # unrelated object here means the selector was lost (docs/operator.md, "Watches").
    metrics.WATCH_EVENTS.labels(resource, "true" if job else "false").inc()
    if _runtime is not None and namespace and job:
        # A finished Job is what the next stage waits for: nothing to coalesce it with.
        delay = 0.0 if finished else CHILD_EVENT_DELAY_SECONDS
        _runtime.queue.add_after((namespace, job), delay)


def _finished(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


@kopf.on.event(*CHILD_JOBS)
async def child_job_event(
    namespace: str | None, labels: Mapping[str, str], status: Mapping[str, Any], **_: Any
) -> None:
    _child_changed("jobs", namespace, labels, finished=_finished(status))


@kopf.on.event(*CHILD_PODS)
async def child_pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    _child_changed("pods", namespace, labels)
