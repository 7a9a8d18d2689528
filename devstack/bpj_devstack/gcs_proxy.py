"""A TLS-terminating HTTPS proxy that lets TensorFlow's ``gs://`` filesystem use fake-gcs-server.

TensorFlow's GCS filesystem has its endpoints compiled in
(``https://www.googleapis.com/storage/v1/``, ``.../upload/storage/v1/`` and
``https://storage.googleapis.com/<bucket>/<object>`` for ranged reads) and no
emulator setting. Its libcurl does honour ``HTTPS_PROXY`` and ``CURL_CA_BUNDLE``,
so the stack runs this proxy on loopback: curl sends ``CONNECT
www.googleapis.com:443``, the proxy answers 200, terminates TLS with a
certificate the stack's CA signed for Google's storage hosts, and forwards each
HTTP/1.1 request (same path and query) to the emulator over plain HTTP.

Two request details need fixing on the way: TensorFlow sends
``Transfer-Encoding: identity``, which Go's net/http (fake-gcs-server) answers
with 501, and the ``Host`` header must be the emulator's ``-public-host`` or
fake-gcs-server reads ``storage.googleapis.com`` as a bucket name. On the way
back, resumable-upload ``Location`` headers point at the emulator's plain-HTTP
address and are rewritten to ``https://<requested host>`` so TensorFlow keeps
going through the proxy.

Run it embedded (``GcsTlsProxy(...).start()``, a thread with its own event
loop) or as a process: ``python -m bpj_devstack.gcs_proxy --upstream
http://127.0.0.1:P --port Q --cert C --key K``. ``GET /healthz`` on the proxy
port answers 200 for readiness checks.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import signal
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bpj_devstack import pki

log = logging.getLogger(__name__)

GOOGLE_STORAGE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")
"""Hosts TensorFlow's GCS filesystem may contact; the proxy certificate covers all of them."""

LISTEN_HOST = "127.0.0.1"

FAKE_ACCESS_TOKEN = "bpj-devstack-fake-gcs-access-token"
"""TensorFlow's ``GOOGLE_AUTH_TOKEN_FOR_TESTING``: sent as ``Authorization: Bearer`` and
ignored by the emulator. It stands in for a real access token, so tests check that it
never shows up in specs, status or logs (``tests/reliability/test_no_credentials.py``)."""

# Every wait is bounded, so a stuck peer frees its task instead of leaking it.
_IDLE_TIMEOUT = 120.0  # between requests on a kept-alive tunnel
_IO_TIMEOUT = 300.0  # any single read/write/connect during a transfer (large uploads finalise)
_HANDSHAKE_TIMEOUT = 30.0
_MAX_HEAD_BYTES = 64 * 1024
_MAX_HEADERS = 200
_MAX_REQUESTS_PER_CONNECTION = 100_000
_MAX_INTERIM_RESPONSES = 10
_COPY_CHUNK = 256 * 1024
_HISTORY = 10_000


class _ProtocolError(Exception):
    """The peer sent something this proxy does not understand; the connection is dropped."""


@dataclass(frozen=True)
class RequestRecord:
    """One request relayed to the emulator, kept for debugging and tests."""

    host: str
    method: str
    target: str
    status: int


@dataclass
class _Head:
    start_line: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def without(self, *names: str) -> list[tuple[str, str]]:
        drop = {n.lower() for n in names}
        return [(k, v) for k, v in self.headers if k.lower() not in drop]


