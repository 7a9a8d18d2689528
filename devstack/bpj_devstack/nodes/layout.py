"""Where the real nodes live on this machine: addresses, ports, directories (pure).

Paths are fixed and machine-global on purpose: a stack killed in one checkout must
be found and removed by the next ``up`` in another (CI runs in a fresh clone right
after a killed session). Runtime state lives under ``/run`` (gone on reboot), pod
volumes under ``/var/lib``, and each node's containerd image store in the build
cache, so images imported once survive ``down`` as they would on a node's disk.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from bpj_devstack import kwok_config
from bpj_devstack.versions import cache_root

#: The stack's own host address, on a bridge of its own (this kernel has no dummy
#: links). The kubelet refuses a loopback node IP, and pods cannot reach 127.0.0.1
#: of the host, so the API server, GCS emulator and CoreDNS listen here too.
HOST_INTERFACE = "bpj0"
HOST_IP = "10.200.0.1"

#: Pod addresses: one /24 per node inside this range (KWOK's fake pods use 10.244/16).
POD_CIDR = "10.201.0.0/16"
#: The cluster DNS Service's address, inside plane.SERVICE_CLUSTER_IP_RANGE.
DNS_SERVICE_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"

RUN_ROOT = Path("/run/bpj-devstack")
"""containerd state, sockets and the record of what ``up`` started."""
VAR_ROOT = Path("/var/lib/bpj-devstack")
"""kubelet root directories (pod volumes), CNI state, pod logs."""
CGROUP_PREFIX = "bpj-"
"""Each node's pods live under the cgroup ``/bpj-<node>``, so kubelets never share one."""
BRIDGE_PREFIX = "bpjn"
"""CNI bridges are ``bpjn<index>``; ``bpj0`` is the host address."""

#: The one path all kubelets share: the device-plugin registration socket is a constant
#: of k8s.io/kubelet (``DevicePluginPath``), not under --root-dir. Each kubelet removes
#: and binds it on start, so kubelets start one at a time (``fleet``); nothing here uses
#: device plugins, and ``host.sweep`` removes it.
DEVICE_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")

#: First port of the kubelets' API (10250 on a real node); each node takes two.
_KUBELET_PORT_BASE = 20250


@dataclass(frozen=True)
class KubeletNode:
    """One real node: a kubelet and its own containerd."""

    name: str
    index: int
    pool: kwok_config.NodePool

    @property
    def kubelet_port(self) -> int:
        return _KUBELET_PORT_BASE + 2 * self.index

    @property
    def healthz_port(self) -> int:
        return _KUBELET_PORT_BASE + 2 * self.index + 1

    @property
    def pod_cidr(self) -> str:
        net = ipaddress.ip_network(POD_CIDR)
        return str(list(net.subnets(new_prefix=24))[self.index + 1])

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.index}"

    @property
    def cgroup_root(self) -> str:
        return f"/{CGROUP_PREFIX}{self.name}"

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.name

    @property
    def var_dir(self) -> Path:
        return VAR_ROOT / self.name

    @property
    def kubelet_root(self) -> Path:
        return self.var_dir / "kubelet"

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        """The image store: kept across ``down`` (a cache), removed by ``sweep --images``."""
        return image_store_root() / self.name

    @property
    def labels(self) -> dict[str, str]:
        labels = {kwok_config.LABEL_NODEPOOL: self.pool.name, "devstack.bpj.dev/node": "kubelet"}
        if self.pool.accelerator:
            assert self.pool.topology
            labels[kwok_config.LABEL_ACCELERATOR] = self.pool.accelerator
            labels[kwok_config.LABEL_TOPOLOGY] = self.pool.topology
        if self.pool.spot:
            labels[kwok_config.LABEL_SPOT] = "true"
        return labels

    @property
    def taints(self) -> list[str]:
        """GKE taints every TPU node; kubelet's --register-with-taints syntax."""
        if self.pool.accelerator:
            return [f"{kwok_config.TPU_RESOURCE}=present:NoSchedule"]
        return []


def image_store_root() -> Path:
    return cache_root().parent / "containerd"


def kubelet_nodes(pools: tuple[kwok_config.NodePool, ...]) -> list[KubeletNode]:
    """Number the nodes of ``pools`` (in order) and give each its ports and addresses."""
    nodes: list[KubeletNode] = []
    for pool in pools:
        for name in pool.node_names():
            nodes.append(KubeletNode(name=name, index=len(nodes), pool=pool))
    if len(nodes) > 200:
        raise ValueError("at most 200 real nodes: each takes a /24 of the pod range")
    return nodes
