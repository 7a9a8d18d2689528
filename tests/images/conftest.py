"""Fixtures for the image tests: the images built (cached), and a way to run them as a pod would."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from bpj_devstack import images


@pytest.fixture(scope="session")
def built() -> dict[str, images.BuiltImage]:
    """The product's images, built from the working tree (seconds when ./dev setup built them)."""
    missing = [tool for tool in ("buildah", "podman", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the image tests need {missing} (.ci/run installs them from Debian)")
    return images.build_images()


def run_as_pod(
    image: str,
    *args: str,
    entrypoint: str | None = None,
    env: Mapping[str, str] | None = None,
    mounts: Sequence[tuple[Path, str, str]] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``image`` the way the chart and the operator run pods: uid 10001, read-only root.

    ``mounts`` are (host path, container path, "ro" or "rw"); no network.
    """
    command = [
        "podman",
        "run",
        "--rm",
        "--user",
        images.IMAGE_USER,
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        *images.ULIMITS,
        "--network",
        "none",
    ]
    for host, container, mode in mounts:
        command += ["--volume", f"{host}:{container}:{mode}"]
    for key, value in (env or {}).items():
        command += ["--env", f"{key}={value}"]
    if entrypoint is not None:
        command += ["--entrypoint", entrypoint]
    command += [image, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
