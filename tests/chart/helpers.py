"""Paths and helpers shared by the chart's tests (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bpj_devstack import versions

CHART = Path(__file__).resolve().parents[2] / "charts" / "bert-pretrain-operator"
HERE = Path(__file__).resolve().parent
#: The Kubernetes version helm renders for: the local control plane's.
KUBE_VERSION = versions.KUBERNETES_VERSION.lstrip("v")

Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]


def template_args(
    release: str,
    namespace: str,
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    include_crds: bool = False,
) -> list[str]:
    """`helm template` arguments for the chart."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    args += ["--kube-version", KUBE_VERSION]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    if include_crds:
        args.append("--include-crds")
    return args


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator container of the rendered Deployment."""
    (deployment,) = of_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's env entries that have a value (not valueFrom)."""
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}
