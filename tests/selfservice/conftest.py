"""Fixtures for self-service: the chart's user roles and guardrails on the local control plane.

`platform` renders the chart as a platform team would install it (user roles aggregated
into view/edit/admin, guardrails on, one team namespace's limits from values) and applies
it, all but the Deployment, with three namespaces:

- ``team_a``: the team's namespace; its guardrails ConfigMap comes from the chart's values,
  and alice (group ``team-a-devs``) is bound to the built-in ``edit`` role there, bob to
  ``view``, carol to ``admin``;
- ``team_b``: another team's namespace (``team-b-devs`` bound to ``edit``);
- ``open``: selected by the guardrails binding but without a ConfigMap.

The guardrails binding selects namespaces by a label unique to this session, so the
suite's other tests (and their namespaces) never meet these policies, and everything
cluster-scoped the fixture applied is deleted afterwards.

The quota tests run the operator as a process watching only their "q-" namespace, the
way tests/operator/test_operator_restarts.py does: the suite's in-process operator
(tests/operator/conftest.py, "t-*") is a session fixture, and importing it here would
start a second one on the same namespaces whenever both directories run in one session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpj_devstack import plane
from tests.chart.conftest import helm, helm_bin, kubeconform_bin, render  # noqa: F401
from tests.chart.helpers import Render, of_kind
from tests.support import Kubectl, kubectl_json, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: Team A's limits, as a platform team writes them in the chart's values.
TEAM_A_LIMITS: dict[str, Any] = {
    "allowedAccelerators": ["tpu-v5-lite-podslice", "tpu-v6e-slice"],
    "allowedTopologies": ["2x2", "2x4", "4x4", "tpu-v6e-slice/8x8"],
    "maxChips": 16,
    "requireSpot": True,
    "maxTrainSteps": 100000,
    "maxActiveDeadlineSeconds": 86400,
    "allowedOutputPrefixes": ["gs://team-a-bucket/"],
    "allowedInputPrefixes": ["gs://team-a-bucket/", "gs://public-corpora/"],
    "allowedImagePrefixes": ["ghcr.io/bert-pretrain-operator/"],
    "allowedQueueNames": ["team-a-tpu"],
}
GUARDRAILS_CONFIGMAP = "bpj-guardrails"
TEAM_A_GROUP = "team-a-devs"
TEAM_B_GROUP = "team-b-devs"


def conforming_job(name: str = "fits") -> dict[str, Any]:
    """A BertPretrainJob within every limit of TEAM_A_LIMITS."""
    return {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": name},
        "spec": {
            "data": {
                "tfrecords": "gs://team-a-bucket/records/*.tfrecord",
                "vocab": "gs://team-a-bucket/vocab.txt",
            },
            "model": {"size": "tiny"},
            "training": {"globalBatchSize": 16, "trainSteps": 1000},
            "tpu": {"accelerator": "tpu-v6e-slice", "topology": "4x4", "spot": True},
            "runPolicy": {"activeDeadlineSeconds": 3600},
            "queueName": "team-a-tpu",
            "image": "ghcr.io/bert-pretrain-operator/trainer:0.1.0",
            "output": f"gs://team-a-bucket/runs/{name}",
        },
    }


@dataclass
class Platform:
    """The chart as installed for the self-service tests."""

    operator_namespace: str
    team_a: str
    team_b: str
    open: str
    """Checked by the guardrails binding, but without a guardrails ConfigMap."""
    release: str
    selector_label: tuple[str, str]
    objects: list[dict[str, Any]]
    """Everything the chart rendered."""
    applied: list[dict[str, Any]]

    @property
    def policy(self) -> str:
        """The guardrails policy's name: per release (the params policy adds ``-params``)."""
        return f"{self.release}-bert-pretrain-operator-guardrails"

    def one(self, kind: str, name: str) -> dict[str, Any]:
        (obj,) = [o for o in of_kind(self.objects, kind) if o["metadata"]["name"] == name]
        return obj


def apply_objects(kubectl: Kubectl, objects: list[dict[str, Any]]) -> None:
    kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )


