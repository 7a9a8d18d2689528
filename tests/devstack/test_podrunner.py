"""The local pod runner runs pods bound to its nodes as processes and reports them like a kubelet.

The pure rules (path remapping, downward API, termination messages, pool specs)
are tested without a cluster; the rest runs a ``PodRunner`` in-process against
the session's real control plane, on a node pool no KWOK node shares (a v5e
2x2 slice, selected by the runner's label as well), so nothing else lands on it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bpj_devstack import kwok_config, plane
from bpj_devstack.podrunner import (
    JOB_COMPLETION_INDEX_ANNOTATION,
    RUNNER_LABEL,
    RUNNER_LABEL_VALUE,
    Mount,
    PodRejected,
    PodRunner,
    argument_parser,
    field_value,
    node_manifests,
    parse_pool,
    podrunner_argv,
    pool_spec,
    remap,
    resolve_env,
    termination_message,
)
from tests.support import Kubectl, kubectl_json, wait_for

LOCAL_POOL = kwok_config.NodePool(
    "local-v5e-2x2",
    nodes=1,
    accelerator="tpu-v5-lite-podslice",
    topology="2x2",
    chips_per_node=4,
)

# --------------------------------------------------------------------------- pure rules


def test_remap_replaces_mount_prefixes_only_at_path_boundaries() -> None:
    mounts = [
        Mount("/etc/bert-trainer", Path("/w/ns/p/volumes/config")),
        Mount("/etc/bert-trainer/extra", Path("/w/ns/p/volumes/extra")),
        Mount("/tmp", Path("/w/ns/p/volumes/tmp")),
    ]
    assert remap("/etc/bert-trainer/config.json", mounts) == "/w/ns/p/volumes/config/config.json"
    assert remap("/etc/bert-trainer", mounts) == "/w/ns/p/volumes/config"
    # The longest mountPath wins.
    assert remap("/etc/bert-trainer/extra/a", mounts) == "/w/ns/p/volumes/extra/a"
    assert (
        remap("--config=/etc/bert-trainer/c.json", mounts)
        == "--config=/w/ns/p/volumes/config/c.json"
    )
    # Not a path under the mount, not a flag, or not a path at all: unchanged.
    assert remap("/tmpfoo", mounts) == "/tmpfoo"
    assert remap("x=/tmp/a", mounts) == "x=/tmp/a"
    assert remap("train", mounts) == "train"


def test_env_resolves_values_downward_api_and_references() -> None:
    index = JOB_COMPLETION_INDEX_ANNOTATION
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "bert"},
            "annotations": {index: "3"},
        },
        "spec": {"nodeName": "local-0"},
    }
    container = {
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        "env": [
            {"name": "PLAIN", "value": "v"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{index}']"}},
            },
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "pw"}}},
            {
                "name": "MISSING",
                "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": True}},
            },
        ],
    }
    objects = {("configMap", "settings"): {"A": "1"}, ("secret", "creds"): {"pw": "s3cret"}}

    def lookup(kind: str, name: str, optional: bool) -> Mapping[str, str]:
        if (kind, name) in objects:
            return objects[(kind, name)]
        assert optional
        return {}

    assert resolve_env(pod, container, lookup) == {
        "CFG_A": "1",
        "PLAIN": "v",
        "NAME": "p",
        "NS": "ns",
        "UID": "u-1",
        "APP": "bert",
        "JOB_COMPLETION_INDEX": "3",
        "NODE": "local-0",
        "IP": "127.0.0.1",
        "PW": "s3cret",
    }
    with pytest.raises(PodRejected, match=r"limits\.cpu"):
        field_value(pod, "limits.cpu")
    unsupported = {"env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {}}}]}
    with pytest.raises(PodRejected, match="CPU"):
        resolve_env(pod, unsupported, lookup)


def test_termination_message_prefers_the_file_then_falls_back_to_the_log(tmp_path: Path) -> None:
    message, log = tmp_path / "msg", tmp_path / "log"
    log.write_text("".join(f"line {i}\n" for i in range(200)))
    message.write_text("")
    tail = termination_message(message, log, "FallbackToLogsOnError", 3)
    assert tail.endswith("line 199\n")
    assert len(tail.splitlines()) <= 80 and len(tail.encode()) <= 2048
    assert termination_message(message, log, "File", 3) == ""
    assert termination_message(message, log, "FallbackToLogsOnError", 0) == ""
    message.write_text("x" * 5000)
    assert termination_message(message, log, "FallbackToLogsOnError", 3) == "x" * 4096


def test_pool_specs_and_argv_round_trip() -> None:
    cpu = kwok_config.NodePool("local-cpu", nodes=2)
    spot = kwok_config.NodePool(
        "v6e", nodes=4, accelerator="tpu-v6e-slice", topology="4x4", chips_per_node=4, spot=True
    )
    for pool in (LOCAL_POOL, cpu, spot):
        assert parse_pool(pool_spec(pool)) == pool
    with pytest.raises(ValueError, match="topology"):
        parse_pool("x:tpu-v4-podslice::1:4")

    argv = podrunner_argv(
        "/k/config", [LOCAL_POOL, cpu], "/w", extra_env={"A": "1=2", "B": ""}, python="/py"
    )
    assert argv[1:3] == ["-m", "bpj_devstack.podrunner"]
    args = argument_parser().parse_args(argv[3:])
    assert args.pool == [LOCAL_POOL, cpu]
    assert dict(args.env) == {"A": "1=2", "B": ""}
    assert (args.kubeconfig, args.workdir, args.python) == (Path("/k/config"), Path("/w"), "/py")


def test_nodes_are_shaped_like_kwok_tpu_nodes_but_not_managed_by_kwok() -> None:
    (kwok,) = kwok_config.node_manifests((LOCAL_POOL,))
    (local,) = node_manifests([LOCAL_POOL])
    assert kwok_config.KWOK_NODE_ANNOTATION not in local["metadata"]["annotations"]
    expected = {k: v for k, v in kwok["metadata"]["labels"].items() if k != "type"}
    assert local["metadata"]["labels"] == {**expected, RUNNER_LABEL: RUNNER_LABEL_VALUE}
    assert local["spec"] == kwok["spec"]
    assert local["status"] == kwok["status"]


# --------------------------------------------------------------------------- on the stack


@pytest.fixture(scope="module")
def local_runner(
    devstack: plane.StackState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PodRunner, Path]]:
    """A runner owning LOCAL_POOL for this module; its nodes are deleted afterwards."""
    workdir = tmp_path_factory.mktemp("podrunner")
    runner = PodRunner(
        devstack.kubeconfig, [LOCAL_POOL], workdir, extra_env={"BPJ_TEST_EXTRA": "from-runner"}
    ).start()
    try:
        yield runner, workdir
    finally:
        runner.stop(delete_nodes=True)


def _pod_spec(script: str, **container: Any) -> dict[str, Any]:
    """A pod spec that can only land on the runner's node, running ``python -c script``."""
    return {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 10,
        "nodeSelector": {
            RUNNER_LABEL: RUNNER_LABEL_VALUE,
            kwok_config.LABEL_TOPOLOGY: LOCAL_POOL.topology,
        },
        "tolerations": [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            {
                "name": "main",
                "image": "example.invalid/not-pulled:1",
                "command": ["python", "-c", textwrap.dedent(script)],
                "resources": {"limits": {"google.com/tpu": "1"}},
                **container,
            }
        ],
    }


