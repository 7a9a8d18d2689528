"""The local stack behaves like the real thing: CEL, scheduling, Jobs, chaos, RBAC, GCS."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from bpj_devstack import kwok_config, plane
from bpj_devstack.versions import KUBERNETES_VERSION
from tests.support import Kubectl, kubectl_json, wait_for

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.devstack.test"},
    "spec": {
        "group": "devstack.test",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "min": {"type": "integer"},
                                    "max": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.min <= self.max",
                                        "message": "spec.min must not exceed spec.max",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def _tpu_job(name: str, accelerator: str, topology: str, hosts: int) -> dict[str, Any]:
    """An Indexed Job shaped like a GKE multi-host TPU slice workload."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": hosts,
            "parallelism": hosts,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {
                        kwok_config.LABEL_ACCELERATOR: accelerator,
                        kwok_config.LABEL_TOPOLOGY: topology,
                    },
                    "tolerations": [
                        {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "example.invalid/trainer:1",
                            "resources": {
                                "requests": {"google.com/tpu": "4"},
                                "limits": {"google.com/tpu": "4"},
                            },
                        }
                    ],
                }
            },
        },
    }


def _pods(kubectl: Kubectl, namespace: str, job: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl_json(
        kubectl, "get", "pods", "-n", namespace, "-l", f"job-name={job}"
    )["items"]
    return items


def _job_condition(kubectl: Kubectl, namespace: str, job: str, kind: str) -> bool:
    obj = kubectl_json(kubectl, "get", "job", job, "-n", namespace)
    return any(
        c["type"] == kind and c["status"] == "True"
        for c in obj.get("status", {}).get("conditions", [])
    )


def test_version_reports_the_release(kubectl: Kubectl) -> None:
    out = json.loads(kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_cel_rule_rejects_a_violating_object(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps(WIDGET_CRD))
    kubectl("wait", "--for=condition=Established", "crd/widgets.devstack.test")
    ok = {
        "apiVersion": "devstack.test/v1",
        "kind": "Widget",
        "metadata": {"name": "ok", "namespace": namespace},
        "spec": {"min": 1, "max": 2},
    }
    bad = {**ok, "metadata": {"name": "bad", "namespace": namespace}, "spec": {"min": 3, "max": 2}}
    kubectl("create", "-f", "-", stdin=json.dumps(ok))
    rejected = kubectl("create", "-f", "-", stdin=json.dumps(bad), check=False)
    assert rejected.returncode != 0
    assert "spec.min must not exceed spec.max" in rejected.stderr


def test_tpu_job_is_scheduled_on_matching_nodes_and_completes(
    kubectl: Kubectl, namespace: str
) -> None:
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=json.dumps(_tpu_job("slice", "tpu-v5-lite-podslice", "2x4", hosts=2)),
    )
    wait_for(
        lambda: _job_condition(kubectl, namespace, "slice", "Complete"),
        90,
        "the TPU job to complete",
    )
    pods = _pods(kubectl, namespace, "slice")
    assert len(pods) == 2
    pool = next(p for p in kwok_config.DEFAULT_POOLS if p.name == "tpu-v5e-2x4")
    assert {p["spec"]["nodeName"] for p in pods} == set(pool.node_names())
    assert {
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods
    } == {"0", "1"}
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)


