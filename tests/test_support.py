"""``tests.support.wait_for``: transient errors are "not yet", everything else fails at once."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from tests.support import KubectlError, WaitTimeout, is_transient, wait_for

FAST = 0.001  # poll interval: these checks are instant

REFUSED = (
    "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host "
    "or port?"
)
NOT_FOUND = 'Error from server (NotFound): jobs.batch "quickstart-prepare" not found'


class Script:
    """A check that plays its outcomes in order: a bool is returned, an exception raised."""

    def __init__(self, *outcomes: bool | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def test_returns_as_soon_as_the_check_holds() -> None:
    check = Script(False, False, True)
    wait_for(check, 5, "the third check", interval=FAST)
    assert check.calls == 3


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        http.client.RemoteDisconnected("Remote end closed connection without response"),
        TimeoutError("timed out"),
        urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
        urllib.error.HTTPError("http://x/healthz", 503, "Service Unavailable", {}, None),  # type: ignore[arg-type]
        subprocess.TimeoutExpired(["kubectl", "get", "bpj"], 60),
        KubectlError(["get", "bpj", "quickstart"], 1, REFUSED),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_transient_error_is_not_yet(error: BaseException) -> None:
    check = Script(error, error, True)
    wait_for(check, 5, "a server that starts", interval=FAST)
    assert check.calls == 3


@pytest.mark.parametrize(
    "error",
    [
        AssertionError("the job has two training Jobs"),
        KubectlError(["get", "job", "quickstart-prepare"], 1, NOT_FOUND),
        KeyError("status"),
        TypeError("'NoneType' object is not subscriptable"),
        json.JSONDecodeError("Expecting value", "", 0),
        FileNotFoundError(2, "No such file or directory", "kubectl"),
        PermissionError(13, "Permission denied"),
        urllib.error.HTTPError("http://x/metrics", 404, "Not Found", {}, None),  # type: ignore[arg-type]
        urllib.error.URLError("unknown url type: htp"),
        urllib.error.URLError(ssl.SSLCertVerificationError("certificate verify failed")),
    ],
    ids=lambda e: f"{type(e).__name__}-{str(e)[:20]}",
)
def test_any_other_error_propagates_at_once(error: BaseException) -> None:
    check = Script(error, True)
    with pytest.raises(type(error)) as raised:
        wait_for(check, 60, "something", interval=FAST)
    assert raised.value is error
    assert check.calls == 1


def test_a_kubectl_failure_is_an_assertion_error_that_knows_if_it_is_transient() -> None:
    refused = KubectlError(["get", "nodes"], 1, REFUSED)
    missing = KubectlError(["get", "job", "x"], 1, NOT_FOUND)
    assert isinstance(refused, AssertionError) and isinstance(missing, AssertionError)
    assert (refused.transient, missing.transient) == (True, False)
    assert "kubectl get nodes failed (exit 1)" in str(refused) and REFUSED in str(refused)
    for stderr in (
        'Get "https://127.0.0.1:6443/api": dial tcp 127.0.0.1:6443: connect: connection refused',
        "Unable to connect to the server: EOF",
        "Unable to connect to the server: net/http: TLS handshake timeout",
        "Error from server (ServiceUnavailable): the server is currently unable to handle the "
        "request",
        "Error from server: etcdserver: request timed out",
    ):
        assert KubectlError(["get", "bpj"], 1, stderr).transient, stderr
    for stderr in (
        'Error from server (Forbidden): jobs.batch is forbidden: User "alice" cannot list',
        'error: the server doesn\'t have a resource type "bpjs"',
        "Unable to connect to the server: x509: certificate signed by unknown authority",
        'The BertPretrainJob "x" is invalid: spec.tpu.topology: Invalid value',
    ):
        assert not KubectlError(["get", "bpj"], 1, stderr).transient, stderr


def test_the_timeout_names_what_and_the_last_exception() -> None:
    error = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(WaitTimeout) as raised:
        wait_for(Script(error), 0.05, "the metrics port", interval=FAST)
    message = str(raised.value)
    assert message.startswith("timed out after 0.05s waiting for the metrics port (")
    assert "the last raised ConnectionRefusedError: [Errno 111] Connection refused" in message
    assert raised.value.__cause__ is error
    assert isinstance(raised.value, AssertionError)  # callers that catch it keep working


def test_the_timeout_reports_an_earlier_exception_when_the_last_check_returned_false() -> None:
    error = TimeoutError("read timed out")
    with pytest.raises(WaitTimeout) as raised:
        wait_for(Script(False, error, False), 0.05, "the job", interval=FAST)
    message = str(raised.value)
    assert "the last returned False; the last exception seen, at check 2, was TimeoutError" in (
        message
    )
    assert raised.value.__cause__ is error


def test_the_timeout_without_exceptions_says_so() -> None:
    with pytest.raises(WaitTimeout, match=r"waiting for nothing \(\d+ checks, each returned False"):
        wait_for(Script(False), 0.02, "nothing", interval=FAST)


def test_what_may_be_a_callable_describing_the_state_at_the_timeout() -> None:
    seen: list[str] = []

    def check() -> bool:
        seen.append(f"phase{len(seen)}")
        return False

    with pytest.raises(WaitTimeout) as raised:
        wait_for(check, 0.05, lambda: f"Succeeded (seen: {seen[-1]})", interval=FAST)
    assert f"waiting for Succeeded (seen: phase{len(seen) - 1})" in str(raised.value)
    assert len(seen) > 1


def test_the_check_runs_once_even_with_no_time_and_once_more_at_the_deadline() -> None:
    once = Script(True)
    wait_for(once, 0, "an immediate answer", interval=FAST)
    assert once.calls == 1

    # The interval is far longer than the timeout: the helper sleeps only until the
    # deadline, then checks a last time.
    started = time.monotonic()
    deadline = started + 0.05
    wait_for(lambda: time.monotonic() >= deadline, 0.05, "the deadline", interval=30)
    assert time.monotonic() - started < 10


def test_the_transient_predicate_is_a_parameter() -> None:
    flaky = Script(ValueError("not parsed yet"), True)
    wait_for(flaky, 5, "a value", interval=FAST, transient=lambda e: isinstance(e, ValueError))
    assert flaky.calls == 2

    strict = Script(ConnectionRefusedError(111, "Connection refused"), True)
    with pytest.raises(ConnectionRefusedError):
        wait_for(strict, 5, "a server", interval=FAST, transient=lambda e: False)
    assert strict.calls == 1


def test_keyboard_interrupt_and_pytest_outcomes_are_never_swallowed() -> None:
    # Not Exceptions: even a predicate that accepts everything never sees them.
    with pytest.raises(KeyboardInterrupt):
        wait_for(Script(KeyboardInterrupt()), 5, "x", interval=FAST, transient=lambda e: True)
    failed = pytest.fail.Exception("pytest-timeout's or pytest.fail's outcome")
    with pytest.raises(pytest.fail.Exception):
        wait_for(Script(failed), 5, "x", interval=FAST, transient=lambda e: True)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (BrokenPipeError(32, "Broken pipe"), True),
        (http.client.IncompleteRead(b"partial"), True),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True),
        (urllib.error.HTTPError("http://x", 502, "Bad Gateway", {}, None), True),  # type: ignore[arg-type]
        (urllib.error.HTTPError("http://x", 500, "Internal Server Error", {}, None), False),  # type: ignore[arg-type]
        (urllib.error.URLError(TimeoutError("timed out")), True),
        (ssl.SSLCertVerificationError("certificate verify failed"), False),
        (socket.gaierror(-2, "Name or service not known"), False),
        (OSError(22, "Invalid argument"), False),
        (RuntimeError("boom"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_is_transient(error: BaseException, expected: bool) -> None:
    assert is_transient(error) is expected


@pytest.fixture
def late_server() -> Iterator[Callable[[], None]]:
    """A port with no listener yet, and a function that starts an HTTP server on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers: list[http.server.HTTPServer] = []

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"bpj_jobs 1.0\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    def start() -> None:
        server = http.server.HTTPServer(("127.0.0.1", port), Metrics)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    start.port = port  # type: ignore[attr-defined]
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_port_that_starts_listening_late_is_waited_for(late_server: Callable[[], None]) -> None:
    """Issue 14's failure: an operator not yet listening on its metrics port."""
    url = f"http://127.0.0.1:{late_server.port}/metrics"  # type: ignore[attr-defined]
    calls = 0

    def scraped() -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            late_server()  # the process gets to its listen() between two checks
        with urllib.request.urlopen(url, timeout=2) as resp:
            return b"bpj_jobs" in resp.read()

    wait_for(scraped, 10, "metrics", interval=FAST)
    assert calls == 3  # refused twice (URLError wrapping ConnectionRefusedError), then served
