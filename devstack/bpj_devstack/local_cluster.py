"""The demo's cluster: real nodes running our images, the operator installed by its chart.

What a platform team does on GKE, in miniature: node pools (a CPU node, and a
TPU-shaped v4 2x2x1 node whose pods get ``google.com/tpu``), the operator and
trainer images in the nodes' runtime, ``helm install`` of the chart with values
for this cluster, and the operator's Deployment running from its image with its
in-cluster service-account token. KWOK's fake TPU pools sit beside them.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bpj_devstack import build, gcs_proxy, images, kwok_config, plane
from bpj_devstack.nodes import containerd, layout
from bpj_devstack.versions import HELM

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bert-pretrain-operator"
RELEASE = "bpj"
OPERATOR_NAMESPACE = "bpj-system"

CPU_POOL = kwok_config.NodePool("local-cpu", nodes=1)
TPU_POOL = kwok_config.NodePool(
    "local-tpu-v4-2x2x1", nodes=1, accelerator="tpu-v4-podslice", topology="2x2x1", chips_per_node=4
)
#: The demo's real nodes: every stage of the quickstart runs on one of them.
KUBELET_POOLS = (CPU_POOL, TPU_POOL)

#: Where a pod finds the stack's CA: the service-account volume's ca.crt, which the
#: controller manager fills with the cluster CA. The same CA signs the GCS proxy.
POD_CA_BUNDLE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
#: Reached without the GCS proxy: the host address (API server, emulator) and the cluster's
#: own names and Service addresses, the `kubernetes` Service first.
NO_PROXY = f"127.0.0.1,localhost,{layout.HOST_IP},10.0.0.1,.svc,.cluster.local"


@dataclass(frozen=True)
class Images:
    operator: str
    trainer: str
    archives: tuple[Path, ...]


def prepare_images(log_path: Path | None = None) -> Images:
    """Build (cached) and export the operator and trainer images for containerd."""
    built = images.build_images(log_path=log_path)
    operator, trainer = built[images.OPERATOR.name], built[images.TRAINER.name]
    archives = tuple(images.export_oci_archive(image.ref) for image in (operator, trainer))
    return Images(operator=operator.ref, trainer=trainer.ref, archives=archives)


#: The Secret (in each job namespace) with what trainer pods need but pod specs must not
#: show: TensorFlow's (fake) GCS access token. ``trainer_env_secret`` writes it.
TRAINER_SECRET = "bpj-devstack-trainer"


def trainer_env_secret(namespace: str) -> dict[str, Any]:
    """The Secret of ``TRAINER_SECRET`` for ``namespace``: a credential, even a fake one,
    reaches pods as a Secret, never as a value in their spec."""
    token = gcs_proxy.tf_gcs_env("", Path(POD_CA_BUNDLE))["GOOGLE_AUTH_TOKEN_FOR_TESTING"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": TRAINER_SECRET, "namespace": namespace},
        "type": "Opaque",
        "stringData": {"GOOGLE_AUTH_TOKEN_FOR_TESTING": token},
    }


def trainer_env(state: plane.StackState) -> dict[str, str]:
    """What trainer pods need here: the GCS emulator, and TensorFlow's gs:// through the proxy."""
    env = {
        "STORAGE_EMULATOR_HOST": state.gcs_endpoint,
        "GOOGLE_CLOUD_PROJECT": "bpj-devstack",
        **gcs_proxy.tf_gcs_env(state.gcs_proxy_url, Path(POD_CA_BUNDLE)),
        # The proxy is for gs:// only: the API server (the `kubernetes` Service, which the
        # kubernetes client would otherwise tunnel through HTTPS_PROXY) is reached directly.
        "NO_PROXY": NO_PROXY,
        "no_proxy": NO_PROXY,
        # Two cores for everything: one TensorFlow process must not claim more.
        "TF_NUM_INTRAOP_THREADS": "2",
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # The TPU-shaped nodes have no chips: train on CPU instead of failing as a TPU
        # slice without a TPU (docs/tpu-runtime.md).
        "BERT_TRAINER_DEVICE": "cpu",
    }
    del env["GOOGLE_AUTH_TOKEN_FOR_TESTING"]  # in TRAINER_SECRET instead
    return env


def chart_values(
    state: plane.StackState, built: Images, namespaces: list[str], **operator: Any
) -> dict[str, Any]:
    """Values of the chart for this cluster: local images that are never pulled, small pods."""
    repository, tag = built.operator.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": namespaces,
        "operator": {
            "trainerImage": built.trainer,
            # Imported into every node's containerd; nothing can be pulled here.
            "trainerImagePullPolicy": "Never",
            # The real node has this machine's 2 cores: the stages must fit beside each other.
            "prepare": {"cpu": "500m", "memory": "3Gi"},
            "trainerEnv": trainer_env(state),
            "trainerEnvSecret": TRAINER_SECRET,
            # No GCS endpoint or credentials for the operator: each job's check pod reads
            # its inputs, under the job's service account.
            **operator,
        },
        "trainer": {"namespaces": namespaces},
    }


def helm(state: plane.StackState, *args: str) -> str:
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "KUBECONFIG": state.kubeconfig,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
        }
        result = subprocess.run(
            [str(build.build(HELM) / "helm"), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if result.returncode:
        raise RuntimeError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def install_operator(state: plane.StackState, values: dict[str, Any]) -> None:
    """``helm upgrade --install`` the chart and wait until the operator's pod is Ready."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        helm(
            state,
            "upgrade",
            "--install",
            RELEASE,
            str(CHART),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--values",
            file.name,
            "--wait",
            "--timeout",
            "180s",
        )


def container_records(state: plane.StackState) -> list[dict[str, Any]]:
    """What containerd ran on each real node: every container's OCI spec and labels.

    Saved next to the demo's objects, so tests can check what the runtime itself
    enforced (user, read-only root) rather than what the pod asked for.
    """
    records: list[dict[str, Any]] = []
    for node in layout.kubelet_nodes(KUBELET_POOLS):
        if node.name not in state.kubelet_nodes:
            continue
        listed = containerd.ctr(node, "containers", "ls", "-q").stdout.split()
        for container_id in listed:
            info = containerd.ctr(node, "containers", "info", container_id)
            if info.returncode == 0:
                record = json.loads(info.stdout)
                record["node"] = node.name
                records.append(record)
    return records
