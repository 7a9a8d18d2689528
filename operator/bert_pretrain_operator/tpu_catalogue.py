"""What the operator knows about GKE TPU slices: one table, plain data, sources cited.

Everything TPU-shaped in the project derives from this module: the API's enum of
accelerators and its CEL rules (which topologies each accelerator accepts, how
many chips a topology has), the offline validator, and the renderer's node
selectors, resource requests and worker count. Change a fact here and the CRD
is regenerated from it; nothing else hard-codes a topology.

Sources (read when this table was written; re-check them when adding a row):

- GKE, "Plan TPUs in GKE" and "About TPUs in GKE"
  (cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus, .../concepts/tpus):
  the node labels ``cloud.google.com/gke-tpu-accelerator`` and
  ``cloud.google.com/gke-tpu-topology``, the ``google.com/tpu`` resource, the
  accelerator label values and the machine type of each node pool; a
  multi-host slice is one node pool whose nodes are all scheduled as a unit.
- Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, /v5e,
  /v5p, /v6e): the slice shapes each generation supports, their chip and host
  counts, and the GKE machine type of each VM shape.
- google/xpk, ``src/xpk/core/system_characteristics.py`` (AI-Hypercomputer/xpk):
  the same facts as code. Like xpk, every slice larger than one chip is built
  from 4-chip VMs, so ``vms = chips / 4``. (v5e and v6e also offer an 8-chip
  single VM for 2x4, ``ct5lp-hightpu-8t`` / ``ct6e-standard-8t``; GKE documents
  it for serving. Training here always uses the 4-chip VM shape, which keeps
  one rule for the worker count and matches xpk.)

The 3D generations (v4, v5p) accept many more "full cube" shapes than listed
(AxBxC with every side a multiple of 4, up to the pod size). The table lists the
documented common shapes only: it is what the API accepts, and an error message
can enumerate it. Add a row to accept another shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

#: Node label GKE puts on TPU nodes: the accelerator (one of ``Accelerator``).
LABEL_ACCELERATOR: Final = "cloud.google.com/gke-tpu-accelerator"
#: Node label GKE puts on TPU nodes: the slice topology, e.g. ``2x2x1``.
LABEL_TOPOLOGY: Final = "cloud.google.com/gke-tpu-topology"
#: Node label of Spot VMs; a selector on it schedules onto spot TPU node pools.
LABEL_SPOT: Final = "cloud.google.com/gke-spot"
#: The extended resource a TPU pod requests; the value is the chips of one VM.
TPU_RESOURCE: Final = "google.com/tpu"

#: Chips of every VM in a multi-chip slice (see the module docstring).
CHIPS_PER_MULTI_CHIP_VM: Final = 4


class Accelerator(StrEnum):
    """GKE's value of the ``cloud.google.com/gke-tpu-accelerator`` node label."""

    V4 = "tpu-v4-podslice"
    V5E = "tpu-v5-lite-podslice"
    V5P = "tpu-v5p-slice"
    V6E = "tpu-v6e-slice"


@dataclass(frozen=True)
class SliceShape:
    """One TPU slice shape: what the renderer needs to ask GKE for it."""

    accelerator: Accelerator
    topology: str
    """Chips along each torus axis, ``AxB`` (v5e, v6e) or ``AxBxC`` (v4, v5p)."""
    chips: int
    """All chips of the slice; the data-parallel replicas of one training step."""
    chips_per_vm: int
    """Chips of one TPU VM (one Kubernetes node, one trainer pod)."""
    vms: int
    """TPU VMs in the slice: the trainer's worker pods (Indexed Job completions)."""
    machine_type: str
    """GKE machine type of the slice's node pool, e.g. ``ct5lp-hightpu-4t``."""

    @property
    def vm(self) -> TpuVm:
        """The VM of each node: its vCPUs and memory."""
        return MACHINE_TYPES[self.machine_type]

    @property
    def multi_host(self) -> bool:
        """True when the slice spans several VMs (the workers must rendezvous)."""
        return self.vms > 1


