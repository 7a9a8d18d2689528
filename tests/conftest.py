"""Session fixtures for the real local stack, and markers derived from them.

A test that asks for ``devstack`` (or anything built on it) is marked
``cluster``; one that asks for ``gcs_emulator``/``gcs_bucket`` is marked ``gcs``.
So ``pytest -m "not cluster and not gcs"`` runs the pure tests with no stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpj_devstack import plane
from tests.support import (
    DEMO_RUN_TIMEOUT,
    DemoRun,
    Kubectl,
    kubectl_exists,
    kubectl_for,
    kubectl_json,
    wait_for,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CRDS_DIR = REPO_ROOT / "crds"

_CLUSTER_FIXTURES = {"devstack", "kubectl", "kube_api", "crd_installed", "namespace"}
_GCS_FIXTURES = {"gcs_emulator", "gcs_bucket"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)
        if names & _GCS_FIXTURES:
            item.add_marker(pytest.mark.gcs)


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[plane.StackState]:
    """The whole stack (etcd, kube-apiserver, controllers, scheduler, KWOK, GCS), once."""
    run_dir = tmp_path_factory.mktemp("devstack")
    state = plane.up(run_dir, pod_run_for="2s")
    try:
        yield state
    finally:
        plane.down(run_dir)


@pytest.fixture(scope="session")
def kubectl(devstack: plane.StackState) -> Kubectl:
    return kubectl_for(devstack.kubeconfig)


@pytest.fixture(scope="session")
def kube_api(devstack: plane.StackState) -> Any:
    """A kubernetes.client.ApiClient authenticated as the stack's admin."""
    from kubernetes import config

    return config.new_client_from_config(config_file=devstack.kubeconfig)


@pytest.fixture(scope="session")
def crd_installed(kubectl: Kubectl) -> None:
    """Apply crds/ and wait until every CRD is Established."""
    files = sorted(CRDS_DIR.glob("*.yaml"))
    if not files:
        pytest.fail("crds/ holds no CRD; run `python -m bert_pretrain_operator.api.crd`")
    for path in files:
        kubectl("apply", "--server-side", "-f", str(path))

    def established() -> bool:
        # `kubectl wait` errors out on a CRD whose status is not written yet; poll instead.
        crds = kubectl_json(kubectl, "get", "crd")["items"]
        return all(
            any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            )
            for crd in crds
        )

    wait_for(established, 60, "every CRD to be Established")


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    wait_for(
        lambda: kubectl_exists(kubectl, "serviceaccount", "default", name),
        30,
        "default service account",
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def gcs_emulator(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An endpoint of fake-gcs-server: the stack's if a cluster test already started it."""
    if "devstack" in request.fixturenames:
        state: plane.StackState = request.getfixturevalue("devstack")
        yield state.gcs_endpoint
        return
    run_dir = tmp_path_factory.mktemp("gcs")
    port = plane.free_port()
    state = plane.StackState(
        run_dir=str(run_dir),
        kubeconfig="",
        apiserver_url="",
        gcs_endpoint=f"http://127.0.0.1:{port}",
        ports={"gcs": port},
    )
    plane.start_gcs(state)
    try:
        yield state.gcs_endpoint
    finally:
        for name, pid in state.pids.items():
            plane._stop(name, pid, grace=5)


@pytest.fixture
def gcs_bucket(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket in the emulator, with STORAGE_EMULATOR_HOST pointing at it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    client = storage.Client(project="bpj-test", credentials=AnonymousCredentials())
    name = f"bpj-test-{uuid.uuid4().hex[:10]}"
    client.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``./dev demo`` once per session, on a stack of its own that it stops at the end.

    Shared by the tests that check what the demo produced (``tests/test_demo.py``,
    ``tests/reliability/test_no_credentials.py``), so the slow run happens once.
    """
    run_dir = tmp_path_factory.mktemp("demo-run") / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "bpj_devstack.demo", "--run-dir", str(run_dir), "--timeout", "600"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=DEMO_RUN_TIMEOUT,
        check=False,
    )
    return DemoRun(run_dir, result.returncode, result.stdout, result.stderr)


# Subprocesses that TensorFlow runs in should not fight pytest for both cores.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
