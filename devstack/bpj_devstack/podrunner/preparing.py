"""Preparing a pod to run: its directory, volumes, service-account token and launch.

``PodPreparer`` is the part of ``PodRunner`` that materialises the pod's volumes
under ``<workdir>/<namespace>/<pod>/volumes/``, writes the pod's kubeconfig with a
TokenRequest token and computes the container's argv, env and cwd (a ``_Launch``)
by the path remapping rule (``paths``) and env resolution (``env``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from kubernetes.client.rest import ApiException

from bert_trainer import contract
from bpj_devstack.podrunner.constants import (
    _API_TIMEOUT,
    _OBJECT_WAIT_SECONDS,
    _TOKEN_EXPIRATION_SECONDS,
    DEFAULT_TERMINATION_MESSAGE_PATH,
    JOB_COMPLETION_INDEX_ANNOTATION,
    JOB_COMPLETION_INDEX_ENV,
)
from bpj_devstack.podrunner.env import DataLookup, resolve_env
from bpj_devstack.podrunner.errors import PodRejected
from bpj_devstack.podrunner.paths import Mount, remap

_PYTHON_COMMAND = re.compile(r"python(3(\.\d+)?)?")
_INHERITED_ENV: Final = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


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


@dataclass
class _Launch:
    """Everything needed to start one container as a process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    message_path: Path


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


class PodPreparer:
    """``PodRunner``'s preparation side: turns a bound pod into a ``_Launch``.

    A mixin; ``PodRunner.__init__`` sets the attributes declared here.
    """

    _core: Any
    _apiserver_url: str
    _ca_path: str | None
    _workdir: Path
    _extra_env: dict[str, str]
    _python: str

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
