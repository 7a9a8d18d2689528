"""The runner itself: ``PodRunner``'s lifecycle, pod watch and pod status reporting.

``PodRunner`` combines ``nodes.NodeKeeper`` (node registration, heartbeat and
Lease) and ``preparing.PodPreparer`` (pod directories and launches) with the
watch loop: it lists and watches pods, starts a ``process._PodWorker`` for each
pod bound to its nodes, stops workers of deleted pods, patches pod status and
finalises deletions as the kubelet does.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from bpj_devstack.kwok_config import NodePool
from bpj_devstack.podrunner.clock import _now
from bpj_devstack.podrunner.constants import (
    _API_TIMEOUT,
    _KILL_WAIT_SECONDS,
    _MAX_GRACE_SECONDS,
    _STATUS_ATTEMPTS,
    _WATCH_BACKOFF_SECONDS,
    _WATCH_SECONDS,
)
from bpj_devstack.podrunner.nodes import NodeKeeper, node_manifests
from bpj_devstack.podrunner.preparing import PodPreparer
from bpj_devstack.podrunner.process import _PodWorker
from bpj_devstack.podrunner.status import terminated_status

log = logging.getLogger(__name__)


def _grace_seconds(pod: Mapping[str, Any]) -> float:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", 30)
    return float(min(max(grace, 0), _MAX_GRACE_SECONDS))


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class PodRunner(NodeKeeper, PodPreparer):
    """Registers local nodes for ``pools`` and runs the pods bound to them as processes.

    Args:
        kubeconfig: a kubeconfig with rights to manage nodes, leases, pods and
            service-account tokens (the stack's admin kubeconfig).
        pools: the node pools this runner owns; its nodes carry the same labels,
            taint and capacity as KWOK's nodes of the same pools.
        workdir: where pod directories (volumes, logs, kubeconfigs) are created.
        apiserver_url, ca_path: written into each pod's kubeconfig; default to the
            server and CA of ``kubeconfig``.
        extra_env: added to every container's environment (the pod's own env wins).
        python: runs a container whose command is ``python``/``python3``.
        stop_grace: seconds ``stop()`` gives each process between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        kubeconfig: Path | str,
        pools: Sequence[NodePool],
        workdir: Path | str,
        *,
        apiserver_url: str | None = None,
        ca_path: Path | str | None = None,
        extra_env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        stop_grace: float = 5.0,
    ) -> None:
        self._api: Any = config.new_client_from_config(config_file=str(kubeconfig))
        self._core: Any = client.CoreV1Api(self._api)
        self._coordination: Any = client.CoordinationV1Api(self._api)
        configuration = self._api.configuration
        self._apiserver_url: str = apiserver_url or configuration.host
        self._ca_path: str | None = str(ca_path) if ca_path else configuration.ssl_ca_cert
        self._workdir = Path(workdir).resolve()
        self._extra_env = dict(extra_env or {})
        self._python = python
        self._stop_grace = stop_grace
        self._nodes = {node["metadata"]["name"]: node for node in node_manifests(pools)}
        self._node_uids: dict[str, str] = {}
        self._since = _now()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._workers: dict[str, _PodWorker] = {}
        self._watch_response: Any = None
        self._threads: list[threading.Thread] = []

    @property
    def node_names(self) -> list[str]:
        return list(self._nodes)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PodRunner:
        """Registers the nodes, reports them Ready and starts the heartbeat and pod watch."""
        self._workdir.mkdir(parents=True, exist_ok=True)
        for name, manifest in self._nodes.items():
            self._register_node(name, manifest)
        self._heartbeat()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._watch_loop, "watch")):
            thread = threading.Thread(target=target, name=f"podrunner-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("pod runner started: nodes %s, workdir %s", ", ".join(self._nodes), self._workdir)
        return self

    def stop(self, *, delete_nodes: bool = False) -> None:
        """Stops every process (SIGTERM, then SIGKILL after ``stop_grace``) and every thread.

        Pods it stopped are reported Failed with ``DisruptionTarget``, as after a node
        shutdown. ``delete_nodes`` also removes the nodes and their leases (tests do,
        so no NotReady node outlives them). Takes at most about ``stop_grace`` plus a
        few API round trips.
        """
        with self._lock:
            self._stopping.set()
            response = self._watch_response
            workers = list(self._workers.values())
        if response is not None:
            try:
                response.shutdown()  # unblocks the watch thread's read at once
            except Exception:
                log.debug("watch response already closed", exc_info=True)
        for worker in workers:
            worker.request_stop(self._stop_grace, shutdown=True)
        deadline = time.monotonic() + self._stop_grace + _KILL_WAIT_SECONDS + 3 * _API_TIMEOUT
        for thread in [*self._threads, *(w.thread for w in workers)]:
            if thread.is_alive():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("thread %s did not stop in time", thread.name)
        if delete_nodes:
            for name in self._nodes:
                self._delete_node(name)
        self._api.close()
        log.info("pod runner stopped")

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ pods

    def _watch_loop(self) -> None:
        resource_version: str | None = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch_once(resource_version)
            except _Expired:
                resource_version = None
            except Exception:
                if self._stopping.is_set():
                    break
                log.warning("pod watch failed; retrying", exc_info=True)
                resource_version = None
                self._stopping.wait(_WATCH_BACKOFF_SECONDS)

    def _relist(self) -> str:
        response = self._core.list_pod_for_all_namespaces(
            _preload_content=False, _request_timeout=_API_TIMEOUT
        )
        listed = json.loads(response.data)
        pods = listed.get("items", [])
        for pod in pods:
            self._on_pod(pod)
        # Pods that vanished while the watch was down: stop and forget them.
        live = {pod["metadata"]["uid"] for pod in pods}
        with self._lock:
            vanished = [w for uid, w in self._workers.items() if uid not in live]
        for worker in vanished:
            self._on_pod_deleted(worker.pod)
        version: str = listed["metadata"]["resourceVersion"]
        return version

    def _watch_once(self, resource_version: str) -> str:
        response = self._core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=_WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(_API_TIMEOUT, _WATCH_SECONDS + _API_TIMEOUT),
        )
        with self._lock:
            if self._stopping.is_set():
                response.close()
                response.release_conn()
                return resource_version
            self._watch_response = response
        try:
            for line in iter_resp_lines(response):
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired
                    raise RuntimeError(f"pod watch error: {obj.get('message')}")
                resource_version = obj["metadata"]["resourceVersion"]
                if kind == "DELETED":
                    self._on_pod_deleted(obj)
                elif kind in ("ADDED", "MODIFIED"):
                    self._on_pod(obj)
        finally:
            with self._lock:
                self._watch_response = None
            # Closed before release: a half-read connection must not go back to the pool.
            response.close()
            response.release_conn()
        return resource_version

    def _on_pod(self, pod: dict[str, Any]) -> None:
        if pod.get("spec", {}).get("nodeName") not in self._nodes:
            return
        meta = pod["metadata"]
        deleting = meta.get("deletionTimestamp") is not None
        with self._lock:
            worker = self._workers.get(meta["uid"])
            if worker is None and not deleting and not self._stopping.is_set():
                phase = pod.get("status", {}).get("phase", "Pending")
                if phase == "Pending":
                    worker = _PodWorker(self, pod)
                    self._workers[worker.uid] = worker
                    worker.thread.start()
                    return
            # Decided under the lock that _worker_finished takes, so a deletion racing
            # with the worker's end is finalised by exactly one of the two.
            finished = worker is not None and worker.finished
            if worker is not None and deleting and not finished:
                worker.request_stop(_grace_seconds(pod), deleting=True)
        if worker is not None and not (deleting and finished):
            return
        phase = pod.get("status", {}).get("phase", "Pending")
        if deleting:
            # Nothing runs for it here (finished, or never started): finalise at once.
            self._delete_pod(meta["namespace"], meta["name"], meta["uid"])
        elif phase == "Running" and not self._stopping.is_set():
            # Running on our node but not by this runner: a previous runner's process,
            # which this one cannot supervise. Report it lost, as after a node reboot.
            container = pod["spec"]["containers"][0]
            started = pod.get("status", {}).get("startTime") or _now()
            self._patch_pod_status(
                meta["namespace"],
                meta["name"],
                meta["uid"],
                terminated_status(
                    container,
                    exit_code=137,
                    message="the local pod runner restarted",
                    started_at=started,
                    pid=None,
                    node_shutdown=True,
                ),
            )

    def _on_pod_deleted(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            worker = self._workers.get(pod["metadata"]["uid"])
            # A worker still running stays registered, so stop() waits for it; it
            # unregisters itself when it finishes (_worker_finished).
            if worker is not None and worker.finished:
                del self._workers[worker.uid]
        if worker is not None:
            worker.request_stop(_grace_seconds(pod), gone=True)

    def _worker_finished(self, worker: _PodWorker) -> None:
        with self._lock:
            worker.finished = True
            if worker.gone:
                self._workers.pop(worker.uid, None)
            finalise = worker.must_finalise_deletion()
        if finalise:
            # As the kubelet does once a deleted pod's containers are gone.
            self._delete_pod(worker.namespace, worker.name, worker.uid)

    def _patch_pod_status(
        self,
        namespace: str,
        name: str,
        uid: str,
        status: dict[str, Any],
        attempts: int = _STATUS_ATTEMPTS,
    ) -> None:
        # metadata.uid in the patch is a precondition: never touch a same-named successor.
        body = {"metadata": {"uid": uid}, "status": status}
        for attempt in range(attempts):
            try:
                self._core.patch_namespaced_pod_status(
                    name, namespace, body, _request_timeout=_API_TIMEOUT
                )
                return
            except ApiException as exc:
                if exc.status in (404, 409):
                    log.info("pod %s/%s is gone; status not reported", namespace, name)
                    return
                log.warning("pod %s/%s: status patch failed (%s)", namespace, name, exc.reason)
            except urllib3.exceptions.HTTPError as exc:
                log.warning("pod %s/%s: status patch failed (%s)", namespace, name, exc)
            if attempt + 1 < attempts:
                time.sleep(1.0)

    def _delete_pod(self, namespace: str, name: str, uid: str) -> None:
        try:
            self._core.delete_namespaced_pod(
                name,
                namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                grace_period_seconds=0,
                _request_timeout=_API_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s/%s: delete failed (%s)", namespace, name, exc.reason)
        except urllib3.exceptions.HTTPError as exc:
            log.warning("pod %s/%s: delete failed (%s)", namespace, name, exc)
