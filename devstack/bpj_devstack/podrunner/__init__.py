"""A development-only pod runner: a minimal kubelet that runs pods as local processes.

KWOK's fake nodes let the scheduling tests see GKE-shaped TPU node pools, but
their pods never run anything. For the end-to-end demo the trainer must really
run, so this module registers nodes of its own (shaped exactly like the KWOK
TPU nodes, minus KWOK's annotation, plus ``devstack.bpj.dev/runner: local``)
and runs the single container of every pod the scheduler binds to them as a
process on this machine, reporting phase, exit code and termination message
back through the API the way the kubelet does. It is not a container runtime:
there is no image, no isolation and no resource enforcement.

What a pod gets (see ``PodRunner``):

- Volumes are materialised under ``<workdir>/<namespace>/<pod>/volumes/<volume>/``:
  configMap and secret volumes as files (``items`` honoured), emptyDir as an
  empty directory. Projected volumes (the service-account token that admission
  adds to every pod) are skipped; the pod authenticates through ``KUBECONFIG``
  instead. A mounted volume of any other type rejects the pod.
- **Path remapping rule.** The container's file system does not exist here, so
  every path the container would see under a ``volumeMount.mountPath`` is
  rewritten to the local directory that backs it: a command element, an arg, an
  env value or ``workingDir`` that *equals* a mountPath or *starts with*
  ``mountPath + "/"`` gets that prefix replaced (the longest matching mountPath
  wins; ``subPath`` is appended to the local side). An arg of the form
  ``--flag=PATH`` is rewritten the same way after the ``=``. The container's
  ``terminationMessagePath`` is remapped by the same rule to the pod's local
  termination-message file. Paths inside files (e.g. a JSON config) are not
  rewritten.
- The command ``python``, ``python3`` or ``python3.N`` runs as the runner's
  Python (``sys.executable`` by default), so the project's venv stands in for
  the trainer image.
- Environment, lowest precedence first: ``PATH``, ``HOME``, ``LANG``, ``LC_ALL``,
  ``LC_CTYPE`` and ``TZ`` of the runner (nothing else leaks from the host, in
  particular not the admin's ``KUBECONFIG`` or ``KUBERNETES_SERVICE_HOST``);
  ``extra_env`` (what the stack injects, e.g. ``STORAGE_EMULATOR_HOST`` and the
  TensorFlow GCS proxy settings); the container's ``envFrom`` and ``env``
  (``value``, ``fieldRef``, ``configMapKeyRef``, ``secretKeyRef``); then what
  the runner owns: ``KUBECONFIG`` (a per-pod kubeconfig holding a TokenRequest
  token of the pod's service account, bound to the pod, so API calls
  authenticate as ``system:serviceaccount:<ns>:<sa>`` as on a cluster),
  ``BERT_TRAINER_TERMINATION_MESSAGE_PATH``, ``TMPDIR`` when a volume is mounted
  at ``/tmp`` and ``JOB_COMPLETION_INDEX`` when the Job controller's annotation
  is present but the env var is not.
- The process starts in its own session with cwd = the pod directory; stdout and
  stderr go to ``<pod dir>/<container>.log``. Its exit is reported as the
  container's ``terminated`` state; the message is the termination-message file
  (at most 4096 bytes) or, with ``FallbackToLogsOnError`` and an empty file after
  a failure, the log's tail (80 lines / 2048 bytes, as the kubelet does).
- A deleted pod's process group gets SIGTERM, then SIGKILL after the grace
  period (capped at 30 s); the final status is reported and the pod deleted
  with grace period 0, as the kubelet finalises deletion.

Not supported (the operator's pods need none of it): init and sidecar
containers, more than one container (such a pod is failed with a message
saying so), images' entrypoints (a container needs ``command``), ``$(VAR)``
expansion, ``activeDeadlineSeconds``, probes, ports and DNS between pods, and
restart policies other than ``Never`` (containers are never restarted).

Run embedded (``PodRunner(...).start()`` ... ``stop()``) or as a process:
``python -m bpj_devstack.podrunner --kubeconfig K --pool NAME:ACCELERATOR:TOPOLOGY:NODES:CHIPS
--workdir DIR --env K=V ...``; ``podrunner_argv`` builds that command line.

Modules, by concern: ``constants`` (labels and limits), ``errors`` (``PodRejected``),
``clock`` (API timestamps), ``paths`` (the path remapping rule), ``env``
(envFrom, env and the downward API), ``status`` (pod status documents), ``nodes``
(node shape, registration, heartbeat and Lease), ``preparing`` (pod directory,
volumes, token and launch), ``process`` (starting, supervising and stopping a
container process; termination messages), ``runner`` (``PodRunner``: lifecycle,
pod watch and status reporting) and ``cli`` (command line).
"""

from __future__ import annotations

from bpj_devstack.podrunner.cli import argument_parser, main, parse_pool, podrunner_argv, pool_spec
from bpj_devstack.podrunner.constants import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    JOB_COMPLETION_INDEX_ANNOTATION,
    JOB_COMPLETION_INDEX_ENV,
    LOCAL_IP,
    NODE_LEASE_NAMESPACE,
    RUNNER_LABEL,
    RUNNER_LABEL_VALUE,
)
from bpj_devstack.podrunner.env import DataLookup, field_value, resolve_env
from bpj_devstack.podrunner.errors import PodRejected
from bpj_devstack.podrunner.nodes import node_manifests
from bpj_devstack.podrunner.paths import Mount, remap
from bpj_devstack.podrunner.preparing import pod_kubeconfig
from bpj_devstack.podrunner.process import exit_code_of, termination_message
from bpj_devstack.podrunner.runner import PodRunner
from bpj_devstack.podrunner.status import rejected_status, running_status, terminated_status

__all__ = [
    "DEFAULT_TERMINATION_MESSAGE_PATH",
    "JOB_COMPLETION_INDEX_ANNOTATION",
    "JOB_COMPLETION_INDEX_ENV",
    "LOCAL_IP",
    "NODE_LEASE_NAMESPACE",
    "RUNNER_LABEL",
    "RUNNER_LABEL_VALUE",
    "DataLookup",
    "Mount",
    "PodRejected",
    "PodRunner",
    "argument_parser",
    "exit_code_of",
    "field_value",
    "main",
    "node_manifests",
    "parse_pool",
    "pod_kubeconfig",
    "podrunner_argv",
    "pool_spec",
    "rejected_status",
    "remap",
    "resolve_env",
    "running_status",
    "terminated_status",
    "termination_message",
]
