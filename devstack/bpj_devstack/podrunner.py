"""A development-only pod runner: a minimal kubelet that runs pods as local processes.

KWOK's fake nodes let the scheduling tests see GKE-shaped TPU node pools, but
their pods never run anything. For the end-to-end demo the trainer must really
run, so this module registers nodes of its own (shaped exactly like the KWOK
TPU nodes, minus KWOK's annotation, plus ``devstack.bpj.dev/runner: local``)
and runs the single container of every pod the scheduler binds to them as a
process on this machine, reporting phase, exit code and termination message
back through the API the way the kubelet does. It is not a container runtime:
there is no image, no isolation and no resource enforcement.

What a pod gets (see ``PodRunner``):

- Volumes are materialised under ``<workdir>/<namespace>/<pod>/volumes/<volume>/``:
  configMap and secret volumes as files (``items`` honoured), emptyDir as an
  empty directory. Projected volumes (the service-account token that admission
  adds to every pod) are skipped; the pod authenticates through ``KUBECONFIG``
  instead. A mounted volume of any other type rejects the pod.
- **Path remapping rule.** The container's file system does not exist here, so
  every path the container would see under a ``volumeMount.mountPath`` is
  rewritten to the local directory that backs it: a command element, an arg, an
  env value or ``workingDir`` that *equals* a mountPath or *starts with*
  ``mountPath + "/"`` gets that prefix replaced (the longest matching mountPath
  wins; ``subPath`` is appended to the local side). An arg of the form
  ``--flag=PATH`` is rewritten the same way after the ``=``. The container's
  ``terminationMessagePath`` is remapped by the same rule to the pod's local
  termination-message file. Paths inside files (e.g. a JSON config) are not
  rewritten.
- The command ``python``, ``python3`` or ``python3.N`` runs as the runner's
  Python (``sys.executable`` by default), so the project's venv stands in for
  the trainer image.
- Environment, lowest precedence first: ``PATH``, ``HOME``, ``LANG``, ``LC_ALL``,
  ``LC_CTYPE`` and ``TZ`` of the runner (nothing else leaks from the host, in
  particular not the admin's ``KUBECONFIG`` or ``KUBERNETES_SERVICE_HOST``);
  ``extra_env`` (what the stack injects, e.g. ``STORAGE_EMULATOR_HOST`` and the
  TensorFlow GCS proxy settings); the container's ``envFrom`` and ``env``
  (``value``, ``fieldRef``, ``configMapKeyRef``, ``secretKeyRef``); then what
  the runner owns: ``KUBECONFIG`` (a per-pod kubeconfig holding a TokenRequest
  token of the pod's service account, bound to the pod, so API calls
  authenticate as ``system:serviceaccount:<ns>:<sa>`` as on a cluster),
  ``BERT_TRAINER_TERMINATION_MESSAGE_PATH``, ``TMPDIR`` when a volume is mounted
  at ``/tmp`` and ``JOB_COMPLETION_INDEX`` when the Job controller's annotation
  is present but the env var is not.
- The process starts in its own session with cwd = the pod directory; stdout and
  stderr go to ``<pod dir>/<container>.log``. Its exit is reported as the
  container's ``terminated`` state; the message is the termination-message file
  (at most 4096 bytes) or, with ``FallbackToLogsOnError`` and an empty file after
  a failure, the log's tail (80 lines / 2048 bytes, as the kubelet does).
- A deleted pod's process group gets SIGTERM, then SIGKILL after the grace
  period (capped at 30 s); the final status is reported and the pod deleted
  with grace period 0, as the kubelet finalises deletion.

Not supported (the operator's pods need none of it): init and sidecar
containers, more than one container (such a pod is failed with a message
saying so), images' entrypoints (a container needs ``command``), ``$(VAR)``
expansion, ``activeDeadlineSeconds``, probes, ports and DNS between pods, and
restart policies other than ``Never`` (containers are never restarted).

Run embedded (``PodRunner(...).start()`` ... ``stop()``) or as a process:
``python -m bpj_devstack.podrunner --kubeconfig K --pool NAME:ACCELERATOR:TOPOLOGY:NODES:CHIPS
--workdir DIR --env K=V ...``; ``podrunner_argv`` builds that command line.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from bert_trainer import contract
from bpj_devstack import kwok_config
from bpj_devstack.kwok_config import NodePool

log = logging.getLogger(__name__)

RUNNER_LABEL: Final = kwok_config.ANNOTATION_PREFIX + "runner"
"""Label on the runner's nodes (value ``local``); pods select it to run for real."""
RUNNER_LABEL_VALUE: Final = "local"
NODE_LEASE_NAMESPACE: Final = "kube-node-lease"
JOB_COMPLETION_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"
JOB_COMPLETION_INDEX_ENV: Final = "JOB_COMPLETION_INDEX"
LOCAL_IP: Final = "127.0.0.1"
"""hostIP and podIP of every pod: the processes share this machine's loopback."""
DEFAULT_TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"

