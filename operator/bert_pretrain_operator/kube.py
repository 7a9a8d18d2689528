"""The one module that talks to the Kubernetes API.

Everything above it (``controller``) passes plain dicts and pydantic models in and
out. Connections and credentials come from the official ``kubernetes`` client: its
config loaders read every kubeconfig variant (merged paths, files and data, tokens and
tokenFiles, exec plugins such as GKE's gke-gcloud-auth-plugin, ``proxy-url``,
``tls-server-name``) and the in-cluster service account, whose rotated token they read
again each minute; its ``RESTClientObject`` builds the urllib3 pool (CA, client
certificates, proxy, server name) with our retry policy. The generated API classes and
models are not used: building them took most of the operator's CPU time
(docs/benchmarks.md, section 3), so requests go through that pool as plain JSON.
Importing the client costs 18.5 MB over kopf alone (kopf 1.45, kubernetes 37, measured
with VmRSS), and kopf imports it anyway when it is installed; the operator's peak at
1,000 jobs stays under the 150 MB target (135 MB, docs/benchmarks.md). The lighter
libraries kopf can log in through cost less (lightkube 1.0.1 6 MB, pykube-ng 23.6
8 MB) but read less: neither takes kubeconfig's proxy-url, lightkube has no
tls-server-name and refuses exec plugins of client.authentication.k8s.io/v1.

Creation is idempotent (409 Conflict means an earlier reconcile, maybe by a previous
operator process, already created the object), deletion tolerates 404, and the operator
writes only the status fields it owns (never ``spec``, never ``status.progress``, which
belongs to the trainer).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import kopf
import kubernetes.config
import urllib3
from kubernetes.client import Configuration
from kubernetes.client.rest import RESTClientObject, should_bypass_proxies

from bert_pretrain_operator import metrics
from bert_pretrain_operator.render import names
from bert_trainer import contract

log = logging.getLogger(__name__)

Obj = dict[str, Any]

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
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
    """Where ``configuration`` takes the credentials from: said once in the startup log."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return f"kubeconfig {path}"
    if _in_cluster():
        return "in-cluster service account"
    return "kubeconfig ~/.kube/config"


def _in_cluster() -> bool:
    return (SERVICE_ACCOUNT_DIR / "token").exists() and bool(
        os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("KUBERNETES_SERVICE_PORT")
    )


def configuration(kubeconfig: str | None = None) -> Configuration:
    """The API server and credentials: ``kubeconfig`` or $KUBECONFIG, else in-cluster.

    Without either, ``~/.kube/config``. $KUBECONFIG is read on each call, not when the
    client was imported (the local stack and the tests set it per run). Several paths
    separated by ``os.pathsep`` are merged, the first value winning, as kubectl does.
    """
    config = Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if not path and _in_cluster():
            kubernetes.config.load_incluster_config(client_configuration=config)
        else:
            kubernetes.config.load_kube_config(
                config_file=path or str(Path("~/.kube/config").expanduser()),
                client_configuration=config,
                persist_config=False,
            )
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise ConfigError(f"{credentials_source(kubeconfig)}: {exc}") from exc
    return config


def authorization(config: Configuration) -> str | None:
    """The Authorization header's value, refreshed by the loader's hook when it is due.

    kubernetes 36.0.1 moved the bearer token from the ``authorization`` key to
    ``BearerToken``; both are read, as kopf's own client login does. The loader keeps a
    tokenFile's trailing newline, which client-go trims; so is it here.
    """
    value = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
        "authorization"
    )
    return value.strip() if value else None


def connection_info(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """``configuration`` for kopf's watches (its login handler).

    kopf logs in again after a 401, which runs this again: an exec plugin runs anew and a
    token file is read anew. kopf's connections have no ``tls-server-name``; ``Kube``'s do.
    """
    config = configuration(kubeconfig)
    # "Bearer <token>", or "Basic <base64>" for a kubeconfig's username and password.
    scheme, _, token = (authorization(config) or "").partition(" ")
    proxy = config.proxy or None
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        # A proxy from $HTTPS_PROXY is the client's too; kopf knows no $NO_PROXY.
        proxy_url=None if should_bypass_proxies(config.host, config.no_proxy or "") else proxy,
    )


# --------------------------------------------------------------------------- HTTP


class _Http:
    """A connection pool to one API server with current credentials (thread-safe)."""

    def __init__(self, credentials: Callable[[], Configuration], pool_size: int) -> None:
        self._credentials = credentials
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._connect()

    def _connect(self) -> None:
        config = self._credentials()
        config.retries = _retries()
        config.connection_pool_maxsize = self._pool_size
        pool = RESTClientObject(config).pool_manager
        with self._lock:
            self._config, self._pool = config, pool
            self._server = str(config.host).rstrip("/")

    def _headers(self) -> dict[str, str]:
        with self._lock:
            config = self._config
        headers = {"Accept": "application/json", "User-Agent": names.MANAGED_BY}
        value = authorization(config)
        if value:
            headers["Authorization"] = value
        return headers

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes, int]:
        """The answer's status and body, and how many 429 answers came before it."""
        url = self._server + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        extra = {} if body is None else {"Content-Type": content_type}
        response = self._pool.request(
            method, url, body=data, headers={**self._headers(), **extra}, timeout=_TIMEOUT
        )
        throttled = _throttled(response)
        if response.status == 401:
            # Expired credentials (a rotated token, an exec plugin's expired one): load
            # them again, once.
            self._connect()
            response = self._pool.request(
                method, url, body=data, headers={**self._headers(), **extra}, timeout=_TIMEOUT
            )
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
        credentials: Callable[[], Configuration] = configuration,
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
