"""A 2-host TPU slice trains in real containers, its hosts finding each other by DNS.

The operator, installed by its chart, renders the slice as on GKE: an Indexed Job
with one pod per TPU VM on a v4 2x2x2 node pool (two TPU-shaped kubelet nodes)
and a headless Service as the pods' subdomain. Each pod gets TPU_WORKER_HOSTNAMES
(``<job>-train-<attempt>-<i>.<job>-workers``); host 1 reaches host 0's JAX
coordinator by that name, through CoreDNS, and the two train as one (Keras on JAX).

The same job's corpus is prepared by three worker pods per pass; one of them is
killed in the middle of the records pass, and only its index runs again.

Before any of that, a job's inputs are checked by a pod of its own, under its own
service account, on a real node; the operator, given no GCS endpoint, reads none.
After it, a second job starts on the same slice from the first job's checkpoints
(``spec.model.initFromOutput``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bert_pretrain_operator.rbac import trainer_rbac
from bert_pretrain_operator.render import names
from bpj_devstack import demo, kwok_config, local_cluster, plane
from tests.support import wait_for

TPU_2X2X2 = kwok_config.NodePool(
    "local-tpu-v4-2x2x2", nodes=2, accelerator="tpu-v4-podslice", topology="2x2x2", chips_per_node=4
)
NAMESPACE = "slice"


@pytest.fixture(scope="module")
def slice_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[plane.StackState]:
    built = local_cluster.prepare_images()
    run_dir = tmp_path_factory.mktemp("slice")
    state = plane.up(
        run_dir,
        pools=(),
        kubelet_pools=(local_cluster.CPU_POOL, TPU_2X2X2),
        images=built.archives,
    )
    try:
        demo.create_namespace(state, NAMESPACE)
        values = local_cluster.chart_values(
            state, built, [NAMESPACE], resyncSeconds=5, progressReportSeconds=2
        )
        local_cluster.install_operator(state, values)
        yield state
    finally:
        plane.down(run_dir)


def _job(bucket: str) -> dict[str, Any]:
    return {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": "two-hosts"},
        "spec": {
            "data": {
                "corpus": [f"gs://{bucket}/corpus/*.txt"],
                "vocabSize": 1000,
                "minFrequency": 1,
                "dupeFactor": 1,
                # A fifth of the documents held out, evaluated on at both lengths.
                "evalFraction": 0.2,
                # Three worker pods per pass over about ten chunks of the 40 KB corpus.
                "preparation": {
                    "workers": 3,
                    "chunkBytes": 4096,
                    "resources": {"cpu": "200m", "memory": "1536Mi"},
                },
            },
            "model": {"size": "tiny"},
            # BERT's recipe in small: lengths 64, then 128, each with its own schedule.
            "training": {
                "phases": [
                    {
                        "trainSteps": 6,
                        "maxSeqLength": 64,
                        "maxPredictionsPerSeq": 10,
                        "globalBatchSize": 8,
                        "warmupSteps": 1,
                    },
                    {
                        "trainSteps": 4,
                        "maxSeqLength": 128,
                        "maxPredictionsPerSeq": 20,
                        "globalBatchSize": 8,
                        "warmupSteps": 1,
                        "learningRate": 0.00005,
                    },
                ],
                "checkpointEverySteps": 3,
                "evalEverySteps": 5,
                "evalBatches": 2,
            },
            # Two trainer pods on this machine: a fraction of a core each.
            "tpu": {
                "accelerator": "tpu-v4-podslice",
                "topology": "2x2x2",
                "resources": {"cpu": "500m", "memory": "4Gi"},
            },
            "output": f"gs://{bucket}/runs/two-hosts",
            "export": {"huggingFace": False},
            # One restart: the slice is killed once, in its second phase.
            "runPolicy": {"maxRestarts": 1},
        },
    }


def _kubectl_json(state: plane.StackState, *args: str) -> Any:
    return json.loads(demo.kubectl(state, *args, "-o", "json"))


@dataclass(frozen=True)
class TwoHosts:
    """The 2-host job's run: its bucket and the records pod that was lost."""

    bucket: str
    victim: dict[str, Any]
    attempt_1_log: str
    """Host 0's log of attempt 1, up to the kill in its second phase."""


