"""kube-proxy and CoreDNS: what makes Service addresses and cluster DNS names work in pods.

Both run once per machine, as host processes (kube-proxy is per host on GKE too;
CoreDNS runs as a Deployment there, but an image of it would have to be built
first and it needs nothing a pod has). kube-proxy writes the iptables rules that
send the ``kubernetes`` Service's ClusterIP to the API server and ``kube-dns`` to
CoreDNS; CoreDNS answers Service names and the per-pod names of headless Services
from the API, as GKE's kube-dns does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bpj_devstack import pki
from bpj_devstack.nodes import layout

DNS_SERVICE = "kube-dns"
DNS_NAMESPACE = "kube-system"
COREDNS_USER = "system:devstack:coredns"


def kube_proxy_config(
    kubeconfig: Path, node: layout.KubeletNode, healthz_port: int, metrics_port: int
) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name,
        "mode": "iptables",
        "clusterCIDR": layout.POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # Zero leaves the host's conntrack sysctls alone (a VM that is not ours to tune).
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s", "localhostNodePorts": False},
    }


def write_kube_proxy_config(
    directory: Path, kubeconfig: Path, node: layout.KubeletNode, healthz: int, metrics: int
) -> Path:
    path = directory / "kube-proxy.yaml"
    path.write_text(yaml.safe_dump(kube_proxy_config(kubeconfig, node, healthz, metrics)))
    return path


def corefile(kubeconfig: Path, health_port: int) -> str:
    """Cluster names only: a name outside the cluster does not exist here (no internet)."""
    return f"""\
.:53 {{
    bind {layout.HOST_IP}
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}

{layout.CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {layout.HOST_IP}
    errors
    # Every query and its client: tests read from it that a slice's hosts looked each other up.
    log . "{{remote}} {{type}} {{name}} {{rcode}}"
    health 127.0.0.1:{health_port}
    kubernetes {layout.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} {pki.KUBECONFIG_CONTEXT}
        pods insecure
        ttl 5
    }}
    cache 5
}}
"""


def dns_objects() -> list[dict[str, Any]]:
    """The ``kube-dns`` Service at the cluster DNS address, CoreDNS's endpoint and its RBAC."""
    labels = {"k8s-app": "kube-dns", "app.kubernetes.io/managed-by": "bpj-devstack"}
    ports = [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": DNS_SERVICE, "namespace": DNS_NAMESPACE, "labels": labels},
            # No selector: the endpoint is CoreDNS on the host, listed below.
            "spec": {"clusterIP": layout.DNS_SERVICE_IP, "ports": ports},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{DNS_SERVICE}-host",
                "namespace": DNS_NAMESPACE,
                "labels": {
                    **labels,
                    "kubernetes.io/service-name": DNS_SERVICE,
                    "endpointslice.kubernetes.io/managed-by": "bpj-devstack",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [layout.HOST_IP], "conditions": {"ready": True}}],
            "ports": ports,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "bpj-devstack:coredns", "labels": labels},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "bpj-devstack:coredns", "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "bpj-devstack:coredns",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}
            ],
        },
    ]
