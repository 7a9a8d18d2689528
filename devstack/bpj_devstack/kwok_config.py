"""KWOK's configuration: fake GKE-shaped nodes and the lifecycle stages of their pods.

Node shapes follow GKE TPU node pools: the accelerator and topology labels the
GKE TPU docs tell workloads to select on, a ``google.com/tpu`` extended resource
with the chips of one TPU VM, and the ``google.com/tpu`` NoSchedule taint that
GKE puts on every TPU node.

Pod stages (Running, then Succeeded after a delay; chaos stages) are driven by
annotations that tests set on pods, so one stack serves every scenario:

- ``devstack.bpj.dev/run-for``: how long a pod runs before it succeeds (a Go
  duration such as ``5s``; the stack's default otherwise).
- ``devstack.bpj.dev/preempt: "true"``: the pod fails the way a TPU slice
  preemption looks (a ``DisruptionTarget`` condition, exit code 137).
- ``devstack.bpj.dev/fail-exit-code``: the container terminates with this exit
  code, optional ``fail-reason`` (e.g. ``OOMKilled``) and ``fail-message``
  (stands in for the container's termination message).
- ``devstack.bpj.dev/exit-message``: the termination message of a pod that succeeds
  (a check pod's report; a check pod without it reports ``{}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bert_pretrain_operator import tpu_catalogue
from bert_pretrain_operator.render import names

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
ANNOTATION_PREFIX = "devstack.bpj.dev/"
RUN_FOR = ANNOTATION_PREFIX + "run-for"
PREEMPT = ANNOTATION_PREFIX + "preempt"
FAIL_EXIT_CODE = ANNOTATION_PREFIX + "fail-exit-code"
FAIL_REASON = ANNOTATION_PREFIX + "fail-reason"
FAIL_MESSAGE = ANNOTATION_PREFIX + "fail-message"
EXIT_MESSAGE = ANNOTATION_PREFIX + "exit-message"

TPU_RESOURCE = "google.com/tpu"
LABEL_ACCELERATOR = "cloud.google.com/gke-tpu-accelerator"
LABEL_TOPOLOGY = "cloud.google.com/gke-tpu-topology"
LABEL_NODEPOOL = "cloud.google.com/gke-nodepool"
LABEL_SPOT = "cloud.google.com/gke-spot"


@dataclass(frozen=True)
class NodePool:
    """A group of identical fake nodes, shaped like one GKE node pool."""

    name: str
    nodes: int
    accelerator: str | None = None
    """GKE accelerator label value (e.g. tpu-v5-lite-podslice); None for CPU pools."""
    topology: str | None = None
    chips_per_node: int = 0
    spot: bool = False
    cpu: str = "32"
    memory: str = "128Gi"
    """CPU and memory of a CPU pool's nodes; a TPU pool's are its machine type's."""

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.nodes)]


#: The default fleet: one pool per TPU generation the examples use, plus CPU nodes.
#: Multi-host pools have (chips in topology / chips per VM) nodes, as on GKE.
DEFAULT_POOLS: tuple[NodePool, ...] = (
    NodePool("cpu", nodes=2, cpu="16", memory="64Gi"),
    NodePool(
        "tpu-v4-2x2x1", nodes=1, accelerator="tpu-v4-podslice", topology="2x2x1", chips_per_node=4
    ),
    NodePool(
        "tpu-v5e-2x4", nodes=2, accelerator="tpu-v5-lite-podslice", topology="2x4", chips_per_node=4
    ),
    NodePool(
        "tpu-v5p-2x2x2", nodes=2, accelerator="tpu-v5p-slice", topology="2x2x2", chips_per_node=4
    ),
    NodePool(
        "tpu-v6e-4x4-spot",
        nodes=4,
        accelerator="tpu-v6e-slice",
        topology="4x4",
        chips_per_node=4,
        spot=True,
    ),
)