@pytest.fixture(scope="module")
def two_hosts(slice_stack: plane.StackState) -> TwoHosts:
    """The 2-host job, run to its end (the test using it first carries the timeout)."""
    state = slice_stack
    bucket = f"slice-{uuid.uuid4().hex[:8]}"
    _upload_corpus(state, bucket)
    demo.kubectl(state, "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(_job(bucket)))
    victim = _lose_a_records_pod(state, "two-hosts")
    killed_at = _kill_the_slice_in_its_second_phase(state, "two-hosts")
    wait_for(lambda: _finished(state, "two-hosts"), 900, "the 2-host job to finish")
    return TwoHosts(bucket, victim, killed_at)


def _kill_the_slice_in_its_second_phase(state: plane.StackState, name: str) -> str:
    """SIGKILL host 0 of attempt 1 as it starts the second phase; its log up to then.

    The trainer logs the phase before it traces the phase's step (seconds on the
    JAX CPU backend), so the kill lands well before the phase ends.
    """
    host0: dict[str, str] = {}

    def second_phase_started() -> bool:
        if not host0:
            for pod in _pods_of(state, f"{name}-train-1"):
                if pod["metadata"]["annotations"].get(INDEX) == "0":
                    host0["name"] = pod["metadata"]["name"]
            if not host0:
                return False
        try:
            host0["log"] = demo.kubectl(state, "logs", "-n", NAMESPACE, host0["name"])
        except SystemExit:
            return False  # its container is not created yet (demo.kubectl exits on errors)
        return "phase 2 of 2" in host0["log"]

    wait_for(second_phase_started, 900, "attempt 1 to start its second phase", interval=0.2)
    assert _kill_pod_processes(host0["name"]), f"no process of {host0['name']} on this host"
    return host0["log"]


def _finished(state: plane.StackState, name: str) -> bool:
    status = _kubectl_json(state, "get", "bpj", name, "-n", NAMESPACE).get("status") or {}
    return status.get("phase") in ("Succeeded", "Failed")


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.timeout(1200)  # the stack's start, five preparation passes, then the slice
def test_two_host_slice_prepared_by_three_workers_trains_with_hosts_found_by_dns(
    slice_stack: plane.StackState, two_hosts: TwoHosts
) -> None:
    state, victim = slice_stack, two_hosts.victim
    job = _kubectl_json(state, "get", "bpj", "two-hosts", "-n", NAMESPACE)
    pods = _kubectl_json(
        state, "get", "pods", "-n", NAMESPACE, "-l", "batch.kubernetes.io/job-name"
    )
    _check_preparation(state, "two-hosts", job["status"], victim)
    train_pods = sorted(
        (p for p in pods["items"] if "-train-2-" in p["metadata"]["name"]),
        key=lambda p: p["metadata"]["name"],
    )
    logs = {
        p["metadata"]["name"]: demo.kubectl(state, "logs", "-n", NAMESPACE, p["metadata"]["name"])
        for p in train_pods
    }
    assert job["status"]["phase"] == "Succeeded", f"{job['status']}\n{logs}"
    assert job["status"]["progress"]["step"] == 10
    _check_phases(state, job["status"], two_hosts.attempt_1_log)

    # One pod per TPU VM, on the two nodes of the 2x2x2 pool, each with 4 chips.
    assert len(train_pods) == 2
    assert {p["spec"]["nodeName"] for p in train_pods} == set(TPU_2X2X2.node_names())
    hostnames = {e["name"]: e.get("value") for e in train_pods[0]["spec"]["containers"][0]["env"]}[
        "TPU_WORKER_HOSTNAMES"
    ]
    assert hostnames is not None
    peers = hostnames.split(",")
    assert len(peers) == 2 and all(p.endswith(".two-hosts-workers") for p in peers)
    # Names, not addresses: nothing but cluster DNS maps them. CoreDNS logged the
    # lookups of host 0's name from the pods' addresses.
    coredns_log = (Path(state.run_dir) / "logs" / "coredns.log").read_text()
    pod_ips = {p["status"]["podIP"] for p in train_pods}
    host0 = f"{peers[0]}.{NAMESPACE}.svc.cluster.local."
    lookups = [line for line in coredns_log.splitlines() if f" A {host0} NOERROR" in line]
    assert lookups, f"no lookup of {host0} in CoreDNS's log"
    assert {line.split()[-4].rsplit(":", 1)[0] for line in lookups} & pod_ips
    for name, text in logs.items():
        assert '"train finished"' in text or "train finished" in text, f"{name}:\n{text[-3000:]}"
    _check_operator_in_cluster(state)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_inputs_are_checked_by_a_pod_under_the_jobs_own_service_account(
    slice_stack: plane.StackState,
) -> None:
    """The check Job reads the inputs, not the operator: it has no GCS endpoint at all."""
    state = slice_stack
    operator_env = _operator_env(state)
    assert not {"STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"} & operator_env, operator_env
    assert not {e for e in operator_env if e.startswith("GOOGLE_")}, operator_env
    own = "team-own-identity"
    objects = trainer_rbac(NAMESPACE, own)
    demo.kubectl(
        state, "apply", "-f", "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )  # fmt: skip
    bucket = f"check-{uuid.uuid4().hex[:8]}"
    _upload_corpus(state, bucket)

    def submit(name: str, corpus: str) -> None:
        doc = _job(bucket)
        doc["metadata"]["name"] = name
        doc["spec"]["data"]["corpus"] = [corpus]
        doc["spec"]["data"]["preparation"] = {"workers": 1}
        doc["spec"]["serviceAccountName"] = own
        doc["spec"]["output"] = f"gs://{bucket}/runs/{name}"
        demo.kubectl(state, "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(doc))

    def status(name: str) -> dict[str, Any]:
        job = _kubectl_json(state, "get", "bpj", name, "-n", NAMESPACE)
        return dict(job.get("status") or {})

    missing = f"gs://{bucket}/nothing-here/*.txt"
    submit("no-corpus", missing)
    submit("has-corpus", f"gs://{bucket}/corpus/*.txt")
    wait_for(lambda: status("no-corpus").get("phase") == "Failed", 300, "no-corpus to fail")
    wait_for(lambda: status("has-corpus").get("phase") == "Preparing", 300, "has-corpus to prepare")

    failed = next(c for c in status("no-corpus")["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BadInput", failed
    assert "spec.data.corpus[0]" in failed["message"] and missing in failed["message"], failed
    jobs = _kubectl_json(
        state, "get", "jobs", "-n", NAMESPACE, "-l", f"{names.LABEL_JOB}=no-corpus"
    )["items"]
    assert [j["metadata"]["name"] for j in jobs] == ["no-corpus-check"], (
        "no stage after a bad input"
    )
    good = status("has-corpus")
    assert good["inputs"] == {}, "a trained vocab: nothing to resolve beyond the spec"
    assert next(c for c in good["conditions"] if c["type"] == "InputsChecked")["status"] == "True"
    for name, phase in (("no-corpus", "Failed"), ("has-corpus", "Succeeded")):
        (pod,) = _pods_of(state, f"{name}-check")
        # Ran by a real kubelet, as the job's own identity: its token, not the operator's.
        assert pod["spec"]["serviceAccountName"] == own, pod["spec"]
        assert pod["spec"]["nodeName"] in state.kubelet_nodes
        assert pod["status"]["phase"] == phase, pod["status"]
    demo.kubectl(state, "delete", "bpj", "has-corpus", "no-corpus", "-n", NAMESPACE, "--wait")


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.timeout(1200)
def test_a_job_continues_on_the_slice_from_the_first_jobs_checkpoints(
    slice_stack: plane.StackState, two_hosts: TwoHosts
) -> None:
    """spec.model.initFromOutput: the 2-host job's .npz weights, its config and vocab."""
    state, bucket = slice_stack, two_hosts.bucket
    source = f"gs://{bucket}/runs/two-hosts"
    doc = _job(bucket)
    doc["metadata"]["name"] = "continued"
    doc["spec"]["data"] = {
        "tfrecords": f"{source}/tfrecords/seq-128/*.tfrecord",
        "maxSeqLength": 128,
        "maxPredictionsPerSeq": 20,
    }
    doc["spec"]["model"] = {"initFromOutput": source}
    doc["spec"]["training"] = {
        "globalBatchSize": 8,
        "trainSteps": 2,
        "warmupSteps": 1,
        "checkpointEverySteps": 2,
    }
    doc["spec"]["output"] = f"gs://{bucket}/runs/continued"
    demo.kubectl(state, "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(doc))
    wait_for(lambda: _finished(state, "continued"), 900, "the continued job to finish")

    status = _kubectl_json(state, "get", "bpj", "continued", "-n", NAMESPACE)["status"]
    host0 = next(
        p["metadata"]["name"]
        for p in _pods_of(state, "continued-train-1")
        if p["metadata"]["annotations"].get(INDEX) == "0"
    )
    log = demo.kubectl(state, "logs", "-n", NAMESPACE, host0)
    assert status["phase"] == "Succeeded", f"{status}\n{log[-3000:]}"
    # The check read the tiny model's config beside the first job's checkpoints.
    dims = {"hiddenSize": 128, "numLayers": 2, "numHeads": 2, "intermediateSize": 512}
    assert status["inputs"]["dimensions"] == dims, status["inputs"]
    # Its newest checkpoint (step 10), weights only: this job counts from step 0 to 2.
    assert f"starting from the weights of {source}/checkpoints/ckpt-10.npz" in log, log[-3000:]
    assert status["progress"]["step"] == 2


def _check_phases(state: plane.StackState, status: dict[str, Any], attempt_1: str) -> None:
    """Both lengths were prepared; attempt 1 trained phase 1 and was killed in phase 2;
    attempt 2 resumed in phase 2 from its checkpoint, not from the start."""
    assert "phase 1 of 2: steps 0 to 6 at length 64" in attempt_1, attempt_1[-3000:]
    assert status["restarts"] == 1 and status["attempt"] == 2, status
    assert status["trainingPhase"] == {
        "number": 2, "of": 2, "maxSeqLength": 128, "firstStep": 6, "lastStep": 10,
    }  # fmt: skip
    trained = next(c for c in status["conditions"] if c["type"] == "Trained")
    assert "10 steps in 2 phases (lengths 64, then 128)" in trained["message"], trained
    # Held-out figures under google-research/bert's names, in status and the message.
    held = status["progress"]["eval"]
    assert held["step"] == 10 and 0 <= held["maskedLmAccuracy"] <= 1, held
    assert held["maskedLmLoss"] > 0 and held["nextSentenceLoss"] > 0, held
    assert "held-out eval at step 10: masked_lm_accuracy" in trained["message"], trained
    host0 = next(
        p["metadata"]["name"]
        for p in _pods_of(state, "two-hosts-train-2")
        if p["metadata"]["annotations"].get(INDEX) == "0"
    )
    log = demo.kubectl(state, "logs", "-n", NAMESPACE, host0)
    assert "phase 1 of 2" not in log, "the restart trained phase 1 again"
    # From its last checkpoint: the end of phase 1 (step 6), or, had attempt 1 got
    # that far before the kill, phase 2's first (step 9).
    restored = re.search(r"restored \S+/ckpt-(\d+)\.npz at step (\d+)", log)
    assert restored is not None, log[-3000:]
    step = int(restored[2])
    assert step in (6, 9) and restored[1] == restored[2], restored[0]
    assert f"phase 2 of 2: steps {step} to 10 at length 128" in log, log[-3000:]


def _operator_env(state: plane.StackState) -> set[str]:
    """The names of the operator container's environment, as its pod spec gives them."""
    (pod,) = _kubectl_json(
        state, "get", "pods", "-n", local_cluster.OPERATOR_NAMESPACE,
        "-l", "app.kubernetes.io/component=operator",
    )["items"]  # fmt: skip
    container = pod["spec"]["containers"][0]
    assert not container.get("envFrom"), container
    return {e["name"] for e in container.get("env", [])}


def _check_operator_in_cluster(state: plane.StackState) -> None:
    """The operator that ran all this was a pod of a real node, on its in-cluster token."""
    (pod,) = _kubectl_json(
        state, "get", "pods", "-n", local_cluster.OPERATOR_NAMESPACE,
        "-l", "app.kubernetes.io/component=operator",
    )["items"]  # fmt: skip
    assert pod["spec"]["nodeName"] in state.kubelet_nodes
    container = pod["spec"]["containers"][0]
    assert "KUBECONFIG" not in {e["name"] for e in container.get("env", [])}
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts  # the kubelet's projection
    text = demo.kubectl(
        state, "logs", "-n", local_cluster.OPERATOR_NAMESPACE, pod["metadata"]["name"]
    )
    assert "credentials=in-cluster service account" in text, text[-3000:]


def _upload_corpus(state: plane.StackState, bucket: str) -> None:
    env = {"STORAGE_EMULATOR_HOST": state.gcs_endpoint}
    code = (
        "from google.auth.credentials import AnonymousCredentials\n"
        "from google.cloud import storage\n"
        "c = storage.Client(project='t', credentials=AnonymousCredentials())\n"
        f"b = c.create_bucket({bucket!r})\n"
        f"b.blob('corpus/corpus.txt').upload_from_filename({str(demo.CORPUS)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True)


#: A pod's index in its Indexed Job, as the Job controller annotates it.
INDEX = "batch.kubernetes.io/job-completion-index"


def _pods_of(state: plane.StackState, job: str) -> list[dict[str, Any]]:
    pods = _kubectl_json(state, "get", "pods", "-n", NAMESPACE, "-l", f"job-name={job}")
    return list(pods["items"])


def _lose_a_records_pod(state: plane.StackState, name: str) -> dict[str, Any]:
    """Kill index 1 of the records pass as its container starts, before it reported done.

    Its share takes milliseconds once Python has started, and the kubelet may post the
    pod's Running phase later than that: waiting for Running lost the race once. The
    container's processes show on this host the moment it starts, so they are watched
    there and killed at once, while the trainer is still importing.
    """
    records_job = f"{name}-prep-records"
    victim: dict[str, Any] = {}

    def victim_created() -> bool:
        for pod in _pods_of(state, records_job):
            if pod["metadata"]["annotations"].get(INDEX) == "1":
                victim.update(pod)
                return True
        return False

    wait_for(victim_created, 600, "the records pass' index-1 pod to be created")
    # A lost pod, as an OOM kill or a crash loses it: its processes die at once (from
    # the host; the container's PID 1 would ignore a SIGTERM). Its real kubelet reports
    # it Failed, and the Job controller must rerun index 1 only.
    killed: list[int] = []

    def killed_at_start() -> bool:
        killed.extend(_kill_pod_processes(victim["metadata"]["name"]))
        return bool(killed)

    wait_for(killed_at_start, 300, "the index-1 pod's processes to start", interval=0.05)
    reports = (
        _kubectl_json(state, "get", "bpj", name, "-n", NAMESPACE)["status"]
        .get("preparation", {})
        .get("reports", {})
    )
    assert not reports.get("records-1", {}).get("done"), "index 1 finished before it was killed"
    return victim


def _check_preparation(
    state: plane.StackState, job_name: str, status: dict[str, Any], victim: dict[str, Any]
) -> None:
    """Three workers per pass; every index ran one pod but the lost one, which reran."""
    records_job = f"{job_name}-prep-records"
    # Every pass ran each index once, except records' index 1: the killed pod and its rerun.
    for prepare_pass, pods in (("plan", 1), ("count", 3), ("vocab", 1), ("records", 3)):
        name = f"{job_name}-prep-{prepare_pass}"
        by_index: dict[str, list[str]] = {}
        for pod in _pods_of(state, name):
            if pod["metadata"]["uid"] == victim["metadata"]["uid"]:
                continue  # the lost pod: checked below
            by_index.setdefault(pod["metadata"]["annotations"][INDEX], []).append(
                pod["metadata"]["uid"]
            )
        # One pod per index that ran to the end: for records' index 1, the rerun.
        assert {i: len(u) for i, u in by_index.items()} == {str(i): 1 for i in range(pods)}, (
            name,
            by_index,
        )
    records = _kubectl_json(state, "get", "job", records_job, "-n", NAMESPACE)
    assert (records["status"]["succeeded"], records["status"].get("failed")) == (3, 1)
    (lost,) = [
        p for p in _pods_of(state, records_job) if p["metadata"]["uid"] == victim["metadata"]["uid"]
    ]
    assert lost["status"]["phase"] == "Failed"
    (terminated,) = [s["state"]["terminated"] for s in lost["status"]["containerStatuses"]]
    assert terminated["exitCode"] == 128 + signal.SIGKILL

    prep = status["preparation"]
    assert (prep["workers"], prep["files"]) == (3, 1)
    assert prep["chunks"] >= 6 and prep["bytes"] == demo.CORPUS.stat().st_size
    assert prep["instances"] == sum(prep["reports"][f"records-{i}"]["instances"] for i in range(3))
    assert prep["instances"] > 0
    assert all(r["done"] for r in prep["reports"].values())
    shards = _kubectl_json(state, "get", "job", f"{job_name}-prep-shards", "-n", NAMESPACE)
    assert shards["spec"]["completions"] == 3


def _kill_pod_processes(pod: str) -> list[int]:
    """SIGKILL every process on this host whose environment names ``pod`` (POD_NAME)."""
    marker = f"POD_NAME={pod}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if marker in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed
