"""The trainer's service account may patch its own job's status.progress, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.rbac import progress_policy
from bert_pretrain_operator.settings import Settings
from bert_trainer import contract
from bpj_devstack import plane
from tests.support import Kubectl, kubectl_json, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def policy_installed(kubectl: Kubectl) -> None:
    # No exemption: the suite's operators run with the admin's kubeconfig, not as pods.
    objects = progress_policy()
    kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )


def _job(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = name
    return dict(doc)


def _trainer_client(
    kubectl: Kubectl,
    devstack: plane.StackState,
    namespace: str,
    pod: str,
    sa: str | None = None,
) -> Any:
    """An API client authenticated as ``sa`` (the trainer's) with a token bound to ``pod``."""
    from kubernetes import client

    sa = sa or Settings().trainer_service_account
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "namespace": namespace},
        "spec": {
            "serviceAccountName": sa,
            "nodeSelector": {"no-such-node": "true"},
            "containers": [{"name": "c", "image": "trainer:test"}],
        },
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    token = kubectl(
        "create",
        "token",
        sa,
        "-n",
        namespace,
        "--bound-object-kind=Pod",
        f"--bound-object-name={pod}",
    ).stdout.strip()
    cfg = client.Configuration()
    cfg.host = devstack.apiserver_url
    cfg.ssl_ca_cert = devstack.ca_cert
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.CustomObjectsApi(client.ApiClient(cfg))


def _patch_status(api: Any, namespace: str, name: str, status: dict[str, Any]) -> Any:
    return api.patch_namespaced_custom_object_status(
        contract.API_GROUP,
        contract.API_VERSION,
        namespace,
        contract.PLURAL,
        name,
        {"status": status},
    )


