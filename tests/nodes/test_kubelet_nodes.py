"""Real nodes: pods run as containers on kubelets, reach the API and each other by name.

What the trainer's pods rely on, shown with the busybox toolbox image: the
runtime enforces the uid and the read-only root filesystem; the kubelet mounts
ConfigMaps and the service-account token and serves ``kubectl logs``; kube-proxy
sends the ``kubernetes`` Service to the API server; CoreDNS resolves Services and
the per-pod names of a headless Service; a TPU-shaped node takes TPU pods only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from bpj_devstack import kwok_config, plane
from bpj_devstack.nodes import layout, scratch
from tests.nodes.conftest import CPU_POOL, TPU_POOL
from tests.support import Kubectl, kubectl_for, kubectl_json, wait_for

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": name}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {kwok_config.LABEL_NODEPOOL: CPU_POOL.name},
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": scratch.BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    **spec.pop("container", {}),
                }
            ],
            **spec,
        },
    }


def _run_to_completion(kubectl: Kubectl, namespace: str, pod: dict[str, Any]) -> str:
    name = pod["metadata"]["name"]
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(pod))

    def finished() -> bool:
        phase = kubectl_json(kubectl, "get", "pod", name, "-n", namespace)["status"].get("phase")
        return phase in ("Succeeded", "Failed")

    wait_for(finished, 120, f"pod {name} to finish")
    status = kubectl_json(kubectl, "get", "pod", name, "-n", namespace)["status"]
    logs = kubectl("logs", name, "-n", namespace).stdout
    assert status["phase"] == "Succeeded", f"{name}: {status}\n{logs}"
    return logs


@pytest.fixture
def ns(node_kubectl: Kubectl) -> str:
    name = f"n-{uuid.uuid4().hex[:8]}"
    node_kubectl("create", "namespace", name)
    wait_for(
        lambda: node_kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        30,
        "the default service account",
    )
    return name


def test_nodes_register_as_gke_node_pools(node_kubectl: Kubectl) -> None:
    nodes = {n["metadata"]["name"]: n for n in kubectl_json(node_kubectl, "get", "nodes")["items"]}
    cpu, tpu = nodes[f"{CPU_POOL.name}-0"], nodes[f"{TPU_POOL.name}-0"]
    assert cpu["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    assert cpu["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6")
    assert {"type": "InternalIP", "address": layout.HOST_IP} in cpu["status"]["addresses"]
    assert not cpu["spec"].get("taints")
    labels = tpu["metadata"]["labels"]
    assert labels[kwok_config.LABEL_ACCELERATOR] == "tpu-v4-podslice"
    assert labels[kwok_config.LABEL_TOPOLOGY] == "2x2x1"
    assert labels[kwok_config.LABEL_NODEPOOL] == TPU_POOL.name
    assert tpu["spec"]["taints"] == [
        {"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert tpu["status"]["allocatable"]["google.com/tpu"] == "4"


def test_pod_runs_as_its_user_on_a_read_only_root_with_kubelet_mounted_volumes(
    node_kubectl: Kubectl, ns: str
) -> None:
    node_kubectl(
        "create",
        "configmap",
        "settings",
        "-n",
        ns,
        "--from-literal=greeting=hello from a configmap",
    )
    script = (
        "id -u; id -g; cat /config/greeting; echo; "
        f"test -s {SA_DIR}/token && echo token-mounted; "
        "if touch /written 2>/dev/null; then echo root-writable; else echo root-read-only; fi; "
        "touch /tmp/scratch && echo tmp-writable"
    )
    pod = _pod(
        "identity",
        script,
        container={
            "volumeMounts": [
                {"name": "config", "mountPath": "/config", "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ]
        },
        volumes=[
            {"name": "config", "configMap": {"name": "settings"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    )
    lines = _run_to_completion(node_kubectl, ns, pod).splitlines()
    assert lines == [
        "10001",
        "10001",
        "hello from a configmap",
        "token-mounted",
        "root-read-only",
        "tmp-writable",
    ]


def test_kubernetes_service_reaches_the_api_server_with_the_pods_token(
    node_kubectl: Kubectl, ns: str
) -> None:
    # The pod's own token, sent to the `kubernetes` Service's ClusterIP (kube-proxy's rules):
    # the API server answers a self-subject review with the pod's service account.
    script = (
        'echo "kubernetes at $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; '
        '{ printf \'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}\' '
        "> /tmp/review.json; } && "
        'wget -q -O - --no-check-certificate --header "Authorization: Bearer $(cat '
        f'{SA_DIR}/token)" --header "Content-Type: application/json" '
        "--post-file /tmp/review.json "
        "https://kubernetes.default.svc/apis/authentication.k8s.io/v1/selfsubjectreviews"
    )
    pod = _pod(
        "apicall",
        script,
        container={"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
        volumes=[{"name": "tmp", "emptyDir": {}}],
    )
    out = _run_to_completion(node_kubectl, ns, pod)
    first, body = out.split("\n", 1)
    assert first == "kubernetes at 10.0.0.1:443"
    review = json.loads(body)
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:default"


def test_cluster_dns_resolves_services_and_headless_pod_names(
    node_kubectl: Kubectl, ns: str
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "peers"},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"group": "peers"},
            "ports": [{"name": "p", "port": 8476}],
        },
    }
    node_kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(service))
    # Two pods under the headless Service, each listening, each finding the other by name:
    # what the hosts of a multi-host slice do with TPU_WORKER_HOSTNAMES.
    for me, peer in (("host-0", "host-1"), ("host-1", "host-0")):
        # Each pod serves one connection and stays until it was served, so neither
        # leaves before its peer reached it.
        script = (
            "{ nc -l -p 8476 -e echo pong; touch /tmp/served; } & "
            f"until nslookup {peer}.peers.{ns}.svc.cluster.local >/tmp/dns 2>&1; "
            "do sleep 0.5; done; "
            f"until echo ping | nc -w 2 {peer}.peers 8476 | grep -q pong; do sleep 0.5; done; "
            f"echo reached {peer}; "
            "until [ -f /tmp/served ]; do sleep 0.2; done; "
            "nslookup kubernetes.default.svc.cluster.local | grep Address"
        )
        pod = _pod(
            me,
            script,
            hostname=me,
            subdomain="peers",
            container={"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
            volumes=[{"name": "tmp", "emptyDir": {}}],
        )
        pod["metadata"]["labels"]["group"] = "peers"
        node_kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(pod))
    for me, peer in (("host-0", "host-1"), ("host-1", "host-0")):

        def done(name: str = me) -> bool:
            pod = kubectl_json(node_kubectl, "get", "pod", name, "-n", ns)
            return pod["status"].get("phase") in ("Succeeded", "Failed")

        wait_for(done, 120, f"{me} to reach its peer")
        logs = node_kubectl("logs", me, "-n", ns).stdout
        assert f"reached {peer}" in logs
        assert "Address: 10.0.0.1" in logs.splitlines(), logs


def test_tpu_node_takes_only_tpu_pods(node_kubectl: Kubectl, ns: str) -> None:
    tpu_selector = {
        kwok_config.LABEL_ACCELERATOR: "tpu-v4-podslice",
        kwok_config.LABEL_TOPOLOGY: "2x2x1",
    }
    pod = _pod(
        "chips",
        "echo on $(hostname)",
        nodeSelector=tpu_selector,
        tolerations=[{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}],
        container={
            "resources": {"requests": {"google.com/tpu": "4"}, "limits": {"google.com/tpu": "4"}}
        },
    )
    _run_to_completion(node_kubectl, ns, pod)
    placed = kubectl_json(node_kubectl, "get", "pod", "chips", "-n", ns)["spec"]["nodeName"]
    assert placed == f"{TPU_POOL.name}-0"
    # Without the toleration the taint keeps a pod off the TPU node, as on GKE.
    untolerated = _pod("no-toleration", "true", nodeSelector=tpu_selector)
    node_kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(untolerated))

    def unschedulable() -> bool:
        status = kubectl_json(node_kubectl, "get", "pod", "no-toleration", "-n", ns)["status"]
        return any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in status.get("conditions", [])
        )

    wait_for(unschedulable, 60, "the untolerated pod to be Unschedulable")


def _leftovers() -> dict[str, list[str]]:
    """What a stack with real nodes could leave on this machine, by kind."""
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if any(str(root) in line.split()[4] for root in (layout.RUN_ROOT, layout.VAR_ROOT))
    ]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    chains = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    processes = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(layout.RUN_ROOT) in cmdline or str(layout.VAR_ROOT) in cmdline:
                processes.append(cmdline)
    return {
        "processes": processes,
        "mounts": mounts,
        "links": [
            line.split(":")[1].strip()
            for line in links.splitlines()
            if line.split(":")[1].strip().startswith(("bpj0", layout.BRIDGE_PREFIX))
        ],
        "iptables chains": [
            line for line in chains.splitlines() if line.startswith((":KUBE-", ":CNI-"))
        ],
        "cgroups": [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{layout.CGROUP_PREFIX}*")],
        "directories": [
            str(p)
            for p in (layout.RUN_ROOT, layout.VAR_ROOT, layout.DEVICE_PLUGIN_SOCKET)
            if p.exists()
        ],
    }


def test_up_after_a_killed_stack_and_down_leave_a_clean_machine(
    node_stack: plane.StackState, tmp_path: Path
) -> None:
    # Kill the module's stack the way a session ends: SIGKILL to every process at once,
    # while a pod runs (its container, mounts and network namespace stay behind).
    kubectl = kubectl_for(node_stack.kubeconfig)
    kubectl("apply", "-f", "-", stdin=json.dumps(_pod("left-running", "sleep 3600")))
    wait_for(
        lambda: (
            kubectl_json(kubectl, "get", "pod", "left-running")["status"].get("phase") == "Running"
        ),
        60,
        "the pod to run",
    )
    for pid in node_stack.pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    # The session has ended once the killed processes are gone (they are this process's
    # children, so reap them); the shims and the container they started live on.
    for pid in node_stack.pids.values():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert _leftovers()["processes"], "the killed stack's container should still be running"

    # Another checkout's `up`: it finds the killed stack and clears it first.
    state = plane.up(
        tmp_path / "again", pools=(), kubelet_pools=(CPU_POOL,), images=[scratch.busybox_archive()]
    )
    try:
        again = kubectl_for(state.kubeconfig)
        assert "left-running" not in again("get", "pods", "-A").stdout
        out = _run_to_completion(again, "default", _pod("after", "echo fresh"))
        assert out.strip() == "fresh"
    finally:
        plane.down(tmp_path / "again")
    assert _leftovers() == {
        "processes": [],
        "mounts": [],
        "links": [],
        "iptables chains": [],
        "cgroups": [],
        "directories": [],
    }
