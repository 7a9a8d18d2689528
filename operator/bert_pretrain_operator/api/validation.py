"""Offline validation of BertPretrainJob manifests: admission's rules, no cluster needed.

``validate_document`` applies what the API server applies at admission: the
schema (types, enums, ranges, patterns, unknown fields; strict field
validation, as kubectl does by default) through the pydantic models, and every
CEL rule through its Python twin (``api/cel.py``). Each message starts with the
path of the offending field, e.g. ``spec.tpu.topology: ...``.
``validate_update`` adds the transition rules (fields frozen once started).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from bert_pretrain_operator.api.cel import RULE_ERROR_TYPE
from bert_pretrain_operator.api.job import (
    API_GROUP_VERSION,
    KIND,
    BertPretrainJob,
    transition_violations,
)
from bert_pretrain_operator.api.spec import (
    DNS_SUBDOMAIN_PATTERN,
    GCS_OBJECT_PATTERN,
    GCS_PREFIX_PATTERN,
    QUEUE_NAME_PATTERN,
    TOPOLOGY_PATTERN,
)

#: What a pattern means, for messages friendlier than the regular expression.
_PATTERN_HINTS: Final = {
    GCS_OBJECT_PATTERN: "must be a gs:// object or glob: gs://BUCKET/PATH",
    GCS_PREFIX_PATTERN: "must be a gs:// bucket or prefix: gs://BUCKET[/PREFIX]",
    TOPOLOGY_PATTERN: "must be AxB or AxBxC, e.g. 2x2 or 2x2x1",
    DNS_SUBDOMAIN_PATTERN: "must be a DNS subdomain (lowercase letters, digits, '-', '.')",
    QUEUE_NAME_PATTERN: "must be a LocalQueue name (lowercase letters, digits, '-', '.')",
}
# Checked here with clearer messages than the Literal errors of the model.
_IDENTITY_FIELDS: Final = (("apiVersion",), ("kind",))


def validate_document(doc: object) -> list[str]:
    """Every problem the API server would report for ``doc`` (a parsed manifest); [] if valid."""
    if not isinstance(doc, Mapping):
        return [f"<document>: expected a Kubernetes object (a mapping), got {type(doc).__name__}"]
    problems = _identity_problems(doc)
    try:
        BertPretrainJob.from_manifest(doc)
    except ValidationError as error:
        problems += [
            message
            for detail in error.errors()
            if tuple(detail["loc"]) not in _IDENTITY_FIELDS
            for message in _messages(detail)
        ]
    return problems


def validate_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Problems of updating the stored ``old`` object to ``new``: ``new``'s own, then
    the transition rules (e.g. spec.tpu frozen once the job started)."""
    problems = validate_document(new)
    if problems:
        return problems
    old_job = BertPretrainJob.from_manifest(old)
    # The spec of an update comes from `new`; the status stays the stored one, as on
    # the API server's main resource endpoint.
    new_job = BertPretrainJob.from_manifest(new).model_copy(update={"status": old_job.status})
    return transition_violations(old_job, new_job)


def _identity_problems(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    if doc.get("apiVersion") != API_GROUP_VERSION:
        problems.append(f"apiVersion: must be {API_GROUP_VERSION} (got {doc.get('apiVersion')!r})")
    if doc.get("kind") != KIND:
        problems.append(f"kind: must be {KIND} (got {doc.get('kind')!r})")
    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping) or not (
        metadata.get("name") or metadata.get("generateName")
    ):
        problems.append("metadata.name: required")
    return problems


def _messages(detail: ErrorDetails) -> list[str]:
    if detail["type"] == RULE_ERROR_TYPE:
        # A model's broken CEL-twin rules; each message already names its field.
        return [str(message) for message in (detail.get("ctx") or {}).get("messages", [])]
    return [f"{_path(detail['loc'])}: {_describe(detail)}"]


def _path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "<document>"


def _describe(detail: ErrorDetails) -> str:
    kind = detail["type"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    given = detail.get("input")
    if kind == "string_pattern_mismatch":
        pattern = (detail.get("ctx") or {}).get("pattern")
        hint = _PATTERN_HINTS.get(str(pattern), f"must match {pattern}")
        return f"{given!r} {hint}"
    return f"{detail['msg']} (got {given!r})"