def _pod(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _phase(kubectl: Kubectl, namespace: str, name: str) -> str:
    result = kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return "Gone" if "NotFound" in result.stderr else ""
    return str(json.loads(result.stdout).get("status", {}).get("phase", ""))


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    (status,) = pod["status"]["containerStatuses"]
    terminated: dict[str, Any] = status["state"]["terminated"]
    return terminated


REPORT_SCRIPT = """
    import json, os, sys, tempfile
    from kubernetes import client, config

    config.load_kube_config()  # the KUBECONFIG the runner wrote for this pod
    review = client.AuthenticationV1Api().create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    report = {
        "greeting": open(sys.argv[1]).read(),
        "pod": os.environ["POD_NAMESPACE"] + "/" + os.environ["POD_NAME"],
        "index": os.environ.get("JOB_COMPLETION_INDEX"),
        "user": review.status.user_info.username,
        "extra": os.environ.get("BPJ_TEST_EXTRA"),
        "tmp": tempfile.gettempdir(),
    }
    print(json.dumps(report))
    with open(os.environ["BERT_TRAINER_TERMINATION_MESSAGE_PATH"], "w") as f:
        f.write(json.dumps(report))
"""


def test_job_pod_runs_as_a_process_and_completes(
    local_runner: tuple[PodRunner, Path], kubectl: Kubectl, namespace: str
) -> None:
    _, workdir = local_runner
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "greeting"},
        "data": {"greeting.txt": "hello"},
    }
    spec = _pod_spec(
        REPORT_SCRIPT,
        args=["/etc/greeting/greeting.txt"],
        env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        volumeMounts=[
            {"name": "config", "mountPath": "/etc/greeting", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    )
    spec["volumes"] = [
        {"name": "config", "configMap": {"name": "greeting"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "report"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 1,
            "backoffLimit": 0,
            "template": {"spec": spec},
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(config_map))
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(job))
    kubectl(
        "wait",
        "-n",
        namespace,
        "--for=condition=Complete",
        "job/report",
        "--timeout=45s",
        timeout=50,
    )

    (pod,) = kubectl_json(kubectl, "get", "pods", "-n", namespace, "-l", "job-name=report")["items"]
    name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] == f"{LOCAL_POOL.name}-0"
    assert pod["status"]["phase"] == "Succeeded"
    terminated = _terminated(pod)
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    report = json.loads(terminated["message"])
    assert report == {
        "greeting": "hello",
        "pod": f"{namespace}/{name}",
        "index": "0",
        "user": f"system:serviceaccount:{namespace}:default",
        "extra": "from-runner",
        "tmp": str(workdir / namespace / name / "volumes" / "tmp"),
    }
    log = (workdir / namespace / name / "main.log").read_text()
    assert json.loads(log.strip().splitlines()[-1]) == report


def test_failures_report_exit_code_and_message(
    local_runner: tuple[PodRunner, Path], kubectl: Kubectl, namespace: str
) -> None:
    bad_input = _pod_spec(
        """
        import os, sys
        with open(os.environ["BERT_TRAINER_TERMINATION_MESSAGE_PATH"], "w") as f:
            f.write("bad input: no corpus at gs://b/corpus")
        sys.exit(10)
        """,
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    crash = _pod_spec(
        """
        import sys
        print("RuntimeError: the last words", file=sys.stderr)
        sys.exit(3)
        """,
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    two_containers = _pod_spec("pass")
    two_containers["containers"].append({**two_containers["containers"][0], "name": "sidecar"})
    pods = {"bad-input": bad_input, "crash": crash, "two": two_containers}
    for name, spec in pods.items():
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_pod(name, spec)))
    wait_for(
        lambda: all(_phase(kubectl, namespace, name) == "Failed" for name in pods),
        30,
        "every pod to fail",
    )

    def get(name: str) -> dict[str, Any]:
        pod: dict[str, Any] = kubectl_json(kubectl, "get", "pod", name, "-n", namespace)
        return pod

    terminated = _terminated(get("bad-input"))
    assert (terminated["exitCode"], terminated["reason"]) == (10, "Error")
    assert terminated["message"] == "bad input: no corpus at gs://b/corpus"
    terminated = _terminated(get("crash"))
    assert terminated["exitCode"] == 3
    assert terminated["message"].strip() == "RuntimeError: the last words"
    rejected = get("two")["status"]
    assert rejected["reason"] == "UnsupportedByLocalRunner"
    assert "exactly one container" in rejected["message"]


SIGTERM_SCRIPT = """
    import os, signal, sys, time

    markers = os.environ["MARKERS"]

    def on_sigterm(*_):
        open(os.path.join(markers, "sigterm"), "w").close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    open(os.path.join(markers, "ready"), "w").close()
    for _ in range(600):  # at most a minute
        time.sleep(0.1)  # not synchronisation: the pod's program idles until its SIGTERM
    sys.exit(1)
"""


def test_deleting_a_running_pod_stops_its_process_gracefully(
    local_runner: tuple[PodRunner, Path], kubectl: Kubectl, namespace: str
) -> None:
    _, workdir = local_runner
    name = f"sleeper-{uuid.uuid4().hex[:6]}"
    spec = _pod_spec(
        SIGTERM_SCRIPT,
        env=[{"name": "MARKERS", "value": "/markers"}],
        volumeMounts=[{"name": "markers", "mountPath": "/markers"}],
    )
    spec["volumes"] = [{"name": "markers", "emptyDir": {}}]
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_pod(name, spec)))
    markers = workdir / namespace / name / "volumes" / "markers"
    wait_for(lambda: (markers / "ready").exists(), 30, "the process to install its handler")
    assert _phase(kubectl, namespace, name) == "Running"

    kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    wait_for(lambda: _phase(kubectl, namespace, name) == "Gone", 20, "the pod to be deleted")
    assert (markers / "sigterm").exists()