def node_manifests(pools: tuple[NodePool, ...]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for pool in pools:
        labels = {
            LABEL_NODEPOOL: pool.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        taints: list[dict[str, str]] = []
        capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110"}
        if pool.accelerator:
            assert pool.topology, f"TPU pool {pool.name} needs a topology"
            # A TPU node's host is its machine type's: the trainer pods' default
            # requests are sized from it, as on GKE.
            shape = tpu_catalogue.slice_shape(pool.accelerator, pool.topology)
            assert shape is not None, f"TPU pool {pool.name}: no such slice"
            capacity["cpu"], capacity["memory"] = shape.vm.cpu, shape.vm.memory
            labels[LABEL_ACCELERATOR] = pool.accelerator
            labels[LABEL_TOPOLOGY] = pool.topology
            capacity[TPU_RESOURCE] = str(pool.chips_per_node)
            taints.append({"key": TPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
        if pool.spot:
            labels[LABEL_SPOT] = "true"
        for name in pool.node_names():
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": {**labels, "kubernetes.io/hostname": name},
                        "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                    },
                    "spec": {"taints": taints},
                    "status": {"capacity": capacity, "allocatable": capacity},
                }
            )
    return nodes


def _stage(
    name: str,
    kind: str,
    match: list[dict[str, Any]],
    nxt: dict[str, Any],
    delay: dict[str, Any] | None = None,
    weight: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": match},
        "next": nxt,
    }
    if delay:
        spec["delay"] = delay
    if weight is not None:
        spec["weight"] = weight
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": spec,
    }


def _annotation(key: str) -> str:
    return f'.metadata.annotations["{key}"]'


_NOT_DELETING = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_RUNNING = {"key": ".status.phase", "operator": "In", "values": ["Running"]}
_READY_STATUS = '.status.conditions.[] | select( .type == "Ready" ) | .status'

_NODE_STATUS = """\
{{ $now := Now }}
{{ $since := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $since | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
- address: {{ NodeName | Quote }}
  type: Hostname
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
  kernelVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
phase: Running
"""

_POD_RUNNING = """\
{{ $now := Now }}
conditions:
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
{{ $spec := .spec }}{{ $meta := .metadata }}
podIP: {{ PodIPWith $spec.nodeName ( or $spec.hostNetwork false ) ( or $meta.uid "" ) \
( or $meta.name "" ) ( or $meta.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""

# A KWOK node runs no program, so no check pod reads anything there: it reports that it
# found nothing the spec does not give ("{}"), unless a test gives its report in the
# devstack.bpj.dev/exit-message annotation, as a prepare pod there writes no records.
_POD_SUCCEEDED = (
    """\
{{ $now := Now }}
{{ $ann := or .metadata.annotations dict }}
{{ $labels := or .metadata.labels dict }}
{{ $message := or ( index $ann "devstack.bpj.dev/exit-message" ) "" }}
{{ if not $message }}{{ with index $labels """
    + json.dumps(names.LABEL_STAGE)
    + """ }}{{ if eq . """
    + json.dumps(names.STAGE_CHECK)
    + """ }}{{ $message = "{}" }}{{ end }}{{ end }}{{ end }}
conditions:
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- type: ContainersReady
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
- {type: Ready, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      message: {{ $message | Quote }}
      finishedAt: {{ $now | Quote }}
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""
)

# A preempted TPU VM: the kubelet marks the pod with DisruptionTarget before
# killing it, which is how Jobs' podFailurePolicy and our operator tell
# infrastructure loss apart from a failing program.
_POD_PREEMPTED = """\
{{ $now := Now }}
conditions:
- type: DisruptionTarget
  status: "True"
  reason: TerminationByKubelet
  message: "Pod was terminated in response to imminent node shutdown."
  lastTransitionTime: {{ $now | Quote }}
- {type: Ready, status: "False", reason: PodFailed, lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 137
      reason: Error
      finishedAt: {{ $now | Quote }}
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Failed
reason: Terminated
message: "Pod was terminated in response to imminent node shutdown."
"""

_POD_FAILED = """\
{{ $now := Now }}
{{ $ann := or .metadata.annotations dict }}
conditions:
- {type: Ready, status: "False", reason: PodFailed, lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: {{ index $ann "devstack.bpj.dev/fail-exit-code" }}
      reason: {{ or ( index $ann "devstack.bpj.dev/fail-reason" ) "Error" | Quote }}
      message: {{ or ( index $ann "devstack.bpj.dev/fail-message" ) "" | Quote }}
      finishedAt: {{ $now | Quote }}
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Failed
"""


def stages(default_run_for: str) -> list[dict[str, Any]]:
    """Node and pod lifecycle stages; ``default_run_for`` is a Go duration like ``3s``."""
    not_chaos = [
        {"key": _annotation(PREEMPT), "operator": "DoesNotExist"},
        {"key": _annotation(FAIL_EXIT_CODE), "operator": "DoesNotExist"},
    ]
    return [
        _stage(
            "node-initialize",
            "Node",
            [{"key": _READY_STATUS, "operator": "NotIn", "values": ["True"]}],
            {"statusTemplate": _NODE_STATUS},
        ),
        _stage(
            "node-heartbeat",
            "Node",
            [
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": _READY_STATUS, "operator": "In", "values": ["True"]},
            ],
            {"statusTemplate": _NODE_STATUS},
            delay={"durationMilliseconds": 20000, "jitterDurationMilliseconds": 25000},
        ),
        _stage(
            "pod-running",
            "Pod",
            [
                _NOT_DELETING,
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                {"key": ".spec.nodeName", "operator": "Exists"},
            ],
            {"statusTemplate": _POD_RUNNING},
        ),
        _stage(
            "pod-succeeded",
            "Pod",
            [
                _NOT_DELETING,
                _RUNNING,
                *not_chaos,
                {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]},
            ],
            {"statusTemplate": _POD_SUCCEEDED},
            delay={
                "durationMilliseconds": _millis(default_run_for),
                "durationFrom": {"expressionFrom": _annotation(RUN_FOR)},
            },
        ),
        _stage(
            "pod-preempted",
            "Pod",
            [
                _NOT_DELETING,
                _RUNNING,
                {"key": _annotation(PREEMPT), "operator": "In", "values": ["true"]},
            ],
            {"statusTemplate": _POD_PREEMPTED},
        ),
        _stage(
            "pod-failed",
            "Pod",
            [_NOT_DELETING, _RUNNING, {"key": _annotation(FAIL_EXIT_CODE), "operator": "Exists"}],
            {"statusTemplate": _POD_FAILED},
        ),
        _stage(
            "pod-delete",
            "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"delete": True},
        ),
    ]


def _millis(duration: str) -> int:
    units = {"ms": 1, "s": 1000, "m": 60_000}
    for suffix in ("ms", "s", "m"):
        if duration.endswith(suffix):
            return int(float(duration[: -len(suffix)]) * units[suffix])
    raise ValueError(f"unsupported duration {duration!r}; use e.g. 500ms, 3s or 1m")
