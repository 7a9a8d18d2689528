"""The operator as a process, as the chart runs it: killed often, it converges, no duplicates.

The kills overlap the work. Each stage (the input check, Preparing, Training,
Exporting) is held open: its pod keeps Running (``PodHold``) while operators are
started and SIGKILLed, one at a time, at points defined by what each one did: as
soon as the stage's Job is seen, right after its first reconcile, after it
reconciled for a random while, and while it is still starting. Only then is the
stage's pod let finish. With no operator running nothing advances the job, so the
phase read after a kill is the phase that operator died in, and the test asserts
that every stage saw its kills.

It also serves /metrics and /healthz. The namespace starts with "k-" so that
the suite's in-process operator (watching "t-*") leaves it to this one.
"""

from __future__ import annotations

import base64
import contextlib
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.rbac import trainer_rbac
from bert_pretrain_operator.render import names
from bert_pretrain_operator.settings import Settings
from bert_trainer.contract import PREPARE_PASSES
from bpj_devstack import kwok_config, plane
from tests.support import Kubectl, admission_webhook, kubectl_exists, kubectl_json, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOB = "quickstart"
#: (phase, stage label, child Job, killed at every point): the stages' Jobs in order.
#: The input check (its KWOK pod reports "{}": nothing beyond the spec, which names no
#: vocab) and the preparation's passes but records are killed once, when their Job is
#: seen; records takes the whole series (pods never report: the spec sets its workers).
STAGES = (
    ("Pending", names.STAGE_CHECK, names.check_job(JOB), False),
    *(
        ("Preparing", names.STAGE_PREPARE, names.prepare_job(JOB, p), p == "records")
        for p in PREPARE_PASSES
    ),
    ("Training", names.STAGE_TRAIN, names.train_job(JOB, 1), True),
    ("Exporting", names.STAGE_EXPORT, names.export_job(JOB), True),
)
#: Kills per stage after the operator reconciled for a random while (its resync is 2 s).
PACED_KILLS = 2
Operator = subprocess.Popen[bytes]
HOLD = "1h"  # KWOK's run-for for a held pod: longer than the test
RELEASE = "0s"


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


@dataclass
class PodHold:
    """A mutating webhook that makes the job's pods run until the test releases them.

    KWOK ends a Running pod after its ``devstack.bpj.dev/run-for`` annotation (the
    stack's 2 s otherwise). The operator's pods carry no annotations of ours, and
    annotating a pod after it was created races with those 2 s; so every pod of
    the job gets ``run-for: 1h`` as it is created, and ``release`` sets it to 0s
    (KWOK re-reads the annotation on each change). The pods are also kept to KWOK's
    nodes (label ``type: kwok``), the only ones that honour the annotation.
    """

    namespace: str
    held: list[str] = field(default_factory=list)
    """The stage label of each pod the webhook held (dry runs excluded)."""

    def review(self, request: dict[str, Any]) -> dict[str, Any]:
        pod = request["object"]
        meta, spec = pod["metadata"], pod["spec"]
        ops: list[dict[str, Any]] = []
        if meta.get("annotations"):
            ops.append(
                {
                    "op": "add",
                    "path": "/metadata/annotations/" + _pointer(kwok_config.RUN_FOR),
                    "value": HOLD,
                }
            )
        else:
            ops.append(
                {"op": "add", "path": "/metadata/annotations", "value": {kwok_config.RUN_FOR: HOLD}}
            )
        if spec.get("nodeSelector"):
            ops.append({"op": "add", "path": "/spec/nodeSelector/type", "value": "kwok"})
        else:
            ops.append({"op": "add", "path": "/spec/nodeSelector", "value": {"type": "kwok"}})
        if not request.get("dryRun"):
            self.held.append((meta.get("labels") or {}).get(names.LABEL_STAGE, "?"))
        return {
            "uid": request["uid"],
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": base64.b64encode(json.dumps(ops).encode()).decode(),
        }

    def release(self, kubectl: Kubectl, child: str) -> None:
        """Let the Job's pods succeed, once they are seen Running (held, not finished)."""
        stage = child
        selector = f"job-name={child}"
        seen: list[tuple[str, str]] = []

        def running() -> bool:
            pods = kubectl_json(kubectl, "get", "pods", "-n", self.namespace, "-l", selector)
            seen[:] = [(p["metadata"]["name"], p["status"].get("phase")) for p in pods["items"]]
            if any(ph in ("Succeeded", "Failed") for _, ph in seen):
                raise AssertionError(f"a {stage} pod ended while it was held: {seen}")
            return bool(seen) and all(ph == "Running" for _, ph in seen)

        wait_for(running, 30, lambda: f"the held {stage} pods to be Running: {seen}")
        kubectl(
            "annotate", "pods", "-n", self.namespace, "-l", selector,
            f"{kwok_config.RUN_FOR}={RELEASE}", "--overwrite",
        )  # fmt: skip


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