def _encode_head(start_line: str, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [start_line, *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def _read_head(reader: asyncio.StreamReader, timeout: float) -> _Head | None:
    """Read a request or response head; None on a clean EOF before any byte."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _ProtocolError("connection closed inside a message head") from exc
    except asyncio.LimitOverrunError as exc:
        raise _ProtocolError("message head too large") from exc
    lines = raw.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or len(headers) >= _MAX_HEADERS:
            raise _ProtocolError(f"bad header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return _Head(lines[0], headers)


async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    # Draining after every write applies back-pressure, so large bodies stream in bounded memory.
    await asyncio.wait_for(writer.drain(), _IO_TIMEOUT)


async def _copy_exact(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int
) -> None:
    remaining = length
    while remaining > 0:  # bounded: each pass moves at least one byte or raises
        data = await asyncio.wait_for(reader.read(min(remaining, _COPY_CHUNK)), _IO_TIMEOUT)
        if not data:
            raise _ProtocolError(f"body ended {remaining} bytes early")
        remaining -= len(data)
        await _write(writer, data)


async def _copy_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:  # bounded: ends at EOF, every read has a timeout
        data = await asyncio.wait_for(reader.read(_COPY_CHUNK), _IO_TIMEOUT)
        if not data:
            return
        await _write(writer, data)


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Relay a chunked body verbatim, parsing only enough to find where it ends."""
    while True:  # bounded: every chunk consumes input, every read has a timeout
        size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), _IO_TIMEOUT)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _ProtocolError(f"bad chunk size {size_line[:40]!r}") from exc
        await _write(writer, size_line)
        if size == 0:
            for _ in range(_MAX_HEADERS):  # trailers, then the empty line
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), _IO_TIMEOUT)
                await _write(writer, line)
                if line == b"\r\n":
                    return
            raise _ProtocolError("too many trailer lines")
        await _copy_exact(reader, writer, size + 2)  # data and its CRLF


def _content_length(head: _Head) -> int | None:
    value = head.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError as exc:
        raise _ProtocolError(f"bad Content-Length {value!r}") from exc
    if length < 0:
        raise _ProtocolError(f"bad Content-Length {value!r}")
    return length


def _is_chunked(head: _Head) -> bool:
    value = head.get("Transfer-Encoding") or ""
    return value.lower().split(",")[-1].strip() == "chunked"


def _rewrite_location(value: str, public_host: str) -> str:
    # Only the emulator answers with plain-HTTP URLs (Google never does), and TensorFlow must
    # keep talking HTTPS to a Google host so that its requests come back through this proxy.
    parts = urllib.parse.urlsplit(value)
    if parts.scheme != "http":
        return value
    return urllib.parse.urlunsplit(("https", public_host, parts.path, parts.query, parts.fragment))


