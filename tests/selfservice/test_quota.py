"""Quotas: a ResourceQuota on google.com/tpu caps a namespace's chips; Kueue holds queued jobs.

A ResourceQuota of 4 `requests.google.com/tpu` in the namespace: the first job's training
pod (a one-VM, 4-chip v5e 2x2 slice) is created, the second job's is refused by the
quota admission plugin ("exceeded quota"), which the Job controller reports only as a
FailedCreate Event on its Job. The v5e 2x2 shape has no node pool in the local stack,
so the first pod stays Pending and keeps holding its 4 chips (quota counts every pod
that has not finished) for as long as the test needs.

A job with spec.queueName gets a suspended training Job: it creates no pods and so holds
no quota until Kueue admits it (Kueue itself is not installed locally; docs/gke.md and
docs/self-service.md show its ClusterQueue and LocalQueue).

The operator runs as a process watching only this module's namespace (conftest.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bert_pretrain_operator.render import names
from bpj_devstack.kwok_pods import PodAnnotator
from tests.selfservice.conftest import RECORDS_VOCAB, bpj_status, condition
from tests.support import Kubectl, kubectl_json, wait_for

pytestmark = pytest.mark.usefixtures("quota_operator")

TPU_QUOTA = "requests.google.com/tpu"
QUOTA = {
    "apiVersion": "v1",
    "kind": "ResourceQuota",
    "metadata": {"name": "tpu"},
    "spec": {"hard": {TPU_QUOTA: "4"}},
}


def _job(bucket: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": name},
        "spec": {
            "data": {
                "tfrecords": f"gs://{bucket}/records/*.tfrecord",
                "vocab": f"gs://{bucket}/vocab.txt",
            },
            "model": {"size": "tiny"},
            "training": {"globalBatchSize": 8, "trainSteps": 20},
            # One TPU VM with 4 chips; no such node pool locally: the pod stays Pending.
            "tpu": {"accelerator": "tpu-v5-lite-podslice", "topology": "2x2"},
            "output": f"gs://{bucket}/runs/{name}",
            **spec,
        },
    }


def _apply(kubectl: Kubectl, namespace: str, doc: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(doc))


def _pods(kubectl: Kubectl, namespace: str, job: str) -> list[dict[str, Any]]:
    selector = f"{names.LABEL_JOB}={job},{names.LABEL_STAGE}=train"
    return list(kubectl_json(kubectl, "get", "pods", "-n", namespace, "-l", selector)["items"])


def _failed_creates(kubectl: Kubectl, namespace: str, job: str) -> list[str]:
    events = kubectl_json(
        kubectl,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate",
    )["items"]
    return [e["message"] for e in events]


@dataclass
class QuotaScenario:
    namespace: str
    refusals: list[str]
    """FailedCreate messages on the second job's training Job."""


@pytest.fixture(scope="module")
def scenario(
    kubectl: Kubectl, kube_api: Any, quota_namespace: str, records_bucket: str
) -> Iterator[QuotaScenario]:
    ns = quota_namespace
    with PodAnnotator(kube_api) as pods:
        # Each job's KWOK check pod reports the given vocab's size, as the real one would.
        for job in ("first", "second", "queued"):
            pods.report_check(ns, job, {"vocabSize": len(RECORDS_VOCAB)})
        yield _scenario(kubectl, ns, records_bucket)


def _scenario(kubectl: Kubectl, ns: str, records_bucket: str) -> QuotaScenario:
    _apply(kubectl, ns, QUOTA)
    # The quota admission plugin refuses every pod of a quota the controller has not
    # counted yet ("status unknown for quota"); wait for its first count.
    wait_for(
        lambda: (
            (kubectl_json(kubectl, "get", "resourcequota", "tpu", "-n", ns).get("status") or {})
            .get("used", {})
            .get(TPU_QUOTA)
            == "0"
        ),
        30,
        "the quota controller to count the namespace",
    )
    _apply(kubectl, ns, _job(records_bucket, "first"))
    wait_for(lambda: len(_pods(kubectl, ns, "first")) == 1, 60, "the first job's training pod")
    _apply(kubectl, ns, _job(records_bucket, "second"))
    _apply(kubectl, ns, _job(records_bucket, "queued", queueName="team-a-tpu"))
    refusals: list[str] = []

    def refused() -> bool:
        refusals[:] = _failed_creates(kubectl, ns, names.train_job("second", 1))
        return bool(refusals)

    wait_for(refused, 60, "the Job controller's FailedCreate on the second job")
    return QuotaScenario(ns, refusals)


