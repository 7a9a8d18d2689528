"""JSON schemas for kubeconform, generated offline from the local API server's OpenAPI.

kubeconform validates manifests against one JSON schema per kind, which it normally
downloads from yannh/kubernetes-json-schema. The local stack has no internet, and a
downloaded set would not know our CRD anyway; so this module reads the OpenAPI v3
documents the devstack's kube-apiserver serves (``/openapi/v3``: every built-in group
and every installed CRD, BertPretrainJob among them) and writes them in kubeconform's
file layout, which ``schema_location`` turns into its ``-schema-location`` template::

    kubeconform -strict -schema-location '<dir>/{{.ResourceKind}}{{.KindSuffix}}.json'

A file is named ``{kind}{kindSuffix}.json`` in lower case, where the suffix is
``-{first label of the group}-{version}`` or ``-{version}`` for the core group
(``deployment-apps-v1.json``, ``service-v1.json``,
``bertpretrainjob-pretraining-v1alpha1.json``), as kubeconform's
``registry.schemaPath`` computes it. CRDs that are not installed (a ServiceMonitor,
say) can be added from their manifests with ``schemas_from_crd``.

The schemas are strict, like kubeconform's ``-standalone-strict`` set: an object
that lists its properties rejects any other (a misspelt field fails), unless the API
marks it ``x-kubernetes-preserve-unknown-fields``; ``apiVersion`` and ``kind`` must
match the file's. Each file is self-contained: the definitions it reaches sit under
``definitions`` (recursive ones, such as a CRD's JSONSchemaProps, included). kubeconform
compiles schemas without ``$schema`` as draft 4, whose keywords OpenAPI 3.0's schema
objects share (boolean ``exclusiveMinimum``); ``nullable`` becomes a ``"null"`` type.
CEL rules (``x-kubernetes-validations``) are left out: only the API server evaluates them.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

Schema = dict[str, Any]

_OPENAPI_REF = "#/components/schemas/"
_DEFINITIONS_REF = "#/definitions/"
_GVK = "x-kubernetes-group-version-kind"
#: Kinds every group publishes (DeleteOptions, WatchEvent, ...): never a manifest's kind.
_META_PREFIX = "io.k8s.apimachinery.pkg.apis.meta."
#: Keywords whose value is one schema, a list of schemas or a map of name -> schema.
_ONE_SCHEMA = frozenset({"not", "additionalItems"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "definitions"})
#: Annotations that do not validate; dropped to keep the files small.
_DROPPED = frozenset({"description", "example", "externalDocs", "title", "nullable"})
#: OpenAPI formats that are no JSON-schema format (int-or-string is expressed by oneOf).
_DROPPED_FORMATS = frozenset({"int-or-string"})


def kubeconform_filename(kind: str, api_version: str) -> str:
    """The file kubeconform looks up for ``kind`` in ``api_version`` (registry.schemaPath)."""
    group_version = api_version.split("/")
    suffix = "-" + group_version[0].split(".")[0].lower()
    if len(group_version) > 1:
        suffix += "-" + group_version[1].lower()
    return f"{kind.lower()}{suffix}.json"


def schema_location(out_dir: Path) -> str:
    """kubeconform's ``-schema-location`` template for the files ``write`` puts in out_dir."""
    return str(out_dir / "{{.ResourceKind}}{{.KindSuffix}}.json")