_PYTHON_COMMAND = re.compile(r"python(3(\.\d+)?)?")
_LABEL_OR_ANNOTATION_REF = re.compile(r"metadata\.(labels|annotations)\['([^']*)'\]")
_INHERITED_ENV: Final = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ")

# Every API request is bounded, so a wedged API server cannot hang a thread forever.
_API_TIMEOUT: Final = 10.0
# The kubelet renews its Lease every 10 s (a quarter of the 40 s lease) and the node
# lifecycle controller marks a node NotReady after missing ~40 s of renewals.
_HEARTBEAT_SECONDS: Final = 10.0
_LEASE_DURATION_SECONDS: Final = 40
# The server ends each watch after this long; the runner resumes from the last
# resourceVersion, so a silently dead connection is noticed within this bound too.
_WATCH_SECONDS: Final = 60
_WATCH_BACKOFF_SECONDS: Final = 1.0
_POLL_SECONDS: Final = 0.2
_MAX_GRACE_SECONDS: Final = 30.0
_KILL_WAIT_SECONDS: Final = 5.0
# A pod waits this long for a ConfigMap or Secret it needs (the kubelet waits forever,
# but a dev stack should fail loudly and move on).
_OBJECT_WAIT_SECONDS: Final = 60.0
_STATUS_ATTEMPTS: Final = 3
# kube-apiserver gives a pod-bound token requested with exactly 3607 s (the kubelet's
# magic value) a one-year lifetime when --service-account-extend-token-expiration is on
# (the default), so a training run longer than an hour keeps authenticating.
_TOKEN_EXPIRATION_SECONDS: Final = 3607
_MAX_MESSAGE_BYTES: Final = 4096
_FALLBACK_LOG_LINES: Final = 80
_FALLBACK_LOG_BYTES: Final = 2048


class PodRejected(Exception):
    """This runner cannot run the pod as specified; the message becomes the pod's status."""


