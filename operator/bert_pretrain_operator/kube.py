"""The one module that talks to the Kubernetes API.

Everything above it (``controller``) passes plain dicts and pydantic models in and
out; everything below it is the official ``kubernetes`` client. Creation is
idempotent (409 Conflict means an earlier reconcile, maybe by a previous
operator process, already created the object), deletion tolerates 404, and the
operator writes only the status fields it owns (never ``spec``, never
``status.progress``, which belongs to the trainer).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bert_pretrain_operator.render import names
from bert_trainer import contract

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def load_config(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster configuration when running in a pod, else a kubeconfig."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    return config.new_client_from_config(config_file=kubeconfig)


class Kube:
    """Reads and writes one namespace's BertPretrainJobs and their children."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._client = api_client
        self.requests = 0
        """API requests made; the scale benchmark reports requests per reconcile."""

    def _count(self) -> None:
        self.requests += 1

    def read_job(self, namespace: str, name: str) -> Obj | None:
        self._count()
        try:
            obj: Obj = self._custom.get_namespaced_custom_object(
                contract.API_GROUP, contract.API_VERSION, namespace, contract.PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def list_jobs(self, namespace: str | None = None) -> list[Obj]:
        self._count()
        if namespace:
            out = self._custom.list_namespaced_custom_object(
                contract.API_GROUP, contract.API_VERSION, namespace, contract.PLURAL
            )
        else:
            out = self._custom.list_cluster_custom_object(
                contract.API_GROUP, contract.API_VERSION, contract.PLURAL
            )
        items: list[Obj] = out.get("items", [])
        return items

    def job_events(self, namespace: str, jobs: list[tuple[str, str]]) -> list[Obj]:
        """FailedCreate Events of these (name, uid) Jobs: why their pods could not be made.

        Selected by uid: a job deleted and re-created under the same name reuses its
        children's names, and the old Jobs' Events outlive them by an hour.
        """
        found: list[Obj] = []
        for _name, uid in jobs:
            self._count()
            events = self._core.list_namespaced_event(
                namespace,
                field_selector=f"involvedObject.uid={uid},reason=FailedCreate",
            )
            found += [self._client.sanitize_for_serialization(e) for e in events.items]
        return found

    def children(self, namespace: str, job: str) -> tuple[list[Obj], list[Obj]]:
        """The child Jobs and their pods, found by the job label."""
        selector = f"{names.LABEL_JOB}={job}"
        self._count()
        jobs = self._batch.list_namespaced_job(namespace, label_selector=selector)
        self._count()
        pods = self._core.list_namespaced_pod(namespace, label_selector=selector)
        return (
            [self._client.sanitize_for_serialization(j) for j in jobs.items],
            [self._client.sanitize_for_serialization(p) for p in pods.items],
        )

    def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create ``manifest``; False when it already existed (an earlier reconcile made it)."""
        kind = manifest["kind"]
        namespace = manifest["metadata"]["namespace"]
        self._count()
        try:
            if kind == "Job":
                self._batch.create_namespaced_job(namespace, manifest)
            elif kind == "Service":
                self._core.create_namespaced_service(namespace, manifest)
            elif kind == "ConfigMap":
                self._core.create_namespaced_config_map(namespace, manifest)
            else:
                raise ValueError(f"the operator does not create {kind} objects")
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def replace_config_map(self, manifest: Mapping[str, Any]) -> None:
        """Write a ConfigMap's current content (spec edits apply at the next stage/attempt)."""
        meta = manifest["metadata"]
        self._count()
        try:
            self._core.patch_namespaced_config_map(
                meta["name"], meta["namespace"], {"data": manifest["data"]}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.create(manifest)

    def delete_job(self, namespace: str, name: str) -> None:
        self._count()
        try:
            # Background: return now; the garbage collector removes the pods.
            self._batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_bpj(self, namespace: str, name: str) -> None:
        self._count()
        try:
            self._custom.delete_namespaced_custom_object(
                contract.API_GROUP,
                contract.API_VERSION,
                namespace,
                contract.PLURAL,
                name,
                propagation_policy="Background",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._count()
        self._custom.patch_namespaced_custom_object_status(
            contract.API_GROUP,
            contract.API_VERSION,
            namespace,
            contract.PLURAL,
            name,
            {"status": dict(status)},
        )

    def event(self, bpj: Obj, kind: str, reason: str, message: str) -> None:
        """Record an Event on the BertPretrainJob; failures are logged, never raised."""
        meta = bpj["metadata"]
        now = dt.datetime.now(dt.UTC)
        body = {
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": f"{contract.API_GROUP}/{contract.API_VERSION}",
                "kind": contract.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
            "source": {"component": names.MANAGED_BY},
            "reportingComponent": names.MANAGED_BY,
        }
        self._count()
        try:
            self._core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            log.warning(
                "could not record event %s on %s/%s: %s",
                reason,
                meta["namespace"],
                meta["name"],
                exc.reason,
            )
