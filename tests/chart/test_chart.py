"""The Helm chart: lint, schema, strict validation, RBAC, and a job run by the operator it deploys.

- `helm lint --strict` passes with the defaults and with every option on; values.schema.json
  refuses bad values.
- `helm template` output passes `kubeconform -strict` against schemas generated from the
  local API server's OpenAPI (bpj_devstack.schemas), BertPretrainJob's included.
- The trainer's objects and the progress policy are the ones bert_pretrain_operator.rbac
  renders; the chart's CRD is the generated one, byte for byte.
- On the local control plane, the rendered chart (all but the Deployment) is applied; the
  operator's ServiceAccount may do what the operator does and nothing more (`kubectl auth
  can-i`); then the operator process is started with the Deployment's command and
  environment, authenticated as that ServiceAccount, and runs a job to Succeeded in a
  namespace the chart set up, without ever writing the job's spec.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
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

from bert_pretrain_operator.rbac import progress_policy, trainer_rbac
from bert_pretrain_operator.render import names
from bert_trainer import contract
from bpj_devstack import plane, schemas
from bpj_devstack.kwok_pods import PodAnnotator
from tests.chart.helpers import (
    CHART,
    HERE,
    KUBE_VERSION,
    Helm,
    Render,
    of_kind,
    operator_container,
    plain_env,
    template_args,
)
from tests.support import Kubectl, kubectl_json, wait_for

REPO = Path(__file__).resolve().parents[2]
VALUES_ALL = HERE / "values-all.yaml"
SERVICE_MONITOR_CRD = HERE / "servicemonitor-subset.crd.yaml"
EXAMPLES = REPO / "examples"


@dataclass(frozen=True)
class Case:
    values: tuple[Path, ...] = ()
    sets: tuple[str, ...] = ()


#: Rendering cases: the defaults, every option on, and everything optional off.
CASES = {
    "defaults": Case(),
    "all-options": Case(values=(VALUES_ALL,)),
    "minimal": Case(
        sets=(
            "peering.enabled=false",
            "metrics.enabled=false",
            "trainer.progressPolicy.enabled=false",
        )
    ),
}


def _meta_stripped(obj: dict[str, Any]) -> dict[str, Any]:
    """obj without the chart's labels and annotations (rbac.py renders neither)."""
    out = copy.deepcopy(obj)
    out["metadata"].pop("labels", None)
    out["metadata"].pop("annotations", None)
    return out


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), obj["kind"], meta["name"])


# --- the chart on its own ---------------------------------------------------------------


def test_chart_crds_are_the_generated_crds() -> None:
    """The chart ships crds/ of the repository, byte for byte (plus kopf's peering CRDs).

    crds/ is generated from the pydantic models; copy it after regenerating:
    cp crds/*.yaml charts/bert-pretrain-operator/crds/
    """
    generated = sorted((REPO / "crds").glob("*.yaml"))
    assert generated
    for path in generated:
        copy_in_chart = CHART / "crds" / path.name
        assert copy_in_chart.exists(), f"{copy_in_chart} is missing; copy {path} there"
        assert copy_in_chart.read_bytes() == path.read_bytes(), (
            f"{copy_in_chart} differs from {path}; run "
            f"`cp crds/*.yaml charts/bert-pretrain-operator/crds/`"
        )
    extra = {p.name for p in (CHART / "crds").iterdir()} - {p.name for p in generated}
    assert extra == {"kopf-peering.yaml"}


@pytest.mark.parametrize("case", ["defaults", "all-options"])
def test_helm_lint_strict(helm: Helm, case: str) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for path in CASES[case].values:
        args += ["--values", str(path)]
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out


