"""The operator's API client under API Priority and Fairness: a 429 is waited out, not fatal.

A FlowSchema puts one service account, the operator's stand-in, on a priority level
with no seats of its own and ``Reject``: APF still runs one request of a level when
none of it is running, and answers 429, with a Retry-After, to any other that comes
meanwhile. The shared API server is neither restarted nor reconfigured; no other client
is touched. A validating webhook holds one request of the account in admission, so
its seat stays taken for as long as the test says. ``Kube`` then creates a ConfigMap,
a POST, and meets 429s; the held request is let go, and the same call completes, with
the ConfigMap created once.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import Configuration
from prometheus_client import REGISTRY

from bert_pretrain_operator.kube import Kube
from bpj_devstack import plane
from tests.support import Kubectl, admission_webhook, kubectl_json, wait_for

RBAC = "rbac.authorization.k8s.io"
HOLD_LABEL = "bpj-test/hold-seat"
#: Seconds the webhook holds a request at most: below its timeoutSeconds.
HOLD_SECONDS = 25


def _throttled() -> float:
    labels = {"verb": "create", "resource": "configmaps"}
    return REGISTRY.get_sample_value("bpj_api_throttled_total", labels) or 0.0


def _rejected(kubectl: Kubectl, flow_schema: str) -> float:
    """The API server's count of the FlowSchema's requests it answered 429."""
    text = kubectl("get", "--raw", "/metrics").stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_flowcontrol_rejected_requests_total{")
        and f'flow_schema="{flow_schema}"' in line
    )


@dataclass
class SeatHolder:
    """A validating webhook that keeps labelled ConfigMap creates waiting until released."""

    tag: str
    holding: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    probed: threading.Event = field(default_factory=threading.Event)

    def review(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("dryRun"):
            self.probed.set()
        else:
            self.holding.set()
            self.released.wait(HOLD_SECONDS)
        return {"uid": request["uid"], "allowed": True}


@pytest.fixture
def seat_holder(
    kubectl: Kubectl, devstack: plane.StackState, namespace: str, tmp_path: Path
) -> Iterator[SeatHolder]:
    holder = SeatHolder(uuid.uuid4().hex[:8])
    pki_dir = Path(devstack.run_dir) / "pki"
    with admission_webhook(pki_dir, tmp_path, "seat-hold", holder.review) as server:
        config = f"bpj-test-seat-hold-{holder.tag}"
        webhook = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": config},
            "webhooks": [
                {
                    "name": "seat-hold.devstack.bpj.dev",
                    "clientConfig": server.client_config(),
                    "rules": [
                        {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                         "resources": ["configmaps"]}
                    ],
                    "objectSelector": {"matchLabels": {HOLD_LABEL: holder.tag}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": HOLD_SECONDS + 5,
                }
            ],
        }  # fmt: skip
        kubectl("apply", "-f", "-", stdin=json.dumps(webhook))
        probe = _config_map(namespace, "hold-probe", {HOLD_LABEL: holder.tag})

        def probed() -> bool:
            # The API server picks the configuration up a moment after it is written.
            kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(probe), check=False)
            return holder.probed.is_set()

        try:
            wait_for(probed, 30, "the seat-hold webhook to take effect")
            yield holder
        finally:
            holder.released.set()
            kubectl(
                "delete", "validatingwebhookconfiguration", config, "--ignore-not-found",
                check=False,
            )  # fmt: skip


def _config_map(namespace: str, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "data": {"k": "v"},
    }


@pytest.fixture
def throttled_account(kubectl: Kubectl, namespace: str) -> Iterator[tuple[str, str]]:
    """A service account allowed to edit ``namespace``, on a priority level of no seats.

    Yields its token and the name of its FlowSchema (and priority level).
    """
    name = f"bpj-throttle-{uuid.uuid4().hex[:6]}"
    account = {"name": name, "namespace": namespace}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": account},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": account,
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "PriorityLevelConfiguration",
            "metadata": {"name": name},
            "spec": {
                "type": "Limited",
                "limited": {
                    "nominalConcurrencyShares": 0,
                    "lendablePercent": 0,
                    "borrowingLimitPercent": 0,
                    "limitResponse": {"type": "Reject"},
                },
            },
        },
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": name},
            "spec": {
                "priorityLevelConfiguration": {"name": name},
                "matchingPrecedence": 500,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [
                            {"kind": "ServiceAccount", "serviceAccount": account}
                        ],
                        "resourceRules": [
                            {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                             "namespaces": ["*"], "clusterScope": True}
                        ],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        },
    ]  # fmt: skip
    kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    token = kubectl("create", "token", name, "-n", namespace).stdout.strip()
    try:
        yield token, name
    finally:
        kubectl(
            "delete",
            "flowschema,prioritylevelconfiguration",
            name,
            "--ignore-not-found",
            check=False,
        )


def test_a_throttled_create_completes_once_a_seat_is_free(
    kubectl: Kubectl,
    devstack: plane.StackState,
    namespace: str,
    throttled_account: tuple[str, str],
    seat_holder: SeatHolder,
) -> None:
    token, flow_schema = throttled_account

    def info() -> Configuration:
        return Configuration(
            host=devstack.apiserver_url,
            ssl_ca_cert=str(devstack.ca_cert),
            api_key={"BearerToken": f"Bearer {token}"},
        )

    holding = Kube(info)
    held = threading.Thread(
        target=holding.create,
        args=(_config_map(namespace, "holder", {HOLD_LABEL: seat_holder.tag}),),
        daemon=True,
    )
    held.start()
    assert seat_holder.holding.wait(30), "the account's first request never reached admission"

    kube, before = Kube(info), _throttled()
    outcome: dict[str, Any] = {}

    def create() -> None:
        try:
            outcome["created"] = kube.create(_config_map(namespace, "throttled"))
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    worker = threading.Thread(target=create, daemon=True)
    worker.start()
    # The API server's own count: the client has been refused, and has asked again.
    wait_for(lambda: _rejected(kubectl, flow_schema) >= 2, 20, "the create to meet 429s")
    assert worker.is_alive() and not outcome, outcome  # waiting it out, not failed
    seat_holder.released.set()
    wait_for(lambda: not worker.is_alive(), 60, "the create to complete")
    assert outcome == {"created": True}, outcome
    assert _throttled() - before >= 2
    stored = kubectl_json(kubectl, "get", "configmap", "throttled", "-n", namespace)
    assert stored["data"] == {"k": "v"}
    held.join(30)
