"""The CRD upgrade step the chart's README documents: ``kubectl apply --server-side -f crds/``.

Helm installs ``crds/`` once and never upgrades it, so a platform team applies the new
CRD by hand before ``helm upgrade``. This runs that step on the local API server, from
the previous CRD (tests/chart/crd-previous.yaml) to the repository's, with a job stored
under the old schema. Both CRDs are renamed to a group of this test's own, so the
suite's other tests keep the real one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpj_devstack import plane
from tests.support import Kubectl, kubectl_json, wait_for

HERE = Path(__file__).resolve().parent
PREVIOUS = HERE / "crd-previous.yaml"
CURRENT = HERE.parents[1] / "crds" / "bertpretrainjobs.pretraining.bert.dev.yaml"
PLURAL = "upgradetestjobs"


def _renamed(path: Path, group: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    crd["metadata"]["name"] = f"{PLURAL}.{group}"
    crd["spec"]["group"] = group
    crd["spec"]["names"] = {
        "kind": "UpgradeTestJob",
        "listKind": "UpgradeTestJobList",
        "plural": PLURAL,
        "singular": "upgradetestjob",
    }
    return crd


def _established(kubectl: Kubectl, name: str, generation: int) -> bool:
    crd = kubectl_json(kubectl, "get", "crd", name)
    conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
    return (
        crd["metadata"]["generation"] >= generation
        and conditions.get("Established") == "True"
        and conditions.get("NamesAccepted") == "True"
    )


def _apply(kubectl: Kubectl, crd: dict[str, Any]) -> None:
    kubectl(
        "apply", "--server-side", "--field-manager=platform-team", "-f", "-",
        stdin=json.dumps(crd),
    )  # fmt: skip


@pytest.fixture
def group(devstack: plane.StackState, kubectl: Kubectl) -> Iterator[str]:
    name = f"upgrade-{uuid.uuid4().hex[:8]}.bert.dev"
    try:
        yield name
    finally:
        kubectl("delete", "crd", f"{PLURAL}.{name}", "--ignore-not-found", "--wait=false")


def test_the_documented_upgrade_applies_the_new_crd_over_the_old_one(
    kubectl: Kubectl, namespace: str, group: str
) -> None:
    old, new = _renamed(PREVIOUS, group), _renamed(CURRENT, group)
    assert old["spec"] != new["spec"], "crd-previous.yaml is the current CRD: nothing to test"
    crd = f"{PLURAL}.{group}"
    _apply(kubectl, old)
    wait_for(lambda: _established(kubectl, crd, 1), 30, f"the previous CRD {crd}")
    (version,) = [v["name"] for v in old["spec"]["versions"] if v["storage"]]
    job = yaml.safe_load((HERE.parents[1] / "examples" / "quickstart.yaml").read_text())
    job["apiVersion"] = f"{group}/{version}"
    job["kind"] = "UpgradeTestJob"
    del job["spec"]["tpu"]["resources"]  # a field the previous CRD does not know
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(job))
    # Before the step, a job using the new field is refused, naming it (kubectl's strict
    # field validation), rather than stored without it.
    job["metadata"]["name"] = "early"
    job["spec"]["tpu"]["resources"] = {"cpu": "2"}
    early = kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(job), check=False)
    assert early.returncode != 0 and 'unknown field "spec.tpu.resources"' in early.stderr

    generation = kubectl_json(kubectl, "get", "crd", crd)["metadata"]["generation"]
    _apply(kubectl, new)  # the README's step, with the CRD of this checkout
    wait_for(lambda: _established(kubectl, crd, generation + 1), 30, f"the new CRD {crd}")

    # The stored jobs are still served, and still valid: an unrelated edit is accepted.
    stored = kubectl_json(kubectl, "get", f"{PLURAL}.{group}", "quickstart", "-n", namespace)
    assert stored["spec"]["model"] == {"size": "tiny"}
    kubectl("annotate", f"{PLURAL}.{group}/quickstart", "-n", namespace, "example.com/touched=1")
    # The new schema is in force: the new field is kept, and its rules apply.
    job["metadata"]["name"] = "resized"
    job["spec"]["tpu"]["resources"] = {"cpu": "2", "memory": "8Gi"}
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(job))
    resized = kubectl_json(kubectl, "get", f"{PLURAL}.{group}", "resized", "-n", namespace)
    assert resized["spec"]["tpu"]["resources"] == {"cpu": "2", "memory": "8Gi"}
    job["metadata"]["name"] = "too-big"
    job["spec"]["tpu"]["resources"] = {"cpu": "100000"}
    refused = kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(job), check=False)
    assert refused.returncode != 0 and "spec.tpu.resources.cpu" in refused.stderr
