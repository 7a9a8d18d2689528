"""Offline validation (``validate_document``): the invalid set, the valid manifests, updates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bert_pretrain_operator.api.job import IMMUTABLE_ONCE_STARTED
from bert_pretrain_operator.api.validation import validate_document, validate_update
from tests.api.invalid_cases import (
    BASES,
    CASES,
    MUTABLE_UPDATE,
    STARTED_STATUS,
    UPDATE_CASES,
    Case,
    UpdateCase,
    updated,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_the_invalid_set_is_large_and_distinct() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)
    manifests = [yaml.safe_dump(case.manifest(), sort_keys=True) for case in CASES]
    assert len(set(manifests)) == len(manifests), "two cases make the same manifest"


@pytest.mark.parametrize("base", sorted(BASES))
def test_bases_are_valid(base: str) -> None:
    assert validate_document(BASES[base]) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents
    for document in documents:
        assert validate_document(document) == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_case_is_rejected_naming_the_field(case: Case) -> None:
    problems = validate_document(case.manifest())
    assert problems, f"{case.id} was accepted"
    assert any(case.field in problem for problem in problems), problems


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_message_starts_with_a_field_path(case: Case) -> None:
    for problem in validate_document(case.manifest()):
        head = problem.split(":", 1)[0]
        assert head.split(".")[0].split("[")[0] in {"spec", "metadata"}, problem


def test_messages_carry_the_offending_values() -> None:
    (problem,) = validate_document(updated("records", {"spec.tpu.topology": "2x3"}))
    assert problem.startswith("spec.tpu.topology: 2x3 is not a valid topology for ")
    assert "tpu-v5-lite-podslice; valid: 1x1, 2x2, 2x4" in problem


def test_not_a_mapping() -> None:
    assert validate_document(["spec"]) == [
        "<document>: expected a Kubernetes object (a mapping), got list"
    ]


def test_identity_is_checked() -> None:
    doc = updated("corpus", {"apiVersion": "pretraining.bert.dev/v1", "metadata.name": None})
    problems = validate_document(doc)
    assert any(p.startswith("apiVersion: must be pretraining.bert.dev/v1alpha1") for p in problems)
    assert "metadata.name: required" in problems


def test_generate_name_counts_the_random_suffix() -> None:
    doc = updated("corpus", {"metadata": {"generateName": "run-"}})
    assert validate_document(doc) == []
    doc = updated("corpus", {"metadata": {"generateName": "r" * 36}})
    assert any(p.startswith("metadata.name: must be at most") for p in validate_document(doc))


def test_update_cases_cover_every_immutable_field() -> None:
    assert {case.field for case in UPDATE_CASES} == {f"spec.{p}" for p in IMMUTABLE_ONCE_STARTED}


def _stored(base: str, status: dict[str, object] | None) -> dict[str, object]:
    doc = updated(base, {})
    if status is not None:
        doc["status"] = status
    return doc


@pytest.mark.parametrize("case", UPDATE_CASES, ids=lambda c: c.id)
def test_frozen_fields_change_only_before_the_start(case: UpdateCase) -> None:
    new = updated(case.base, case.changes)
    assert validate_document(new) == []
    assert validate_update(_stored(case.base, None), new) == []
    assert validate_update(_stored(case.base, {"phase": "Pending"}), new) == []
    (problem,) = validate_update(_stored(case.base, dict(STARTED_STATUS)), new)
    assert problem.startswith(f"{case.field}: cannot change once the job has started")


def test_a_training_attempt_also_freezes() -> None:
    new = updated("corpus", {"spec.tpu.topology": "2x2x2"})
    assert validate_update(_stored("corpus", {"attempt": 1}), new)
    assert validate_update(_stored("corpus", {"attempt": 0}), new) == []


def test_other_fields_stay_mutable_after_the_start() -> None:
    new = updated("corpus", MUTABLE_UPDATE)
    assert validate_update(_stored("corpus", dict(STARTED_STATUS)), new) == []


def test_update_reports_the_new_objects_own_problems_first() -> None:
    new = updated("corpus", {"spec.tpu.topology": "2x3"})
    problems = validate_update(_stored("corpus", dict(STARTED_STATUS)), new)
    assert problems == validate_document(new)
