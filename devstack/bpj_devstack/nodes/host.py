"""The machine-wide side of the real nodes: the host address, forwarding, and the sweep.

``prepare_host`` gives the stack its address and lets pods' packets be routed;
``sweep`` removes everything a stack with real nodes made, whether it stopped
cleanly or was killed: processes (kubelets, containerd and its shims, the
containers themselves, found through their cgroups), mounts, pod network
namespaces, bridges, iptables chains, cgroups and state directories. ``up`` runs
it first and ``down`` runs it last, so both start from and leave a clean machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from bpj_devstack.nodes import layout

log = logging.getLogger(__name__)

_RECORD = layout.RUN_ROOT / "host.json"
_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
_CGROUP_FS = Path("/sys/fs/cgroup")
#: Chains of kube-proxy, the kubelet's canary and the CNI plugins (bridge, portmap).
_OUR_CHAINS = re.compile(r"^(KUBE-|CNI-)")


class HostError(RuntimeError):
    """The machine cannot host real nodes; the message says what is missing."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def check_host() -> None:
    """Fail early, naming what is missing, instead of half-starting a node."""
    if os.geteuid() != 0:
        raise HostError("real nodes need root (network namespaces, mounts, iptables)")
    missing = [
        tool
        for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ip", "iptables", "ctr")
        if shutil.which(tool) is None
    ]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("/usr/lib/cni/bridge (containernetworking-plugins)")
    if missing:
        raise HostError(
            "real nodes need Debian's containerd, runc, containernetworking-plugins, "
            f"iproute2 and iptables; missing: {', '.join(missing)} (run `./dev setup`)"
        )


def claim(owner: Path) -> None:
    """Refuse while another live stack has real nodes; there can be one per machine.

    A record whose processes are all gone is a killed stack: ``sweep`` removes it.
    """
    if not _RECORD.exists():
        return
    record = json.loads(_RECORD.read_text())
    alive = [pid for pid in record.get("pids", {}).values() if _ours(int(pid))]
    if alive and record.get("owner") != str(owner):
        raise HostError(
            f"another stack with real nodes is running (run directory {record.get('owner')}, "
            f"{len(alive)} processes); stop it first: ./dev stack down --run-dir "
            f"{record.get('owner')}"
        )


def prepare_host(owner: Path) -> None:
    """Create the host address and enable forwarding, remembering what to restore."""
    layout.RUN_ROOT.mkdir(parents=True, exist_ok=True)
    layout.VAR_ROOT.mkdir(parents=True, exist_ok=True)
    record = {"owner": str(owner), "ip_forward": _IP_FORWARD.read_text().strip()}
    _RECORD.write_text(json.dumps(record))
    _run("ip", "link", "add", layout.HOST_INTERFACE, "type", "bridge")
    _run("ip", "addr", "add", f"{layout.HOST_IP}/32", "dev", layout.HOST_INTERFACE)
    _run("ip", "link", "set", layout.HOST_INTERFACE, "up")
    _IP_FORWARD.write_text("1\n")


def record_pid(name: str, pid: int) -> None:
    """Remember a process in the machine-wide record, for a sweep from another checkout."""
    record = json.loads(_RECORD.read_text()) if _RECORD.exists() else {}
    record.setdefault("pids", {})[name] = pid
    _RECORD.write_text(json.dumps(record))


def sweep(kube_proxy: Path | None = None) -> None:
    """Remove everything a stack with real nodes made; safe to run when nothing is left."""
    record = json.loads(_RECORD.read_text()) if _RECORD.exists() else {}
    _kill_processes(record.get("pids", {}).values())
    _kill_cgroups()
    _unmount_under((layout.RUN_ROOT, layout.VAR_ROOT, layout.image_store_root()))
    _delete_pod_netns()
    _delete_links()
    if kube_proxy is not None and kube_proxy.exists():
        _run(str(kube_proxy), "--cleanup", check=False)
    for tool in ("iptables", "ip6tables"):
        if shutil.which(f"{tool}-save"):
            _remove_chains(tool)
    _remove_cgroups()
    shutil.rmtree(layout.VAR_ROOT, ignore_errors=True)
    layout.DEVICE_PLUGIN_SOCKET.unlink(missing_ok=True)
    for directory in (
        layout.DEVICE_PLUGIN_SOCKET.parent,
        layout.DEVICE_PLUGIN_SOCKET.parent.parent,
    ):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: it may hold a real kubelet's files
    if "ip_forward" in record:
        _IP_FORWARD.write_text(record["ip_forward"] + "\n")
    shutil.rmtree(layout.RUN_ROOT, ignore_errors=True)


