"""The committed CRD is exactly what the models generate, and is a sound structural schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from bert_pretrain_operator import tpu_catalogue
from bert_pretrain_operator.api import crd
from bert_pretrain_operator.api.cel import RuledModel
from bert_pretrain_operator.api.spec import BertPretrainJobSpec

COMMITTED = crd.REPO_ROOT / crd.CRD_RELATIVE_PATH
REGENERATE = "python -m bert_pretrain_operator.api.crd"


def test_committed_crd_is_generated() -> None:
    assert COMMITTED.read_text() == crd.crd_yaml(), f"crds/ is stale: run `{REGENERATE}`"


def test_check_mode(tmp_path: Any) -> None:
    target = tmp_path / "crd.yaml"
    assert crd.main(["--check", "--path", str(target)]) == 1
    assert crd.main(["--path", str(target)]) == 0
    assert crd.main(["--check", "--path", str(target)]) == 0


def _version() -> dict[str, Any]:
    manifest = yaml.safe_load(crd.crd_yaml())
    (version,) = manifest["spec"]["versions"]
    assert isinstance(version, dict)
    return version


def _root() -> dict[str, Any]:
    schema: dict[str, Any] = _version()["schema"]["openAPIV3Schema"]
    return schema


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")


def test_names_and_subresources() -> None:
    manifest = yaml.safe_load(crd.crd_yaml())
    names = manifest["spec"]["names"]
    assert manifest["metadata"]["name"] == "bertpretrainjobs.pretraining.bert.dev"
    assert names["shortNames"] == ["bpj"]
    assert names["categories"] == ["bert"]
    assert manifest["spec"]["scope"] == "Namespaced"
    assert _version()["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in _version()["additionalPrinterColumns"]}
    assert {"Phase", "Step", "Loss", "Age"} <= set(columns)
    assert columns["Step"]["jsonPath"] == ".status.progress.step"
    assert columns["Loss"]["jsonPath"] == ".status.progress.loss"


def test_every_node_is_typed_and_every_field_documented() -> None:
    for path, node in _nodes(_root()):
        assert "type" in node, path
        if path.startswith(("spec", "status")) and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def test_strings_and_lists_are_bounded_for_cel_costs() -> None:
    for path, node in _nodes(_root()["properties"]["spec"], "spec"):
        if node["type"] == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node["type"] == "array":
            assert "maxItems" in node, path


def test_no_nullable_and_no_json_schema_leftovers() -> None:
    text = crd.crd_yaml()
    for leftover in ("nullable", "anyOf", "$ref", "title:", "additionalProperties: false"):
        assert leftover not in text


def test_kopf_bookkeeping_is_preserved() -> None:
    kopf = _root()["properties"]["status"]["properties"]["kopf"]
    assert kopf["x-kubernetes-preserve-unknown-fields"] is True


def _rules() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, node in _nodes(_root()):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, rule


def test_every_rule_message_names_a_field() -> None:
    rules = list(_rules())
    assert len(rules) >= 30
    for path, rule in rules:
        assert rule["message"].split(":")[0].startswith(("spec.", "metadata.")), (path, rule)
        if "messageExpression" in rule:
            assert rule["messageExpression"].startswith("'spec."), (path, rule)
        assert rule["reason"] in {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired"}


def test_immutability_rules_are_at_the_root_one_per_field() -> None:
    root_rules = _root()["x-kubernetes-validations"]
    transition = [r for r in root_rules if "oldSelf" in r["rule"]]
    assert len({r["fieldPath"] for r in transition}) == len(transition) >= 5
    for rule in transition:
        assert rule["message"].startswith(rule["fieldPath"].lstrip("."))


def test_tpu_rules_are_generated_from_the_catalogue() -> None:
    rules = _root()["properties"]["spec"]["properties"]["tpu"]["x-kubernetes-validations"]
    by_field = {r["fieldPath"]: r["rule"] for r in rules}
    assert set(by_field) == {".topology", ".resources.cpu", ".resources.memory"}
    for accelerator, generation in tpu_catalogue.CATALOGUE.items():
        for topology in generation.topologies:
            chips = tpu_catalogue.topology_chips(topology)
            assert f'"{accelerator}/{topology}": {chips}' in by_field[".topology"]
            vm = tpu_catalogue.MACHINE_TYPES[generation.shape(topology).machine_type]  # type: ignore[union-attr]
            assert f'"{accelerator}/{topology}": "{vm.vcpus}"' in by_field[".resources.cpu"]
            memory = f'"{accelerator}/{topology}": "{vm.memory_gb}G"'
            assert memory in by_field[".resources.memory"]


class _Union(RuledModel):
    """A model the generator must refuse."""

    value: int | str
    """value is either."""


class _Undocumented(BaseModel):
    value: int


def test_generator_refuses_what_is_not_structural() -> None:
    with pytest.raises(crd.SchemaError, match="unions"):
        crd.structural(_Union.model_json_schema())
    with pytest.raises(crd.SchemaError, match="description"):
        crd.structural(_Undocumented.model_json_schema())


def test_spec_schema_is_the_models() -> None:
    spec = _root()["properties"]["spec"]
    assert spec == crd.structural(BertPretrainJobSpec.model_json_schema(by_alias=True))
    assert set(spec["required"]) == {"data", "model", "training", "tpu", "output"}
