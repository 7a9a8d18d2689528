"""A container's environment: ``envFrom``, ``env`` and the downward API (``fieldRef``).

Pure rules: ConfigMap and Secret data come through a ``DataLookup`` the caller
provides (``preparing.PodPreparer`` reads them from the API).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from bpj_devstack.podrunner.constants import LOCAL_IP
from bpj_devstack.podrunner.errors import PodRejected

_LABEL_OR_ANNOTATION_REF = re.compile(r"metadata\.(labels|annotations)\['([^']*)'\]")


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """The downward-API value of ``field_path`` for ``pod`` as it runs here."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    matched = _LABEL_OR_ANNOTATION_REF.fullmatch(field_path)
    if matched:
        return str((meta.get(matched[1]) or {}).get(matched[2], ""))
    simple: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": LOCAL_IP,
        "status.hostIPs": LOCAL_IP,
        "status.podIP": LOCAL_IP,
        "status.podIPs": LOCAL_IP,
    }
    if field_path not in simple:
        raise PodRejected(f"fieldRef {field_path!r} is not supported by the local pod runner")
    return simple[field_path]


#: (kind "configMap" or "secret", name, optional) -> the object's decoded data ({} when an
#: optional object is missing); raises PodRejected when a required one never appears.
DataLookup = Callable[[str, str, bool], Mapping[str, str]]


def resolve_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookup: DataLookup
) -> dict[str, str]:
    """The container's ``envFrom`` and ``env``, resolved in Kubernetes' order (later wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind in ("configMap", "secret"):
            ref = source.get(kind + "Ref")
            if ref is not None:
                data = lookup(kind, ref["name"], bool(ref.get("optional")))
                env.update({prefix + key: value for key, value in data.items()})
    for var in container.get("env", []):
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = var.get("value", "")
        elif "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "configMap" if "configMapKeyRef" in source else "secret"
            ref = source[kind + "KeyRef"]
            optional = bool(ref.get("optional"))
            data = lookup(kind, ref["name"], optional)
            if ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not optional:
                raise PodRejected(f"env {name}: {kind} {ref['name']} has no key {ref['key']!r}")
        else:
            raise PodRejected(
                f"env {name}: only value, fieldRef, configMapKeyRef and secretKeyRef are "
                "supported by the local pod runner"
            )
    return env