def _assert_refused(
    api: Any, namespace: str, job: str, status: dict[str, Any], message: str
) -> None:
    """The policy refuses this status patch (403 or 422), with ``message`` in its words."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as denied:
        _patch_status(api, namespace, job, status)
    assert denied.value.status in (403, 422), status
    assert message in denied.value.body, (status, denied.value.body)


def _wait_until_the_policy_is_in_force(
    kubectl: Kubectl, devstack: plane.StackState, namespace: str
) -> None:
    """The API server compiles an applied policy asynchronously: wait until this version
    denies what only it denies (a look-alike job's pod writing a job's progress)."""
    from kubernetes.client.exceptions import ApiException

    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_job("probe")))
    lookalike = _trainer_client(kubectl, devstack, namespace, "probe-train-x-train-1-0-zzzzz")

    def denied() -> bool:
        try:
            _patch_status(lookalike, namespace, "probe", {"progress": {"step": 1}})
        except ApiException as e:
            if e.status in (403, 422) and "is not its job" in str(e.body):
                return True
            raise
        return False

    wait_for(denied, 60, "the progress policy to be in force")


def test_trainer_token_patches_only_its_own_jobs_progress(
    kubectl: Kubectl,
    devstack: plane.StackState,
    namespace: str,
    crd_installed: None,
    policy_installed: None,
) -> None:
    from kubernetes.client.exceptions import ApiException

    _wait_until_the_policy_is_in_force(kubectl, devstack, namespace)
    for name in ("alpha", "beta"):
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_job(name)))
    api = _trainer_client(kubectl, devstack, namespace, "alpha-train-1-0-abcde")

    progress = {"step": 7, "totalSteps": 20, "loss": 5.25}
    patched = _patch_status(api, namespace, "alpha", {"progress": progress})
    assert patched["status"]["progress"] == progress

    with pytest.raises(ApiException) as other_job:
        _patch_status(api, namespace, "beta", {"progress": progress})
    assert other_job.value.status in (403, 422)
    assert "only report the progress of its own BertPretrainJob" in other_job.value.body

    with pytest.raises(ApiException) as phase:
        _patch_status(api, namespace, "alpha", {"phase": "Succeeded"})
    assert phase.value.status in (403, 422)
    assert "may only write status.progress" in phase.value.body

    with pytest.raises(ApiException) as spec:
        api.patch_namespaced_custom_object(
            contract.API_GROUP,
            contract.API_VERSION,
            namespace,
            contract.PLURAL,
            "alpha",
            {"spec": {"training": {"trainSteps": 99}}},
        )
    assert spec.value.status == 403

    can_i = kubectl(
        "auth",
        "can-i",
        "delete",
        "bertpretrainjobs",
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:{Settings().trainer_service_account}",
        check=False,
    )
    assert can_i.stdout.strip() == "no"


def test_a_preparation_pod_writes_only_its_own_report(
    kubectl: Kubectl,
    devstack: plane.StackState,
    namespace: str,
    crd_installed: None,
    policy_installed: None,
) -> None:

    _wait_until_the_policy_is_in_force(kubectl, devstack, namespace)
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_job("gamma")))
    pod = _trainer_client(kubectl, devstack, namespace, "gamma-prep-count-1-abcde")
    peer = _trainer_client(kubectl, devstack, namespace, "gamma-prep-count-2-fghij")
    trainer = _trainer_client(kubectl, devstack, namespace, "gamma-train-1-0-klmno")
    # The pods of jobs named "gamma-prep-count" and "gamma-train-x" start like gamma's.
    lookalike = _trainer_client(kubectl, devstack, namespace, "gamma-prep-count-prep-plan-0-pqrst")
    train_lookalike = _trainer_client(kubectl, devstack, namespace, "gamma-train-x-train-1-0-uvwxy")

    def reports(key: str, value: dict[str, Any]) -> dict[str, Any]:
        return {"preparation": {"reports": {key: value}}}

    mine = {"bytesDone": 10, "bytesTotal": 40, "done": False}
    stored = _patch_status(pod, namespace, "gamma", reports("count-1", mine))
    assert stored["status"]["preparation"]["reports"] == {"count-1": mine}
    theirs = {"bytesDone": 5, "done": True}
    _patch_status(peer, namespace, "gamma", reports("count-2", theirs))

    refused: list[tuple[Any, dict[str, Any], str]] = [
        # Another index's entry, an entry of another pass, another pod's entry removed.
        (pod, reports("count-2", {"done": False}), "only write its own entry"),
        (pod, reports("records-1", {"done": True}), "only write its own entry"),
        (pod, {"preparation": {"reports": {"count-2": None}}}, "only write its own entry"),
        # What the operator aggregates, and what training pods write.
        (pod, {"preparation": {"workers": 64}}, "belongs to the operator"),
        (pod, {"stageProgress": "done"}, "belongs to the operator"),
        (pod, {"progress": {"step": 3}}, "may not write status.progress"),
        (trainer, reports("count-1", {"done": True}), "may not write status.preparation"),
        # Look-alike names: not gamma's pods at all.
        (lookalike, reports("count-prep", {"done": True}), "is not its job"),
        (train_lookalike, {"progress": {"step": 3}}, "is not its job"),
    ]
    for client, status, message in refused:
        _assert_refused(client, namespace, "gamma", status, message)
    final = kubectl_json(kubectl, "get", "bpj", "gamma", "-n", namespace)["status"]
    assert final["preparation"]["reports"] == {"count-1": mine, "count-2": theirs}


def test_a_jobs_own_service_account_is_policed_too(
    kubectl: Kubectl,
    devstack: plane.StackState,
    namespace: str,
    crd_installed: None,
    policy_installed: None,
) -> None:
    """spec.serviceAccountName's pods get the same Role, and the same narrowing."""

    from bert_pretrain_operator.rbac import trainer_rbac

    _wait_until_the_policy_is_in_force(kubectl, devstack, namespace)
    own = "team-trainer"
    objects = trainer_rbac(namespace, own)
    kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    for name in ("delta", "epsilon", "zeta"):
        doc = _job(name)
        doc["spec"]["serviceAccountName"] = own
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(doc))
    api = _trainer_client(kubectl, devstack, namespace, "delta-train-1-0-abcde", sa=own)
    assert _patch_status(api, namespace, "delta", {"progress": {"step": 2}})["status"][
        "progress"
    ] == {"step": 2}
    refused = [
        ("delta", {"phase": "Succeeded"}, "belongs to the operator"),
        # Not in the hand-written list the policy once had: every field of the status
        # model but the pods' own is the operator's now.
        ("delta", {"kopf": {"progress": {}}}, "belongs to the operator"),
        ("delta", {"restarts": 0}, "belongs to the operator"),
        ("epsilon", {"progress": {"step": 2}}, "is not its job"),
    ]
    for job, status, message in refused:
        _assert_refused(api, namespace, job, status, message)
    # A job the operator has not written a status for yet is the operator's all the same.
    fresh = _trainer_client(kubectl, devstack, namespace, "zeta-train-1-0-fghij", sa=own)
    _assert_refused(fresh, namespace, "zeta", {"phase": "Succeeded"}, "belongs to the operator")