BAD_VALUES = {
    "unknown key": ({"replicas": 2}, "replicas"),
    "glob namespace with peering": ({"watchNamespaces": ["team-*"]}, "watchNamespaces"),
    "writable root filesystem": (
        {"securityContext": {"readOnlyRootFilesystem": False}},
        "readOnlyRootFilesystem",
    ),
    "root allowed": ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    "port by name": ({"metrics": {"port": "http"}}, "port"),
    "workload identity not an email": (
        {"trainer": {"workloadIdentity": {"gcpServiceAccount": "trainer"}}},
        "gcpServiceAccount",
    ),
    "trainer env name": ({"operator": {"trainerEnv": {"BAD-NAME": "x"}}}, "BAD-NAME"),
    "env secret not a name": ({"operator": {"trainerEnvSecret": "Not_A_Name"}}, "trainerEnvSecret"),
    "pull policy spelt wrong": (
        {"operator": {"trainerImagePullPolicy": "never"}},
        "trainerImagePullPolicy",
    ),
    "misspelt nested key": ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_schema_rejects_bad_values(helm: Helm, tmp_path: Path, case: str) -> None:
    values, field = BAD_VALUES[case]
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    template = helm(*template_args("bpj", "bpj-system", [path]), check=False)
    assert template.returncode != 0, f"helm template accepted {values}"
    assert "values don't meet the specifications of the schema" in template.stderr
    assert field in template.stderr, template.stderr
    lint = helm("lint", str(CHART), "--values", str(path), check=False)
    assert lint.returncode != 0, f"helm lint accepted {values}"


def test_glob_namespaces_are_fine_without_peering(render: Render) -> None:
    objects = render(sets=("peering.enabled=false", "watchNamespaces={team-*}"))
    env = plain_env(operator_container(objects))
    assert env["BPJ_NAMESPACES"] == "team-*"
    assert "BPJ_PEERING" not in env


def _operator_grants(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The operator's Roles and ClusterRoles (the users' roles left out), by kind and place."""
    return {
        (o["kind"], o["metadata"].get("namespace", "")): o
        for o in objects
        if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
        and not o["metadata"]["name"].endswith(("-view", "-edit"))
        and not o["metadata"]["name"].endswith("-trainer")
    }


def _resources(role: dict[str, Any]) -> set[str]:
    return {r for rule in role["rules"] for r in rule["resources"]}


def test_exact_namespaces_get_roles_and_nothing_cluster_wide(render: Render) -> None:
    grants = _operator_grants(render(sets=("watchNamespaces={team-a,team-b}",)))
    assert set(grants) == {
        (kind, ns) for kind in ("Role", "RoleBinding") for ns in ("team-a", "team-b")
    }
    assert grants["Role", "team-a"]["rules"] == grants["Role", "team-b"]["rules"]
    assert "jobs" in _resources(grants["Role", "team-a"])
    assert not _resources(grants["Role", "team-a"]) & {"namespaces", "customresourcedefinitions"}
    env = plain_env(operator_container(render(sets=("watchNamespaces={team-a,team-b}",))))
    assert env["BPJ_NAMESPACES"] == "team-a,team-b"


@pytest.mark.parametrize("namespaces", [None, "team-*"])
def test_every_namespace_or_a_pattern_gets_a_cluster_role(
    render: Render, namespaces: str | None
) -> None:
    sets = (
        () if namespaces is None else ("peering.enabled=false", f"watchNamespaces={{{namespaces}}}")
    )
    grants = _operator_grants(render(sets=sets))
    assert set(grants) == {("ClusterRole", ""), ("ClusterRoleBinding", "")}
    resources = _resources(grants["ClusterRole", ""])
    assert "customresourcedefinitions" in resources
    # Only a pattern needs to discover namespaces.
    assert ("namespaces" in resources) == (namespaces is not None)


def test_trainer_objects_are_rbac_trainer_rbac(render: Render) -> None:
    objects = render(values=(VALUES_ALL,))
    config = yaml.safe_load(VALUES_ALL.read_text())["trainer"]
    sa_name = config["serviceAccountName"]
    rendered = [
        _meta_stripped(o)
        for o in objects
        if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")
        and o["metadata"]["namespace"] in config["namespaces"]
        # The operator's own Roles, where it watches these namespaces by name.
        and not o["metadata"]["name"].startswith("bpj-operator")
    ]
    expected = [obj for ns in config["namespaces"] for obj in trainer_rbac(ns, sa_name)]
    # Helm orders objects by kind; rbac.py by namespace.
    assert sorted(rendered, key=_key) == sorted(expected, key=_key)
    # Each namespace its own Google identity where one is named, the shared one elsewhere.
    identity = config["workloadIdentity"]
    annotated = {
        sa["metadata"]["namespace"]: sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        for sa in of_kind(objects, "ServiceAccount")
        if sa["metadata"]["name"] == sa_name
    }
    assert annotated == {
        ns: identity["gcpServiceAccounts"].get(ns, identity["gcpServiceAccount"])
        for ns in config["namespaces"]
    }
    assert annotated["ml-prod"] != annotated["ml-research"]
    # Without a GCP service account there is no Workload Identity annotation.
    plain = render(sets=("trainer.namespaces={ml}",))
    (sa,) = [o for o in of_kind(plain, "ServiceAccount") if o["metadata"]["namespace"] == "ml"]
    assert "annotations" not in sa["metadata"]
    in_ml = [_meta_stripped(o) for o in plain if o["metadata"].get("namespace") == "ml"]
    # The default name is the release's: two releases serving "ml" do not collide.
    trainer = "bpj-bert-pretrain-operator-trainer"
    assert sorted(in_ml, key=_key) == sorted(trainer_rbac("ml", trainer), key=_key)
    # Nor do their cluster-scoped objects, the guardrail policies included.
    guarded = ("trainer.namespaces={ml}", "guardrails.enabled=true")
    this, other = render(sets=guarded), render(release="other", sets=guarded)
    assert {"ValidatingAdmissionPolicy"} <= {o["kind"] for o in this}
    clashes = {
        _key(o)
        for o in this
        if "namespace" not in o["metadata"] or o["metadata"]["namespace"] == "ml"
    } & {_key(o) for o in other}
    # Shared on purpose: the peering object makes a second operator serving the same
    # namespaces wait instead of reconciling the same jobs twice.
    clashes = {c for c in clashes if c[1] not in ("ClusterKopfPeering", "KopfPeering")}
    assert not clashes, clashes


@pytest.mark.parametrize("case", ["defaults", "all-options"])
def test_progress_policy_is_rbac_progress_policy(render: Render, case: str) -> None:
    objects = render(values=CASES[case].values)
    env = plain_env(operator_container(objects))
    rendered = [
        _meta_stripped(o)
        for o in objects
        if o["kind"] in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    ]
    name = rendered[0]["metadata"]["name"]
    assert name.endswith("-trainer-progress") and name.startswith(("bpj-", "bpj-operator"))
    # Every pod-bound token is policed but the operator's own (it runs as a pod too).
    (deployment,) = of_kind(objects, "Deployment")
    operator_user = (
        f"system:serviceaccount:{deployment['metadata']['namespace']}:"
        f"{deployment['spec']['template']['spec']['serviceAccountName']}"
    )
    assert env["BPJ_TRAINER_SERVICE_ACCOUNT"] not in operator_user
    assert rendered == progress_policy([operator_user], name)


def test_deployment_is_hardened_and_runs_the_operator(render: Render) -> None:
    (deployment,) = of_kind(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "bert_pretrain_operator"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = plain_env(container)
    assert env["BPJ_HEALTH_PORT"] == str(ports["health"]) == "8081"
    assert env["BPJ_METRICS_PORT"] == str(ports["metrics"]) == "8080"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["limits"]["memory"]


# --- strict validation against the API server's schemas --------------------------------


@pytest.fixture(scope="session")
def peering_crds(kubectl: Kubectl) -> None:
    """kopf's peering CRDs from the chart's crds/, installed as `helm install` would."""
    kubectl("apply", "--server-side", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
        "--timeout=60s",
    )


@pytest.fixture(scope="session")
def schema_location(
    devstack: plane.StackState,
    crd_installed: None,
    peering_crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """kubeconform schemas of every kind the API server knows, plus ServiceMonitor's."""
    crd = yaml.safe_load(SERVICE_MONITOR_CRD.read_text())
    return schemas.generate(
        devstack.kubeconfig,
        tmp_path_factory.mktemp("schemas"),
        crds=[crd],
        # Established CRDs whose schemas the server publishes a moment later.
        require=[f"{contract.API_GROUP}/{contract.API_VERSION}", "kopf.dev/v1"],
    )


def _kubeconform(binary: Path, location: str, manifests: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(binary), "-strict", "-summary", "-output", "json", "-schema-location", location, "-"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    report["returncode"] = result.returncode
    return report


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_chart_passes_kubeconform_strict(
    helm: Helm, kubeconform_bin: Path, schema_location: str, case: str
) -> None:
    args = template_args("bpj", "bpj-system", CASES[case].values, CASES[case].sets, True)
    manifests = helm(*args).stdout
    count = sum(1 for doc in yaml.safe_load_all(manifests) if doc)
    report = _kubeconform(kubeconform_bin, schema_location, manifests)
    assert report["returncode"] == 0, json.dumps(report["resources"], indent=1)
    assert report["summary"] == {"valid": count, "invalid": 0, "errors": 0, "skipped": 0}


def test_kubeconform_schemas_are_strict(
    render: Render, kubeconform_bin: Path, schema_location: str
) -> None:
    """A misspelt field fails: the generated schemas are not permissive."""
    objects = render(values=(VALUES_ALL,))
    (deployment,) = of_kind(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True
    (monitor,) = of_kind(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    role = of_kind(objects, "Role")[0]
    role["rules"][0]["verb"] = ["get"]
    report = _kubeconform(
        kubeconform_bin, schema_location, yaml.safe_dump_all([deployment, monitor, role])
    )
    assert report["summary"]["invalid"] == 3, json.dumps(report["resources"], indent=1)
    errors = json.dumps(report["resources"])
    for field in ("readOnlyRootFileSystem", "intervall", "verb"):
        assert field in errors


# --- on the local control plane ---------------------------------------------------------


@dataclass
class Installed:
    operator_namespace: str
    """The release's namespace, where the operator's ServiceAccount is."""
    namespace: str
    """Where jobs run: watched by the operator; the chart made the trainer's objects."""
    service_account: str
    objects: list[dict[str, Any]]
    """Everything the chart rendered (the Deployment too, which is not applied)."""


@pytest.fixture(scope="module")
def installed(
    devstack: plane.StackState,
    kubectl: Kubectl,
    crd_installed: None,
    peering_crds: None,
    render: Render,
) -> Iterator[Installed]:
    """The rendered chart applied to the devstack, all but the Deployment (no images here).

    Namespaces start with "c-": the suite's other operators watch "t-*" and "k-*".
    """
    suffix = uuid.uuid4().hex[:6]
    operator_ns, namespace = f"c-{suffix}-system", f"c-{suffix}"
    ports = {"health": plane.free_port(), "metrics": plane.free_port()}
    for ns in (operator_ns, namespace):
        kubectl("create", "namespace", ns)
    release = f"c{suffix}"
    objects = render(
        release=release,
        namespace=operator_ns,
        sets=(
            f"watchNamespaces={{{namespace}}}",
            f"trainer.namespaces={{{namespace}}}",
            f"healthPort={ports['health']}",
            f"metrics.port={ports['metrics']}",
            "operator.resyncSeconds=3",
            "operator.trainerImage=localhost/bert-trainer:test",
        ),
    )
    applied = [o for o in objects if o["kind"] != "Deployment"]
    kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": applied})
    )
    (sa,) = [
        o for o in of_kind(objects, "ServiceAccount") if o["metadata"]["namespace"] == operator_ns
    ]
    try:
        yield Installed(operator_ns, namespace, sa["metadata"]["name"], objects)
    finally:
        for ns in (namespace, operator_ns):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)
        for o in applied:
            if "namespace" not in o["metadata"] and o["kind"] in (
                "ClusterRole",
                "ClusterRoleBinding",
            ):
                kubectl("delete", o["kind"].lower(), o["metadata"]["name"], check=False)


def _can_i(kubectl: Kubectl, installed: Installed, verb: str, resource: str, *flags: str) -> bool:
    user = f"system:serviceaccount:{installed.operator_namespace}:{installed.service_account}"
    out = kubectl("auth", "can-i", verb, resource, f"--as={user}", *flags, check=False)
    answer = out.stdout.strip()
    assert answer in ("yes", "no"), out.stderr
    return answer == "yes"


#: (verb, resource, extra flags): what the operator and kopf call (see operator-rbac.yaml).
ALLOWED = [
    ("get", "bertpretrainjobs.pretraining.bert.dev", ()),
    ("list", "bertpretrainjobs.pretraining.bert.dev", ()),
    ("watch", "bertpretrainjobs.pretraining.bert.dev", ()),
    ("delete", "bertpretrainjobs.pretraining.bert.dev", ()),
    ("patch", "bertpretrainjobs.pretraining.bert.dev", ("--subresource=status",)),
    ("update", "bertpretrainjobs.pretraining.bert.dev", ("--subresource=finalizers",)),
    ("create", "jobs.batch", ()),
    ("list", "jobs.batch", ()),
    ("watch", "jobs.batch", ()),
    ("delete", "jobs.batch", ()),
    ("list", "pods", ()),
    ("watch", "pods", ()),
    ("create", "configmaps", ()),
    ("patch", "configmaps", ()),
    ("create", "services", ()),
    ("create", "events", ()),
    ("list", "events", ()),
    ("list", "kopfpeerings.kopf.dev", ()),
    ("watch", "kopfpeerings.kopf.dev", ()),
    ("patch", "kopfpeerings.kopf.dev/bert-pretrain-operator", ()),
]
DENIED = [
    # watchNamespaces names the namespace: nothing cluster-wide (kopf's scanning is off).
    ("list", "bertpretrainjobs.pretraining.bert.dev", ("--all-namespaces",)),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", ()),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", ()),
    ("list", "namespaces", ()),
    ("watch", "namespaces", ()),
    # The operator never writes a job's spec (nor its metadata).
    ("patch", "bertpretrainjobs.pretraining.bert.dev", ()),
    ("update", "bertpretrainjobs.pretraining.bert.dev", ()),
    ("create", "bertpretrainjobs.pretraining.bert.dev", ()),
    ("get", "secrets", ()),
    ("list", "secrets", ()),
    ("create", "pods", ("--subresource=exec",)),
    ("create", "pods", ()),
    ("delete", "pods", ()),
    ("delete", "namespaces", ()),
    ("create", "namespaces", ()),
    ("patch", "jobs.batch", ()),
    ("delete", "configmaps", ()),
    ("delete", "services", ()),
    ("create", "serviceaccounts", ("--subresource=token",)),
    ("create", "roles.rbac.authorization.k8s.io", ()),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ()),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ()),
    ("patch", "kopfpeerings.kopf.dev/someone-else", ()),
    ("patch", "clusterkopfpeerings.kopf.dev/bert-pretrain-operator", ()),
    ("create", "events.events.k8s.io", ()),
]