# --------------------------------------------------------------------------- pure helpers


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    """A MicroTime, the format of Lease.spec.renewTime."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def pool_spec(pool: NodePool) -> str:
    """``NAME:ACCELERATOR:TOPOLOGY:NODES:CHIPS[:spot]``; a CPU pool leaves the middle empty."""
    spec = ":".join(
        [
            pool.name,
            pool.accelerator or "",
            pool.topology or "",
            str(pool.nodes),
            str(pool.chips_per_node),
        ]
    )
    return spec + (":spot" if pool.spot else "")


def parse_pool(spec: str) -> NodePool:
    """The inverse of ``pool_spec``."""
    parts = spec.split(":")
    if len(parts) not in (5, 6) or (len(parts) == 6 and parts[5] != "spot"):
        raise ValueError(f"pool {spec!r}: expected NAME:ACCELERATOR:TOPOLOGY:NODES:CHIPS[:spot]")
    name, accelerator, topology, nodes, chips = parts[:5]
    if not name or bool(accelerator) != bool(topology):
        raise ValueError(f"pool {spec!r}: needs a name, and a topology exactly with an accelerator")
    return NodePool(
        name,
        nodes=int(nodes),
        accelerator=accelerator or None,
        topology=topology or None,
        chips_per_node=int(chips),
        spot=len(parts) == 6,
    )


@dataclass(frozen=True)
class Mount:
    """A path the container would see and the local path that backs it."""

    container_path: str
    local_path: Path


def remap(value: str, mounts: Sequence[Mount]) -> str:
    """Applies the module's path remapping rule to one command element, arg or env value."""
    for mount in sorted(mounts, key=lambda m: len(m.container_path), reverse=True):
        prefix = mount.container_path.rstrip("/")
        if not prefix:
            continue  # a mount at "/" would swallow every absolute path
        if value == prefix or value.startswith(prefix + "/"):
            return str(mount.local_path) + value[len(prefix) :]
    flag, sep, rest = value.partition("=")
    if sep and flag.startswith("-") and rest:
        remapped = remap(rest, mounts)
        if remapped != rest:
            return f"{flag}={remapped}"
    return value


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """The downward-API value of ``field_path`` for ``pod`` as it runs here."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    matched = _LABEL_OR_ANNOTATION_REF.fullmatch(field_path)
    if matched:
        return str((meta.get(matched[1]) or {}).get(matched[2], ""))
    simple: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": LOCAL_IP,
        "status.hostIPs": LOCAL_IP,
        "status.podIP": LOCAL_IP,
        "status.podIPs": LOCAL_IP,
    }
    if field_path not in simple:
        raise PodRejected(f"fieldRef {field_path!r} is not supported by the local pod runner")
    return simple[field_path]


#: (kind "configMap" or "secret", name, optional) -> the object's decoded data ({} when an
#: optional object is missing); raises PodRejected when a required one never appears.
DataLookup = Callable[[str, str, bool], Mapping[str, str]]


def resolve_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookup: DataLookup
) -> dict[str, str]:
    """The container's ``envFrom`` and ``env``, resolved in Kubernetes' order (later wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind in ("configMap", "secret"):
            ref = source.get(kind + "Ref")
            if ref is not None:
                data = lookup(kind, ref["name"], bool(ref.get("optional")))
                env.update({prefix + key: value for key, value in data.items()})
    for var in container.get("env", []):
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = var.get("value", "")
        elif "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "configMap" if "configMapKeyRef" in source else "secret"
            ref = source[kind + "KeyRef"]
            optional = bool(ref.get("optional"))
            data = lookup(kind, ref["name"], optional)
            if ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not optional:
                raise PodRejected(f"env {name}: {kind} {ref['name']} has no key {ref['key']!r}")
        else:
            raise PodRejected(
                f"env {name}: only value, fieldRef, configMapKeyRef and secretKeyRef are "
                "supported by the local pod runner"
            )
    return env


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - _FALLBACK_LOG_BYTES))
            data = f.read(_FALLBACK_LOG_BYTES)
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    return "".join(lines[-_FALLBACK_LOG_LINES:])


def termination_message(message_file: Path, log_file: Path, policy: str, exit_code: int) -> str:
    """What the kubelet would put in ``terminated.message``."""
    try:
        with message_file.open("rb") as f:
            message = f.read(_MAX_MESSAGE_BYTES).decode("utf-8", errors="replace")
    except OSError:
        message = ""
    if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
        return _tail(log_file)
    return message


def exit_code_of(returncode: int) -> int:
    """Popen's ``-N`` for a signal becomes ``128 + N``, as container runtimes report it."""
    return 128 - returncode if returncode < 0 else returncode


def _pod_status(
    phase: str,
    container: Mapping[str, Any],
    *,
    state: dict[str, Any],
    started_at: str,
    pid: int | None,
    now: str,
    not_ready_reason: str | None = None,
) -> dict[str, Any]:
    """A pod status with the one container in ``state``; ready while it runs."""
    ready = not_ready_reason is None
    conditions: list[dict[str, Any]] = []
    for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
        condition: dict[str, Any] = {"type": kind, "status": "True", "lastTransitionTime": now}
        if kind in ("ContainersReady", "Ready") and not ready:
            condition.update(status="False", reason=not_ready_reason)
        conditions.append(condition)
    container_status: dict[str, Any] = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": state,
    }
    if pid is not None:
        container_status["containerID"] = f"local://{pid}"
    return {
        "phase": phase,
        "conditions": conditions,
        "hostIP": LOCAL_IP,
        "hostIPs": [{"ip": LOCAL_IP}],
        "podIP": LOCAL_IP,
        "podIPs": [{"ip": LOCAL_IP}],
        "startTime": started_at,
        "containerStatuses": [container_status],
    }