def dry_run(
    kubectl: Kubectl, namespace: str, doc: dict[str, Any], *user: str
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --dry-run=server` of doc in namespace (as `user` flags, if given)."""
    return kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        *user,
        "-f",
        "-",
        stdin=json.dumps(doc),
        check=False,
    )


@pytest.fixture(scope="session")
def platform(
    kubectl: Kubectl,
    crd_installed: None,
    render: Render,  # noqa: F811 (the chart tests' fixture, imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    run = uuid.uuid4().hex[:6]
    team_a, team_b, open_ns = f"s-{run}-team-a", f"s-{run}-team-b", f"s-{run}-open"
    operator_ns = f"s-{run}-system"
    # A label value that YAML 1.2 (helm) cannot read as a number: a bare "3325e9" is one.
    label = ("selfservice.bpj.dev/run", f"run-{run}")
    values = tmp_path_factory.mktemp("selfservice") / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                # The trainer's objects in the team namespaces, as in docs/self-service.md.
                "trainer": {"namespaces": [team_a, team_b]},
                # No kopf peering CRDs needed here; the progress policy is other tests'.
                "peering": {"enabled": False},
                "guardrails": {
                    "enabled": True,
                    "namespaceSelector": {"matchLabels": {label[0]: label[1]}},
                    "namespaces": {team_a: TEAM_A_LIMITS},
                },
            }
        )
    )
    release = f"s{run}"
    objects = render(
        release=release,
        namespace=operator_ns,
        values=(values,),
        sets=("trainer.progressPolicy.enabled=false",),
    )
    for ns in (operator_ns, team_a, team_b, open_ns):
        kubectl("create", "namespace", ns)
    for ns in (team_a, team_b, open_ns):
        kubectl("label", "namespace", ns, f"{label[0]}={label[1]}")
    applied = [o for o in objects if o["kind"] != "Deployment"]
    # The policies first: the params policy must be in force before the ConfigMap exists.
    cluster_scoped = [o for o in applied if "namespace" not in o["metadata"]]
    namespaced = [o for o in applied if "namespace" in o["metadata"]]
    bindings = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
        }
        for ns, name, role, kind, subject in (
            (team_a, "team-a-edit", "edit", "Group", TEAM_A_GROUP),
            (team_a, "bob-view", "view", "User", "bob"),
            (team_a, "carol-admin", "admin", "User", "carol"),
            (team_b, "team-b-edit", "edit", "Group", TEAM_B_GROUP),
        )
    ]
    platform = Platform(operator_ns, team_a, team_b, open_ns, release, label, objects, applied)
    try:
        apply_objects(kubectl, cluster_scoped)
        apply_objects(kubectl, namespaced + bindings)
        wait_until_guardrails_enforced(kubectl, platform)
        yield platform
    finally:
        for ns in (team_a, team_b, open_ns, operator_ns):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)
        for o in cluster_scoped:
            kubectl("delete", o["kind"].lower(), o["metadata"]["name"], check=False)


def wait_until_guardrails_enforced(kubectl: Kubectl, platform: Platform) -> None:
    """Policies and bindings take a moment to reach the admission plugin: poll until they do."""
    too_big = conforming_job("probe")
    too_big["spec"]["training"]["trainSteps"] = 10**7

    def refused() -> bool:
        out = dry_run(kubectl, platform.team_a, too_big)
        return out.returncode != 0 and "maxTrainSteps" in out.stderr

    wait_for(refused, 30, "the guardrails binding to take effect")


# --- the operator, for the quota tests ---------------------------------------------------


@pytest.fixture(scope="module")
def quota_namespace(kubectl: Kubectl, crd_installed: None) -> Iterator[str]:
    """A "q-" namespace with the trainer's objects (as the chart makes them)."""
    from bert_pretrain_operator.rbac import trainer_rbac
    from bert_pretrain_operator.settings import Settings

    name = f"q-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    apply_objects(kubectl, trainer_rbac(name, Settings().trainer_service_account))
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def quota_operator(
    devstack: plane.StackState,
    crd_installed: None,
    quota_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """`python -m bert_pretrain_operator` watching quota_namespace only; yields its log."""
    log = tmp_path_factory.mktemp("quota-operator") / "operator.log"
    health = plane.free_port()
    env = dict(
        os.environ,
        **devstack.env(),
        BPJ_NAMESPACES=quota_namespace,
        BPJ_METRICS_PORT="0",
        BPJ_HEALTH_PORT=str(health),
        BPJ_RESYNC_SECONDS="2",
        BPJ_TRAINER_IMAGE="localhost/bert-trainer:test",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bert_pretrain_operator"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the operator exited:\n{log.read_text()[-4000:]}")
            return _answers(f"http://127.0.0.1:{health}/healthz")

        wait_for(healthy, 60, "the operator's /healthz")
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


#: records_bucket's vocab.txt.
RECORDS_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the")


@pytest.fixture(scope="module")
def records_bucket(devstack: plane.StackState) -> str:
    """A bucket with prepared records and a vocab: the jobs skip the prepare stage."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = devstack.gcs_endpoint
    try:
        client = storage.Client(project="bpj-test", credentials=AnonymousCredentials())
        name = f"bpj-quota-{uuid.uuid4().hex[:10]}"
        bucket = client.create_bucket(name)
        bucket.blob("records/part-00000-of-00001.tfrecord").upload_from_string(b"x")
        bucket.blob("vocab.txt").upload_from_string("".join(f"{t}\n" for t in RECORDS_VOCAB))
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
    return name


def bpj_status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return dict(kubectl_json(kubectl, "get", "bpj", name, "-n", namespace).get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})
