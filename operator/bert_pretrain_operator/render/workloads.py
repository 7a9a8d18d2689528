"""The Kubernetes objects of a job's stages, as plain dicts (pure functions).

- check: a batch/v1 Job on CPU nodes, before any stage: ``check`` reads the job's
  inputs under the job's service account and reports in its termination message.
- prepare: one Indexed Job per pass (``reconcile.preparation``) on CPU nodes, each
  pod ``prepare --pass P --workers N`` on its index's share. A failed pod is
  retried on its own index (backoffLimitPerIndex): the other indexes' work stands.
- export: a batch/v1 Job on CPU nodes.
- Both: the podFailurePolicy fails the Job at once on the trainer's bad-input exit
  code (retrying cannot help) and does not count pod disruptions against the
  retry budget.
- train: an Indexed Job with one pod per TPU VM of the slice
  (completions = parallelism = VMs, backoffLimit 0). A failed attempt is
  replaced by a new Job (the operator counts restarts), so the whole slice
  restarts together and resumes from the last checkpoint. Multi-host slices get
  a headless Service as the pods' subdomain, which gives each TPU VM a stable
  hostname (``<job>-<index>.<service>``), and every pod gets TPU_WORKER_ID (its
  completion index) and TPU_WORKER_HOSTNAMES (all of them, in index order):
  the values GKE's TPU webhook injects, rendered here so the trainer sees the
  same on any cluster. Host 0 runs JAX's coordination service on
  JAX_COORDINATOR_PORT (docs/multi-host.md). Every training pod gets
  BERT_TRAINER_DEVICE=tpu: without a TPU device it fails at once as bad input
  (docs/tpu-runtime.md), unless the settings' trainer env says otherwise.
"""

from __future__ import annotations

import json
from typing import Any, Final

from bert_pretrain_operator import tpu_catalogue
from bert_pretrain_operator.api import BertPretrainJob
from bert_pretrain_operator.api.spec import CpuResources
from bert_pretrain_operator.render import names
from bert_pretrain_operator.settings import Settings
from bert_trainer import contract
from bert_trainer.config import PrepareConfig, TrainerConfig

Manifest = dict[str, Any]

#: The TPU runtime's port (GKE's TPU examples expose it on every host) and the port
#: of JAX's coordination service, which host 0 of a multi-host slice runs.
TPU_RUNTIME_PORT: Final = 8471
COORDINATOR_PORT: Final = contract.DEFAULT_COORDINATOR_PORT
COMPLETION_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"
#: Retries of the CPU stages on failures that are not bad input (e.g. a lost node).
CPU_STAGE_BACKOFF_LIMIT: Final = 2
CONTAINER_NAME: Final = "trainer"
#: Output shards of a prepared corpus (the trainer's default).
NUM_SHARDS: Final[int] = PrepareConfig.model_fields["num_shards"].default
#: Preparation passes that run on a single pod whatever the worker count.
SINGLE_POD_PASSES: Final = frozenset({"plan", "vocab"})
CONFIG_KEY: Final = "config.json"


def owner_reference(job: BertPretrainJob) -> dict[str, Any]:
    """Makes the BertPretrainJob own a child, so deleting it garbage-collects the child."""
    assert job.metadata.name and job.metadata.uid, "only a stored job can own children"
    return {
        "apiVersion": f"{contract.API_GROUP}/{contract.API_VERSION}",
        "kind": contract.KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: BertPretrainJob, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


def config_map(job: BertPretrainJob, config: TrainerConfig) -> Manifest:
    name = job.metadata.name
    assert name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, names.config_map(name), names.child_labels(name)),
        "data": {CONFIG_KEY: config.model_dump_json(by_alias=True, exclude_none=True, indent=2)},
    }


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _container(
    job: BertPretrainJob, settings: Settings, stage: str, resources: dict[str, Any]
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": contract.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": contract.ENV_POD_NAMESPACE,
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
    ]
    env += [{"name": k, "value": v} for k, v in sorted(settings.extra_trainer_env.items())]
    pull = {"imagePullPolicy": settings.trainer_image_pull_policy}
    secret = {"envFrom": [{"secretRef": {"name": settings.trainer_env_secret}}]}
    return {
        "name": CONTAINER_NAME,
        "image": job.spec.image or settings.trainer_image,
        **(pull if settings.trainer_image_pull_policy else {}),
        "command": ["python", "-m", "bert_trainer"],
        "args": [stage, "--config", contract.CONFIG_PATH],
        "env": env,
        **(secret if settings.trainer_env_secret else {}),
        "resources": resources,
        "volumeMounts": [
            {"name": "config", "mountPath": contract.CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePath": contract.TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _security_context(),
    }


def _pod_spec(job: BertPretrainJob, settings: Settings, container: dict[str, Any]) -> Manifest:
    name = job.metadata.name
    assert name
    return {
        "restartPolicy": "Never",
        "serviceAccountName": job.spec.service_account_name or settings.trainer_service_account,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config_map(name)}},
            {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}},
        ],
    }