def test_quota_admits_the_first_jobs_pods_and_refuses_the_seconds(
    kubectl: Kubectl, scenario: QuotaScenario
) -> None:
    ns = scenario.namespace
    (pod,) = _pods(kubectl, ns, "first")
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["requests"]["google.com/tpu"] == "4"
    quota = kubectl_json(kubectl, "get", "resourcequota", "tpu", "-n", ns)["status"]
    assert quota["used"][TPU_QUOTA] == quota["hard"][TPU_QUOTA] == "4"

    # The operator created the second job's training Job; its pods were refused.
    train = kubectl_json(kubectl, "get", "job", names.train_job("second", 1), "-n", ns)
    assert not train["spec"].get("suspend")
    assert _pods(kubectl, ns, "second") == []
    message = scenario.refusals[0]
    assert "exceeded quota: tpu" in message, message
    assert f"requested: {TPU_QUOTA}=4, used: {TPU_QUOTA}=4, limited: {TPU_QUOTA}=4" in message, (
        message
    )


def test_a_queued_job_holds_no_quota_until_kueue_admits_it(
    kubectl: Kubectl, scenario: QuotaScenario
) -> None:
    ns = scenario.namespace

    def waiting() -> bool:
        st = bpj_status(kubectl, ns, "queued")
        return condition(st, "Admitted").get("reason") == "WaitingForAdmission"

    wait_for(waiting, 30, "the queued job's WaitingForAdmission")
    st = bpj_status(kubectl, ns, "queued")
    assert st["phase"] == "Pending"
    assert "team-a-tpu" in condition(st, "Admitted")["message"]
    train = kubectl_json(kubectl, "get", "job", names.train_job("queued", 1), "-n", ns)
    assert train["metadata"]["labels"][names.LABEL_KUEUE_QUEUE] == "team-a-tpu"
    assert train["spec"]["suspend"] is True
    assert _pods(kubectl, ns, "queued") == []
    assert _failed_creates(kubectl, ns, names.train_job("queued", 1)) == []
    # What `kubectl get bpj` shows: the queued job Pending.
    (row,) = [
        line.split()
        for line in kubectl("get", "bpj", "-n", ns).stdout.splitlines()
        if line.startswith("queued ")
    ]
    assert row[1] == "Pending"


def test_only_the_requests_prefix_caps_tpus(kubectl: Kubectl, quota_namespace: str) -> None:
    """`google.com/tpu` and `limits.google.com/tpu` are accepted in a quota and cap nothing."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tpu-probe"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "resources": {
                        "requests": {"google.com/tpu": "4"},
                        "limits": {"google.com/tpu": "4"},
                    },
                }
            ]
        },
    }
    for key in ("google.com/tpu", "limits.google.com/tpu"):
        ns = f"{quota_namespace}-{key.split('.')[0]}"
        kubectl("create", "namespace", ns)
        try:
            wait_for(
                lambda: kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,  # noqa: B023
                30,
                "the default service account",
            )
            _apply(kubectl, ns, {**QUOTA, "spec": {"hard": {key: "0"}}})
            quota = kubectl_json(kubectl, "get", "resourcequota", "tpu", "-n", ns)
            out = kubectl(
                "apply", "--dry-run=server", "-n", ns, "-f", "-",
                stdin=json.dumps(pod), check=False,
            )  # fmt: skip
            assert out.returncode == 0, f"{key} capped the pod: {out.stderr}"
            assert key not in (quota.get("status") or {}).get("used", {})
        finally:
            kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_quota_exceeded_shows_in_the_jobs_status(kubectl: Kubectl, scenario: QuotaScenario) -> None:
    """The operator reads the training Job's FailedCreate Events (docs/self-service.md)."""
    ns = scenario.namespace

    def reported() -> bool:
        trained = condition(bpj_status(kubectl, ns, "second"), "Trained")
        return trained.get("reason") == "QuotaExceeded"

    wait_for(reported, 15, "reason QuotaExceeded on the second job")
    st = bpj_status(kubectl, ns, "second")
    trained = condition(st, "Trained")
    assert trained["status"] == "False"
    assert "exceeded quota" in trained["message"], trained
    assert st["phase"] == "Pending", st
    # The first job is unaffected: its pod exists (it waits for a node, not for quota).
    assert condition(bpj_status(kubectl, ns, "first"), "Trained").get("reason") != "QuotaExceeded"
