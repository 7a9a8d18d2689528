"""The CRD on a real API server: admission agrees with ``bpj validate``.

Server-side dry-run creates check admission (schema, CEL) without storing
anything; the update and printer-column tests store objects in a fresh namespace.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.api.crd import crd_manifest
from bert_pretrain_operator.api.spec import BertPretrainJobSpec, TpuSpec
from bert_pretrain_operator.api.validation import validate_document, validate_update
from tests.api.invalid_cases import (
    CASES,
    MUTABLE_UPDATE,
    STARTED_STATUS,
    UPDATE_CASES,
    Case,
    UpdateCase,
    apply,
    updated,
)
from tests.support import Kubectl, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crd_installed")]

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
# Dry-run creates store nothing, so they can share the default namespace.
DRY_RUN_NAMESPACE = "default"


def _dry_run_create(
    kubectl: Kubectl, manifest: Mapping[str, Any]
) -> subprocess.CompletedProcess[str]:
    return kubectl(
        "create",
        "--dry-run=server",
        "-n",
        DRY_RUN_NAMESPACE,
        "-f",
        "-",
        stdin=yaml.safe_dump(dict(manifest)),
        check=False,
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(kubectl: Kubectl, path: Path) -> None:
    result = kubectl(
        "create", "--dry-run=server", "-n", DRY_RUN_NAMESPACE, "-f", str(path), check=False
    )
    assert result.returncode == 0, result.stderr
    assert validate_document(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_manifest_is_rejected_by_both(kubectl: Kubectl, case: Case) -> None:
    manifest = case.manifest()
    result = _dry_run_create(kubectl, manifest)
    assert result.returncode != 0, f"the API server accepted {case.id}"
    assert case.field in result.stderr, result.stderr
    offline = validate_document(manifest)
    assert any(case.field in problem for problem in offline), offline


def _patch_for(changes: Mapping[str, Any]) -> str:
    patch: dict[str, Any] = {}
    for path, value in changes.items():
        apply(patch, path, value)
    return json.dumps(patch)


def _create(kubectl: Kubectl, namespace: str, manifest: Mapping[str, Any]) -> None:
    kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(dict(manifest)))


def _get(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        kubectl("get", "bpj", name, "-n", namespace, "-o", "json").stdout
    )
    return body


def _patch_status(kubectl: Kubectl, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    kubectl(
        "patch",
        "bpj",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": dict(status)}),
    )


def test_frozen_fields_after_the_start(kubectl: Kubectl, namespace: str) -> None:
    """Each immutable field: changeable before the start, refused after, as offline."""
    for index, case in enumerate(UPDATE_CASES):
        name = f"upd-{index}"
        _create(kubectl, namespace, updated(case.base, {}, name))
        _check_update(kubectl, namespace, name, case, started=False)
        _patch_status(kubectl, namespace, name, STARTED_STATUS)
        _check_update(kubectl, namespace, name, case, started=True)


def _check_update(
    kubectl: Kubectl, namespace: str, name: str, case: UpdateCase, *, started: bool
) -> None:
    stored = _get(kubectl, namespace, name)
    result = kubectl(
        "patch",
        "bpj",
        name,
        "-n",
        namespace,
        "--type=merge",
        "--dry-run=server",
        "-p",
        _patch_for(case.changes),
        check=False,
    )
    offline = validate_update(stored, updated(case.base, case.changes, name))
    if started:
        assert result.returncode != 0, f"{case.field} changed after the start"
        assert case.field in result.stderr, result.stderr
        assert [p.split(":")[0] for p in offline] == [case.field]
    else:
        assert result.returncode == 0, result.stderr
        assert offline == []


def test_other_fields_stay_mutable_and_status_stays_writable(
    kubectl: Kubectl, namespace: str
) -> None:
    _create(kubectl, namespace, updated("corpus", {}, "mutable"))
    _patch_status(kubectl, namespace, "mutable", STARTED_STATUS)
    kubectl(
        "patch", "bpj", "mutable", "-n", namespace, "--type=merge", "-p", _patch_for(MUTABLE_UPDATE)
    )
    _patch_status(
        kubectl,
        namespace,
        "mutable",
        {"progress": {"step": 5}, "kopf": {"progress": {"on_create": {"retries": 2}}}},
    )
    body = _get(kubectl, namespace, "mutable")
    assert body["spec"]["training"]["trainSteps"] == MUTABLE_UPDATE["spec.training.trainSteps"]
    assert body["status"]["progress"]["step"] == 5
    # kopf's bookkeeping survives pruning (x-kubernetes-preserve-unknown-fields).
    assert body["status"]["kopf"] == {"progress": {"on_create": {"retries": 2}}}
    assert validate_update(body, updated("corpus", MUTABLE_UPDATE, "mutable")) == []


def test_defaults_are_applied_by_the_server(kubectl: Kubectl, namespace: str) -> None:
    _create(kubectl, namespace, updated("corpus", {}, "defaults"))
    spec = _get(kubectl, namespace, "defaults")["spec"]
    assert spec["export"] == {"huggingFace": True}
    assert spec["runPolicy"] == {"maxRestarts": 3, "suspend": False}
    assert spec["training"]["optimizer"] == "adamw"
    # Preparation-only settings have no schema default (see api/spec.py).
    assert "dupeFactor" not in spec["data"]


def _words(text: str) -> str:
    return " ".join(text.split())


def test_explain_prints_the_descriptions(kubectl: Kubectl) -> None:
    explained: list[str] = []

    def explain() -> bool:
        # The CRD's OpenAPI is published a moment after it is Established.
        result = kubectl("explain", "bpj.spec.tpu", check=False)
        explained[:] = [_words(result.stdout)]
        return result.returncode == 0 and "topology" in result.stdout

    wait_for(explain, 30, "kubectl explain bpj.spec.tpu")
    output = explained[0]
    # The field's own description heads the output; each sub-field's follows.
    assert _words(BertPretrainJobSpec.model_fields["tpu"].description or "") in output
    for name, info in TpuSpec.model_fields.items():
        assert info.description, name
        assert _words(info.description) in output, name


def test_get_shows_the_printer_columns(kubectl: Kubectl, namespace: str) -> None:
    _create(kubectl, namespace, updated("records", {}, "columns"))
    _patch_status(
        kubectl,
        namespace,
        "columns",
        {
            "phase": "Training",
            "restarts": 1,
            "stageProgress": "step 42/100",
            "progress": {"step": 42, "loss": 3.25},
            "trainingPhase": {
                "number": 2,
                "of": 2,
                "maxSeqLength": 512,
                "firstStep": 40,
                "lastStep": 100,
            },
        },
    )
    (version,) = crd_manifest()["spec"]["versions"]
    columns = [c["name"].upper() for c in version["additionalPrinterColumns"]]
    wide = kubectl("get", "bpj", "-n", namespace, "-o", "wide").stdout.splitlines()
    header, row = (re.split(r"\s{2,}", line.strip()) for line in wide[:2])
    assert header == ["NAME", *columns]
    shown = dict(zip(header, row, strict=True))
    assert shown["NAME"] == "columns"
    assert (shown["PHASE"], shown["PROGRESS"], shown["STEP"], shown["LOSS"]) == (
        "Training",
        "step 42/100",
        "42",
        "3.25",
    )
    assert shown["RESTARTS"] == "1"
    assert shown["TRAINING PHASE"] == "2"
    assert (shown["TPU"], shown["TOPOLOGY"]) == ("tpu-v5-lite-podslice", "2x4")
    narrow = kubectl("get", "bpj", "-n", namespace).stdout.splitlines()[0].split()
    priority = {c["name"].upper() for c in version["additionalPrinterColumns"] if c.get("priority")}
    assert narrow == ["NAME", *(c for c in columns if c not in priority)]