@pytest.fixture
def pod_hold(
    kubectl: Kubectl, devstack: plane.StackState, k_namespace: str, tmp_path: Path
) -> Iterator[PodHold]:
    hold = PodHold(k_namespace)
    pki_dir = Path(devstack.run_dir) / "pki"
    stack = contextlib.ExitStack()
    server = stack.enter_context(admission_webhook(pki_dir, tmp_path, "pod-hold", hold.review))
    config = f"bpj-test-pod-hold-{k_namespace}"
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": config},
        "webhooks": [
            {
                "name": "pod-hold.devstack.bpj.dev",
                "clientConfig": server.client_config(),
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": k_namespace}},
                "objectSelector": {"matchLabels": {names.LABEL_JOB: JOB}},
                # No pod without the hold: a webhook that cannot be reached stalls the stage.
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(webhook))
    try:
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "hold-probe",
                "namespace": k_namespace,
                "labels": {names.LABEL_JOB: JOB},
            },
            "spec": {
                "serviceAccountName": Settings().trainer_service_account,
                "containers": [{"name": "c", "image": "probe"}],
            },
        }
        last: list[str] = [""]

        def holds_new_pods() -> bool:
            # The API server picks the configuration up a moment after it is written.
            out = kubectl(
                "create",
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
                stdin=json.dumps(probe),
                check=False,
            )
            if out.returncode != 0:
                last[0] = out.stderr
                return False
            annotations = json.loads(out.stdout)["metadata"].get("annotations") or {}
            last[0] = f"annotations {annotations}"
            return bool(annotations.get(kwok_config.RUN_FOR) == HOLD)

        wait_for(holds_new_pods, 30, lambda: f"the pod-hold webhook to take effect ({last[0]})")
        yield hold
    finally:
        kubectl("delete", "mutatingwebhookconfiguration", config, "--ignore-not-found", check=False)
        stack.close()


def _start_operator(
    devstack: plane.StackState, namespace: str, log: Path, metrics_port: int, health_port: int
) -> Operator:
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


@dataclass(frozen=True)
class Kill:
    stage: str
    point: str
    phase: str
    """The job's phase once the operator was dead: the phase it died in."""


