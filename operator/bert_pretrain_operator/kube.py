"""The one module that talks to the Kubernetes API.

Everything above it (``controller``) passes plain dicts and pydantic models in and
out. Below it is a thin JSON-over-HTTPS client (urllib3), not the official
``kubernetes`` package: that package's model classes cost about 50 MB of memory to
import and most of the operator's CPU time to build (docs/benchmarks.md, section 3),
and the operator needs none of them. Creation is idempotent (409 Conflict means an
earlier reconcile, maybe by a previous operator process, already created the
object), deletion tolerates 404, and the operator writes only the status fields it
owns (never ``spec``, never ``status.progress``, which belongs to the trainer).

``connection_info`` reads the cluster address and credentials once for both users
of the API in this process: kopf's watches (its login handler) and ``Kube``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import kopf
import urllib3
import yaml

from bert_pretrain_operator import metrics
from bert_pretrain_operator.render import names
from bert_trainer import contract

log = logging.getLogger(__name__)

Obj = dict[str, Any]

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Seconds between re-reads of the credentials: a pod's projected service-account
#: token is rotated by the kubelet, and a kubeconfig's tokenFile may be too.
CREDENTIALS_TTL_SECONDS: Final = 60.0
_TIMEOUT: Final = urllib3.Timeout(connect=10.0, read=60.0)
#: Times a request answered 429 Too Many Requests is sent again, each after the answer's
#: Retry-After (API Priority and Fairness sends one). Every verb is retried, creates
#: included: a create that did land the first time answers 409, which means done.
THROTTLED_RETRIES: Final = 8
#: The longest Retry-After waited out, in seconds: a reconcile holds one of a few threads.
RETRY_AFTER_CAP_SECONDS: Final = 10.0
_CUSTOM: Final = f"/apis/{contract.API_GROUP}/{contract.API_VERSION}"
_STATUS: Final = contract.PLURAL + "/status"
#: What ``Kube.create`` makes: kind -> (API path prefix, resource).
_CREATABLE: Final = {
    "Job": ("/apis/batch/v1", "jobs"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
}


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ConfigError(Exception):
    """No usable cluster address or credentials were found."""


# --------------------------------------------------------------------------- credentials


def credentials_source(kubeconfig: str | None = None) -> str:
    """Where ``connection_info`` takes the credentials from: said once in the startup log."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return f"kubeconfig {path}"
    if _in_cluster():
        return "in-cluster service account"
    return "kubeconfig ~/.kube/config"


def _in_cluster() -> bool:
    env = os.environ
    token = SERVICE_ACCOUNT_DIR / "token"
    return token.exists() and bool(
        env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT")
    )