def test_tpu_job_without_matching_pool_stays_unschedulable(
    kubectl: Kubectl, namespace: str
) -> None:
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=json.dumps(_tpu_job("nowhere", "tpu-v5p-slice", "4x4x4", hosts=16)),
    )

    def unschedulable() -> bool:
        pods = _pods(kubectl, namespace, "nowhere")
        return len(pods) == 16 and all(
            any(
                c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                for c in p["status"].get("conditions", [])
            )
            for p in pods
        )

    wait_for(unschedulable, 60, "pods to be marked Unschedulable")
    pod = _pods(kubectl, namespace, "nowhere")[0]
    message = next(c["message"] for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert "didn't match Pod's node affinity/selector" in message
    assert all(p["status"]["phase"] == "Pending" for p in _pods(kubectl, namespace, "nowhere"))


def test_chaos_stage_preempts_a_pod_with_disruption_target(
    kubectl: Kubectl, namespace: str
) -> None:
    job = _tpu_job("preempted", "tpu-v4-podslice", "2x2x1", hosts=1)
    # Long enough that the test can annotate the pod while it is Running.
    job["spec"]["template"]["metadata"] = {"annotations": {kwok_config.RUN_FOR: "10m"}}
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(job))
    wait_for(
        lambda: any(
            p["status"].get("phase") == "Running" for p in _pods(kubectl, namespace, "preempted")
        ),
        60,
        "a running pod",
    )
    pod = _pods(kubectl, namespace, "preempted")[0]["metadata"]["name"]
    kubectl("annotate", "pod", pod, "-n", namespace, f"{kwok_config.PREEMPT}=true")
    wait_for(
        lambda: _job_condition(kubectl, namespace, "preempted", "Failed"), 60, "the job to fail"
    )
    status = kubectl_json(kubectl, "get", "pod", pod, "-n", namespace)["status"]
    assert status["phase"] == "Failed"
    disruption = [c for c in status["conditions"] if c["type"] == "DisruptionTarget"]
    assert disruption
    assert disruption[0]["status"] == "True"


def test_service_account_token_is_authorized_exactly_as_its_role_says(
    kubectl: Kubectl, namespace: str, devstack: plane.StackState
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl(
        "create",
        "role",
        "configmap-reader",
        "-n",
        namespace,
        "--verb=get,list",
        "--resource=configmaps",
    )
    kubectl(
        "create",
        "rolebinding",
        "reader",
        "-n",
        namespace,
        "--role=configmap-reader",
        f"--serviceaccount={namespace}:reader",
    )
    kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=a=1")
    token = kubectl("create", "token", "reader", "-n", namespace).stdout.strip()

    cfg = client.Configuration()
    cfg.host = devstack.apiserver_url
    cfg.ssl_ca_cert = str(plane.Path(devstack.run_dir) / "pki" / "ca.crt")
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    core = client.CoreV1Api(client.ApiClient(cfg))

    assert core.read_namespaced_config_map("settings", namespace).data == {"a": "1"}
    with pytest.raises(ApiException) as denied_write:
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "new"}, "data": {"b": "2"}}
        )
    assert denied_write.value.status == 403
    with pytest.raises(ApiException) as denied_secret:
        core.list_namespaced_secret(namespace)
    assert denied_secret.value.status == 403
    with pytest.raises(ApiException) as other_namespace:
        core.list_namespaced_config_map("default")
    assert other_namespace.value.status == 403
    review = client.AuthenticationV1Api(client.ApiClient(cfg)).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:reader"


def test_gcs_emulator_round_trips_an_object(gcs_bucket: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="bpj-test", credentials=AnonymousCredentials())
    payload = uuid.uuid4().bytes * 1000
    client.bucket(gcs_bucket).blob("dir/object.bin").upload_from_string(payload)
    assert client.bucket(gcs_bucket).blob("dir/object.bin").download_as_bytes() == payload
    assert [b.name for b in client.list_blobs(gcs_bucket, prefix="dir/")] == ["dir/object.bin"]


def test_nodes_look_like_gke_tpu_node_pools(kubectl: Kubectl) -> None:
    nodes = {n["metadata"]["name"]: n for n in kubectl_json(kubectl, "get", "nodes")["items"]}
    for pool in kwok_config.DEFAULT_POOLS:
        for name in pool.node_names():
            node = nodes[name]
            labels = node["metadata"]["labels"]
            assert labels[kwok_config.LABEL_NODEPOOL] == pool.name
            if pool.accelerator:
                assert labels[kwok_config.LABEL_ACCELERATOR] == pool.accelerator
                assert labels[kwok_config.LABEL_TOPOLOGY] == pool.topology
                assert node["status"]["allocatable"]["google.com/tpu"] == "4"
                assert {
                    "key": "google.com/tpu",
                    "value": "present",
                    "effect": "NoSchedule",
                } in node["spec"]["taints"]
            else:
                assert kwok_config.LABEL_ACCELERATOR not in labels
