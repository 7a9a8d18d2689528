"""Fixtures for the Helm chart's tests: helm and kubeconform built from their Go modules.

Both tools come from wrapper modules in devstack/gomods (like the control plane) and are
cached; `./dev setup` builds them, and a fixture builds one that is missing. helm runs
with its cache, config and data directories in a temporary directory, so nothing here
reads or writes the user's Helm setup.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpj_devstack import build, versions
from tests.chart.helpers import Helm, Render, template_args


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    return build.build(versions.HELM) / "helm"


@pytest.fixture(scope="session")
def kubeconform_bin() -> Path:
    return build.build(versions.KUBECONFORM) / "kubeconform"


@pytest.fixture(scope="session")
def helm(helm_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(helm_bin), *args], capture_output=True, text=True, env=env, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    return run


@pytest.fixture(scope="session")
def render(helm: Helm) -> Render:
    """`helm template` as a list of objects."""

    def run(
        release: str = "bpj",
        namespace: str = "bpj-system",
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        include_crds: bool = False,
    ) -> list[dict[str, Any]]:
        out = helm(*template_args(release, namespace, values, sets, include_crds)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return run
