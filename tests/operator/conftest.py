"""The operator, run in-process (kopf's KopfRunner) against the local control plane."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from bpj_devstack import plane


@pytest.fixture(scope="session")
def operator(devstack: plane.StackState, crd_installed: None) -> Iterator[Any]:
    from kopf.testing import KopfRunner

    env = {
        "KUBECONFIG": devstack.kubeconfig,
        "STORAGE_EMULATOR_HOST": devstack.gcs_endpoint,
        "BPJ_METRICS_PORT": "0",
        "BPJ_HEALTH_PORT": "0",
        "BPJ_RESYNC_SECONDS": "3",
        "BPJ_TRAINER_IMAGE": "localhost/bert-trainer:test",
        "BPJ_NAMESPACES": "t-*",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    runner = KopfRunner(
        # Namespaces of other suites (e.g. the operator-restart test, which runs its own
        # operator process) start with other letters.
        ["run", "--standalone", "--namespace=t-*", "-m", "bert_pretrain_operator.handlers"],
        timeout=60,
    )
    try:
        with runner:
            yield runner
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def namespace(namespace: str, kubectl: Any) -> str:
    """A fresh namespace with the trainer's ServiceAccount and Role, as the chart installs."""
    import json

    from bert_pretrain_operator.rbac import trainer_rbac
    from bert_pretrain_operator.settings import Settings

    objects = trainer_rbac(namespace, Settings().trainer_service_account)
    kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    return namespace