def test_operator_service_account_may_do_exactly_what_the_operator_does(
    kubectl: Kubectl, installed: Installed
) -> None:
    ns = ("-n", installed.namespace)
    wrong = [
        f"{verb} {resource} {' '.join(flags)}: expected yes"
        for verb, resource, flags in ALLOWED
        if not _can_i(kubectl, installed, verb, resource, *ns, *flags)
    ]
    wrong += [
        f"{verb} {resource} {' '.join(flags)}: expected no"
        for verb, resource, flags in DENIED
        if _can_i(kubectl, installed, verb, resource, *ns, *flags)
    ]
    assert not wrong, "\n".join(wrong)
    # ... and nothing in a namespace it does not serve.
    elsewhere = ("-n", installed.operator_namespace)
    assert not [
        f"{verb} {resource}"
        for verb, resource, flags in ALLOWED
        if _can_i(kubectl, installed, verb, resource, *elsewhere, *flags)
    ]


@pytest.fixture
def records_bucket(devstack: plane.StackState, monkeypatch: pytest.MonkeyPatch) -> str:
    """A bucket with prepared TFRecords and a vocab: the job skips the prepare stage."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", devstack.gcs_endpoint)
    client = storage.Client(project="bpj-test", credentials=AnonymousCredentials())
    name = f"bpj-chart-{uuid.uuid4().hex[:10]}"
    bucket = client.create_bucket(name)
    bucket.blob("records/part-00000-of-00001.tfrecord").upload_from_string(b"x")
    bucket.blob("vocab.txt").upload_from_string("".join(f"{t}\n" for t in RECORDS_VOCAB))
    return name


#: records_bucket's vocab.txt.
RECORDS_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the")


def _operator_kubeconfig(
    kubectl: Kubectl, devstack: plane.StackState, installed: Installed, path: Path
) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (a TokenRequest)."""
    token = kubectl(
        "create",
        "token",
        installed.service_account,
        "-n",
        installed.operator_namespace,
        "--duration=1h",
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devstack",
                "cluster": {
                    "server": devstack.apiserver_url,
                    "certificate-authority": devstack.ca_cert,
                },
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "devstack", "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _container_env(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The operator container's environment as the kubelet would set it."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        field_path = item["valueFrom"]["fieldRef"]["fieldPath"]
        assert field_path == "metadata.name", f"the test cannot resolve {field_path}"
        env[item["name"]] = pod_name
    return env


def _port(container: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == name))


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