class _Relay:
    """The asyncio server: CONNECT tunnels, TLS termination and request relaying."""

    def __init__(
        self, upstream: str, ssl_context: ssl.SSLContext, port: int, host: str = LISTEN_HOST
    ) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.upstream_netloc = f"{parts.hostname}:{parts.port}"
        self.ssl_context = ssl_context
        self.port = port
        self.host = host
        self.history: collections.deque[RequestRecord] = collections.deque(maxlen=_HISTORY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, limit=_MAX_HEAD_BYTES
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "gcs proxy listening on http://%s:%d, upstream http://%s",
            self.host,
            self.port,
            self.upstream_netloc,
        )
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve_client(reader, writer)
        except asyncio.CancelledError:
            # Only close() cancels handlers. Ending normally keeps asyncio's start_server from
            # logging the cancelled connection callback as an error.
            pass
        except (_ProtocolError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.warning("gcs proxy connection dropped: %s", exc)
        except asyncio.IncompleteReadError:
            log.warning("gcs proxy connection dropped: peer closed mid-message")
        except asyncio.LimitOverrunError:
            log.warning("gcs proxy connection dropped: line too long")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await _read_head(reader, _IDLE_TIMEOUT)
        if head is None:
            return
        method, _, rest = head.start_line.partition(" ")
        target = rest.rpartition(" ")[0]
        if method == "GET" and target == "/healthz":
            await _write(
                writer,
                _encode_head("HTTP/1.1 200 OK", [("Content-Length", "3"), ("Connection", "close")])
                + b"ok\n",
            )
            return
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host not in GOOGLE_STORAGE_HOSTS or port != "443":
            # Refuse anything else: this must never become an open proxy to the internet.
            log.warning("gcs proxy refused %r", head.start_line)
            await _write(
                writer,
                _encode_head(
                    "HTTP/1.1 403 Forbidden", [("Content-Length", "0"), ("Connection", "close")]
                ),
            )
            return
        # No await between sending 200 and start_tls: if the loop ran in between, curl's
        # ClientHello could land in the StreamReader's buffer, which start_tls does not hand to
        # the TLS layer, and the handshake would hang (seen intermittently with TF).
        log.debug("CONNECT %s", target)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.start_tls(self.ssl_context, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT)
        for _ in range(_MAX_REQUESTS_PER_CONNECTION):
            if not await self._relay_one(host, reader, writer):
                return

    async def _relay_one(
        self, public_host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Relay one request and its response; False when the tunnel should close."""
        try:
            head = await _read_head(reader, _IDLE_TIMEOUT)
        except TimeoutError:
            return False  # an idle kept-alive tunnel: closing it is routine, not an error
        if head is None:
            return False
        try:
            method, target, version = head.start_line.split(" ")
        except ValueError as exc:
            raise _ProtocolError(f"bad request line {head.start_line[:80]!r}") from exc
        if target.startswith("https://"):  # absolute form: keep path and query only
            parts = urllib.parse.urlsplit(target)
            target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        client_close = (head.get("Connection") or "").lower() == "close" or version == "HTTP/1.0"
        chunked = _is_chunked(head)
        length = None if chunked else _content_length(head)
        if (head.get("Expect") or "").lower() == "100-continue":
            # Answer curl at once rather than relaying Expect: the body is streamed regardless.
            await _write(writer, b"HTTP/1.1 100 Continue\r\n\r\n")
        headers = head.without(
            "Host",
            "Connection",
            "Keep-Alive",
            "Proxy-Connection",
            "Proxy-Authorization",
            "Expect",
            "Transfer-Encoding",
            "TE",
        )
        if chunked:
            # TF's uploads carry both "Transfer-Encoding: chunked" and Content-Length; chunked
            # wins (RFC 9112 6.3), and forwarding both would leave the framing ambiguous.
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Transfer-Encoding", "chunked"))
        if log.isEnabledFor(logging.DEBUG):
            shown = [(k, v) for k, v in head.headers if k.lower() != "authorization"]
            log.debug("%s https://%s%s headers %s", method, public_host, target, shown)
        headers.insert(0, ("Host", self.upstream_netloc))

        # A fresh upstream connection per request: loopback connects are cheap, and it avoids
        # the race of reusing a kept-alive connection the emulator is closing.
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.upstream_host, self.upstream_port, limit=_MAX_HEAD_BYTES
                ),
                _IO_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            # A 502 names the cause in TF's error message; a dropped connection would not.
            log.warning("gcs proxy cannot reach the emulator at %s: %s", self.upstream_netloc, exc)
            message = f"gcs proxy: emulator {self.upstream_netloc} unreachable: {exc}\n".encode()
            await _write(
                writer,
                _encode_head(
                    "HTTP/1.1 502 Bad Gateway",
                    [("Content-Length", str(len(message))), ("Connection", "close")],
                )
                + message,
            )
            return False
        try:
            await _write(up_writer, _encode_head(f"{method} {target} HTTP/1.1", headers))
            if chunked:
                await _copy_chunked(reader, up_writer)
            elif length:
                await _copy_exact(reader, up_writer, length)
            return await self._relay_response(
                public_host, method, target, up_reader, writer, client_close
            )
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(up_writer.wait_closed(), 5)

    async def _relay_response(
        self,
        public_host: str,
        method: str,
        target: str,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_close: bool,
    ) -> bool:
        for _ in range(_MAX_INTERIM_RESPONSES):
            head = await _read_head(up_reader, _IO_TIMEOUT)
            if head is None:
                raise _ProtocolError(f"emulator closed without answering {method} {target}")
            try:
                status = int(head.start_line.split(" ")[1])
            except (IndexError, ValueError) as exc:
                raise _ProtocolError(f"bad status line {head.start_line[:80]!r}") from exc
            if not 100 <= status < 200:
                break
            await _write(writer, _encode_head(head.start_line, head.headers))
        else:
            raise _ProtocolError("too many interim responses")
        self.history.append(RequestRecord(public_host, method, target, status))
        log.info("%s https://%s%s -> %d", method, public_host, target, status)

        chunked = _is_chunked(head)
        length = None if chunked else _content_length(head)
        hop_by_hop = ("Connection", "Keep-Alive", *(("Content-Length",) if chunked else ()))
        headers = [
            (k, _rewrite_location(v, public_host))
            if k.lower() in ("location", "x-goog-upload-url")
            else (k, v)
            for k, v in head.without(*hop_by_hop)
        ]
        no_body = method == "HEAD" or status in (204, 304)
        # A body delimited only by the emulator closing can be relayed only by closing too.
        close = client_close or (not no_body and not chunked and length is None)
        if close:
            headers.append(("Connection", "close"))
        await _write(writer, _encode_head(head.start_line, headers))
        if no_body:
            pass
        elif chunked:
            await _copy_chunked(up_reader, writer)
        elif length is not None:
            await _copy_exact(up_reader, writer, length)
        else:
            await _copy_until_eof(up_reader, writer)
        return not close


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    # The relay speaks HTTP/1.1 only; without this a client offering h2 could pick it.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class GcsTlsProxy:
    """The proxy in a background thread with its own event loop (for tests and tools)."""

    def __init__(self, upstream: str, cert: Path, key: Path, port: int = 0) -> None:
        self._relay = _Relay(upstream, server_ssl_context(cert, key), port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return self._relay.port

    @property
    def url(self) -> str:
        """The value for ``HTTPS_PROXY``."""
        return f"http://{self._relay.host}:{self.port}"

    @property
    def history(self) -> list[RequestRecord]:
        """Requests relayed so far (the most recent ``_HISTORY``)."""
        return list(self._relay.history)

    def start(self, timeout: float = 10.0) -> GcsTlsProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        self._thread = threading.Thread(target=self._run, name="gcs-tls-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"gcs proxy did not start within {timeout}s")
        if self._error is not None:
            raise RuntimeError("gcs proxy failed to start") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("gcs proxy thread did not stop within %ss", timeout)
        self._thread = None

    def __enter__(self) -> GcsTlsProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported through start() when it happens early
            self._error = exc
            log.exception("gcs proxy thread failed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self._relay.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._relay.close()


def issue_proxy_certificate(keys: pki.Pki) -> tuple[Path, Path]:
    """Sign (once) the proxy's serving certificate for Google's storage hosts with the stack CA."""
    cert, key = keys.dir / "gcs-proxy.crt", keys.dir / "gcs-proxy.key"
    if not (cert.exists() and key.exists()):
        pki.issue_certificate(
            keys, cert, key, "gcs-proxy", dns_names=GOOGLE_STORAGE_HOSTS, server=True
        )
    return cert, key


#: Addresses clients reach directly: loopback, and the real nodes' host address, where
#: pods find the API server and the emulator itself (bpj_devstack.nodes.layout.HOST_IP).
_NO_PROXY = "127.0.0.1,localhost,10.200.0.1"


def tf_gcs_env(proxy_url: str, ca_bundle: Path) -> dict[str, str]:
    """Environment a TensorFlow process needs so its ``gs://`` filesystem reaches the emulator.

    Merge it into the process environment before TensorFlow is imported.
    """
    return {
        # libcurl reads the lowercase name first; set both so either convention works.
        "HTTPS_PROXY": proxy_url,
        "https_proxy": proxy_url,
        # An inherited NO_PROXY naming googleapis.com would send TF to the real Google; this
        # also keeps other clients (google-cloud-storage via STORAGE_EMULATOR_HOST) direct.
        "NO_PROXY": _NO_PROXY,
        "no_proxy": _NO_PROXY,
        # Only the stack CA: the proxy is the only TLS peer, so no system CAs are needed.
        "CURL_CA_BUNDLE": str(ca_bundle),
        # Skips TF's credential search (gcloud files, GCE metadata); the emulator ignores it.
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": FAKE_ACCESS_TOKEN,
        "NO_GCE_CHECK": "true",
        # Several processes (trainer, evaluator, operator) share the buckets: TF's block, stat
        # and glob caches could serve one process stale data another just replaced.
        "GCS_READ_CACHE_MAX_SIZE_MB": "0",
        "GCS_STAT_CACHE_MAX_AGE": "0",
        "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0",
        # Loopback failures are not transient: fail in seconds rather than TF's default ten
        # retries backing off to 32 s each.
        "GCS_RETRY_CONFIG_MAX_RETRIES": "3",
        "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "100000",
        "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000000",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bpj_devstack.gcs_proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--upstream", required=True, help="fake-gcs-server, http://127.0.0.1:P")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any)")
    parser.add_argument(
        "--host", default=LISTEN_HOST, help="address to listen on (the pods' host address)"
    )
    parser.add_argument("--cert", type=Path, required=True, help="PEM serving certificate")
    parser.add_argument("--key", type=Path, required=True, help="PEM private key")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    relay = _Relay(args.upstream, server_ssl_context(args.cert, args.key), args.port, args.host)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await relay.start()
        try:
            await stop.wait()
        finally:
            await relay.close()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