@dataclass(frozen=True)
class TpuVm:
    """A TPU VM machine type's host: what the trainer pod on it may ask for."""

    vcpus: int
    memory_gb: int
    """Memory in GB (10^9 bytes), as Compute Engine's machine type tables give it."""

    @property
    def cpu(self) -> str:
        """All the vCPUs, as a Kubernetes quantity (the node's CPU capacity)."""
        return str(self.vcpus)

    @property
    def memory(self) -> str:
        """All the memory, as a Kubernetes quantity (the node's memory capacity)."""
        return f"{self.memory_gb}G"

    @property
    def default_cpu(self) -> str:
        """The training pod's CPU request: 80 % of the vCPUs, rounded down.

        The rest is what GKE reserves on a node (kubelet, system daemons, eviction
        threshold: a few percent) plus the DaemonSets of a TPU node pool (the TPU
        device plugin, logging and metrics agents), with room to spare.
        """
        return str(self.vcpus * 8 // 10)

    @property
    def default_memory(self) -> str:
        """The training pod's memory request and limit: 75 % of the memory, in GB.

        GKE reserves up to a tenth of a small node's memory and about 2 % above
        128 GB; a quarter leaves the page cache room for the input pipeline's reads.
        """
        return f"{self.memory_gb * 3 // 4}G"


#: vCPUs and memory of each machine type a slice shape uses. v5e's rows were read in
#: Compute Engine's machine-type list as the GCP pricing data mirrors it
#: (ct5lp-hightpu-1t 24/48, -4t 112/192). v4's, v5p's and v6e's are the figures of
#: Compute Engine's TPU machine tables (cloud.google.com/compute/docs/tpus/tpu-machines
#: and the /tpu/docs/v4, /v5p, /v6e pages) as this table's authors know them; they were
#: not found in this project's offline search index, so re-check them against those
#: pages (docs/gke.md says so too). Admission refuses requests above them, and the
#: defaults are 80 % and 75 % of them.
MACHINE_TYPES: Final[Mapping[str, TpuVm]] = MappingProxyType(
    {
        "ct4p-hightpu-4t": TpuVm(vcpus=240, memory_gb=407),
        "ct5lp-hightpu-1t": TpuVm(vcpus=24, memory_gb=48),
        "ct5lp-hightpu-4t": TpuVm(vcpus=112, memory_gb=192),
        "ct5p-hightpu-4t": TpuVm(vcpus=208, memory_gb=448),
        "ct6e-standard-1t": TpuVm(vcpus=44, memory_gb=176),
        "ct6e-standard-4t": TpuVm(vcpus=180, memory_gb=720),
    }
)


@dataclass(frozen=True)
class TpuGeneration:
    """One TPU generation as GKE exposes it."""

    accelerator: Accelerator
    name: str
    """The generation's short name (``v5e``), for messages and docs."""
    tensorcores_per_chip: int
    """2 on v4 and v5p (megacore), 1 on v5e and v6e; the TPU API counts cores."""
    single_chip_machine_type: str | None
    """Machine type of a 1x1 slice; None when the generation has no 1-chip VM."""
    multi_chip_machine_type: str
    """Machine type of the 4-chip VMs every larger slice is made of."""
    topologies: tuple[str, ...]
    """The accepted topologies, smallest first."""

    def shape(self, topology: str) -> SliceShape | None:
        """The slice shape of ``topology``, or None when this table does not list it."""
        if topology not in self.topologies:
            return None
        chips = topology_chips(topology)
        if chips == 1:
            # Only generations with a 1-chip VM list "1x1"; the invariant test checks it.
            assert self.single_chip_machine_type is not None
            return SliceShape(self.accelerator, topology, 1, 1, 1, self.single_chip_machine_type)
        return SliceShape(
            self.accelerator,
            topology,
            chips,
            CHIPS_PER_MULTI_CHIP_VM,
            chips // CHIPS_PER_MULTI_CHIP_VM,
            self.multi_chip_machine_type,
        )


def topology_chips(topology: str) -> int:
    """Chips in a topology string: the product of its sides (``2x2x1`` -> 4)."""
    return math.prod(int(side) for side in topology.split("x"))


# 2D generations: v5e and v6e share one list of shapes (cloud.google.com/tpu/docs/v5e
# and /v6e, "supported configurations"; xpk's v5litepod and v6e entries).
_2D_TOPOLOGIES: Final = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")

_GENERATIONS: Final = (
    TpuGeneration(
        accelerator=Accelerator.V4,
        name="v4",
        tensorcores_per_chip=2,
        single_chip_machine_type=None,
        multi_chip_machine_type="ct4p-hightpu-4t",
        # The v4 shapes GKE's plan-tpus table and xpk's "default topologies" list;
        # 16x16x16 is the full 4096-chip pod (cloud.google.com/tpu/docs/v4).
        topologies=(
            "2x2x1",
            "2x2x2",
            "2x2x4",
            "2x4x4",
            "4x4x4",
            "4x4x8",
            "4x8x8",
            "8x8x8",
            "8x8x12",
            "8x8x16",
            "8x16x16",
            "16x16x16",
        ),
    ),
    TpuGeneration(
        accelerator=Accelerator.V5E,
        name="v5e",
        tensorcores_per_chip=1,
        single_chip_machine_type="ct5lp-hightpu-1t",
        multi_chip_machine_type="ct5lp-hightpu-4t",
        topologies=_2D_TOPOLOGIES,
    ),
    TpuGeneration(
        accelerator=Accelerator.V5P,
        name="v5p",
        tensorcores_per_chip=2,
        single_chip_machine_type=None,
        multi_chip_machine_type="ct5p-hightpu-4t",
        # cloud.google.com/tpu/docs/v5p "Configurations" table (16x16x24 = 6144 chips is
        # the largest single slice) plus 2x2x4, which xpk and GKE also accept.
        topologies=(
            "2x2x1",
            "2x2x2",
            "2x2x4",
            "2x4x4",
            "4x4x4",
            "4x4x8",
            "4x8x8",
            "8x8x8",
            "8x8x16",
            "8x16x16",
            "16x16x16",
            "16x16x24",
        ),
    ),
    TpuGeneration(
        accelerator=Accelerator.V6E,
        name="v6e",
        tensorcores_per_chip=1,
        single_chip_machine_type="ct6e-standard-1t",
        multi_chip_machine_type="ct6e-standard-4t",
        topologies=_2D_TOPOLOGIES,
    ),
)

#: Accelerator -> generation, in ``Accelerator`` order.
CATALOGUE: Final[Mapping[Accelerator, TpuGeneration]] = MappingProxyType(
    {generation.accelerator: generation for generation in _GENERATIONS}
)


def generation(accelerator: Accelerator | str) -> TpuGeneration:
    """The generation behind a GKE accelerator label value; KeyError if unknown."""
    return CATALOGUE[Accelerator(accelerator)]


def slice_shape(accelerator: Accelerator | str, topology: str) -> SliceShape | None:
    """The shape of ``topology`` on ``accelerator``; None when it is not in the table."""
    try:
        return generation(accelerator).shape(topology)
    except ValueError:  # not an Accelerator value
        return None


def valid_topologies(accelerator: Accelerator | str) -> tuple[str, ...]:
    """The topologies the API accepts for ``accelerator``, smallest first."""
    return generation(accelerator).topologies
