"""The lock files the images install from match pyproject.toml (like the generated CRD).

Compiling again with the committed lock as the starting point keeps every pin
that pyproject.toml still allows, so the output equals the lock unless a
declared dependency changed: then ``bpj-devstack images lock`` rewrites them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bpj_devstack import images


@pytest.mark.parametrize("spec", images.LOCKS, ids=lambda spec: spec.path)
def test_lock_files_are_current(spec: images.LockSpec, tmp_path: Path) -> None:
    committed = images.REPO_ROOT / spec.path
    again = tmp_path / Path(spec.path).name
    shutil.copy(committed, again)
    images.compile_lock(spec, again)
    assert again.read_text() == committed.read_text(), (
        f"{spec.path} is out of date with pyproject.toml: run `bpj-devstack images lock`"
    )


def pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", path.read_text(), re.MULTILINE))


def test_every_pin_carries_hashes_and_the_tpu_lock_only_adds_the_tpu_runtime() -> None:
    for spec in images.LOCKS:
        text = (images.REPO_ROOT / spec.path).read_text()
        blocks = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2])
        assert all("--hash=sha256:" in block for block in blocks), spec.path
    cpu = pins(images.REPO_ROOT / "trainer_image/requirements-cpu.lock")
    tpu = pins(images.REPO_ROOT / "trainer_image/requirements-tpu.lock")
    assert set(tpu) - set(cpu) == {"libtpu"}
    assert {name: tpu[name] for name in cpu} == cpu, "the variants share every other pin"
    operator = pins(images.REPO_ROOT / "operator/requirements.lock")
    assert {"tensorflow", "jax", "tokenizers", "google-cloud-storage"}.isdisjoint(operator)
    assert "kubernetes" in operator  # kube.py's credentials and connections
    assert {name: cpu[name] for name in operator} == operator
