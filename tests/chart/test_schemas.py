"""bpj_devstack.schemas: OpenAPI v3 to kubeconform's strict, standalone JSON schemas (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from bpj_devstack import schemas


@pytest.mark.parametrize(
    ("kind", "api_version", "filename"),
    [
        ("Deployment", "apps/v1", "deployment-apps-v1.json"),
        ("Service", "v1", "service-v1.json"),
        ("ClusterRole", "rbac.authorization.k8s.io/v1", "clusterrole-rbac-v1.json"),
        (
            "BertPretrainJob",
            "pretraining.bert.dev/v1alpha1",
            "bertpretrainjob-pretraining-v1alpha1.json",
        ),
        ("ServiceMonitor", "monitoring.coreos.com/v1", "servicemonitor-monitoring-v1.json"),
    ],
)
def test_file_names_follow_kubeconforms_kind_suffix(
    kind: str, api_version: str, filename: str
) -> None:
    assert schemas.kubeconform_filename(kind, api_version) == filename


def _document(schemas_: dict[str, Any]) -> dict[str, Any]:
    return {"components": {"schemas": schemas_}}


REF = "#/components/schemas/"
WIDGET_DOC = _document(
    {
        "io.example.v1.Widget": {
            "type": "object",
            "x-kubernetes-group-version-kind": [
                {"group": "example.io", "version": "v1", "kind": "Widget"}
            ],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "spec": {"description": "wrapped", "allOf": [{"$ref": REF + "io.example.v1.Spec"}]},
            },
        },
        "io.example.v1.Spec": {
            "type": "object",
            "description": "dropped",
            "properties": {
                "size": {"x-kubernetes-int-or-string": True, "format": "int-or-string"},
                "note": {"type": "string", "nullable": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "child": {"$ref": REF + "io.example.v1.Spec", "default": {}},
            },
        },
        "io.example.v1.Unused": {"type": "object"},
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions": {
            "type": "object",
            "x-kubernetes-group-version-kind": [
                {"group": "example.io", "version": "v1", "kind": "DeleteOptions"}
            ],
        },
    }
)


def test_openapi_kinds_become_strict_standalone_schemas() -> None:
    out = schemas.schemas_from_openapi({"apis/example.io/v1": WIDGET_DOC})
    assert list(out) == ["widget-example-v1.json"]  # meta kinds (DeleteOptions) skipped
    widget = out["widget-example-v1.json"]
    assert widget["additionalProperties"] is False
    assert widget["properties"]["apiVersion"] == {"type": "string", "enum": ["example.io/v1"]}
    assert widget["properties"]["kind"] == {"type": "string", "enum": ["Widget"]}
    assert widget["properties"]["spec"] == {"$ref": "#/definitions/io.example.v1.Spec"}
    # Only reachable definitions, recursive ones included once.
    assert list(widget["definitions"]) == ["io.example.v1.Spec"]
    spec = widget["definitions"]["io.example.v1.Spec"]
    assert "description" not in spec
    assert spec["additionalProperties"] is False
    props = spec["properties"]
    assert props["size"] == {"oneOf": [{"type": "integer"}, {"type": "string"}]}
    assert props["note"] == {"type": ["string", "null"]}
    assert props["free"] == {"type": "object"}  # preserve-unknown-fields stays open
    assert props["labels"]["additionalProperties"] == {"type": "string"}
    assert props["child"] == {"$ref": "#/definitions/io.example.v1.Spec"}


def test_property_names_that_look_like_keywords_are_kept() -> None:
    """JSONSchemaProps has properties named $ref, description, x-kubernetes-...; keep them."""
    doc = _document(
        {
            "io.example.v1.Props": {
                "type": "object",
                "x-kubernetes-group-version-kind": [
                    {"group": "example.io", "version": "v1", "kind": "Props"}
                ],
                "properties": {
                    "$ref": {"type": "string"},
                    "description": {"type": "string"},
                    "x-kubernetes-validations": {"type": "array"},
                },
            }
        }
    )
    props = schemas.schemas_from_openapi({"apis/example.io/v1": doc})["props-example-v1.json"]
    assert {"$ref", "description", "x-kubernetes-validations"} <= props["properties"].keys()


def test_two_groups_with_one_file_name_are_an_error() -> None:
    gvk = {"group": "networking.example.io", "version": "v1", "kind": "Thing"}
    other = {**gvk, "group": "networking.other.dev"}
    doc = _document(
        {
            "a.Thing": {"type": "object", "x-kubernetes-group-version-kind": [gvk]},
            "b.Thing": {"type": "object", "x-kubernetes-group-version-kind": [other]},
        }
    )
    with pytest.raises(ValueError, match=r"thing-networking-v1\.json"):
        schemas.schemas_from_openapi({"apis/x": doc})


def test_a_crd_manifest_becomes_a_schema_per_version() -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": "ServiceMonitor"},
            "versions": [
                {
                    "name": "v1",
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"port": {"type": "string"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    out = schemas.schemas_from_crd(crd)
    monitor = out["servicemonitor-monitoring-v1.json"]
    assert monitor["additionalProperties"] is False
    assert monitor["properties"]["metadata"] == {"type": "object"}
    assert monitor["properties"]["kind"]["enum"] == ["ServiceMonitor"]
    assert monitor["properties"]["spec"]["additionalProperties"] is False
