"""The README's first command: the whole pipeline, from kubectl apply to an exported model."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bert_trainer.contract import PREPARE_PASSES
from tests.support import DEMO_TEST_TIMEOUT, DemoRun


@pytest.mark.timeout(DEMO_TEST_TIMEOUT)
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.tensorflow
def test_demo_trains_and_exports_the_quickstart_job(demo_run: DemoRun) -> None:
    run_dir = demo_run.run_dir
    out = demo_run.stdout
    assert demo_run.returncode == 0, f"demo failed:\n{out}\n{demo_run.stderr[-4000:]}"
    phases = re.findall(r"phase=(\w+)", out)
    assert phases[-1] == "Succeeded"
    for phase in ("Preparing", "Training", "Exporting"):
        assert phase in phases, f"{phase} never shown: {phases}"
    # Progress written by the trainer itself, through its service account.
    assert re.search(r"trained steps:\s+20 of 20", out)
    loss = float(re.search(r"final loss:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert 0 < loss < 20
    export = run_dir / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert config["hidden_size"] == 128 and config["num_hidden_layers"] == 2
    assert (export / "model.safetensors").stat().st_size > 100_000
    vocab = (export / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert not (run_dir / "state.json").exists(), "the demo stops its stack"


def _demo_pods(demo_run: DemoRun) -> list[dict[str, Any]]:
    objects = json.loads((demo_run.run_dir / "objects.json").read_text())
    return [item for item in objects["items"] if item["kind"] == "Pod"]


@pytest.mark.timeout(DEMO_TEST_TIMEOUT)
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.tensorflow
def test_demo_stages_ran_from_the_trainer_image_as_10001_on_read_only_roots(
    demo_run: DemoRun,
) -> None:
    assert demo_run.returncode == 0, f"demo failed:\n{demo_run.stdout}"
    # What containerd itself ran (its OCI spec of each container), not what pods asked for.
    records = json.loads((demo_run.run_dir / "containers.json").read_text())
    ran = [r for r in records if not r["Image"].startswith("localhost/bpj-devstack/pause")]
    trainer = [r for r in ran if r["Image"] == "localhost/bert-trainer:dev"]
    stages = {r["Labels"]["io.kubernetes.pod.name"].rsplit("-", 1)[0] for r in trainer}
    passes = [f"quickstart-prep-{p}-0" for p in PREPARE_PASSES]
    assert stages == {
        "quickstart-check",
        *passes,
        "quickstart-train-1-0",
        "quickstart-export",
    }, stages
    for record in ran:
        assert record["Spec"]["process"]["user"]["uid"] == 10001, record["Labels"]
        assert record["Spec"]["root"]["readonly"] is True, record["Labels"]
    # The TPU stage ran on the TPU-shaped node, the CPU stages on the CPU node.
    nodes = {r["Labels"]["io.kubernetes.pod.name"].rsplit("-", 1)[0]: r["node"] for r in trainer}
    assert nodes == {
        "quickstart-check": "local-cpu-0",
        **dict.fromkeys(passes, "local-cpu-0"),
        "quickstart-train-1-0": "local-tpu-v4-2x2x1-0",
        "quickstart-export": "local-cpu-0",
    }
    # `kubectl logs` served each stage's log, through the kubelet that ran it.
    logs = sorted((demo_run.run_dir / "pods" / "bpj-demo").glob("*.log"))
    assert {p.name.rsplit("-", 1)[0] for p in logs} == stages
    for path in logs:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        assert any(line.get("job") == "quickstart" for line in lines), path.read_text()[-2000:]
    pods = _demo_pods(demo_run)
    assert len(pods) == len(passes) + 3
    # Every pod, the input check's included, ran as the job's service account.
    assert {p["spec"]["serviceAccountName"] for p in pods} == {"bpj-bert-pretrain-operator-trainer"}


@pytest.mark.timeout(DEMO_TEST_TIMEOUT)
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.tensorflow
def test_demo_operator_runs_from_its_chart_with_its_in_cluster_token(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, f"demo failed:\n{demo_run.stdout}"
    records = json.loads((demo_run.run_dir / "containers.json").read_text())
    [operator] = [r for r in records if r["Image"] == "localhost/bert-pretrain-operator:dev"]
    pod = operator["Labels"]["io.kubernetes.pod.name"]
    assert operator["Labels"]["io.kubernetes.pod.namespace"] == "bpj-system"
    env = operator["Spec"]["process"]["env"]
    assert not any(e.startswith("KUBECONFIG=") for e in env)
    # No GCS endpoint, project or credentials: the operator reads no bucket (the
    # check pod, under the job's identity, read the corpus).
    assert not [e for e in env if e.startswith(("STORAGE_EMULATOR_HOST=", "GOOGLE_"))], env
    # The API server's audit log: the operator's requests were authenticated as its
    # service account with a token bound to its pod, the one the kubelet mounted.
    events = [
        json.loads(line)
        for line in (demo_run.run_dir / "logs" / "audit.log").read_text().splitlines()
    ]
    mine = [
        e
        for e in events
        if e["user"].get("extra", {}).get("authentication.kubernetes.io/pod-name") == [pod]
    ]
    assert mine, f"no request of pod {pod} in the audit log"
    assert {e["user"]["username"] for e in mine} == {
        "system:serviceaccount:bpj-system:bpj-bert-pretrain-operator"
    }
    done = {
        (
            e["verb"],
            e.get("objectRef", {}).get("resource"),
            e.get("objectRef", {}).get("subresource"),
        )
        for e in mine
    }
    assert ("watch", "bertpretrainjobs", None) in done
    assert ("patch", "bertpretrainjobs", "status") in done
    assert ("create", "jobs", None) in done
    assert all(e["responseStatus"]["code"] < 400 for e in mine if e["verb"] == "create")
