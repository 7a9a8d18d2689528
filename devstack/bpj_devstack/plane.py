"""Start and stop the local control plane, KWOK, real nodes and the GCS emulator.

``up`` starts every process detached (its own session), records ports and PIDs
in ``state.json`` under the run directory, waits until the API server is ready,
the default service account exists and the nodes (KWOK's fake ones, and the real
ones of ``nodes.fleet`` when asked for) are Ready, then returns. ``down`` stops
the recorded processes and, with real nodes, sweeps what they left on the machine.
The same functions back the pytest fixtures, so tests and developers run the
identical stack.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bpj_devstack import build, gcs_proxy, kwok_config, pki
from bpj_devstack.nodes import fleet, host, layout
from bpj_devstack.versions import COREDNS, ETCD, FAKE_GCS_SERVER, KUBERNETES, KWOK

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"


#: Service accounts' requests at Metadata level (who, what, from which pod), nothing else.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


class StackError(RuntimeError):
    """The stack could not be brought up; the message names the component and its log."""


@dataclass
class StackState:
    """What ``up`` started: enough for ``down``, tests and the demo to find everything."""

    run_dir: str
    kubeconfig: str
    apiserver_url: str
    gcs_endpoint: str
    gcs_proxy_url: str = ""
    """HTTPS proxy that lets TensorFlow's gs:// reach the emulator (see gcs_proxy)."""
    ca_cert: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    kubelet_nodes: list[str] = field(default_factory=list)
    """Names of the real nodes (kubelet + containerd), whose pods run as containers."""

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / "state.json"

    def save(self) -> None:
        self.path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> StackState | None:
        path = run_dir / "state.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def env(self) -> dict[str, str]:
        """Environment that points clients (kubectl, kopf, google-cloud-storage) at the stack."""
        return {
            "KUBECONFIG": self.kubeconfig,
            "STORAGE_EMULATOR_HOST": self.gcs_endpoint,
            "GOOGLE_CLOUD_PROJECT": "bpj-devstack",
        }

    def tensorflow_env(self) -> dict[str, str]:
        """Environment for a TensorFlow process whose gs:// paths must reach the emulator."""
        env = {"STORAGE_EMULATOR_HOST": self.gcs_endpoint, "GOOGLE_CLOUD_PROJECT": "bpj-devstack"}
        if self.gcs_proxy_url:
            env.update(gcs_proxy.tf_gcs_env(self.gcs_proxy_url, Path(self.ca_cert)))
        return env


def default_run_dir() -> Path:
    explicit = os.environ.get("BPJ_DEVSTACK_DIR")
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[2] / ".devstack"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(name: str, argv: list[str], run_dir: Path, env: dict[str, str] | None = None) -> int:
    log_path = run_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=run_dir,
            env=env,
            start_new_session=True,
        )
    log.info("started %s (pid %d), log %s", name, proc.pid, log_path)
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(
    what: str, check: Callable[[], bool], timeout: float, state: StackState, component: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = state.pids.get(component)
        if pid is not None and not _alive(pid):
            raise StackError(
                f"{component} exited while waiting for {what}; see "
                f"{Path(state.run_dir) / 'logs' / (component + '.log')}"
            )
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError):
            pass
        time.sleep(0.2)
    raise StackError(
        f"timed out after {timeout:.0f}s waiting for {what}; see "
        f"{Path(state.run_dir) / 'logs' / (component + '.log')}"
    )


def _admin_ssl_context(keys: pki.Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(keys.ca_cert))
    ctx.load_cert_chain(str(keys.admin_cert), str(keys.admin_key))
    return ctx


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
        return bool(resp.status == 200)


def write_kubeconfig(path: Path, server: str, keys: pki.Pki) -> None:
    pki.write_kubeconfig(path, server, keys, keys.admin_cert, keys.admin_key, namespace="default")