def running_status(container: Mapping[str, Any], started_at: str, pid: int) -> dict[str, Any]:
    state = {"running": {"startedAt": started_at}}
    return _pod_status(
        "Running", container, state=state, started_at=started_at, pid=pid, now=started_at
    )


def terminated_status(
    container: Mapping[str, Any],
    *,
    exit_code: int,
    message: str,
    started_at: str,
    pid: int | None,
    reason: str | None = None,
    node_shutdown: bool = False,
) -> dict[str, Any]:
    """The final status once the process is gone.

    ``node_shutdown`` marks a process the runner killed because it stopped: the pod
    fails with the ``DisruptionTarget`` condition the kubelet sets on graceful node
    shutdown, so Jobs' podFailurePolicy and the operator see infrastructure loss
    rather than a failing program.
    """
    now = _now()
    succeeded = exit_code == 0 and not node_shutdown
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "message": message,
        "startedAt": started_at,
        "finishedAt": now,
    }
    if pid is not None:
        terminated["containerID"] = f"local://{pid}"
    status = _pod_status(
        "Succeeded" if succeeded else "Failed",
        container,
        # A strategic-merge null clears the running state reported before.
        state={"running": None, "terminated": terminated},
        started_at=started_at,
        pid=pid,
        now=now,
        not_ready_reason="PodCompleted" if succeeded else "PodFailed",
    )
    if node_shutdown:
        text = "Pod was terminated in response to imminent node shutdown."
        status["conditions"].append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "TerminationByKubelet",
                "message": text,
                "lastTransitionTime": now,
            }
        )
        status.update(reason="Terminated", message=text)
    return status


def rejected_status(message: str) -> dict[str, Any]:
    """A pod the runner refuses, shaped like a kubelet admission failure."""
    now = _now()
    return {
        "phase": "Failed",
        "reason": "UnsupportedByLocalRunner",
        "message": message,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
        ],
    }


def pod_kubeconfig(server: str, ca_path: str | None, token: str | None) -> dict[str, Any]:
    """A kubeconfig for one pod; without a token it is anonymous, never the runner's admin."""
    cluster: dict[str, Any] = {"server": server}
    if ca_path:
        cluster["certificate-authority"] = ca_path
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "pod", "user": {"token": token} if token else {}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "pod"}}],
        "current-context": "local",
    }


def _grace_seconds(pod: Mapping[str, Any]) -> float:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", 30)
    return float(min(max(grace, 0), _MAX_GRACE_SECONDS))


# --------------------------------------------------------------------------- the runner