def _convert(node: Any) -> Any:
    """One OpenAPI 3.0 schema object as a strict draft-4 JSON schema (refs to definitions)."""
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        # Draft 4 ignores a $ref's siblings; they are only description and default here.
        return {"$ref": _DEFINITIONS_REF + ref.removeprefix(_OPENAPI_REF)}
    all_of = node.get("allOf")
    if (
        isinstance(all_of, list)
        and len(all_of) == 1
        and isinstance(all_of[0], dict)
        and "$ref" in all_of[0]
        and not {"properties", "type", "items"} & node.keys()
    ):
        # OpenAPI v3 wraps a ref in allOf to attach a description or default to it.
        return _convert(all_of[0])
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED or key.startswith("x-"):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_convert(sub) for sub in value]
        elif key in _ONE_SCHEMA or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _convert(value)
        elif key == "items":
            out[key] = [_convert(s) for s in value] if isinstance(value, list) else _convert(value)
        elif key == "format" and value in _DROPPED_FORMATS:
            continue
        else:
            # Data, not schemas: enum, default, required, type, pattern, bounds, ...
            out[key] = copy.deepcopy(value)
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        node.get("x-kubernetes-int-or-string")
        and "type" not in out
        and not {"oneOf", "anyOf"} & out.keys()
    ):
        out["oneOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFINITIONS_REF):
            yield ref.removeprefix(_DEFINITIONS_REF)
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _standalone(
    root: Schema, definitions: Mapping[str, Schema], api_version: str, kind: str
) -> Schema:
    """root with the definitions it reaches, and apiVersion/kind pinned to this kind."""
    out = copy.deepcopy(root)
    props = out.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": [api_version]}
    props["kind"] = {"type": "string", "enum": [kind]}
    out.setdefault("additionalProperties", False)
    reached: dict[str, Schema] = {}
    pending = list(_refs(out))
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        if name not in definitions:
            raise ValueError(f"{kind} {api_version}: unresolved reference to {name}")
        reached[name] = definitions[name]
        pending.extend(_refs(definitions[name]))
    if reached:
        out["definitions"] = dict(sorted(reached.items()))
    return out


def schemas_from_openapi(documents: Mapping[str, Schema]) -> dict[str, Schema]:
    """kubeconform file name -> schema, for every kind in the OpenAPI v3 documents."""
    out: dict[str, Schema] = {}
    owner: dict[str, str] = {}
    for path in sorted(documents):
        components = documents[path].get("components", {}).get("schemas", {})
        definitions = {name: _convert(schema) for name, schema in components.items()}
        for name, schema in components.items():
            if name.startswith(_META_PREFIX):
                continue
            for gvk in schema.get(_GVK, []):
                group, version, kind = gvk.get("group", ""), gvk["version"], gvk["kind"]
                api_version = f"{group}/{version}" if group else version
                filename = kubeconform_filename(kind, api_version)
                identity = f"{api_version}/{kind}"
                if filename in owner:
                    if owner[filename] != identity:
                        raise ValueError(
                            f"{identity} and {owner[filename]} share kubeconform's file name "
                            f"{filename}; kubeconform cannot tell them apart"
                        )
                    continue
                owner[filename] = identity
                out[filename] = _standalone(definitions[name], definitions, api_version, kind)
    return out


def schemas_from_crd(crd: Mapping[str, Any]) -> dict[str, Schema]:
    """kubeconform file name -> schema for each version of a CRD manifest (not installed).

    The API server publishes an installed CRD's schema with apiVersion, kind and a full
    ObjectMeta added; here metadata is only checked to be an object.
    """
    spec = crd["spec"]
    kind = spec["names"]["kind"]
    out: dict[str, Schema] = {}
    for version in spec["versions"]:
        openapi = (version.get("schema") or {}).get("openAPIV3Schema")
        if openapi is None:
            continue
        api_version = f"{spec['group']}/{version['name']}"
        root = copy.deepcopy(openapi)
        root.setdefault("properties", {}).setdefault("metadata", {"type": "object"})
        out[kubeconform_filename(kind, api_version)] = _standalone(
            _convert(root), {}, api_version, kind
        )
    return out


def _openapi_path(api_version: str) -> str:
    return f"apis/{api_version}" if "/" in api_version else f"api/{api_version}"


def fetch_openapi_v3(
    kubeconfig: str, require: Iterable[str] = (), timeout: float = 60.0
) -> dict[str, Schema]:
    """The API server's OpenAPI v3 document of every group version (``api/v1``, ``apis/…``).

    ``require`` names API versions (``kopf.dev/v1``) that must be among them: the server
    publishes a new CRD's schema a little after the CRD is Established, so this polls
    until they appear or ``timeout`` seconds pass.
    """
    from kubernetes.client.rest import RESTClientObject

    from bert_pretrain_operator import kube

    # The operator's credentials and the client's pool (the generated ApiClient.call_api
    # changes its signature between client releases).
    settings = kube.configuration(kubeconfig)
    pool = RESTClientObject(settings).pool_manager
    headers = {"Accept": "application/json"}
    token = kube.authorization(settings)
    if token:
        headers["Authorization"] = token

    def get(path: str) -> Schema:
        response = pool.request("GET", settings.host + path, headers=headers, timeout=30.0)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {response.data[:200]!r}")
        document: Schema = json.loads(response.data)
        return document

    wanted = {_openapi_path(v) for v in require}
    deadline = time.monotonic() + timeout
    try:
        while True:
            paths: dict[str, Any] = get("/openapi/v3").get("paths", {})
            missing = wanted - paths.keys()
            if not missing:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API server publishes no OpenAPI for {sorted(missing)}")
            time.sleep(0.5)
        documents: dict[str, Schema] = {}
        for path, entry in sorted(paths.items()):
            parts = path.split("/")
            # api/v1 and apis/<group>/<version>; not apis/<group>, /version or OIDC.
            if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
                documents[path] = get(entry["serverRelativeURL"])
        return documents
    finally:
        pool.clear()


def write(out_dir: Path, schemas: Mapping[str, Schema]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, schema in sorted(schemas.items()):
        path = out_dir / filename
        path.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True))
        paths.append(path)
    return paths


def generate(
    kubeconfig: str,
    out_dir: Path,
    crds: Iterable[Mapping[str, Any]] = (),
    require: Iterable[str] = (),
) -> str:
    """Write the API server's schemas into out_dir and return kubeconform's location.

    ``crds`` are CRD manifests of kinds the server may not know (the server's own schema
    wins for those it does); ``require`` as for ``fetch_openapi_v3``.
    """
    schemas = schemas_from_openapi(fetch_openapi_v3(kubeconfig, require))
    for crd in crds:
        for filename, schema in schemas_from_crd(crd).items():
            schemas.setdefault(filename, schema)
    write(out_dir, schemas)
    log.info("wrote %d kubeconform schemas to %s", len(schemas), out_dir)
    return schema_location(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bpj_devstack.schemas",
        description="Write kubeconform JSON schemas from a running API server's OpenAPI v3.",
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for the schemas")
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        help="an API version (kopf.dev/v1) to wait for in the server's OpenAPI",
    )
    parser.add_argument(
        "--crd",
        type=Path,
        action="append",
        default=[],
        help="a CRD manifest (YAML, may hold several) to add without installing it",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    crds = [
        doc
        for path in args.crd
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]
    print(generate(args.kubeconfig, args.out, crds, args.require))
    return 0


if __name__ == "__main__":
    sys.exit(main())