def _kubectl(state: StackState, *args: str, stdin: str | None = None) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise StackError("kubectl is not on PATH")
    result = subprocess.run(
        [kubectl, "--kubeconfig", state.kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def up(
    run_dir: Path | None = None,
    *,
    pools: tuple[kwok_config.NodePool, ...] = kwok_config.DEFAULT_POOLS,
    pod_run_for: str = "2s",
    kubelet_pools: tuple[kwok_config.NodePool, ...] = (),
    images: Sequence[Path] = (),
    timeout: float = 120.0,
) -> StackState:
    """Build (if needed) and start the whole stack; idempotent when it already runs.

    ``pools`` are KWOK's fake nodes. ``kubelet_pools`` are real nodes (a kubelet
    and containerd each; root only, one such stack per machine), whose containerd
    gets ``images`` (OCI archives) imported. With real nodes every server listens
    on the stack's host address, which pods can reach.
    """
    run_dir = (run_dir or default_run_dir()).resolve()
    existing = StackState.load(run_dir)
    if existing and all(_alive(pid) for pid in existing.pids.values()):
        log.info("stack already running in %s", run_dir)
        return existing
    if existing:
        down(run_dir)
    for component in (ETCD, KUBERNETES, KWOK, FAKE_GCS_SERVER):
        build.build(component)
    address = "127.0.0.1"
    if kubelet_pools:
        build.build(COREDNS)
        host.check_host()
        host.claim(run_dir)
        host.sweep(fleet.kube_proxy_binary())
        host.prepare_host(run_dir)
        address = layout.HOST_IP

    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("etcd-data", "gcs-data", "logs"):
        shutil.rmtree(run_dir / stale, ignore_errors=True)
    keys = pki.create(run_dir / "pki")
    names = ["etcd", "etcd-peer", "apiserver", "gcs", "gcs-proxy", "kwok"]
    if kubelet_pools:
        names += ["kube-proxy-healthz", "kube-proxy-metrics", "coredns-health"]
    ports = {name: free_port() for name in names}
    apiserver_url = f"https://{address}:{ports['apiserver']}"
    state = StackState(
        run_dir=str(run_dir),
        kubeconfig=str(run_dir / "kubeconfig"),
        apiserver_url=apiserver_url,
        gcs_endpoint=f"http://{address}:{ports['gcs']}",
        gcs_proxy_url=f"http://{address}:{ports['gcs-proxy']}",
        ca_cert=str(keys.ca_cert),
        ports=ports,
    )
    write_kubeconfig(Path(state.kubeconfig), apiserver_url, keys)
    try:
        _start_etcd(state)
        _start_apiserver(state, keys, address, kubelets=bool(kubelet_pools))
        _start_controllers(state, keys)
        _start_kwok(state, pools, pod_run_for)
        start_gcs(state, address)
        start_gcs_proxy(state, keys, address)
        state.save()
        _wait_cluster_ready(state, pools, timeout)
        if kubelet_pools:
            # Recorded before they start, so that a failed start is swept by down() too.
            state.kubelet_nodes = [n.name for n in layout.kubelet_nodes(kubelet_pools)]
            state.save()
            nodes = fleet.start(
                kubelet_pools,
                keys=keys,
                server=apiserver_url,
                ports=ports,
                images=images,
                spawn=lambda name, argv: _spawn_recorded(state, name, argv),
                kubectl=lambda *args, stdin=None: _kubectl(state, *args, stdin=stdin),
                timeout=timeout,
            )
            state.kubelet_nodes = [node.name for node in nodes]
            state.save()
    except BaseException:
        state.save()
        down(run_dir)
        raise
    log.info(
        "stack is up: KUBECONFIG=%s STORAGE_EMULATOR_HOST=%s", state.kubeconfig, state.gcs_endpoint
    )
    return state


def _start_etcd(state: StackState) -> None:
    run_dir = Path(state.run_dir)
    client = f"http://127.0.0.1:{state.ports['etcd']}"
    peer = f"http://127.0.0.1:{state.ports['etcd-peer']}"
    state.pids["etcd"] = _spawn(
        "etcd",
        [
            str(build.binary(ETCD, "etcd")),
            "--name=devstack",
            f"--data-dir={run_dir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=devstack={peer}",
            # Throw-away data: durability is not worth the fsync latency here.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        run_dir,
    )
    _wait("etcd health", lambda: _http_ok(client + "/health"), 30, state, "etcd")


def _spawn_recorded(state: StackState, name: str, argv: list[str]) -> int:
    pid = _spawn(name, argv, Path(state.run_dir))
    state.pids[name] = pid
    state.save()
    return pid


def _start_apiserver(state: StackState, keys: pki.Pki, address: str, *, kubelets: bool) -> None:
    run_dir = Path(state.run_dir)
    node_flags: list[str] = []
    if kubelets:
        # `kubectl logs` and exec: the API server calls kubelets with a client certificate
        # and checks theirs against the stack's CA, as GKE's control plane does.
        client_cert, client_key = (
            keys.dir / "apiserver-kubelet.crt",
            keys.dir / "apiserver-kubelet.key",
        )
        pki.issue_certificate(
            keys,
            client_cert,
            client_key,
            "kube-apiserver-kubelet-client",
            organization="system:masters",
        )
        # An audit log of what service accounts do: tests read from it who authenticated
        # how (a pod-bound token names its pod), as one would on GKE's Cloud Audit Logs.
        policy = run_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        node_flags = [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={run_dir / 'logs' / 'audit.log'}",
            "--audit-log-format=json",
            f"--kubelet-client-certificate={client_cert}",
            f"--kubelet-client-key={client_key}",
            f"--kubelet-certificate-authority={keys.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ]
    state.pids["kube-apiserver"] = _spawn(
        "kube-apiserver",
        [
            str(build.binary(KUBERNETES, "kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{state.ports['etcd']}",
            # Pods reach the API server through the `kubernetes` Service, which kube-proxy
            # sends to the advertised address: with real nodes, the stack's host address.
            "--bind-address=" + ("0.0.0.0" if kubelets else "127.0.0.1"),
            f"--advertise-address={address}",
            f"--secure-port={state.ports['apiserver']}",
            f"--cert-dir={run_dir / 'apiserver-certs'}",
            f"--tls-cert-file={keys.serving_cert}",
            f"--tls-private-key-file={keys.serving_key}",
            f"--client-ca-file={keys.ca_cert}",
            # Node: kubelets read only their own pods' objects (with NodeRestriction), as on GKE.
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={keys.sa_pub}",
            f"--service-account-signing-key-file={keys.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            *node_flags,
            "--v=1",
        ],
        run_dir,
    )
    ctx = _admin_ssl_context(keys)
    _wait(
        "kube-apiserver /readyz",
        lambda: _http_ok(state.apiserver_url + "/readyz", ctx),
        60,
        state,
        "kube-apiserver",
    )


def _start_controllers(state: StackState, keys: pki.Pki) -> None:
    run_dir = Path(state.run_dir)
    state.pids["kube-controller-manager"] = _spawn(
        "kube-controller-manager",
        [
            str(build.binary(KUBERNETES, "kube-controller-manager")),
            f"--kubeconfig={state.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            "--controllers=*",
            f"--service-account-private-key-file={keys.sa_key}",
            f"--root-ca-file={keys.ca_cert}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--v=1",
        ],
        run_dir,
    )
    state.pids["kube-scheduler"] = _spawn(
        "kube-scheduler",
        [
            str(build.binary(KUBERNETES, "kube-scheduler")),
            f"--kubeconfig={state.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=1",
        ],
        run_dir,
    )


def _start_kwok(
    state: StackState, pools: tuple[kwok_config.NodePool, ...], pod_run_for: str
) -> None:
    run_dir = Path(state.run_dir)
    config = run_dir / "kwok.yaml"
    config.write_text(yaml.safe_dump_all(kwok_config.stages(pod_run_for)))
    state.pids["kwok"] = _spawn(
        "kwok",
        [
            str(build.binary(KWOK, "kwok")),
            f"--kubeconfig={state.kubeconfig}",
            f"--config={config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={kwok_config.KWOK_NODE_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{state.ports['kwok']}",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16",
            "--node-ip=10.10.0.1",
        ],
        run_dir,
    )


def start_gcs(state: StackState, address: str = "127.0.0.1") -> None:
    """Start fake-gcs-server on ``state.ports['gcs']`` (also used alone by trainer tests)."""
    run_dir = Path(state.run_dir)
    (run_dir / "gcs-data").mkdir(exist_ok=True)
    port = state.ports["gcs"]
    state.pids["fake-gcs-server"] = _spawn(
        "fake-gcs-server",
        [
            str(build.binary(FAKE_GCS_SERVER, "fake-gcs-server")),
            "-scheme=http",
            f"-host={address}",
            f"-port={port}",
            "-backend=filesystem",
            f"-filesystem-root={run_dir / 'gcs-data'}",
            f"-public-host={address}:{port}",
            f"-external-url=http://{address}:{port}",
            "-log-level=warn",
        ],
        run_dir,
    )
    _wait(
        "fake-gcs-server",
        lambda: _http_ok(state.gcs_endpoint + "/storage/v1/b"),
        30,
        state,
        "fake-gcs-server",
    )


def start_gcs_proxy(state: StackState, keys: pki.Pki, address: str = "127.0.0.1") -> None:
    """Start the TLS proxy through which TensorFlow's gs:// reaches fake-gcs-server."""
    cert, key = gcs_proxy.issue_proxy_certificate(keys)
    port = state.ports["gcs-proxy"]
    state.pids["gcs-proxy"] = _spawn(
        "gcs-proxy",
        [
            sys.executable,
            "-m",
            "bpj_devstack.gcs_proxy",
            "--upstream",
            state.gcs_endpoint,
            "--port",
            str(port),
            "--host",
            address,
            "--cert",
            str(cert),
            "--key",
            str(key),
        ],
        Path(state.run_dir),
    )
    _wait("gcs-proxy", lambda: _http_ok(f"http://{address}:{port}/healthz"), 30, state, "gcs-proxy")


def _wait_cluster_ready(
    state: StackState,
    pools: tuple[kwok_config.NodePool, ...],
    timeout: float,
) -> None:
    _wait(
        "the default service account",
        lambda: bool(
            _try(lambda: _kubectl(state, "get", "serviceaccount", "default", "-o", "name")).strip()
        ),
        timeout,
        state,
        "kube-controller-manager",
    )
    if pools:
        manifests = yaml.safe_dump_all(kwok_config.node_manifests(pools))
        _kubectl(state, "apply", "-f", "-", stdin=manifests)
    expected = {n for pool in pools for n in pool.node_names()}

    def nodes_ready() -> bool:
        out = json.loads(_kubectl(state, "get", "nodes", "-o", "json"))
        ready = {
            item["metadata"]["name"]
            for item in out["items"]
            for cond in item.get("status", {}).get("conditions", [])
            if cond["type"] == "Ready" and cond["status"] == "True"
        }
        return expected <= ready

    _wait("fake nodes to become Ready", nodes_ready, timeout, state, "kwok")


def _try(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except StackError:
        return ""


def down(run_dir: Path | None = None, *, grace: float = 10.0) -> None:
    """Stop every process ``up`` recorded, gracefully first."""
    run_dir = (run_dir or default_run_dir()).resolve()
    state = StackState.load(run_dir)
    if state is None:
        return
    # Reverse start order: clients before the API server, the API server before etcd.
    for name, pid in reversed(list(state.pids.items())):
        _stop(name, pid, grace)
    if state.kubelet_nodes:
        # Containers, mounts, network namespaces, bridges, iptables chains, cgroups.
        host.sweep(fleet.kube_proxy_binary())
    state.path.unlink(missing_ok=True)


def _stop(name: str, pid: int, grace: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        log.warning("%s (pid %d) ignored SIGTERM; killing", name, pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def status(run_dir: Path | None = None) -> dict[str, Any]:
    run_dir = (run_dir or default_run_dir()).resolve()
    state = StackState.load(run_dir)
    if state is None:
        return {"running": False}
    return {
        "running": all(_alive(pid) for pid in state.pids.values()),
        "processes": {name: _alive(pid) for name, pid in state.pids.items()},
        **state.env(),
    }
