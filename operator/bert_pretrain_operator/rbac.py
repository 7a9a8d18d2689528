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

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from bert_pretrain_operator.api import BertPretrainJobStatus
from bert_pretrain_operator.api.status import PreparationStatus
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


#: What pods may write, and nothing else: training pods ``status.progress``, preparation
#: pods their own entry of ``status.preparation.reports``. Every other status field
#: belongs to the operator, including any field added to the status model later: the
#: lists below are derived from the model, not written by hand.
POD_STATUS_FIELDS = ("progress", "preparation")
POD_PREPARATION_FIELDS = ("reports",)


def _fields_except(model: type[BaseModel], pods: tuple[str, ...]) -> tuple[str, ...]:
    """The JSON names of ``model``'s fields, but those in ``pods``."""
    every = (field.alias or name for name, field in model.model_fields.items())
    return tuple(f for f in every if f not in pods)


OPERATOR_STATUS_FIELDS = _fields_except(BertPretrainJobStatus, POD_STATUS_FIELDS)
OPERATOR_PREPARATION_FIELDS = _fields_except(PreparationStatus, POD_PREPARATION_FIELDS)
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
PROGRESS_POLICY = "bert-trainer-progress"


def progress_policy(
    exempt: Sequence[str] = (), name: str = PROGRESS_POLICY
) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy (and binding): a pod writes only its own report.

    It applies to every status write made with a pod-bound token (the kubelet's, or
    TokenRequest's, whose user info names the pod), whatever the service account: the
    chart's trainer account, a job's own ``spec.serviceAccountName``, or any other.
    ``exempt`` names the users it does not apply to: the operator's own service
    account, whose token is pod-bound too when it runs in the cluster. The operator
    names a job's pods after it:

    - training pods ``<job>-train-<attempt>-<index>-<suffix>`` may write status.progress;
    - preparation pods ``<job>-prep-<pass>-<index>-<suffix>`` may write only their own
      entry ``<pass>-<index>`` of status.preparation.reports (and delete none).

    The whole name is matched, not a prefix: ``<job>-train-x``'s pods are not ``<job>``'s.

    Neither may change what the operator owns, nor what the other kind writes.
    """
    keep = " && ".join(
        [
            *(
                f"object.?status.?{field} == oldObject.?status.?{field}"
                for field in OPERATOR_STATUS_FIELDS
            ),
            *(
                f"object.?status.?preparation.?{field} == oldObject.?status.?preparation.?{field}"
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
                        "name": "pod-bound-token",
                        "expression": f"{POD_NAME_EXTRA!r} in request.userInfo.extra",
                    },
                    {
                        "name": "not-the-operator",
                        "expression": f"!(request.userInfo.username in {list(exempt)!r})",
                    },
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
                        # Optional fields: a job without a status yet is covered too.
                        "expression": keep,
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
