"""The operator as a process, as the chart runs it: killed often, it converges, no duplicates.

It also serves /metrics and /healthz. The namespace starts with "k-" so that
the suite's in-process operator (watching "t-*") leaves it to this one.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bert_pretrain_operator.rbac import trainer_rbac
from bert_pretrain_operator.render import names
from bert_pretrain_operator.settings import Settings
from bpj_devstack import plane
from tests.support import Kubectl, kubectl_json, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KILLS = 20


@pytest.fixture
def k_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"k-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    objects = trainer_rbac(name, Settings().trainer_service_account)
    kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _start_operator(
    devstack: plane.StackState, namespace: str, log: Path, metrics_port: int, health_port: int
) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        **devstack.env(),
        BPJ_NAMESPACES=namespace,
        BPJ_METRICS_PORT=str(metrics_port),
        BPJ_HEALTH_PORT=str(health_port),
        BPJ_RESYNC_SECONDS="2",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bert_pretrain_operator"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return str(resp.read().decode())


def test_operator_killed_repeatedly_leaves_no_duplicate_children(
    kubectl: Kubectl,
    devstack: plane.StackState,
    crd_installed: None,
    k_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", devstack.gcs_endpoint)
    bucket = f"bpj-kill-{uuid.uuid4().hex[:8]}"
    client = storage.Client(project="bpj-test", credentials=AnonymousCredentials())
    client.create_bucket(bucket).blob("corpus/a.txt").upload_from_string("A line.\n\nB.\n")
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc = json.loads(json.dumps(doc).replace("bpj-quickstart", bucket))
    kubectl("apply", "-n", k_namespace, "-f", "-", stdin=json.dumps(doc))

    rng = random.Random(1234)
    log = tmp_path / "operator.log"
    metrics_port, health_port = plane.free_port(), plane.free_port()
    for _ in range(KILLS):
        proc = _start_operator(devstack, k_namespace, log, metrics_port, health_port)
        time.sleep(rng.uniform(0.3, 2.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    proc = _start_operator(devstack, k_namespace, log, metrics_port, health_port)
    try:

        def phase() -> str:
            st = kubectl_json(kubectl, "get", "bpj", "quickstart", "-n", k_namespace)
            return str((st.get("status") or {}).get("phase"))

        wait_for(lambda: phase() == "Succeeded", 180, "the job to succeed")
        wait_for(
            lambda: "bpj_jobs" in _get(f"http://127.0.0.1:{metrics_port}/metrics"), 30, "metrics"
        )
        metrics = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'bpj_jobs{phase="Succeeded"} 1.0' in metrics
        assert "bpj_reconcile_seconds_count" in metrics
        # Every API request of the reconciler is counted, by verb and resource; this
        # process lists the jobs at each 2 s resync.
        listed = re.compile(
            r'^bpj_api_requests_total\{resource="bertpretrainjobs",verb="list"\} [1-9]',
            re.MULTILINE,
        )
        wait_for(
            lambda: bool(listed.search(_get(f"http://127.0.0.1:{metrics_port}/metrics"))),
            15,
            "bpj_api_requests_total to count the resync's list",
        )
        assert _get(f"http://127.0.0.1:{health_port}/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    jobs = kubectl_json(
        kubectl, "get", "jobs", "-n", k_namespace, "-l", f"{names.LABEL_JOB}=quickstart"
    )["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == [
        "quickstart-export",
        "quickstart-prepare",
        "quickstart-train-1",
    ]
    config_maps = kubectl_json(
        kubectl, "get", "configmaps", "-n", k_namespace, "-l", f"{names.LABEL_JOB}=quickstart"
    )["items"]
    assert len(config_maps) == 1
    st = kubectl_json(kubectl, "get", "bpj", "quickstart", "-n", k_namespace)["status"]
    assert st["attempt"] == 1
    assert st.get("restarts") in (None, 0)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("bpj") == f"{k_namespace}/quickstart" for line in lines), (
        "structured logs name the job"
    )