def _host_resources(cpu: str, memory: str) -> dict[str, Any]:
    """Requests for ``cpu`` and ``memory``, and a memory limit equal to the request.

    Requests make a pod Burstable, not BestEffort (the first evicted under pressure);
    the limit makes an overrun this pod's OOMKilled instead of pressure on its node.
    No CPU limit: throttling would only slow the work down.
    """
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


def _cpu_resources(settings: Settings, given: CpuResources | None) -> dict[str, Any]:
    cpu = (given and given.cpu) or settings.prepare_cpu
    memory = (given and given.memory) or settings.prepare_memory
    return _host_resources(cpu, memory)


def _cpu_stage_job(
    job: BertPretrainJob,
    settings: Settings,
    stage: str,
    name: str,
    *,
    resources: dict[str, Any],
    labels: dict[str, str],
    args: list[str] | None = None,
    pods: int | None = None,
) -> Manifest:
    container = _container(job, settings, stage, resources)
    container["args"] += args or []
    # The pool's processes follow the CPU request (rounded up), not the node's cores.
    container["env"].append(
        {
            "name": contract.ENV_CPUS,
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": CONTAINER_NAME,
                    "resource": "requests.cpu",
                    "divisor": "1",
                }
            },
        }
    )
    spec: dict[str, Any] = {"backoffLimit": CPU_STAGE_BACKOFF_LIMIT}
    if pods is not None:
        spec = {
            "completionMode": "Indexed",
            "completions": pods,
            "parallelism": pods,
            # Each index retries on its own: a lost pod reruns its share, not the pass.
            "backoffLimitPerIndex": CPU_STAGE_BACKOFF_LIMIT,
            "maxFailedIndexes": 0,
        }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job, name, labels),
        "spec": {
            **spec,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER_NAME,
                            "operator": "In",
                            "values": [contract.EXIT_BAD_INPUT],
                        },
                    },
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": _pod_spec(job, settings, container),
            },
        },
    }


def pass_pods(prepare_pass: str, workers: int) -> int:
    """Pods of one preparation pass's Indexed Job."""
    if prepare_pass in SINGLE_POD_PASSES:
        return 1
    if prepare_pass == "shards":
        return min(workers, NUM_SHARDS)
    return workers


def prepare_workers(job: BertPretrainJob) -> int:
    """The worker count the operator decided (status.preparation.workers), else the spec's.

    ``bpj render`` renders a job before any pass ran: without an explicit count it
    shows one worker, as a corpus smaller than the operator's bytes per worker gets.
    """
    decided = job.status.preparation.workers if job.status and job.status.preparation else None
    given = job.spec.data.preparation.workers if job.spec.data.preparation else None
    return decided or given or 1


def prepare_job(job: BertPretrainJob, settings: Settings, prepare_pass: str) -> Manifest:
    owner = job.metadata.name
    assert owner
    if prepare_pass not in contract.PREPARE_PASSES:
        raise ValueError(f"{prepare_pass!r} is not one of {contract.PREPARE_PASSES}")
    workers = prepare_workers(job)
    given = job.spec.data.preparation.resources if job.spec.data.preparation else None
    return _cpu_stage_job(
        job,
        settings,
        names.STAGE_PREPARE,
        names.prepare_job(owner, prepare_pass),
        resources=_cpu_resources(settings, given),
        labels=names.child_labels(owner, names.STAGE_PREPARE, prepare_pass=prepare_pass),
        args=["--pass", prepare_pass, "--workers", str(workers)],
        pods=pass_pods(prepare_pass, workers),
    )


#: The check lists the inputs and reads at most a vocab and a bert_config.json: one
#: Python process with the GCS client (70 MB peak resident for its imports and client,
#: measured with /usr/bin/time).
CHECK_RESOURCES: Final = {"cpu": "100m", "memory": "256Mi"}


def check_job(job: BertPretrainJob, settings: Settings) -> Manifest:
    """The pre-flight check: the job's own pod, under its service account, reads its inputs."""
    owner = job.metadata.name
    assert owner
    return _cpu_stage_job(
        job,
        settings,
        names.STAGE_CHECK,
        names.check_job(owner),
        resources=_host_resources(CHECK_RESOURCES["cpu"], CHECK_RESOURCES["memory"]),
        labels=names.child_labels(owner, names.STAGE_CHECK),
    )


