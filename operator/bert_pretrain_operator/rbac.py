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


#: Status fields the operator owns; a trainer pod must leave them as they are.
OPERATOR_STATUS_FIELDS = (
    "observedGeneration",
    "phase",
    "conditions",
    "jobs",
    "attempt",
    "restarts",
    "startTime",
    "completionTime",
)
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
PROGRESS_POLICY = "bert-trainer-progress"


def progress_policy(trainer_service_account: str) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy (and binding): a trainer pod writes only its job's progress.

    It applies to status writes by the trainer service account in any namespace,
    authenticated with a pod-bound token (the kubelet's, or TokenRequest's). The
    pod's name, which the API server puts in the token's user info, must start
    with ``<job>-train-``: the names the operator gives a job's training pods.
    """
    keep = " && ".join(
        f"object.status.?{field} == oldObject.status.?{field}" for field in OPERATOR_STATUS_FIELDS
    )
    pod_name = f"request.userInfo.extra[{POD_NAME_EXTRA!r}][0]"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": PROGRESS_POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [contract.API_GROUP],
                            "apiVersions": ["*"],
                            "operations": ["UPDATE"],
                            "resources": [f"{contract.PLURAL}/status"],
                        }
                    ]
                },
                "matchConditions": [
                    {
                        "name": "trainer-service-account",
                        "expression": "request.userInfo.username.startsWith("
                        "'system:serviceaccount:') && request.userInfo.username.endsWith("
                        f"':{trainer_service_account}')",
                    }
                ],
                "validations": [
                    {
                        "expression": f"{POD_NAME_EXTRA!r} in request.userInfo.extra && "
                        f"{pod_name}.startsWith(object.metadata.name + '-train-')",
                        "messageExpression": "'a trainer pod may only report the progress of "
                        "its own BertPretrainJob; ' + object.metadata.name + ' is not its job'",
                        "reason": "Forbidden",
                    },
                    {
                        "expression": f"!has(oldObject.status) || ({keep})",
                        "message": "a trainer pod may only write status.progress; the rest of "
                        "the status belongs to the operator",
                        "reason": "Forbidden",
                    },
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": PROGRESS_POLICY},
            "spec": {"policyName": PROGRESS_POLICY, "validationActions": ["Deny"]},
        },
    ]