def test_runner_process_stops_its_pods_like_a_node_shutdown(
    devstack: plane.StackState, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """The stack's mode: ``podrunner_argv`` as a process, stopped by SIGTERM to its group."""
    # Its own node (a topology nothing else selects), and the pod bound to it by name.
    pool = kwok_config.NodePool(
        "local-shutdown",
        nodes=1,
        accelerator="tpu-v5-lite-podslice",
        topology="1x1",
        chips_per_node=1,
    )
    node = pool.node_names()[0]
    workdir = tmp_path / "work"
    with (tmp_path / "runner.log").open("wb") as log:
        runner = subprocess.Popen(
            podrunner_argv(devstack.kubeconfig, [pool], workdir),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: (
                kubectl(
                    "get",
                    "node",
                    node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                    check=False,
                ).stdout
                == "True"
            ),
            30,
            "the runner's node to be Ready",
        )
        spec = _pod_spec(
            SIGTERM_SCRIPT,
            env=[{"name": "MARKERS", "value": "/markers"}],
            volumeMounts=[{"name": "markers", "mountPath": "/markers"}],
        )
        spec["volumes"] = [{"name": "markers", "emptyDir": {}}]
        spec["nodeName"] = node
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_pod("victim", spec)))
        markers = workdir / namespace / "victim" / "volumes" / "markers"
        wait_for(lambda: (markers / "ready").exists(), 30, "the process to install its handler")

        os.killpg(runner.pid, signal.SIGTERM)
        assert runner.wait(timeout=15) == 0
        assert (markers / "sigterm").exists()
        pod = kubectl_json(kubectl, "get", "pod", "victim", "-n", namespace)
        assert pod["status"]["phase"] == "Failed"
        conditions = {c["type"]: c for c in pod["status"]["conditions"]}
        assert conditions["DisruptionTarget"]["status"] == "True"
        assert _terminated(pod)["exitCode"] == 0  # the program itself exited cleanly on SIGTERM
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=10)
        kubectl("delete", "node", node, "--wait=false", check=False)
