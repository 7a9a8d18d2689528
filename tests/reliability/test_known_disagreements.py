"""Manifests on which ``bpj validate`` and the API server once disagreed (fixed bugs).

- ``learningRate: 1e-4``: PyYAML reads it as a string under YAML 1.1; ``bpj`` now
  reads YAML as kubectl does (``cli.load_yaml_documents``).
- a no-break space in a gs:// path: RE2's ``\\S`` is ASCII-only, Python's is not;
  the patterns now spell the whitespace class out.
"""

from __future__ import annotations

import pytest
import yaml

from bert_pretrain_operator.api.validation import validate_document
from bert_pretrain_operator.cli import load_yaml_documents
from tests.api.invalid_cases import updated
from tests.support import Kubectl

# A user's YAML as typed: an exponent without a dot. YAML 1.2 (kubectl, the API
# server) reads 1e-4 as a number; PyYAML (YAML 1.1, used by `bpj validate` and
# `bpj render`) reads it as the string "1e-4".
_EXPONENT_YAML = """\
apiVersion: pretraining.bert.dev/v1alpha1
kind: BertPretrainJob
metadata: {name: exponent}
spec:
  data: {corpus: ["gs://bpj-test/corpus/*.txt"]}
  model: {size: tiny}
  training: {globalBatchSize: 8, trainSteps: 100, learningRate: 1e-4}
  tpu: {accelerator: tpu-v4-podslice, topology: 2x2x1}
  output: gs://bpj-test/runs/exponent
"""


def test_exponent_learning_rate_is_valid_offline() -> None:
    (document,) = load_yaml_documents(_EXPONENT_YAML)
    assert validate_document(document) == []


@pytest.mark.usefixtures("crd_installed")
def test_exponent_learning_rate_is_accepted_by_the_server(kubectl: Kubectl) -> None:
    result = kubectl(
        "create", "--dry-run=server", "-n", "default", "-f", "-", stdin=_EXPONENT_YAML, check=False
    )
    assert result.returncode == 0, result.stderr


# A no-break space inside a gs:// path: Go's RE2 (the API server's schema
# patterns) has ASCII-only \\s/\\S, Python's re is Unicode-aware.
_NBSP_OUTPUT = "gs://bpj-test/runs/a\u00a0b"


@pytest.mark.usefixtures("crd_installed")
def test_no_break_space_in_output_agrees(kubectl: Kubectl) -> None:
    manifest = updated("corpus", {"spec.output": _NBSP_OUTPUT}, "nbsp")
    result = kubectl(
        "create",
        "--dry-run=server",
        "-n",
        "default",
        "-f",
        "-",
        stdin=yaml.safe_dump(manifest, allow_unicode=True),
        check=False,
    )
    server_accepts = result.returncode == 0
    offline_accepts = validate_document(manifest) == []
    assert server_accepts == offline_accepts, (server_accepts, offline_accepts, result.stderr)
