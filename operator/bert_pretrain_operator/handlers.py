"""kopf wiring, kept thin: watch events enqueue a job; workers reconcile it.

Every watched kind maps to the BertPretrainJob it concerns: the job itself,
its child Jobs and their pods (by the ``pretraining.bert.dev/job`` label). A
periodic resync enqueues every job so time-based rules (deadline, TTL) fire
without an event. Reconciles run in threads (the kubernetes client is
synchronous), at most one per job at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import start_http_server

from bert_pretrain_operator import metrics
from bert_pretrain_operator.controller import Controller
from bert_pretrain_operator.kube import Kube, load_config
from bert_pretrain_operator.render import names
from bert_pretrain_operator.settings import Settings
from bert_pretrain_operator.workqueue import Key, WorkQueue
from bert_trainer import contract

log = logging.getLogger(__name__)

WORKERS = 4
#: Seconds before retrying a reconcile that raised (an API hiccup, a conflict).
ERROR_BACKOFF_SECONDS = 5.0


@dataclass
class Runtime:
    controller: Controller
    queue: WorkQueue = field(default_factory=WorkQueue)
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
        decision = await asyncio.to_thread(rt.controller.reconcile, namespace, name)
    except Exception:
        metrics.RECONCILE_ERRORS.inc()
        log.exception(
            "reconcile failed; retrying in %.0fs",
            ERROR_BACKOFF_SECONDS,
            extra={"bpj": f"{namespace}/{name}"},
        )
        rt.queue.add_after(key, ERROR_BACKOFF_SECONDS)
        return
    finally:
        rt.reconciles += 1
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        metrics.QUEUE_DEPTH.set(len(rt.queue))
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


async def _resync(settings: Settings) -> None:
    rt = runtime()
    while True:
        await asyncio.sleep(settings.resync_seconds)
        try:
            jobs = await asyncio.to_thread(rt.controller.kube.list_jobs, None)
            for job in jobs:
                namespace = job["metadata"]["namespace"]
                if settings.watches(namespace):
                    _enqueue(namespace, job["metadata"]["name"])
        except Exception:
            log.exception("resync failed; trying again at the next interval")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in with $KUBECONFIG as it is now, else in-cluster.

    kopf's own client login reads the kubeconfig path the kubernetes library
    captured at import time; reading it here honours a KUBECONFIG set later
    (the local stack and the tests set it per run).
    """
    path = os.environ.get("KUBECONFIG")
    if not path:
        return kopf.login_via_client(**kwargs)
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=path, client_configuration=cfg)
    token = (cfg.api_key or {}).get("authorization", "")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        token=token.removeprefix("Bearer ").strip() or None,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime
    ours = Settings.from_env()
    # Our own Events are precise; kopf's per-handler events would only repeat them.
    settings.posting.enabled = False
    # One line per watch event of every pod would drown the reconcile log.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    if ours.peering_name:
        settings.peering.name = ours.peering_name
        settings.peering.mandatory = True
    api_client = load_config(os.environ.get("KUBECONFIG") or None)
    _runtime = Runtime(controller=Controller(Kube(api_client), ours))
    for _worker in range(WORKERS):
        _runtime.tasks.append(asyncio.create_task(_runtime.queue.run_worker(_process)))
    _runtime.tasks.append(asyncio.create_task(_resync(ours)))
    if ours.metrics_port:
        start_http_server(ours.metrics_port)
    log.info(
        "operator started: image=%s namespaces=%s",
        ours.trainer_image,
        ",".join(ours.namespaces) or "*",
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    global _runtime
    if _runtime is None:
        return
    for task in _runtime.tasks:
        task.cancel()
    await asyncio.gather(*_runtime.tasks, return_exceptions=True)
    _runtime = None


@kopf.on.event(contract.API_GROUP, contract.API_VERSION, contract.PLURAL)
def job_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
    if type == "DELETED":
        if _runtime is not None and namespace and name:
            _runtime.phases.pop((namespace, name), None)
        return
    _enqueue(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_JOB: kopf.PRESENT})
def child_job_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    _enqueue(namespace, labels.get(names.LABEL_JOB))


@kopf.on.event("", "v1", "pods", labels={names.LABEL_JOB: kopf.PRESENT})
def child_pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    _enqueue(namespace, labels.get(names.LABEL_JOB))
