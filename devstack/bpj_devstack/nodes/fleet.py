"""Start the real nodes of a stack, and wait until they take pods.

Order matters and follows the dependencies: the host address and forwarding; one
containerd per node, with the pause image and the stack's images imported; the
kubelets, which register their Nodes; kube-proxy and CoreDNS, which need the API
and a Node; then the ``google.com/tpu`` capacity of TPU-shaped nodes, which the
scheduler needs before any TPU pod can bind.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yaml

from bpj_devstack import build, kwok_config, pki
from bpj_devstack.nodes import containerd, host, kubelet, layout, scratch, services
from bpj_devstack.versions import COREDNS, KUBERNETES

log = logging.getLogger(__name__)

Spawn = Callable[[str, list[str]], int]
"""Starts a named process with its log in the stack's run directory; returns its pid."""
Kubectl = Callable[..., str]


def kube_proxy_binary() -> Path | None:
    return build.binary(KUBERNETES, "kube-proxy") if build.is_built(KUBERNETES) else None


def start(
    pools: tuple[kwok_config.NodePool, ...],
    *,
    keys: pki.Pki,
    server: str,
    ports: Mapping[str, int],
    images: Sequence[Path],
    spawn: Spawn,
    kubectl: Kubectl,
    timeout: float = 120.0,
) -> list[layout.KubeletNode]:
    """Start every node of ``pools`` and return them once they are Ready.

    ``images`` are OCI archives that every node's containerd must hold (imported
    only when the node lacks that exact manifest). The host must be
    prepared first (``host.prepare_host``): the API server listens on its address.
    """
    nodes = layout.kubelet_nodes(pools)
    pause_archive = scratch.pause_archive()

    def started(name: str, argv: list[str]) -> int:
        pid = spawn(name, argv)
        host.record_pid(name, pid)
        return pid

    for node in nodes:
        config = containerd.write_config(node, scratch.PAUSE_IMAGE)
        started(f"containerd-{node.name}", containerd.argv(config))
    for node in nodes:
        _wait(f"containerd of {node.name}", functools.partial(containerd.is_serving, node), 30)
        for archive in (pause_archive, *images):
            containerd.import_image(node, archive)

    kubelet_binary = build.binary(KUBERNETES, "kubelet")
    for node in nodes:
        kubeconfig = kubelet.write_identity(node, keys, server)
        config = kubelet.write_config(node, keys)
        kubelet.ensure_cgroup_root(node)
        before = _inode(layout.DEVICE_PLUGIN_SOCKET)
        pid = started(
            f"kubelet-{node.name}", kubelet.argv(kubelet_binary, node, config, kubeconfig)
        )
        # Two kubelets binding the shared device-plugin socket at once make one of them
        # exit ("address already in use"): the next starts once this one has bound it.
        _wait(
            f"the kubelet of {node.name} to bind {layout.DEVICE_PLUGIN_SOCKET}",
            functools.partial(_bound_anew, layout.DEVICE_PLUGIN_SOCKET, before),
            60,
            pid,
        )

    _start_kube_proxy(nodes[0], keys, server, ports, started)
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(services.dns_objects()))
    _start_coredns(keys, server, ports, started)

    _wait_ready(nodes, kubectl, timeout)
    for node in nodes:
        patch = kubelet.tpu_capacity_patch(node)
        if patch:
            kubectl("patch", "node", node.name, "--subresource=status", "--type=json", "-p", patch)
    _wait_allocatable(nodes, kubectl, timeout)
    return nodes


def _start_kube_proxy(
    node: layout.KubeletNode,
    keys: pki.Pki,
    server: str,
    ports: Mapping[str, int],
    started: Callable[[str, list[str]], int],
) -> None:
    directory = layout.RUN_ROOT / "kube-proxy"
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "client.crt", directory / "client.key"
    # system:kube-proxy is bound to system:node-proxier by the API server's bootstrap policy.
    pki.issue_certificate(keys, cert, key, "system:kube-proxy")
    kubeconfig = directory / "kubeconfig"
    pki.write_kubeconfig(kubeconfig, server, keys, cert, key)
    config = services.write_kube_proxy_config(
        directory, kubeconfig, node, ports["kube-proxy-healthz"], ports["kube-proxy-metrics"]
    )
    binary = build.binary(KUBERNETES, "kube-proxy")
    started("kube-proxy", [str(binary), f"--config={config}", "--v=1"])


def _start_coredns(
    keys: pki.Pki,
    server: str,
    ports: Mapping[str, int],
    started: Callable[[str, list[str]], int],
) -> None:
    directory = layout.RUN_ROOT / "coredns"
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "client.crt", directory / "client.key"
    pki.issue_certificate(keys, cert, key, services.COREDNS_USER)
    kubeconfig = directory / "kubeconfig"
    pki.write_kubeconfig(kubeconfig, server, keys, cert, key)
    corefile = directory / "Corefile"
    corefile.write_text(services.corefile(kubeconfig, ports["coredns-health"]))
    binary = build.binary(COREDNS, "coredns")
    started("coredns", [str(binary), "-conf", str(corefile)])


def _wait(what: str, check: Callable[[], bool], timeout: float, pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not _running(pid):
            raise RuntimeError(f"exited while waiting for {what}; see its log in the run's logs/")
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _bound_anew(path: Path, before: int | None) -> bool:
    """``path`` is a socket made since ``before`` (its inode then) with a listener on it."""
    if _inode(path) in (None, before):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _nodes(kubectl: Kubectl) -> dict[str, dict[str, object]]:
    items = json.loads(kubectl("get", "nodes", "-l", "devstack.bpj.dev/node=kubelet", "-o", "json"))
    return {item["metadata"]["name"]: item for item in items["items"]}


def _wait_ready(nodes: list[layout.KubeletNode], kubectl: Kubectl, timeout: float) -> None:
    def ready() -> bool:
        seen = _nodes(kubectl)
        for node in nodes:
            status = seen.get(node.name, {}).get("status") or {}
            conditions = status.get("conditions", []) if isinstance(status, dict) else []
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return False
        return True

    _wait("the kubelets' nodes to become Ready", ready, timeout)


def _wait_allocatable(nodes: list[layout.KubeletNode], kubectl: Kubectl, timeout: float) -> None:
    def advertised() -> bool:
        seen = _nodes(kubectl)
        for node in nodes:
            if not node.pool.accelerator:
                continue
            status = seen.get(node.name, {}).get("status") or {}
            allocatable = status.get("allocatable", {}) if isinstance(status, dict) else {}
            if allocatable.get(kwok_config.TPU_RESOURCE) != str(node.pool.chips_per_node):
                return False
        return True

    _wait("google.com/tpu in the TPU nodes' allocatable", advertised, timeout)
