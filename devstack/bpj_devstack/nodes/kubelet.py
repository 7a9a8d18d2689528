"""The kubelet of a real node: its configuration, identity and start-up.

Authentication and authorization are GKE's: the kubelet authenticates to the API
server with a client certificate of ``system:node:<name>`` (so the Node authorizer
and NodeRestriction admission apply, and it can read only its own pods' secrets),
and it authenticates and authorizes the API server's own calls (``kubectl logs``)
by webhook. What differs from a production node is only what this machine forces:
cgroupfs on cgroup v1, swap allowed, no eviction (the VM's disk and memory are
shared with everything else), a cgroup root per node so kubelets never manage
each other's pods, and ports of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bpj_devstack import pki
from bpj_devstack.nodes import layout


def write_identity(node: layout.KubeletNode, keys: pki.Pki, server: str) -> Path:
    """Client and serving certificates of the node, and its kubeconfig."""
    certs = node.var_dir / "pki"
    certs.mkdir(parents=True, exist_ok=True)
    pki.issue_certificate(
        keys,
        certs / "client.crt",
        certs / "client.key",
        f"system:node:{node.name}",
        organization="system:nodes",
    )
    pki.issue_certificate(
        keys,
        certs / "serving.crt",
        certs / "serving.key",
        node.name,
        dns_names=(node.name,),
        ip_addresses=(layout.HOST_IP,),
        server=True,
    )
    kubeconfig = node.var_dir / "kubeconfig"
    pki.write_kubeconfig(kubeconfig, server, keys, certs / "client.crt", certs / "client.key")
    return kubeconfig


def configuration(node: layout.KubeletNode, keys: pki.Pki) -> dict[str, Any]:
    """A KubeletConfiguration (kubelet.config.k8s.io/v1beta1) for ``node``."""
    certs = node.var_dir / "pki"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": layout.HOST_IP,
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": node.healthz_port,
        "tlsCertFile": str(certs / "serving.crt"),
        "tlsPrivateKeyFile": str(certs / "serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(keys.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failSwapOn": False,
        "clusterDNS": [layout.DNS_SERVICE_IP],
        "clusterDomain": layout.CLUSTER_DOMAIN,
        # Eviction and image GC would act on the whole VM's disk and memory, which the
        # other nodes and the control plane share; images are imported, never pulled.
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "enforceNodeAllocatable": [],
        "localStorageCapacityIsolation": False,
        "podLogsDir": str(node.var_dir / "pod-logs"),
        "volumePluginDir": str(node.var_dir / "volume-plugins"),
        "staticPodPath": "",
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "maxPods": 32,
        "nodeStatusReportFrequency": "10s",
        "registerNode": True,
    }


def write_config(node: layout.KubeletNode, keys: pki.Pki) -> Path:
    node.kubelet_root.mkdir(parents=True, exist_ok=True)
    path = node.var_dir / "kubelet.yaml"
    path.write_text(yaml.safe_dump(configuration(node, keys)))
    return path


def ensure_cgroup_root(node: layout.KubeletNode) -> None:
    """The kubelet refuses a cgroupRoot that does not exist in every hierarchy."""
    base = Path("/sys/fs/cgroup")
    for hierarchy in base.iterdir():
        if (
            hierarchy.is_dir()
            and not hierarchy.is_symlink()
            and (hierarchy / "cgroup.procs").exists()
        ):
            (hierarchy / node.cgroup_root.lstrip("/")).mkdir(exist_ok=True)


def argv(binary: Path, node: layout.KubeletNode, config: Path, kubeconfig: Path) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(node.labels.items()))
    args = [
        str(binary),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node.name}",
        f"--root-dir={node.kubelet_root}",
        f"--cert-dir={node.var_dir / 'pki'}",
        f"--node-ip={layout.HOST_IP}",
        f"--node-labels={labels}",
        "--v=1",
    ]
    if node.taints:
        args.append(f"--register-with-taints={','.join(node.taints)}")
    return args


def tpu_capacity_patch(node: layout.KubeletNode) -> str | None:
    """JSON patch of node status advertising ``google.com/tpu`` as an extended resource.

    On GKE the TPU device plugin advertises the chips; here nothing can, so the
    stack does what Kubernetes documents for extended resources: patch the node's
    status capacity once, after the kubelet registered it. The kubelet keeps it.
    """
    if not node.pool.accelerator:
        return None
    path = "/status/capacity/" + layout_escape("google.com/tpu")
    return json.dumps([{"op": "add", "path": path, "value": str(node.pool.chips_per_node)}])


def layout_escape(key: str) -> str:
    """A JSON-pointer path segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")
