"""A stack with real nodes (kubelet + containerd) for the tests in this directory.

One stack per module, with a CPU node and a TPU-shaped node, and the busybox
toolbox image imported; tests here are marked ``kubelet``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bpj_devstack import kwok_config, plane
from bpj_devstack.nodes import scratch
from tests.support import Kubectl, kubectl_for

CPU_POOL = kwok_config.NodePool("real-cpu", nodes=1)
TPU_POOL = kwok_config.NodePool(
    "real-tpu-v4-2x2x1", nodes=1, accelerator="tpu-v4-podslice", topology="2x2x1", chips_per_node=4
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.kubelet)


@pytest.fixture(scope="module")
def node_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[plane.StackState]:
    run_dir = tmp_path_factory.mktemp("nodes")
    state = plane.up(
        run_dir, pools=(), kubelet_pools=(CPU_POOL, TPU_POOL), images=[scratch.busybox_archive()]
    )
    try:
        yield state
    finally:
        plane.down(run_dir)


@pytest.fixture(scope="module")
def node_kubectl(node_stack: plane.StackState) -> Kubectl:
    return kubectl_for(node_stack.kubeconfig)