def _answers(url: str) -> bool:
    try:
        _get(url)
    except OSError:
        return False
    return True


def _job_manifest(bucket: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["data"] = {
        "tfrecords": f"gs://{bucket}/records/*.tfrecord",
        "vocab": f"gs://{bucket}/vocab.txt",
    }
    doc["spec"]["output"] = f"gs://{bucket}/runs/{name}"
    return doc


def test_operator_from_the_chart_runs_a_job_to_succeeded(
    kubectl: Kubectl,
    devstack: plane.StackState,
    installed: Installed,
    records_bucket: str,
    kube_api: Any,
    tmp_path: Path,
) -> None:
    (deployment,) = of_kind(installed.objects, "Deployment")
    container = operator_container(installed.objects)
    # The name the Deployment's pod would get; kopf's peering identity (POD_ID).
    pod_name = f"{deployment['metadata']['name']}-6d4cf56db6-x7k2q"
    env = _container_env(container, pod_name)
    # No GCS endpoint, project or credentials: the job's check pod reads its inputs.
    assert not [k for k in env if k.startswith(("STORAGE_EMULATOR_HOST", "GOOGLE_"))], env
    # What the pod gets from its in-cluster service account, here as a kubeconfig.
    env["KUBECONFIG"] = str(_operator_kubeconfig(kubectl, devstack, installed, tmp_path / "kc"))
    # `python` on PATH is this virtualenv's, where the operator is installed.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    command = container["command"]
    assert command[0] == "python" and shutil.which("python", path=env["PATH"])

    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pods = PodAnnotator(kube_api)
    try:
        probe = container["readinessProbe"]["httpGet"]
        health = f"http://127.0.0.1:{_port(container, probe['port'])}{probe['path']}"

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the operator exited:\n{log.read_text()[-4000:]}")
            return _answers(health)

        wait_for(ready, 60, "the readiness probe")

        doc = _job_manifest(records_bucket, "charted")
        # A KWOK pod runs nothing: the check pod reports the vocab's size as the real one.
        pods.report_check(installed.namespace, "charted", {"vocabSize": len(RECORDS_VOCAB)})
        kubectl("apply", "-n", installed.namespace, "-f", "-", stdin=json.dumps(doc))

        def phase() -> str:
            obj = kubectl_json(kubectl, "get", "bpj", "charted", "-n", installed.namespace)
            return str((obj.get("status") or {}).get("phase"))

        try:
            wait_for(lambda: phase() in ("Succeeded", "Failed"), 90, "the job to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{log.read_text()[-4000:]}") from exc
        job = kubectl_json(kubectl, "get", "bpj", "charted", "-n", installed.namespace)
        assert job["status"]["phase"] == "Succeeded", json.dumps(job["status"], indent=1)
        # The operator never writes spec: the generation is the one `kubectl apply` made.
        assert job["metadata"]["generation"] == 1
        assert job["status"]["observedGeneration"] == 1

        children = kubectl_json(
            kubectl, "get", "jobs", "-n", installed.namespace, "-l", f"{names.LABEL_JOB}=charted"
        )["items"]
        assert sorted(c["metadata"]["name"] for c in children) == [
            "charted-check",
            "charted-export",
            "charted-train-1",
        ]
        for child in children:
            pod_spec = child["spec"]["template"]["spec"]
            assert pod_spec["serviceAccountName"] == env["BPJ_TRAINER_SERVICE_ACCOUNT"]
        assert job["status"]["inputs"] == {"vocabSize": len(RECORDS_VOCAB)}

        metrics = f"http://127.0.0.1:{_port(container, 'metrics')}/metrics"
        assert 'bpj_jobs{phase="Succeeded"} 1.0' in _get(metrics)
        # Peering ran, through the chart's KopfPeering and the ServiceAccount's grants.
        peering = kubectl_json(
            kubectl, "get", "kopfpeering", env["BPJ_PEERING"], "-n", installed.namespace
        )
        assert pod_name in (peering.get("status") or {}), peering
    finally:
        pods.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = log.read_text()
    for sign in ("Forbidden", "forbidden", "Not enough permissions"):
        assert sign not in text, f"the operator hit RBAC ({sign!r}):\n{text[-4000:]}"


def test_grafana_dashboard_charts_every_operator_metric_and_only_those(render: Render) -> None:
    import re

    from prometheus_client import REGISTRY

    from bert_pretrain_operator import metrics

    assert not [o for o in render() if o["kind"] == "ConfigMap"]  # off by default
    (dashboard,) = [o for o in render(values=(VALUES_ALL,)) if o["kind"] == "ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    (text,) = dashboard["data"].values()
    board = json.loads(text)
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    charted = {name for e in exprs for name in re.findall(r"\b(bpj_[a-z_]+|process_[a-z_]+)\{", e)}
    # What metrics.py registers (this process imported it), by the names Prometheus serves.
    assert metrics.RECONCILE_SECONDS
    served: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if family.name.startswith("bpj_"):
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
            served[family.name] = {family.name + s for s in suffixes.get(family.type, ("",))}
    missing = [name for name, names in served.items() if not names & charted]
    assert not missing, f"metrics without a panel: {sorted(missing)}"
    every = set().union(*served.values())
    unknown = {n for n in charted if n.startswith("bpj_")} - every
    assert not unknown, f"panels of metrics the operator does not export: {sorted(unknown)}"
    # Every panel's queries select the operator's own service through the variables.
    assert all('namespace="$namespace"' in e for e in exprs)
