"""The trainer pods' identity in a namespace: a ServiceAccount and the one permission it needs.

Worker 0 of a training Job writes ``status.progress`` of its BertPretrainJob, and
each preparation pod its own entry of ``status.preparation.reports``
(bert_trainer.contract). RBAC cannot name "the job this pod belongs to", so the
Role grants get/patch on ``bertpretrainjobs/status`` in the namespace, and the
chart's ValidatingAdmissionPolicy narrows it further (a pod may only write the
progress of its own job). The Helm chart renders the same objects; a test keeps
the two in step.
"""

from __future__ import annotations

from typing import Any

from bert_trainer import contract


def trainer_rbac(namespace: str, service_account: str) -> list[dict[str, Any]]:
    """The trainer's ServiceAccount, and a Role and RoleBinding of the same name.

    One name for the three: the chart makes it unique per release
    (``<fullname>-trainer``), so two releases serving one namespace do not collide.
    """
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": service_account, "namespace": namespace},
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
            "metadata": {"name": service_account, "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": service_account,
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
    "stageProgress",
)
#: Fields of status.preparation the operator owns (it aggregates the pods' reports).
OPERATOR_PREPARATION_FIELDS = (
    "pass",
    "workers",
    "files",
    "bytes",
    "chunks",
    "bytesDone",
    "instances",
)
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
PROGRESS_POLICY = "bert-trainer-progress"


def progress_policy(
    trainer_service_account: str, name: str = PROGRESS_POLICY
) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy (and binding): a trainer pod writes only its own report.

    It applies to status writes by the trainer service account in any namespace,
    authenticated with a pod-bound token (the kubelet's, or TokenRequest's), whose
    user info names the pod. The operator names a job's pods after it:

    - training pods ``<job>-train-<attempt>-<index>-<suffix>`` may write status.progress;
    - preparation pods ``<job>-prep-<pass>-<index>-<suffix>`` may write only their own
      entry ``<pass>-<index>`` of status.preparation.reports (and delete none).

    The whole name is matched, not a prefix: ``<job>-train-x``'s pods are not ``<job>``'s.

    Neither may change what the operator owns, nor what the other kind writes.
    """
    keep = " && ".join(
        [
            *(
                f"object.status.?{field} == oldObject.status.?{field}"
                for field in OPERATOR_STATUS_FIELDS
            ),
            *(
                f"object.status.?preparation.?{field} == oldObject.status.?preparation.?{field}"
                for field in OPERATOR_PREPARATION_FIELDS
            ),
        ]
    )

    def reports(obj: str) -> str:
        return (
            f"has({obj}.status) && has({obj}.status.preparation) && "
            f"has({obj}.status.preparation.reports) ? {obj}.status.preparation.reports : {{}}"
        )

    own_entry = "variables.podName.startsWith(object.metadata.name + '-prep-' + k + '-')"
    # What follows "<job>-train-" / "<job>-prep-" in the pod's name must be the rest of
    # the name the Job controller gives: a prefix alone would let the pods of a job named
    # "<job>-train-x" or "<job>-prep-count" in the namespace pass as this job's.
    rest = "variables.podName.substring(size(object.metadata.name) + {})"
    train_rest = rest.format(len("-train-")) + ".matches('^[0-9]+-[0-9]+-[a-z0-9]+$')"
    passes = "|".join(contract.PREPARE_PASSES)
    prep_rest = rest.format(len("-prep-")) + f".matches('^({passes})-[0-9]+-[a-z0-9]+$')"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
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
                "variables": [
                    {
                        "name": "podName",
                        "expression": f"{POD_NAME_EXTRA!r} in request.userInfo.extra ? "
                        f"request.userInfo.extra[{POD_NAME_EXTRA!r}][0] : ''",
                    },
                    {
                        "name": "trainPod",
                        "expression": "variables.podName.startsWith(object.metadata.name "
                        f"+ '-train-') && {train_rest}",
                    },
                    {
                        "name": "preparePod",
                        "expression": "variables.podName.startsWith(object.metadata.name "
                        f"+ '-prep-') && {prep_rest}",
                    },
                    {"name": "oldReports", "expression": reports("oldObject")},
                    {"name": "newReports", "expression": reports("object")},
                ],
                "validations": [
                    {
                        "expression": "variables.trainPod || variables.preparePod",
                        "messageExpression": "'a trainer pod may only report the progress of "
                        "its own BertPretrainJob; ' + object.metadata.name + ' is not its job'",
                        "reason": "Forbidden",
                    },
                    {
                        "expression": f"!has(oldObject.status) || ({keep})",
                        "message": "a trainer pod may only write status.progress or its own "
                        "entry of status.preparation.reports; the rest of the status belongs "
                        "to the operator",
                        "reason": "Forbidden",
                    },
                    {
                        "expression": "!variables.trainPod || "
                        "variables.newReports == variables.oldReports",
                        "message": "a training pod may not write status.preparation.reports",
                        "reason": "Forbidden",
                    },
                    {
                        "expression": "!variables.preparePod || "
                        "object.?status.?progress == oldObject.?status.?progress",
                        "message": "a preparation pod may not write status.progress",
                        "reason": "Forbidden",
                    },
                    {
                        "expression": "!variables.preparePod || ("
                        "variables.oldReports.all(k, k in variables.newReports) && "
                        f"variables.newReports.all(k, {own_entry} || "
                        "(k in variables.oldReports && "
                        "variables.newReports[k] == variables.oldReports[k])))",
                        "messageExpression": "'a preparation pod may only write its own entry "
                        "of status.preparation.reports (<pass>-<index> of pod ' "
                        "+ variables.podName + ')'",
                        "reason": "Forbidden",
                    },
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        },
    ]
