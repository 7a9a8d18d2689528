"""The chart's self-service objects as rendered: user roles, guardrail policies, their values.

- userRoles: the view/edit ClusterRoles, their rules and aggregation labels.
- guardrails: off by default; on, two ValidatingAdmissionPolicies and bindings shaped as
  docs/self-service.md says, a ConfigMap per namespace of `guardrails.namespaces` with
  every value as the string the policy parses; values.schema.json refuses bad limits.
- `helm lint --strict` and `kubeconform -strict` (schemas from the local API server)
  pass with everything on.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.tpu_catalogue import Accelerator
from bert_trainer import contract
from bpj_devstack import plane, schemas
from tests.chart.helpers import CHART, KUBE_VERSION, Helm, Render, of_kind, template_args

GUARDRAIL_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
LIMITS: dict[str, Any] = {
    "allowedAccelerators": ["tpu-v5-lite-podslice", "tpu-v6e-slice"],
    "allowedTopologies": ["2x2", "2x4", "tpu-v6e-slice/4x4"],
    "maxChips": 16,
    "requireSpot": True,
    "maxTrainSteps": 1000000,
    "maxActiveDeadlineSeconds": 604800,
    "allowedOutputPrefixes": ["gs://team-a-bucket/", "gs://shared-bucket/team-a/"],
    "allowedImagePrefixes": ["ghcr.io/bert-pretrain-operator/", "europe-docker.pkg.dev/a/b:"],
    "allowedQueueNames": ["team-a-tpu"],
}
GUARDRAILS_ON = {
    "guardrails": {
        "enabled": True,
        "namespaces": {"team-a": LIMITS, "team-b": {"requireSpot": False, "maxChips": 8}},
    }
}

#: The guardrails policy of the default test release "bpj": named per release.
GUARDRAILS = "bpj-bert-pretrain-operator-guardrails"


@pytest.fixture(scope="module")
def guardrails_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("values") / "guardrails.yaml"
    path.write_text(yaml.safe_dump(GUARDRAILS_ON))
    return path


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return obj


# --- user roles ---------------------------------------------------------------------------


def test_user_roles_are_aggregated_by_default(render: Render) -> None:
    objects = render(release="bpj")
    view = _named(objects, "ClusterRole", "bpj-bert-pretrain-operator-view")
    edit = _named(objects, "ClusterRole", "bpj-bert-pretrain-operator-edit")
    group = contract.API_GROUP
    assert view["rules"] == [
        {
            "apiGroups": [group],
            "resources": ["bertpretrainjobs", "bertpretrainjobs/status"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert edit["rules"] == [
        {
            "apiGroups": [group],
            "resources": ["bertpretrainjobs"],
            "verbs": [
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            ],
        },
        {
            "apiGroups": [group],
            "resources": ["bertpretrainjobs/status"],
            "verbs": ["get", "list", "watch"],
        },
    ]

    def aggregated_to(role: dict[str, Any]) -> set[str]:
        prefix = "rbac.authorization.k8s.io/aggregate-to-"
        return {
            key.removeprefix(prefix)
            for key, value in role["metadata"]["labels"].items()
            if key.startswith(prefix) and value == "true"
        }

    assert aggregated_to(view) == {"view", "edit", "admin"}
    assert aggregated_to(edit) == {"edit", "admin"}

    plain = render(sets=("userRoles.aggregate=false",))
    for role in of_kind(plain, "ClusterRole"):
        assert not aggregated_to(role), role["metadata"]["name"]
    none = render(sets=("userRoles.enabled=false",))
    assert [r["metadata"]["name"] for r in of_kind(none, "ClusterRole")] == [
        "bpj-bert-pretrain-operator"
    ]


# --- guardrails ---------------------------------------------------------------------------


def test_guardrails_are_off_by_default(render: Render) -> None:
    objects = render()
    names = [o["metadata"]["name"] for o in objects if o["kind"] in GUARDRAIL_KINDS]
    assert sorted(names) == ["bpj-bert-pretrain-operator-trainer-progress"] * 2
    assert of_kind(objects, "ConfigMap") == []


def test_guardrails_policies_and_bindings(render: Render, guardrails_values: Path) -> None:
    objects = render(values=(guardrails_values,))
    policy = _named(objects, "ValidatingAdmissionPolicy", GUARDRAILS)["spec"]
    assert policy["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    assert policy["failurePolicy"] == "Fail"
    (rule,) = policy["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["bertpretrainjobs"]
    assert rule["operations"] == ["CREATE", "UPDATE"]
    for validation in policy["validations"]:
        assert validation["messageExpression"].startswith(f'"{GUARDRAILS}: spec.')
        assert validation["messageExpression"].rstrip().endswith("variables.source")
        assert validation["reason"] == "Forbidden"
    binding = _named(objects, "ValidatingAdmissionPolicyBinding", GUARDRAILS)
    assert binding["spec"] == {
        "policyName": GUARDRAILS,
        "validationActions": ["Deny"],
        # No namespace: the ConfigMap is looked up in the namespace of the job.
        "paramRef": {"name": "bpj-guardrails", "parameterNotFoundAction": "Allow"},
    }
    params = _named(objects, "ValidatingAdmissionPolicyBinding", f"{GUARDRAILS}-params")
    assert params["spec"] == {
        "policyName": f"{GUARDRAILS}-params",
        "validationActions": ["Deny"],
    }
    params_policy = _named(objects, "ValidatingAdmissionPolicy", f"{GUARDRAILS}-params")
    (cm_rule,) = params_policy["spec"]["matchConstraints"]["resourceRules"]
    assert cm_rule["resourceNames"] == ["bpj-guardrails"]
    assert cm_rule["operations"] == ["CREATE", "UPDATE", "DELETE"]

    tuned = render(
        values=(guardrails_values,),
        sets=(
            "guardrails.parameterNotFoundAction=Deny",
            "guardrails.validationActions={Warn,Audit}",
            "guardrails.configMapName=tpu-limits",
            "guardrails.namespaceSelector.matchLabels.bpj\\.dev/guardrails=on",
        ),
    )
    spec = _named(tuned, "ValidatingAdmissionPolicyBinding", GUARDRAILS)["spec"]
    assert spec["paramRef"] == {"name": "tpu-limits", "parameterNotFoundAction": "Deny"}
    assert spec["validationActions"] == ["Warn", "Audit"]
    assert spec["matchResources"] == {
        "namespaceSelector": {"matchLabels": {"bpj.dev/guardrails": "on"}}
    }
    assert {c["metadata"]["name"] for c in of_kind(tuned, "ConfigMap")} == {"tpu-limits"}


def test_namespace_limits_render_as_configmaps_of_strings(
    render: Render, guardrails_values: Path
) -> None:
    objects = render(values=(guardrails_values,))
    maps = {c["metadata"]["namespace"]: c for c in of_kind(objects, "ConfigMap")}
    assert set(maps) == {"team-a", "team-b"}
    assert maps["team-a"]["metadata"]["name"] == "bpj-guardrails"
    assert maps["team-a"]["data"] == {
        "allowedAccelerators": "tpu-v5-lite-podslice,tpu-v6e-slice",
        "allowedTopologies": "2x2,2x4,tpu-v6e-slice/4x4",
        "maxChips": "16",
        "requireSpot": "true",
        "maxTrainSteps": "1000000",  # not 1e+06
        "maxActiveDeadlineSeconds": "604800",
        "allowedOutputPrefixes": "gs://team-a-bucket/,gs://shared-bucket/team-a/",
        "allowedImagePrefixes": "ghcr.io/bert-pretrain-operator/,europe-docker.pkg.dev/a/b:",
        "allowedQueueNames": "team-a-tpu",
    }
    assert maps["team-b"]["data"] == {"requireSpot": "false", "maxChips": "8"}
    # --set gives integers, not floats: the same strings.
    objects = render(
        sets=("guardrails.enabled=true", "guardrails.namespaces.ml.maxTrainSteps=2000000")
    )
    (cm,) = of_kind(objects, "ConfigMap")
    assert cm["data"] == {"maxTrainSteps": "2000000"}


def test_the_policies_know_every_accelerator_and_key(
    render: Render, guardrails_values: Path
) -> None:
    """The params policy, the values schema and the TPU catalogue agree."""
    objects = render(values=(guardrails_values,))
    policy = _named(objects, "ValidatingAdmissionPolicy", f"{GUARDRAILS}-params")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    catalogue = sorted(a.value for a in Accelerator)
    assert sorted(_cel_strings(variables["accelerators"])) == catalogue
    schema = json.loads((CHART / "values.schema.json").read_text())
    limits = schema["definitions"]["guardrailLimits"]["properties"]
    assert sorted(limits["allowedAccelerators"]["items"]["enum"]) == catalogue
    assert sorted(_cel_strings(variables["known"])) == sorted(limits)
    # Every key is used by the jobs' policy.
    jobs_policy = json.dumps(_named(objects, "ValidatingAdmissionPolicy", GUARDRAILS)["spec"])
    for key in limits:
        assert f"'{key}'" in jobs_policy or f"?{key}" in jobs_policy, key


def _cel_strings(expression: str) -> list[str]:
    """The items of a CEL list literal of single-quoted strings."""
    return [part.strip().strip("'") for part in expression.strip().strip("[]").split(",")]


BAD_VALUES = {
    "unknown limit": ({"maxChip": 16}, "maxChip"),
    "unknown accelerator": ({"allowedAccelerators": ["tpu-v5e"]}, "allowedAccelerators"),
    "topology": ({"allowedTopologies": ["4 by 4"]}, "allowedTopologies"),
    "bucket prefix without slash": (
        {"allowedOutputPrefixes": ["gs://team-a-bucket"]},
        "allowedOutputPrefixes",
    ),
    "comma in an entry": ({"allowedQueueNames": ["a,b"]}, "allowedQueueNames"),
    "chips as a string": ({"maxChips": "16"}, "maxChips"),
    "spot as a string": ({"requireSpot": "yes"}, "requireSpot"),
    "zero steps": ({"maxTrainSteps": 0}, "maxTrainSteps"),
    "image prefix open-ended": ({"allowedImagePrefixes": ["ghcr.io/team"]}, "allowedImagePrefixes"),
}
BAD_SETTINGS = {
    "parameterNotFoundAction": ({"parameterNotFoundAction": "Ignore"}, "parameterNotFoundAction"),
    "deny and warn": ({"validationActions": ["Deny", "Warn"]}, "validationActions"),
    "misspelt key": ({"namespaceSelectors": {}}, "namespaceSelectors"),
    "namespace name": ({"namespaces": {"Team_A": {"maxChips": 4}}}, "Team_A"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES) + sorted(BAD_SETTINGS))
def test_values_schema_refuses_bad_guardrails(helm: Helm, tmp_path: Path, case: str) -> None:
    if case in BAD_VALUES:
        limits, field = BAD_VALUES[case]
        guardrails: dict[str, Any] = {"enabled": True, "namespaces": {"team-a": limits}}
    else:
        settings, field = BAD_SETTINGS[case]
        guardrails = {"enabled": True, **settings}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"guardrails": guardrails}))
    out = helm(*template_args("bpj", "bpj-system", [path]), check=False)
    assert out.returncode != 0, f"helm template accepted {guardrails}"
    assert "values don't meet the specifications of the schema" in out.stderr
    assert field in out.stderr, out.stderr


def test_userroles_schema(helm: Helm, tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"userRoles": {"aggregated": True}}))
    out = helm(*template_args("bpj", "bpj-system", [path]), check=False)
    assert out.returncode != 0 and "aggregated" in out.stderr


def test_helm_lint_strict_with_guardrails(helm: Helm, guardrails_values: Path) -> None:
    out = helm(
        "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION,
        "--values", str(guardrails_values),
    )  # fmt: skip
    assert "0 chart(s) failed" in out.stdout


@pytest.fixture(scope="module")
def schema_location(
    devstack: plane.StackState, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """kubeconform schemas of every kind the local API server knows (BertPretrainJob too)."""
    return schemas.generate(
        devstack.kubeconfig,
        tmp_path_factory.mktemp("schemas"),
        require=[f"{contract.API_GROUP}/{contract.API_VERSION}"],
    )


def test_rendered_guardrails_pass_kubeconform_strict(
    helm: Helm, kubeconform_bin: Path, schema_location: str, guardrails_values: Path
) -> None:
    args = template_args(
        "bpj",
        "bpj-system",
        [guardrails_values],
        ["peering.enabled=false", "guardrails.namespaceSelector.matchLabels.team=a"],
    )
    manifests = helm(*args).stdout
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    kinds = {d["kind"] for d in docs}
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ConfigMap"} <= kinds
    result = subprocess.run(
        [
            str(kubeconform_bin), "-strict", "-summary", "-output", "json",
            "-schema-location", schema_location, "-",
        ],
        input=manifests, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps(report["resources"], indent=1)
    assert report["summary"] == {"valid": len(docs), "invalid": 0, "errors": 0, "skipped": 0}
