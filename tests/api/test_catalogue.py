"""The TPU catalogue: internal consistency, and agreement with the devstack's fake fleet."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bert_pretrain_operator import tpu_catalogue
from bert_pretrain_operator.tpu_catalogue import Accelerator, TpuGeneration
from bpj_devstack import kwok_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
GENERATIONS = list(tpu_catalogue.CATALOGUE.values())


def test_every_accelerator_has_a_generation() -> None:
    assert list(tpu_catalogue.CATALOGUE) == list(Accelerator)


@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_topologies_are_unique_and_smallest_first(generation: TpuGeneration) -> None:
    chips = [tpu_catalogue.topology_chips(t) for t in generation.topologies]
    assert len(set(generation.topologies)) == len(generation.topologies)
    assert chips == sorted(chips)


@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_topologies_have_the_generations_dimensions(generation: TpuGeneration) -> None:
    # v4 and v5p are 3D tori, v5e and v6e 2D; GKE's topology label follows suit.
    dims = 3 if generation.tensorcores_per_chip == 2 else 2
    assert {len(t.split("x")) for t in generation.topologies} == {dims}


@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_shapes_are_whole_vms(generation: TpuGeneration) -> None:
    for topology in generation.topologies:
        shape = generation.shape(topology)
        assert shape is not None
        assert shape.chips == tpu_catalogue.topology_chips(topology)
        assert shape.vms * shape.chips_per_vm == shape.chips
        assert shape.multi_host == (shape.vms > 1)
        expected_machine = (
            generation.single_chip_machine_type
            if shape.chips == 1
            else generation.multi_chip_machine_type
        )
        assert shape.machine_type == expected_machine


@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_single_chip_slices_only_where_a_one_chip_vm_exists(generation: TpuGeneration) -> None:
    assert ("1x1" in generation.topologies) == (generation.single_chip_machine_type is not None)


def test_lookups() -> None:
    shape = tpu_catalogue.slice_shape("tpu-v5-lite-podslice", "4x4")
    assert shape is not None
    assert (shape.chips, shape.vms, shape.machine_type) == (16, 4, "ct5lp-hightpu-4t")
    assert tpu_catalogue.slice_shape("tpu-v5-lite-podslice", "2x2x1") is None
    assert tpu_catalogue.slice_shape("tpu-v3-podslice", "2x2") is None
    assert tpu_catalogue.valid_topologies(Accelerator.V6E)[0] == "1x1"


def _pool_for(accelerator: str, topology: str, spot: bool) -> kwok_config.NodePool | None:
    for pool in kwok_config.DEFAULT_POOLS:
        if (pool.accelerator, pool.topology, pool.spot) == (accelerator, topology, spot):
            return pool
    return None


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_fits_a_devstack_pool(path: Path) -> None:
    """The local stack's fake node pools are shaped as the catalogue says GKE's are."""
    tpu = yaml.safe_load(path.read_text())["spec"]["tpu"]
    pool = _pool_for(tpu["accelerator"], tpu["topology"], tpu.get("spot", False))
    assert pool is not None, f"no devstack pool for {tpu}"
    shape = tpu_catalogue.slice_shape(tpu["accelerator"], tpu["topology"])
    assert shape is not None
    assert (pool.nodes, pool.chips_per_node) == (shape.vms, shape.chips_per_vm)


def test_label_keys_match_the_devstack() -> None:
    assert tpu_catalogue.LABEL_ACCELERATOR == kwok_config.LABEL_ACCELERATOR
    assert tpu_catalogue.LABEL_TOPOLOGY == kwok_config.LABEL_TOPOLOGY
    assert tpu_catalogue.LABEL_SPOT == kwok_config.LABEL_SPOT
    assert tpu_catalogue.TPU_RESOURCE == kwok_config.TPU_RESOURCE


@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_every_shape_knows_its_vms_cpu_and_memory(generation: TpuGeneration) -> None:
    from bert_pretrain_operator.api import quantity

    for topology in generation.topologies:
        shape = generation.shape(topology)
        assert shape is not None
        vm = shape.vm  # KeyError if the machine type has no row
        # The defaults leave room for what GKE reserves, and never exceed the VM.
        assert 0 < quantity.parse(vm.default_cpu) < vm.vcpus
        assert 0 < quantity.parse(vm.default_memory) < vm.memory_gb * 10**9
