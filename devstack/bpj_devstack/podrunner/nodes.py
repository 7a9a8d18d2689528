"""The runner's nodes: their shape, registration, status heartbeat and node Lease.

``node_manifests`` turns KWOK's node shapes into the runner's own; ``NodeKeeper``
is the part of ``PodRunner`` that registers the nodes, keeps them Ready (status
and Lease renewed like the kubelet's) and deletes them when asked.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import urllib3
from kubernetes.client.rest import ApiException

from bpj_devstack import kwok_config
from bpj_devstack.kwok_config import NodePool
from bpj_devstack.podrunner.clock import _now, _now_micro
from bpj_devstack.podrunner.constants import (
    _API_TIMEOUT,
    _HEARTBEAT_SECONDS,
    _LEASE_DURATION_SECONDS,
    LOCAL_IP,
    NODE_LEASE_NAMESPACE,
    RUNNER_LABEL,
    RUNNER_LABEL_VALUE,
)

log = logging.getLogger(__name__)


def node_manifests(pools: Sequence[NodePool]) -> list[dict[str, Any]]:
    """KWOK's node shapes for ``pools``, made the runner's own.

    The KWOK annotation is dropped (KWOK only manages annotated nodes) and so is
    KWOK's ``type: kwok`` label, which would now be false; ``RUNNER_LABEL`` is added.
    """
    manifests = kwok_config.node_manifests(tuple(pools))
    for node in manifests:
        meta = node["metadata"]
        meta["annotations"].pop(kwok_config.KWOK_NODE_ANNOTATION, None)
        meta["labels"].pop("type", None)
        meta["labels"][RUNNER_LABEL] = RUNNER_LABEL_VALUE
    return manifests


class NodeKeeper:
    """``PodRunner``'s node side: registers its nodes and keeps them and their Leases fresh.

    A mixin; ``PodRunner.__init__`` sets the attributes declared here.
    """

    _core: Any
    _coordination: Any
    _nodes: dict[str, dict[str, Any]]
    _node_uids: dict[str, str]
    _since: str
    _stopping: threading.Event

    def _register_node(self, name: str, manifest: dict[str, Any]) -> None:
        try:
            created = self._core.create_node(manifest, _request_timeout=_API_TIMEOUT)
            self._node_uids[name] = created.metadata.uid
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        # Left over from an earlier run: take it over with this run's shape.
        meta = manifest["metadata"]
        patched = self._core.patch_node(
            name,
            {
                "metadata": {
                    "labels": meta["labels"],
                    "annotations": {kwok_config.KWOK_NODE_ANNOTATION: None},
                },
                "spec": {"taints": manifest["spec"]["taints"]},
            },
            _request_timeout=_API_TIMEOUT,
        )
        self._node_uids[name] = patched.metadata.uid

    def _node_status(self, name: str) -> dict[str, Any]:
        now = _now()
        resources = self._nodes[name]["status"]

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._since,
            }

        return {
            "conditions": [
                condition("Ready", "True", "KubeletReady", "the local pod runner is ready"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", ""),
            ],
            "addresses": [
                {"type": "InternalIP", "address": LOCAL_IP},
                {"type": "Hostname", "address": name},
            ],
            "capacity": resources["capacity"],
            "allocatable": resources["allocatable"],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "bpj-devstack-podrunner",
                "containerRuntimeVersion": "local://",
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def _heartbeat(self) -> None:
        for name, manifest in self._nodes.items():
            try:
                self._core.patch_node_status(
                    name, {"status": self._node_status(name)}, _request_timeout=_API_TIMEOUT
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                # Someone deleted the node; like the kubelet, register it again.
                log.warning("node %s was deleted; registering it again", name)
                self._register_node(name, manifest)
                self._core.patch_node_status(
                    name, {"status": self._node_status(name)}, _request_timeout=_API_TIMEOUT
                )
            self._renew_lease(name)

    def _renew_lease(self, name: str) -> None:
        spec = {
            "holderIdentity": name,
            "leaseDurationSeconds": _LEASE_DURATION_SECONDS,
            "renewTime": _now_micro(),
        }
        try:
            self._coordination.patch_namespaced_lease(
                name, NODE_LEASE_NAMESPACE, {"spec": spec}, _request_timeout=_API_TIMEOUT
            )
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": NODE_LEASE_NAMESPACE,
                # As the kubelet does: the lease goes when its node goes.
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": self._node_uids[name]}
                ],
            },
            "spec": spec,
        }
        self._coordination.create_namespaced_lease(
            NODE_LEASE_NAMESPACE, lease, _request_timeout=_API_TIMEOUT
        )

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(_HEARTBEAT_SECONDS):
            try:
                self._heartbeat()
            except Exception:
                log.warning(
                    "node heartbeat failed; retrying in %.0fs", _HEARTBEAT_SECONDS, exc_info=True
                )

    def _delete_node(self, name: str) -> None:
        for delete, args in (
            (self._coordination.delete_namespaced_lease, (name, NODE_LEASE_NAMESPACE)),
            (self._core.delete_node, (name,)),
        ):
            try:
                delete(*args, grace_period_seconds=0, _request_timeout=_API_TIMEOUT)
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("deleting %s failed: %s", name, exc.reason)
            except urllib3.exceptions.HTTPError as exc:
                log.warning("deleting %s failed: %s", name, exc)