def _ours(pid: int) -> bool:
    """A process started for a real node: its command line names one of our directories."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return any(str(root) in cmdline for root in (layout.RUN_ROOT, layout.VAR_ROOT))


def _kill_processes(recorded: Iterable[int]) -> None:
    targets = {int(pid) for pid in recorded if _ours(int(pid))}
    targets |= {
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ours(int(p.name))
    }
    targets.discard(os.getpid())
    for pid in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(targets)


def _wait_gone(pids: set[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
        if pids:
            time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _our_cgroups() -> list[Path]:
    """Every cgroup directory of the nodes' pods, in every v1 hierarchy, deepest first."""
    found: list[Path] = []
    if not _CGROUP_FS.is_dir():
        return found
    for hierarchy in _CGROUP_FS.iterdir():
        with contextlib.suppress(OSError):
            for top in hierarchy.glob(layout.CGROUP_PREFIX + "*"):
                found += [Path(root) for root, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kill_cgroups() -> None:
    """Kill the containers themselves: a killed shim leaves them running, reparented."""
    for _ in range(50):
        pids: set[int] = set()
        for group in _our_cgroups():
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in (group / "cgroup.procs").read_text().split()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(pids, timeout=2)
    log.warning("processes are still left in the nodes' cgroups")


def _remove_cgroups() -> None:
    for group in _our_cgroups():
        with contextlib.suppress(OSError):
            group.rmdir()


def _mountpoints() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like octal-escaped.
        point = line.split(" ")[4].encode().decode("unicode_escape")
        points.append(point)
    return points


def _unmount_under(roots: Iterable[Path]) -> None:
    prefixes = tuple(str(root) + "/" for root in roots)
    for _ in range(5):
        points = [p for p in _mountpoints() if p.startswith(prefixes)]
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            _run("umount", "-l", point, check=False)


def _delete_pod_netns() -> None:
    """Network namespaces containerd made for pods (``cni-<uuid>``) that nothing uses now."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return
    for ns in netns_dir.glob("cni-*"):
        if not _run("ip", "netns", "pids", ns.name, check=False).stdout.strip():
            _run("ip", "netns", "delete", ns.name, check=False)
            with contextlib.suppress(OSError):
                ns.unlink()


def _delete_links() -> None:
    out = _run("ip", "-o", "link", "show", check=False).stdout
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == layout.HOST_INTERFACE or name.startswith(layout.BRIDGE_PREFIX):
            _run("ip", "link", "delete", name, check=False)


def _remove_chains(tool: str) -> None:
    """Drop our chains, and the rules jumping to them, from each table that has any."""
    saved = _run(f"{tool}-save", check=False).stdout
    tables: dict[str, list[str]] = {}
    current = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            current = line[1:]
            tables[current] = [line]
        elif current:
            tables[current].append(line)
    for table, lines in tables.items():
        kept = [line for line in lines if not _mentions_our_chain(line)]
        if kept != lines:
            restored = "\n".join(kept) + "\n"
            subprocess.run([f"{tool}-restore"], input=restored, text=True, check=False)
            log.info("removed the stack's chains from %s table %s", tool, table)


def _mentions_our_chain(line: str) -> bool:
    if line.startswith(":"):
        return bool(_OUR_CHAINS.match(line[1:]))
    if line.startswith("-A "):
        words = line.split()
        if _OUR_CHAINS.match(words[1]):
            return True
        for flag in ("-j", "-g", "--jump", "--goto"):
            if flag in words:
                target = words[words.index(flag) + 1]
                if _OUR_CHAINS.match(target):
                    return True
    return False