def test_operator_killed_repeatedly_leaves_no_duplicate_children(
    kubectl: Kubectl,
    devstack: plane.StackState,
    crd_installed: None,
    k_namespace: str,
    pod_hold: PodHold,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", devstack.gcs_endpoint)
    bucket = f"bpj-kill-{uuid.uuid4().hex[:8]}"
    client = storage.Client(project="bpj-test", credentials=AnonymousCredentials())
    client.create_bucket(bucket).blob("corpus/a.txt").upload_from_string("A line.\n\nB.\n")
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc = json.loads(json.dumps(doc).replace("bpj-quickstart", bucket))
    doc["spec"]["data"]["preparation"] = {"workers": 1}
    kubectl("apply", "-n", k_namespace, "-f", "-", stdin=json.dumps(doc))

    rng = random.Random(1234)
    log = tmp_path / "operator.log"
    metrics_port, health_port = plane.free_port(), plane.free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def phase() -> str:
        st = kubectl_json(kubectl, "get", "bpj", JOB, "-n", k_namespace)
        return str((st.get("status") or {}).get("phase"))

    def alive(proc: Operator) -> None:
        if proc.poll() is not None:
            raise AssertionError(
                f"the operator exited ({proc.returncode}); log:\n{log.read_text()[-3000:]}"
            )

    def reconciled(proc: Operator) -> bool:
        """This operator has finished a reconcile (its metrics port may not be up yet)."""
        alive(proc)
        count = re.search(r"^bpj_reconcile_seconds_count (\S+)$", _get(metrics_url), re.M)
        return count is not None and float(count.group(1)) >= 1

    kills: list[Kill] = []

    def run_and_kill(stage: str, point: str, until: Callable[[Operator], None]) -> None:
        proc = _start_operator(devstack, k_namespace, log, metrics_port, health_port)
        try:
            until(proc)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        kills.append(Kill(stage, point, phase()))

    def child_seen(child: str) -> Callable[[Operator], None]:
        def until(proc: Operator) -> None:
            def seen() -> bool:
                alive(proc)
                return kubectl_exists(kubectl, "job", child, k_namespace)

            wait_for(seen, 60, f"the Job {child}", interval=0.05)

        return until

    def first_reconcile(proc: Operator) -> None:
        wait_for(lambda: reconciled(proc), 60, "the operator's first reconcile", interval=0.05)

    def paced(proc: Operator) -> None:
        first_reconcile(proc)
        # Pacing, not synchronisation: the kill lands at a random point of the
        # operator's watch and 2 s resync loop, the stage's pod still running.
        time.sleep(rng.uniform(0.0, 2.5))

    def starting(proc: Operator) -> None:
        # Pacing, not synchronisation: killed during imports, login or the first
        # watches, before or during its first reconcile.
        time.sleep(rng.uniform(0.2, 1.5))

    previous = "None"  # no status yet
    for stage_phase, _stage, child, series in STAGES:
        run_and_kill(child, "child Job seen", child_seen(child))
        assert kills[-1].phase in (previous, stage_phase), kills
        if series:
            run_and_kill(child, "first reconcile", first_reconcile)
            for _ in range(PACED_KILLS):
                run_and_kill(child, "paced", paced)
            run_and_kill(child, "starting", starting)
            # The held pod kept the stage in progress through every kill after the first.
            in_stage = [k for k in kills if k.stage == child and k.point != "child Job seen"]
            assert [k.phase for k in in_stage] == [stage_phase] * (PACED_KILLS + 2), kills
        pod_hold.release(kubectl, child)
        previous = stage_phase
    assert sorted(pod_hold.held) == sorted(stage for _, stage, _, _ in STAGES), pod_hold.held
    record_property("kills", [f"{k.stage}/{k.point}: {k.phase}" for k in kills])

    proc = _start_operator(devstack, k_namespace, log, metrics_port, health_port)
    try:
        wait_for(lambda: phase() == "Succeeded", 120, "the job to succeed")
        # The process may be up before its metrics port: connection refused is "not yet".
        wait_for(lambda: 'bpj_jobs{phase="Succeeded"} 1.0' in _get(metrics_url), 30, "metrics")
        metrics = _get(metrics_url)
        assert "bpj_reconcile_seconds_count" in metrics
        # Every API request of the reconciler is counted, by verb and resource: this
        # process wrote the Succeeded status. It read the children from its watches.
        for sample in (
            r'bpj_api_requests_total\{resource="bertpretrainjobs/status",verb="patch"\} [1-9]',
            r'bpj_children_reads_total\{source="watch"\} [1-9]',
        ):
            assert re.search(f"^{sample}", metrics, re.MULTILINE), (sample, metrics)
        assert _get(f"http://127.0.0.1:{health_port}/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    jobs = kubectl_json(
        kubectl, "get", "jobs", "-n", k_namespace, "-l", f"{names.LABEL_JOB}={JOB}"
    )["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(c for _, _, c, _ in STAGES)
    config_maps = kubectl_json(
        kubectl, "get", "configmaps", "-n", k_namespace, "-l", f"{names.LABEL_JOB}={JOB}"
    )["items"]
    assert len(config_maps) == 1
    st = kubectl_json(kubectl, "get", "bpj", JOB, "-n", k_namespace)["status"]
    assert st["attempt"] == 1
    assert st.get("restarts") in (None, 0)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("bpj") == f"{k_namespace}/{JOB}" for line in lines), (
        "structured logs name the job"
    )