def export_job(job: BertPretrainJob, settings: Settings) -> Manifest:
    owner = job.metadata.name
    assert owner
    return _cpu_stage_job(
        job,
        settings,
        names.STAGE_EXPORT,
        names.export_job(owner),
        resources=_cpu_resources(settings, job.spec.export.resources),
        labels=names.child_labels(owner, names.STAGE_EXPORT),
    )


def slice_shape(job: BertPretrainJob) -> tpu_catalogue.SliceShape:
    shape = job.spec.tpu.shape()
    if shape is None:  # admission rejects it; this guards offline callers
        raise ValueError(
            f"spec.tpu.topology: {job.spec.tpu.topology} is not a valid topology for "
            f"{job.spec.tpu.accelerator}"
        )
    return shape


def workers_service(job: BertPretrainJob) -> Manifest:
    owner = job.metadata.name
    assert owner
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, names.workers_service(owner), names.child_labels(owner)),
        "spec": {
            "clusterIP": "None",
            # Workers must resolve each other before they are Ready (they rendezvous
            # during start-up), so publish addresses of not-yet-ready pods too.
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_JOB: owner, names.LABEL_STAGE: names.STAGE_TRAIN},
            "ports": [
                {"name": "tpu-runtime", "port": TPU_RUNTIME_PORT},
                {"name": "jax-coordinator", "port": COORDINATOR_PORT},
            ],
        },
    }


def train_job(job: BertPretrainJob, settings: Settings, attempt: int) -> Manifest:
    owner = job.metadata.name
    assert owner
    shape = slice_shape(job)
    tpu = job.spec.tpu
    labels = names.child_labels(owner, names.STAGE_TRAIN, attempt)
    job_labels = dict(labels)
    if job.spec.queue_name:
        job_labels[names.LABEL_KUEUE_QUEUE] = job.spec.queue_name
    chips = str(shape.chips_per_vm)
    given = tpu.resources
    resources = _host_resources(
        (given and given.cpu) or shape.vm.default_cpu,
        (given and given.memory) or shape.vm.default_memory,
    )
    # The chips are requested and limited alike (an extended resource must be).
    for bound in resources.values():
        bound[tpu_catalogue.TPU_RESOURCE] = chips
    container = _container(job, settings, names.STAGE_TRAIN, resources)
    container["ports"] = [
        {"name": "tpu-runtime", "containerPort": TPU_RUNTIME_PORT},
        {"name": "jax-coordinator", "containerPort": COORDINATOR_PORT},
    ]
    node_selector = {
        tpu_catalogue.LABEL_ACCELERATOR: tpu.accelerator.value,
        tpu_catalogue.LABEL_TOPOLOGY: tpu.topology,
    }
    if tpu.spot:
        node_selector[tpu_catalogue.LABEL_SPOT] = "true"
    pod_spec = _pod_spec(job, settings, container)
    pod_spec["nodeSelector"] = node_selector
    pod_spec["tolerations"] = [
        {"key": tpu_catalogue.TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    ]
    if contract.ENV_DEVICE not in settings.extra_trainer_env:
        # The trainer fails at once (bad input) when a TPU slice's pod sees no TPU;
        # a development stack whose TPU nodes have none sets it to cpu in the settings.
        container["env"].append({"name": contract.ENV_DEVICE, "value": "tpu"})
    if shape.multi_host:
        pod_spec["subdomain"] = names.workers_service(owner)
        container["env"] += slice_env(owner, attempt, shape.vms)
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": shape.vms,
        "parallelism": shape.vms,
        "backoffLimit": 0,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if job.spec.queue_name:
        # Kueue admits a Job by unsuspending it; it must be created suspended.
        spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job, names.train_job(owner, attempt), job_labels),
        "spec": spec,
    }


def slice_env(owner: str, attempt: int, vms: int) -> list[dict[str, Any]]:
    """What each host of a multi-host slice needs to find the others."""
    job_name = names.train_job(owner, attempt)
    service = names.workers_service(owner)
    return [
        {
            "name": contract.ENV_WORKER_ID,
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
            },
        },
        {
            "name": contract.ENV_WORKER_HOSTNAMES,
            # An Indexed Job's pod <index> has the hostname <job>-<index>.
            "value": ",".join(f"{job_name}-{index}.{service}" for index in range(vms)),
        },
        {"name": contract.ENV_COORDINATOR_PORT, "value": str(COORDINATOR_PORT)},
    ]


def canonical(manifest: Manifest) -> str:
    """Stable text of a manifest, for comparisons in tests and `bpj render`."""
    return json.dumps(manifest, sort_keys=True)