def connection_info(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """The API server and credentials: ``kubeconfig`` or $KUBECONFIG, else in-cluster.

    Without either, ``~/.kube/config``. Kubeconfig users may authenticate with client
    certificates, a token, a tokenFile, basic auth or an exec plugin (such as GKE's
    gke-gcloud-auth-plugin).
    """
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if not path:
        if _in_cluster():
            host, port = (
                os.environ["KUBERNETES_SERVICE_HOST"],
                os.environ["KUBERNETES_SERVICE_PORT"],
            )
            host = f"[{host}]" if ":" in host else host
            ca = SERVICE_ACCOUNT_DIR / "ca.crt"
            namespace = SERVICE_ACCOUNT_DIR / "namespace"
            return kopf.ConnectionInfo(
                server=f"https://{host}:{port}",
                ca_path=str(ca) if ca.exists() else None,
                token=(SERVICE_ACCOUNT_DIR / "token").read_text().strip() or None,
                default_namespace=namespace.read_text().strip() if namespace.exists() else None,
            )
        path = str(Path("~/.kube/config").expanduser())
        if not Path(path).exists():
            raise ConfigError("no $KUBECONFIG, no in-cluster service account, no ~/.kube/config")
    return _from_kubeconfig([p for p in path.split(os.pathsep) if p])


def _from_kubeconfig(paths: list[str]) -> kopf.ConnectionInfo:
    """The current context of one or more merged kubeconfig files (the first value wins)."""
    current: str | None = None
    sections: dict[str, dict[str, tuple[Obj, Path]]] = {"contexts": {}, "clusters": {}, "users": {}}
    singular = {"contexts": "context", "clusters": "cluster", "users": "user"}
    for raw in paths:
        path = Path(raw).expanduser()
        doc = yaml.safe_load(path.read_text()) or {}
        current = current or doc.get("current-context")
        for section, found in sections.items():
            for item in doc.get(section) or []:
                found.setdefault(item["name"], (item.get(singular[section]) or {}, path.parent))
    if not current or current not in sections["contexts"]:
        raise ConfigError(f"kubeconfig {os.pathsep.join(paths)}: no usable current-context")
    context, _ = sections["contexts"][current]
    cluster, cluster_dir = sections["clusters"].get(context.get("cluster", ""), ({}, Path()))
    user, user_dir = sections["users"].get(context.get("user", ""), ({}, Path()))
    if not cluster.get("server"):
        raise ConfigError(f"kubeconfig context {current}: its cluster has no server")

    def file(value: str | None, base: Path) -> str | None:
        return str(base / Path(value).expanduser()) if value else None

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(file(user["tokenFile"], user_dir) or "").read_text().strip()
    if not token:
        token = ((user.get("auth-provider") or {}).get("config") or {}).get("access-token")
    certificate, key = (
        file(user.get("client-certificate"), user_dir),
        file(user.get("client-key"), user_dir),
    )
    certificate_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
    expiration = None
    if user.get("exec"):
        status, expiration = _exec_credential(user["exec"], user_dir)
        token = status.get("token") or token
        if status.get("clientCertificateData"):
            certificate, certificate_data = None, status["clientCertificateData"]
            key, key_data = None, status.get("clientKeyData")
    return kopf.ConnectionInfo(
        server=cluster["server"],
        ca_path=file(cluster.get("certificate-authority"), cluster_dir),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")) or None,
        certificate_path=certificate,
        certificate_data=certificate_data,
        private_key_path=key,
        private_key_data=key_data,
        username=user.get("username"),
        password=user.get("password"),
        token=token or None,
        default_namespace=context.get("namespace"),
        expiration=expiration,
    )


_exec_cache: dict[str, tuple[Obj, dt.datetime | None]] = {}


def _exec_credential(spec: Mapping[str, Any], base: Path) -> tuple[Obj, dt.datetime | None]:
    """Run a client-go credential plugin; its ExecCredential status and expiry (cached)."""
    key = json.dumps(spec, sort_keys=True)
    cached = _exec_cache.get(key)
    now = dt.datetime.now(dt.UTC)
    if cached is not None and (cached[1] is None or cached[1] - now > dt.timedelta(seconds=30)):
        return cached
    command = str(spec["command"])
    if "/" in command and not os.path.isabs(command):
        command = str(base / command)  # as client-go: relative to the kubeconfig
    env = dict(os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []})
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {
            "apiVersion": spec.get("apiVersion", "client.authentication.k8s.io/v1"),
            "kind": "ExecCredential",
            "spec": {"interactive": False},
        }
    )
    done = subprocess.run(
        [command, *(spec.get("args") or [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(f"credential plugin {command} failed: {done.stderr.strip()[-500:]}")
    status: Obj = json.loads(done.stdout).get("status") or {}
    expires = status.get("expirationTimestamp")
    expiration = dt.datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None
    _exec_cache[key] = (status, expiration)
    return status, expiration


# --------------------------------------------------------------------------- HTTP


class _Http:
    """A connection pool to one API server with current credentials (thread-safe)."""

    def __init__(self, credentials: Callable[[], kopf.ConnectionInfo], pool_size: int) -> None:
        self._credentials = credentials
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None
        self._tls: tuple[Any, ...] = ()
        self._server = ""
        self._headers: dict[str, str] = {}
        self._refresh_at = 0.0
        self._refresh(force=True)

    def _refresh(self, *, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() < self._refresh_at:
                return
            info = self._credentials()
            tls = (
                info.server,
                info.ca_path,
                info.ca_data,
                info.insecure,
                info.certificate_path,
                info.certificate_data,
                info.private_key_path,
                info.private_key_data,
            )
            if self._pool is None or tls != self._tls:
                self._pool = urllib3.PoolManager(
                    num_pools=2,
                    maxsize=self._pool_size,
                    ssl_context=info.as_ssl_context() if info.server.startswith("https:") else None,
                    timeout=_TIMEOUT,
                    retries=_retries(),
                )
                self._tls = tls
            self._server = info.server.rstrip("/")
            self._headers = {
                "Accept": "application/json",
                "User-Agent": names.MANAGED_BY,
                **info.as_http_headers(),
            }
            ttl = CREDENTIALS_TTL_SECONDS
            if info.expiration is not None:
                expiration = info.expiration
                if expiration.tzinfo is None:
                    expiration = expiration.replace(tzinfo=dt.UTC)
                left = (expiration - dt.datetime.now(dt.UTC)).total_seconds() - 30
                ttl = max(1.0, min(ttl, left))
            self._refresh_at = time.monotonic() + ttl

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes, int]:
        """The answer's status and body, and how many 429 answers came before it."""
        self._refresh()
        url = self._server + path + (f"?{urlencode(query)}" if query else "")
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        assert self._pool is not None
        response = self._pool.request(method, url, body=data, headers=headers)
        throttled = _throttled(response)
        if response.status == 401:
            # Expired credentials (a rotated token): read them again, once.
            self._refresh(force=True)
            headers.update(self._headers)
            response = self._pool.request(method, url, body=data, headers=headers)
            throttled += _throttled(response)
        return response.status, response.data, throttled


def _retries() -> urllib3.Retry:
    """urllib3's retry policy: connection errors, and 429 for every verb after Retry-After.

    A connect error is retried for any verb (nothing was sent), as are other transport
    errors (3 times each, as before); a read error or a 429 for any verb too
    (``allowed_methods=None``): a POST that did land answers 409 when sent again, a
    status patch names its resourceVersion, a DELETE answers 404. A 429 still
    there after ``THROTTLED_RETRIES`` is returned as it is (an ApiError, so the job's
    reconcile backs off).
    """
    return _Retry(
        total=None,
        connect=3,
        read=3,
        redirect=0,
        status=THROTTLED_RETRIES,
        other=3,
        allowed_methods=None,
        status_forcelist=(429,),
        respect_retry_after_header=True,
        backoff_factor=0.2,
        raise_on_status=False,
    )


class _Retry(urllib3.Retry):
    """urllib3's Retry, with Retry-After capped at ``RETRY_AFTER_CAP_SECONDS``."""

    def get_retry_after(self, response: urllib3.BaseHTTPResponse) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, RETRY_AFTER_CAP_SECONDS)


def _throttled(response: urllib3.BaseHTTPResponse) -> int:
    history = response.retries.history if response.retries is not None else ()
    return sum(1 for attempt in history if attempt.status == 429)


def _error(status: int, data: bytes) -> ApiError:
    try:
        doc = json.loads(data)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    message = str(doc.get("message") or data[:500].decode(errors="replace"))
    return ApiError(status, str(doc.get("reason") or ""), message)


# --------------------------------------------------------------------------- the API


class Kube:
    """Reads and writes BertPretrainJobs and their children."""

    def __init__(
        self,
        credentials: Callable[[], kopf.ConnectionInfo] = connection_info,
        *,
        pool_size: int = 16,
    ) -> None:
        self._http = _Http(credentials, pool_size)
        self.requests = 0
        """API requests made; the scale benchmark reports requests per reconcile."""

    def _count(self, verb: str, resource: str) -> None:
        """Every API call goes through here once: ``bpj_api_requests_total{verb,resource}``."""
        self.requests += 1
        metrics.API_REQUESTS.labels(verb, resource).inc()

    def _call(
        self,
        verb: str,
        resource: str,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One API request; the decoded JSON answer, or ``ApiError``."""
        self._count(verb, resource)
        status, data, throttled = self._http.request(method, path, query, body, content_type)
        if throttled:
            metrics.API_THROTTLED.labels(verb, resource).inc(throttled)
            log.warning(
                "API server throttled a request",
                extra={
                    "verb": verb,
                    "resource": resource,
                    "path": path,
                    "throttled": throttled,
                    "status": status,
                },
            )
        if status >= 400:
            raise _error(status, data)
        out: Obj = json.loads(data) if data else {}
        return out

    @staticmethod
    def _job_path(namespace: str, name: str = "") -> str:
        path = f"{_CUSTOM}/namespaces/{quote(namespace)}/{contract.PLURAL}"
        return f"{path}/{quote(name)}" if name else path

    def read_job(self, namespace: str, name: str) -> Obj | None:
        try:
            return self._call("get", contract.PLURAL, "GET", self._job_path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def job_events(self, namespace: str, jobs: list[tuple[str, str]]) -> list[Obj]:
        """FailedCreate Events of these (name, uid) Jobs: why their pods could not be made.

        Selected by uid: a job deleted and re-created under the same name reuses its
        children's names, and the old Jobs' Events outlive them by an hour.
        """
        found: list[Obj] = []
        for _name, uid in jobs:
            out = self._call(
                "list",
                "events",
                "GET",
                f"/api/v1/namespaces/{quote(namespace)}/events",
                query={"fieldSelector": f"involvedObject.uid={uid},reason=FailedCreate"},
            )
            found += out.get("items") or []
        return found

    def children(self, namespace: str, job: str) -> tuple[list[Obj], list[Obj]]:
        """The child Jobs and their pods, found by the job label."""
        query = {"labelSelector": f"{names.LABEL_JOB}={job}"}
        ns = quote(namespace)
        jobs = self._call("list", "jobs", "GET", f"/apis/batch/v1/namespaces/{ns}/jobs", query)
        pods = self._call("list", "pods", "GET", f"/api/v1/namespaces/{ns}/pods", query)
        return jobs.get("items") or [], pods.get("items") or []

    def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create ``manifest``; False when it already existed (an earlier reconcile made it)."""
        kind = manifest["kind"]
        if kind not in _CREATABLE:
            raise ValueError(f"the operator does not create {kind} objects")
        prefix, resource = _CREATABLE[kind]
        path = f"{prefix}/namespaces/{quote(manifest['metadata']['namespace'])}/{resource}"
        try:
            self._call("create", resource, "POST", path, body=manifest)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def write_config_map(self, manifest: Mapping[str, Any], *, exists: bool) -> None:
        """Write a ConfigMap's current content (spec edits apply at the next stage/attempt).

        ``exists`` is the caller's guess, which picks the first request: a patch (404:
        create it) or a create (409: patch it). Either way the content ends up written.
        """
        meta = manifest["metadata"]
        path = f"/api/v1/namespaces/{quote(meta['namespace'])}/configmaps/{quote(meta['name'])}"
        if not exists and self.create(manifest):
            return
        try:
            self._call(
                "patch",
                "configmaps",
                "PATCH",
                path,
                body={"data": manifest["data"]},
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            if exc.status != 404 or not exists:
                raise
            self.create(manifest)

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            # Background: return now; the garbage collector removes the pods.
            self._call(
                "delete",
                "jobs",
                "DELETE",
                f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}",
                query={"propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    def delete_bpj(self, namespace: str, name: str) -> None:
        try:
            self._call(
                "delete",
                contract.PLURAL,
                "DELETE",
                self._job_path(namespace, name),
                query={"propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> Obj:
        """Merge-patch the status; returns the stored object.

        With ``resource_version``, only if the object is still at that version: a
        decision made on an older copy of the job fails with 409 Conflict instead of
        overwriting what someone else wrote since.
        """
        body: Obj = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._call(
            "patch",
            _STATUS,
            "PATCH",
            self._job_path(namespace, name) + "/status",
            body=body,
            content_type="application/merge-patch+json",
        )

    def event(
        self,
        meta: Mapping[str, Any],
        kind: str,
        reason: str,
        message: str,
        *,
        when: dt.datetime | None = None,
    ) -> None:
        """Record an Event on the BertPretrainJob of ``meta`` (its metadata).

        Failures are logged, never raised.
        """
        now = when or dt.datetime.now(dt.UTC)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": f"{contract.API_GROUP}/{contract.API_VERSION}",
                "kind": contract.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
            "source": {"component": names.MANAGED_BY},
            "reportingComponent": names.MANAGED_BY,
        }
        try:
            self._call(
                "create",
                "events",
                "POST",
                f"/api/v1/namespaces/{quote(meta['namespace'])}/events",
                body=body,
            )
        except (ApiError, urllib3.exceptions.HTTPError) as exc:
            log.warning(
                "could not record event %s on %s/%s: %s",
                reason,
                meta["namespace"],
                meta["name"],
                exc,
            )