@dataclass
class _Launch:
    """Everything needed to start one container as a process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    message_path: Path


class _PodWorker:
    """Runs one pod: prepares it, supervises its process and reports its status.

    One thread per pod; the runner's watch thread only flips the flags below.
    """

    def __init__(self, runner: PodRunner, pod: Mapping[str, Any]) -> None:
        self._runner = runner
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._grace = _MAX_GRACE_SECONDS
        self._deleting = False  # the pod has a deletionTimestamp: finalise the deletion
        self._gone = False  # the pod is gone from the API: nothing left to report
        self._shutdown = False  # the runner stops: report a node shutdown
        self.finished = False  # guarded by the runner's lock; see PodRunner._on_pod_deleted
        self.thread = threading.Thread(
            target=self._run, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    def request_stop(
        self, grace: float, *, deleting: bool = False, gone: bool = False, shutdown: bool = False
    ) -> None:
        with self._lock:
            self._grace = min(self._grace, grace)
            self._deleting |= deleting
            self._gone |= gone
            self._shutdown |= shutdown
        self._wake.set()

    @property
    def gone(self) -> bool:
        with self._lock:
            return self._gone

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _run(self) -> None:
        try:
            self._run_pod()
        finally:
            self._runner._worker_finished(self)

    def _run_pod(self) -> None:
        container = self.pod["spec"]["containers"][0]
        try:
            launch = self._runner._prepare(self.pod, self._wake)
        except PodRejected as exc:
            log.warning("pod %s rejected: %s", self.label, exc)
            if not self._wake.is_set():
                self._report(rejected_status(str(exc)))
            return
        except Exception as exc:  # a bug or an API failure: fail the pod visibly, not silently
            log.exception("preparing pod %s failed", self.label)
            self._report(rejected_status(f"the local pod runner could not prepare the pod: {exc}"))
            return
        if self._wake.is_set():  # deleted or stopped while preparing: never start
            return
        started_at = _now()
        try:
            with launch.log_path.open("ab") as out:
                proc = subprocess.Popen(
                    launch.argv,
                    env=launch.env,
                    cwd=launch.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # Its own process group, so SIGTERM reaches the program and its children.
                    start_new_session=True,
                )
        except OSError as exc:
            log.warning("pod %s: cannot start %s: %s", self.label, launch.argv[0], exc)
            self._report(
                terminated_status(
                    container,
                    exit_code=128,
                    reason="StartError",
                    message=str(exc),
                    started_at=started_at,
                    pid=None,
                )
            )
            return
        log.info("pod %s: started pid %d: %s", self.label, proc.pid, " ".join(launch.argv))
        self._report(running_status(container, started_at, proc.pid))
        exit_code = self._supervise(proc)
        log.info("pod %s: pid %d exited with %d", self.label, proc.pid, exit_code)
        policy = container.get("terminationMessagePolicy", "File")
        message = termination_message(launch.message_path, launch.log_path, policy, exit_code)
        with self._lock:
            shutdown = self._shutdown and not self._deleting
        self._report(
            terminated_status(
                container,
                exit_code=exit_code,
                message=message,
                started_at=started_at,
                pid=proc.pid,
                node_shutdown=shutdown,
            )
        )

    def _supervise(self, proc: subprocess.Popen[bytes]) -> int:
        """Waits for the process, or stops it when asked; returns the container exit code."""
        # Bounded by the process's lifetime or a stop request, whichever comes first.
        while proc.poll() is None and not self._wake.wait(_POLL_SECONDS):
            pass
        if proc.returncode is None:
            with self._lock:
                grace = self._grace
            log.info("pod %s: SIGTERM to pid %d, grace %.0fs", self.label, proc.pid, grace)
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.info("pod %s: SIGKILL to pid %d", self.label, proc.pid)
                _signal_group(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(timeout=_KILL_WAIT_SECONDS)
                except subprocess.TimeoutExpired:
                    log.error("pod %s: pid %d survived SIGKILL", self.label, proc.pid)
                    return 137
        # A container's leftover children die with it; here they share its process group.
        _signal_group(proc.pid, signal.SIGKILL)
        assert proc.returncode is not None
        return exit_code_of(proc.returncode)

    def _report(self, status: dict[str, Any]) -> None:
        with self._lock:
            if self._gone:
                return
            # A stopping runner must not linger on retries: its own stopper's grace is short.
            attempts = 1 if self._shutdown else _STATUS_ATTEMPTS
        self._runner._patch_pod_status(self.namespace, self.name, self.uid, status, attempts)

    def must_finalise_deletion(self) -> bool:
        """Whether the pod awaits its deletion being finalised (asked once it finished)."""
        with self._lock:
            return self._deleting and not self._gone


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # ProcessLookupError: the group is gone; PermissionError: only a zombie leader is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class PodRunner:
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

    # ------------------------------------------------------------------ nodes

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

    # ------------------------------------------------------------------ preparing a pod

    def _prepare(self, pod: Mapping[str, Any], cancelled: threading.Event) -> _Launch:
        """Materialises the pod's directory and computes argv, env and cwd of its container."""
        meta, spec = pod["metadata"], pod["spec"]
        namespace, name = meta["namespace"], meta["name"]
        containers = spec.get("containers", [])
        others = len(spec.get("initContainers", [])) + len(spec.get("ephemeralContainers", []))
        if len(containers) != 1 or others:
            raise PodRejected(
                "the local pod runner runs pods with exactly one container and no init or "
                f"ephemeral containers; this pod has {len(containers)} containers and "
                f"{others} others"
            )
        container = containers[0]
        command = [*container.get("command", [])]
        if not command:
            raise PodRejected(
                f"container {container['name']} has no command; the local pod runner cannot "
                "read an image's entrypoint"
            )

        def lookup(kind: str, object_name: str, optional: bool) -> Mapping[str, str]:
            return self._object_data(kind, namespace, object_name, optional, cancelled)

        pod_dir = self._workdir / namespace / name
        # Pod names are unique among live pods, so anything here is a predecessor's.
        shutil.rmtree(pod_dir, ignore_errors=True)
        pod_dir.mkdir(parents=True)
        mounts = self._volumes(spec, container, pod_dir / "volumes", lookup)
        message_path = pod_dir / f"{container['name']}.termination-log"
        message_path.touch()
        container_path = container.get("terminationMessagePath", DEFAULT_TERMINATION_MESSAGE_PATH)
        path_rules = [*mounts, Mount(container_path, message_path)]

        argv = [remap(arg, path_rules) for arg in [*command, *container.get("args", [])]]
        if _PYTHON_COMMAND.fullmatch(argv[0]):
            argv[0] = self._python
        cwd = pod_dir
        if container.get("workingDir"):
            local = Path(remap(container["workingDir"], path_rules))
            cwd = local if local.is_dir() else pod_dir

        pod_env = {
            key: remap(value, path_rules)
            for key, value in resolve_env(pod, container, lookup).items()
        }
        env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
        env.update(self._extra_env)
        for mount in mounts:
            if mount.container_path.rstrip("/") == "/tmp":
                env["TMPDIR"] = str(mount.local_path)  # the pod's own env may still set it
        env.update(pod_env)
        index = (meta.get("annotations") or {}).get(JOB_COMPLETION_INDEX_ANNOTATION)
        if index is not None and JOB_COMPLETION_INDEX_ENV not in env:
            env[JOB_COMPLETION_INDEX_ENV] = index
        kubeconfig = pod_dir / "kubeconfig"
        kubeconfig.touch(mode=0o600)
        kubeconfig.write_text(
            yaml.safe_dump(pod_kubeconfig(self._apiserver_url, self._ca_path, self._pod_token(pod)))
        )
        env["KUBECONFIG"] = str(kubeconfig)
        env[contract.ENV_TERMINATION_MESSAGE_PATH] = str(message_path)
        return _Launch(
            argv=argv,
            env=env,
            cwd=cwd,
            log_path=pod_dir / f"{container['name']}.log",
            message_path=message_path,
        )

    def _volumes(
        self, spec: Mapping[str, Any], container: Mapping[str, Any], root: Path, lookup: DataLookup
    ) -> list[Mount]:
        mounted = {m["name"] for m in container.get("volumeMounts", [])}
        local: dict[str, Path] = {}
        for volume in spec.get("volumes", []):
            name = volume["name"]
            target = root / name
            if "configMap" in volume or "secret" in volume:
                kind = "configMap" if "configMap" in volume else "secret"
                source = volume[kind]
                object_name = source["name"] if kind == "configMap" else source["secretName"]
                data = lookup(kind, object_name, bool(source.get("optional")))
                _write_items(target, data, source.get("items"), f"{kind} {object_name}")
            elif "emptyDir" in volume:
                target.mkdir(parents=True)
            elif "projected" in volume:
                continue  # the service-account token: the pod's KUBECONFIG carries one instead
            elif name in mounted:
                kinds = sorted(set(volume) - {"name"})
                raise PodRejected(
                    f"volume {name} ({', '.join(kinds)}) is not supported by the local pod runner"
                )
            else:
                continue
            local[name] = target
        mounts = []
        for mount in container.get("volumeMounts", []):
            if mount["name"] in local:
                path = local[mount["name"]] / mount.get("subPath", "")
                mounts.append(Mount(mount["mountPath"], path))
        return mounts

    def _object_data(
        self, kind: str, namespace: str, name: str, optional: bool, cancelled: threading.Event
    ) -> Mapping[str, str]:
        read = (
            self._core.read_namespaced_config_map
            if kind == "configMap"
            else self._core.read_namespaced_secret
        )
        deadline = time.monotonic() + _OBJECT_WAIT_SECONDS
        while True:
            try:
                obj = read(name, namespace, _request_timeout=_API_TIMEOUT)
                break
            except ApiException as exc:
                if exc.status != 404:
                    raise
            if optional:
                return {}
            if time.monotonic() > deadline or cancelled.wait(1.0):
                raise PodRejected(f"{kind} {namespace}/{name} not found")
        if kind == "secret":
            return {
                k: base64.b64decode(v).decode("utf-8", errors="replace")
                for k, v in (obj.data or {}).items()
            }
        data: dict[str, str] = dict(obj.data or {})
        for key, value in (obj.binary_data or {}).items():
            data[key] = base64.b64decode(value).decode("utf-8", errors="replace")
        return data

    def _pod_token(self, pod: Mapping[str, Any]) -> str | None:
        """A TokenRequest token of the pod's service account, bound to the pod."""
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return None
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            # No audiences: the API server fills in its own, as for the kubelet's token.
            "spec": {
                "audiences": [],
                "expirationSeconds": _TOKEN_EXPIRATION_SECONDS,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        response = self._core.create_namespaced_service_account_token(
            spec.get("serviceAccountName") or "default",
            meta["namespace"],
            request,
            _preload_content=False,
            _request_timeout=_API_TIMEOUT,
        )
        token: str = json.loads(response.data)["status"]["token"]
        return token


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def _write_items(
    target: Path, data: Mapping[str, str], items: Sequence[Mapping[str, Any]] | None, what: str
) -> None:
    target.mkdir(parents=True)
    pairs = (
        [(key, key) for key in data]
        if items is None
        else [(item["key"], item["path"]) for item in items]
    )
    for key, relative in pairs:
        if key not in data:
            raise PodRejected(f"{what} has no key {key!r}")
        path = (target / relative).resolve()
        if not path.is_relative_to(target.resolve()):
            raise PodRejected(f"{what}: item path {relative!r} leaves the volume")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[key])


