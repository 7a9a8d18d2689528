"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import ssl
import subprocess
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol


class Kubectl(Protocol):
    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]: ...


#: kubectl's words for an API server that cannot answer *yet*: not listening (starting,
#: restarting), dropping connections, overloaded or timing out. A wrong request (NotFound,
#: Forbidden, Invalid, an unknown resource type, a bad certificate) is not in the list.
TRANSIENT_KUBECTL_ERRORS = re.compile(
    "|".join(
        (
            r"connection refused",
            r"The connection to the server \S+ was refused",
            r"connection reset by peer",
            r"broken pipe",
            r"i/o timeout",
            r"TLS handshake timeout",
            r"Unable to connect to the server: (?:unexpected )?EOF",
            r"http2: client connection lost",
            r"net/http: request canceled",
            r"Client\.Timeout exceeded",
            r"context deadline exceeded",
            r"the server is currently unable to handle the request",  # 503
            r"the server was unable to return a response in the time allotted",  # 504
            r"Error from server \((?:ServiceUnavailable|Timeout|TooManyRequests)\)",
            r"etcdserver: (?:request timed out|leader changed|too many requests)",
        )
    )
)


class KubectlError(AssertionError):
    """``kubectl`` exited non-zero with ``check=True`` (the ``kubectl`` fixture raises it).

    An AssertionError, so a failed command fails the test as it always did; ``transient``
    says whether the API server merely could not answer yet (see ``is_transient``).
    """

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed (exit {returncode}):\n{stderr}")
        self.command = tuple(args)
        self.returncode = returncode
        self.stderr = stderr

    @property
    def transient(self) -> bool:
        return TRANSIENT_KUBECTL_ERRORS.search(self.stderr) is not None


#: Errors of a check that polls something not up yet: a port nobody listens on yet (or
#: that a dying process drops), a read that times out, a response cut short, a command
#: that hangs past its own timeout. ``http.client.RemoteDisconnected`` is a
#: ConnectionResetError; ``socket.timeout`` is TimeoutError.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    http.client.IncompleteRead,
    ssl.SSLEOFError,
    subprocess.TimeoutExpired,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a check, means "not yet" rather than "wrong".

    AssertionErrors (other than a transient ``KubectlError``) and programming errors
    (KeyError, TypeError, JSON that does not parse, ...) are not transient: they fail
    at once. urllib's URLError counts when the error it wraps does; an HTTP error only
    for the statuses of a server or proxy that is starting or restarting (502, 503, 504).
    """
    if isinstance(exc, KubectlError):
        return exc.transient
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (502, 503, 504)
    if isinstance(exc, urllib.error.URLError):
        return isinstance(exc.reason, BaseException) and is_transient(exc.reason)
    return isinstance(exc, TRANSIENT_ERRORS)


class WaitTimeout(AssertionError):
    """``wait_for`` gave up: the check never held within the timeout."""


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = 0.25,
    transient: Callable[[BaseException], bool] = is_transient,
) -> None:
    """Poll ``check`` every ``interval`` seconds until it returns true, for ``timeout`` seconds.

    A check that raises an error ``transient`` accepts (by default ``is_transient``: a
    connection refused, a timeout, a kubectl call the API server could not answer) has
    not held yet; any other exception propagates at once. The check runs at least once,
    and once more at the deadline. On timeout, ``WaitTimeout`` names ``what`` (a callable
    is called then, so it can describe the state seen last) and the last exception seen.
    """
    deadline = time.monotonic() + timeout
    checks = 0
    last_error: BaseException | None = None
    last_error_at = 0
    while True:
        checks += 1
        try:
            if check():
                return
        except Exception as exc:
            if not transient(exc):
                raise
            last_error, last_error_at = exc, checks
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(interval, left))  # the polling interval: this helper is the wait
    described = what() if callable(what) else what
    message = f"timed out after {timeout}s waiting for {described} ({checks} checks"
    if last_error is None:
        message += ", each returned False)"
    elif last_error_at == checks:
        message += f"; the last raised {type(last_error).__name__}: {last_error})"
    else:
        message += (
            f"; the last returned False; the last exception seen, at check {last_error_at}, "
            f"was {type(last_error).__name__}: {last_error})"
        )
    raise WaitTimeout(message) from last_error


@dataclass(frozen=True)
class WebhookServer:
    """Where the API server reaches a test's admission webhook (its ``clientConfig``)."""

    url: str
    ca_bundle: str
    """The local stack's CA, base64, which signed the server's certificate."""

    def client_config(self) -> dict[str, str]:
        return {"url": self.url, "caBundle": self.ca_bundle}


@contextlib.contextmanager
def admission_webhook(
    pki_dir: Path, tmp_path: Path, name: str, review: Callable[[dict[str, Any]], dict[str, Any]]
) -> Iterator[WebhookServer]:
    """An HTTPS admission webhook on loopback: ``review`` maps a request to its response.

    ``pki_dir`` is the local stack's PKI (``<run_dir>/pki``), whose CA the API server
    is given in the configuration's ``caBundle``. Each request is served on its own
    thread, so a review may block (to hold a request in admission) without stalling
    the others.
    """
    from bpj_devstack import pki

    keys = pki.Pki(pki_dir)
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    pki.issue_certificate(keys, cert, key, name, ip_addresses=("127.0.0.1",), server=True)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps(
                {
                    **{k: doc[k] for k in ("apiVersion", "kind")},
                    "response": review(doc["request"]),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield WebhookServer(
            f"https://127.0.0.1:{server.server_address[1]}/{name}",
            base64.b64encode(keys.ca_cert.read_bytes()).decode(),
        )
    finally:
        server.shutdown()
        server.server_close()


def kubectl_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def kubectl_for(kubeconfig: str) -> Kubectl:
    """kubectl as the admin of the stack whose kubeconfig this is."""

    def run(
        *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", kubeconfig, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(args, result.returncode, result.stderr)
        return result

    return run


def kubectl_exists(kubectl: Kubectl, kind: str, name: str, namespace: str) -> bool:
    """Whether the object exists; any failure but NotFound raises (``KubectlError``).

    Unlike ``kubectl get``'s exit code, which is also non-zero when the API server
    cannot be reached, so "gone" and "not reachable" cannot be told apart.
    """
    out = kubectl("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name").stdout
    return bool(out.strip())


#: The ``demo_run`` fixture's limit on ``./dev demo`` (seconds). The tests that use the
#: fixture get a longer per-test timeout than pyproject's: the first of them runs the
#: demo in its setup, which pytest-timeout counts, and the fixture's own limit, with
#: its diagnostics, should fire first.
DEMO_RUN_TIMEOUT = 900
DEMO_TEST_TIMEOUT = DEMO_RUN_TIMEOUT + 300


@dataclass(frozen=True)
class DemoRun:
    """One ``./dev demo`` run (the ``demo_run`` fixture): its run directory and output.

    The run directory keeps ``logs/``, ``pods/`` (each pod's log and kubeconfig),
    ``pki/`` and ``objects.json`` (the job and its children, saved before the stack
    stopped).
    """

    run_dir: Path
    returncode: int
    stdout: str
    stderr: str
