"""TensorFlow's native ``gs://`` filesystem against fake-gcs-server through the TLS proxy.

TensorFlow reads its GCS settings from the environment when it is imported, so
the TensorFlow part runs in a subprocess with ``tf_gcs_env``. The proxy itself
is embedded (a thread) so the test can see which requests TensorFlow made; the
process mode the stack uses is checked separately.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpj_devstack import pki, plane
from bpj_devstack.gcs_proxy import GcsTlsProxy, issue_proxy_certificate, tf_gcs_env
from tests.support import wait_for

pytestmark = pytest.mark.gcs


@pytest.fixture(scope="module")
def proxy_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[pki.Pki, Path, Path]:
    keys = pki.create(tmp_path_factory.mktemp("gcs-proxy-pki"))
    cert, key = issue_proxy_certificate(keys)
    return keys, cert, key


@pytest.fixture(scope="module")
def gcs_proxy(gcs_emulator: str, proxy_pki: tuple[pki.Pki, Path, Path]) -> Iterator[GcsTlsProxy]:
    _, cert, key = proxy_pki
    proxy = GcsTlsProxy(gcs_emulator, cert, key).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _tunnel(
    proxy_port: int, ca: Path, host: str = "www.googleapis.com"
) -> http.client.HTTPSConnection:
    """An HTTPS connection to ``host`` through the proxy, the way curl in TensorFlow makes one."""
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, context=ctx, timeout=30)
    conn.set_tunnel(host, 443)
    return conn


def _create_bucket(endpoint: str) -> str:
    name = f"bpj-proxy-{uuid.uuid4().hex[:10]}"
    req = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project=bpj-test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    return name


def test_relays_resumable_chunked_upload_and_ranged_read(
    gcs_emulator: str, gcs_proxy: GcsTlsProxy, proxy_pki: tuple[pki.Pki, Path, Path]
) -> None:
    keys, _, _ = proxy_pki
    bucket = _create_bucket(gcs_emulator)
    body = os.urandom(3 * 256 * 1024 + 123)
    first = 2 * 256 * 1024

    conn = _tunnel(gcs_proxy.port, keys.ca_cert)
    conn.request(
        "POST",
        f"/upload/storage/v1/b/{bucket}/o?uploadType=resumable&name=dir%2Fobj.bin",
        body=b"",
        headers={"Content-Length": "0"},
    )
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    session = resp.getheader("Location") or ""
    # The emulator's http://127.0.0.1:P URL must come back as Google's, or TF would bypass us.
    assert session.startswith(f"https://www.googleapis.com/upload/storage/v1/b/{bucket}/o?")
    session_path = session.removeprefix("https://www.googleapis.com")

    # The pieces mimic TF's curl: chunked bodies that also declare Content-Length, and
    # `Transfer-Encoding: identity` (which the emulator rejects unless the proxy drops it).
    # http.client will not chunk a body that has a Content-Length, so frame it by hand.
    conn.putrequest("PUT", session_path, skip_accept_encoding=True)
    for name, value in {
        "Content-Range": f"bytes 0-{first - 1}/*",
        "Content-Length": str(first),
        "Transfer-Encoding": "chunked",
        "Expect": "100-continue",
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    for piece in (body[: first // 2], body[first // 2 : first]):
        conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 308
    conn.request(
        "PUT",
        session_path,
        body=body[first:],
        headers={
            "Content-Range": f"bytes {first}-{len(body) - 1}/{len(body)}",
            "Content-Length": str(len(body) - first),
            "Transfer-Encoding": "identity",
        },
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert json.loads(resp.read())["size"] == str(len(body))
    conn.close()

    reader = _tunnel(gcs_proxy.port, keys.ca_cert, host="storage.googleapis.com")
    reader.request("GET", f"/{bucket}/dir%2Fobj.bin", headers={"Range": "bytes=1000-2999"})
    resp = reader.getresponse()
    assert resp.status == 206
    assert resp.read() == body[1000:3000]
    reader.close()


def test_refuses_other_hosts_and_answers_healthz(gcs_proxy: GcsTlsProxy) -> None:
    with urllib.request.urlopen(f"{gcs_proxy.url}/healthz", timeout=5) as resp:
        assert resp.status == 200
    conn = http.client.HTTPConnection("127.0.0.1", gcs_proxy.port, timeout=5)
    conn.request("CONNECT", "example.com:443")
    assert conn.getresponse().status == 403
    conn.close()


def test_answers_502_when_the_emulator_is_down(proxy_pki: tuple[pki.Pki, Path, Path]) -> None:
    keys, cert, key = proxy_pki
    with GcsTlsProxy(f"http://127.0.0.1:{plane.free_port()}", cert, key) as proxy:
        conn = _tunnel(proxy.port, keys.ca_cert)
        conn.request("GET", "/storage/v1/b/any")
        resp = conn.getresponse()
        assert resp.status == 502
        assert b"unreachable" in resp.read()
        conn.close()


def test_runs_as_a_process(gcs_emulator: str, proxy_pki: tuple[pki.Pki, Path, Path]) -> None:
    keys, cert, key = proxy_pki
    port = plane.free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bpj_devstack.gcs_proxy",
            "--upstream",
            gcs_emulator,
            "--port",
            str(port),
            "--cert",
            str(cert),
            "--key",
            str(key),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                assert proc.stderr is not None
                raise AssertionError(f"the proxy exited: {proc.stderr.read().decode()}")
            # Connection refused until it listens: wait_for's "not yet".
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(r.status == 200)

        wait_for(healthy, 15, "the proxy process to listen")
        conn = _tunnel(port, keys.ca_cert)
        conn.request("GET", "/storage/v1/b?project=bpj-test")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["kind"] == "storage#buckets"
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err.decode()


# Runs in a fresh interpreter because TensorFlow reads the proxy/CA/auth variables at import.
_TF_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import numpy as np
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket_name, local_dir = sys.argv[1], Path(sys.argv[2])
    client = storage.Client(project="bpj-test", credentials=AnonymousCredentials())
    bucket = client.create_bucket(bucket_name)

    import tensorflow as tf

    root = f"gs://{bucket_name}"
    gfile = tf.io.gfile

    # tf.io.gfile: write, read (whole and seeked), stat, list, glob, rename, remove.
    payload = os.urandom(300_000)
    with gfile.GFile(f"{root}/files/blob.bin", "wb") as f:
        f.write(payload)
    with gfile.GFile(f"{root}/files/blob.bin", "rb") as f:
        assert f.read() == payload
    with gfile.GFile(f"{root}/files/blob.bin", "rb") as f:
        f.seek(100_000)
        assert f.read(5000) == payload[100_000:105_000]
    assert gfile.stat(f"{root}/files/blob.bin").length == len(payload)
    gfile.makedirs(f"{root}/files/sub")
    with gfile.GFile(f"{root}/files/sub/note.txt", "w") as f:
        f.write("hello")
    # Only now: fake-gcs-server's filesystem backend drops the "sub/" marker object makedirs
    # writes, so an empty directory is invisible there (real GCS and -backend=memory keep it).
    assert gfile.isdir(f"{root}/files/sub")
    gfile.rename(f"{root}/files/sub/note.txt", f"{root}/files/sub/moved.txt", overwrite=True)
    assert not gfile.exists(f"{root}/files/sub/note.txt")
    assert gfile.GFile(f"{root}/files/sub/moved.txt").read() == "hello"
    assert gfile.glob(f"{root}/files/*.bin") == [f"{root}/files/blob.bin"]
    assert sorted(gfile.listdir(f"{root}/files")) == ["blob.bin", "sub/"]
    gfile.remove(f"{root}/files/sub/moved.txt")
    assert not gfile.exists(f"{root}/files/sub/moved.txt")

    # TFRecord: ~6 MB, written to GCS and, for a byte comparison, locally.
    rng = np.random.default_rng(0)
    records = [rng.bytes(4096) for _ in range(1500)]
    for path in (f"{root}/data/train-0.tfrecord", str(local_dir / "train-0.tfrecord")):
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                writer.write(record)
    read = [r.numpy() for r in tf.data.TFRecordDataset(f"{root}/data/train-0.tfrecord")]
    assert read == records
    assert gfile.glob(f"{root}/data/*.tfrecord") == [f"{root}/data/train-0.tfrecord"]

    # Checkpoints: save several (old ones deleted), restore into zeroed variables.
    weights = tf.Variable(tf.random.normal([512, 1024], seed=1))
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(weights=weights, step=step)
    manager = tf.train.CheckpointManager(ckpt, f"{root}/ckpt", max_to_keep=2)
    saved = []
    for i in range(3):
        step.assign(i + 1)
        weights.assign_add(tf.ones_like(weights))
        saved.append(manager.save())
    expected = weights.numpy().copy()
    weights.assign(tf.zeros_like(weights))
    step.assign(0)
    fresh = tf.train.CheckpointManager(ckpt, f"{root}/ckpt", max_to_keep=2)
    assert fresh.latest_checkpoint == saved[-1], (fresh.latest_checkpoint, saved)
    assert fresh.checkpoints == saved[-2:], fresh.checkpoints
    ckpt.restore(fresh.latest_checkpoint).assert_consumed()
    assert int(step.numpy()) == 3
    assert np.array_equal(weights.numpy(), expected)
    assert not gfile.glob(saved[0] + ".*"), "max_to_keep should have deleted the first one"

    # google-cloud-storage sees exactly the bytes TensorFlow wrote.
    tfrecord = (local_dir / "train-0.tfrecord").read_bytes()
    assert bucket.blob("data/train-0.tfrecord").download_as_bytes() == tfrecord
    assert bucket.blob("files/blob.bin").download_as_bytes() == payload
    print(json.dumps({"ok": True, "checkpoints": saved}))
    """
)


@pytest.mark.tensorflow
@pytest.mark.timeout(180)
def test_tensorflow_gs_filesystem(
    gcs_emulator: str,
    gcs_proxy: GcsTlsProxy,
    proxy_pki: tuple[pki.Pki, Path, Path],
    tmp_path: Path,
) -> None:
    keys, _, _ = proxy_pki
    bucket = f"bpj-tf-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        **tf_gcs_env(gcs_proxy.url, keys.ca_cert),
        "STORAGE_EMULATOR_HOST": gcs_emulator,
        "CUDA_VISIBLE_DEVICES": "",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _TF_SCRIPT, bucket, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"]

    seen = [r for r in gcs_proxy.history if bucket in r.target]
    hosts = {r.host for r in seen}
    # Metadata, listings and uploads go to www.googleapis.com, object reads to storage.*.
    assert hosts == {"www.googleapis.com", "storage.googleapis.com"}, hosts
    assert any(r.method == "PUT" and "upload_id=" in r.target for r in seen)
    assert any(r.host == "storage.googleapis.com" and r.status == 206 for r in seen)
    assert all(r.status < 500 for r in seen), [r for r in seen if r.status >= 500]
    print(f"TensorFlow part took {time.monotonic() - started:.1f}s, {len(seen)} requests")