# --------------------------------------------------------------------------- command line


def podrunner_argv(
    kubeconfig: Path | str,
    pools: Sequence[NodePool],
    workdir: Path | str,
    *,
    extra_env: Mapping[str, str] | None = None,
    python: str | None = None,
    apiserver_url: str | None = None,
    ca_path: Path | str | None = None,
    log_level: str = "INFO",
) -> list[str]:
    """The command line that runs a ``PodRunner`` in the foreground (for the stack's spawner)."""
    argv = [
        sys.executable,
        "-m",
        "bpj_devstack.podrunner",
        "--kubeconfig",
        str(kubeconfig),
        "--workdir",
        str(workdir),
        "--log-level",
        log_level,
    ]
    for pool in pools:
        argv += ["--pool", pool_spec(pool)]
    for key, value in sorted((extra_env or {}).items()):
        argv += ["--env", f"{key}={value}"]
    if python:
        argv += ["--python", python]
    if apiserver_url:
        argv += ["--apiserver-url", apiserver_url]
    if ca_path:
        argv += ["--ca", str(ca_path)]
    return argv


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key, value


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bpj_devstack.podrunner",
        description="Run pods bound to local nodes as processes (development only).",
    )
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument(
        "--pool",
        required=True,
        action="append",
        type=parse_pool,
        help="NAME:ACCELERATOR:TOPOLOGY:NODES:CHIPS[:spot] (CPU: NAME:::NODES:0)",
    )
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument(
        "--env",
        action="append",
        type=_env_pair,
        default=[],
        help="K=V added to every container's environment",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for containers whose command is python/python3",
    )
    parser.add_argument("--apiserver-url", default=None)
    parser.add_argument("--ca", type=Path, default=None)
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL when the runner stops",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner = PodRunner(
        args.kubeconfig,
        args.pool,
        args.workdir,
        apiserver_url=args.apiserver_url,
        ca_path=args.ca,
        extra_env=dict(args.env),
        python=args.python,
        stop_grace=args.stop_grace,
    ).start()
    try:
        # Bounded waits so the signal handler's flag is seen promptly.
        while not stop.wait(1.0):
            pass
    finally:
        runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
