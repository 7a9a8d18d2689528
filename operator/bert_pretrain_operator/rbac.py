"""The trainer pods' identity in a namespace: a ServiceAccount and the one permission it needs.

Worker 0 of a training Job writes ``status.progress`` of its BertPretrainJob
(bert_trainer.contract). RBAC cannot name "the job this pod belongs to", so the
Role grants get/patch on ``bertpretrainjobs/status`` in the namespace, and the
chart's ValidatingAdmissionPolicy narrows it further (a pod may only write the
progress of its own job). The Helm chart renders the same objects; a test keeps
the two in step.
"""

from __future__ import annotations

from typing import Any

from bert_trainer import contract

TRAINER_ROLE = "bert-trainer"


def trainer_rbac(namespace: str, service_account: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": TRAINER_ROLE, "namespace": namespace},
            "rules": [
                {
                    "apiGroups": [contract.API_GROUP],
                    "resources": [f"{contract.PLURAL}/status"],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": TRAINER_ROLE, "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": TRAINER_ROLE,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
            ],
        },
    ]
