"""``./dev demo``: one BertPretrainJob from ``kubectl apply`` to an exported model, on this machine.

It builds the operator and trainer images (cached by content), brings up the local
stack with real nodes (a CPU node and a TPU-shaped v4 2x2x1 node, each a kubelet
with containerd; see ``bpj_devstack.nodes``) beside KWOK's fake TPU pools, imports
the images into the nodes' runtime, installs the operator with its Helm chart (so
it runs from its image, as a Deployment, with its in-cluster token), uploads the
bundled CC0 corpus to the GCS emulator, applies examples/quickstart.yaml, prints
the job's phase, step and loss as the operator and the trainer report them, and
ends with the exported model's path and a summary. Every stage's pod runs from the
trainer image as uid 10001 on a read-only root filesystem; ``kubectl logs`` works.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from bpj_devstack import local_cluster, plane
from bpj_devstack.kwok_config import DEFAULT_POOLS
from bpj_devstack.nodes import layout

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "data" / "corpus.txt"
EXAMPLE = REPO / "examples" / "quickstart.yaml"
NAMESPACE = "bpj-demo"
BUCKET = "bpj-quickstart"

#: KWOK keeps the TPU pools this job does not select (for `kubectl get nodes`, and show).
KWOK_POOLS = tuple(p for p in DEFAULT_POOLS if p.name not in ("cpu", "tpu-v4-2x2x1"))
FINAL = ("Succeeded", "Failed")


def kubectl(state: plane.StackState, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", state.kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def create_namespace(state: plane.StackState, name: str = NAMESPACE) -> None:
    """The job namespace, with the trainer pods' Secret (local_cluster.TRAINER_SECRET)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    objects = [namespace, local_cluster.trainer_env_secret(name)]
    kubectl(
        state,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects}),
    )


def _storage_client() -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    # The emulator takes no credentials; anonymous ones keep the client from looking.
    return storage.Client(project="bpj-devstack", credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]


def upload_corpus(state: plane.StackState) -> None:
    from google.api_core.exceptions import Conflict

    os.environ["STORAGE_EMULATOR_HOST"] = state.gcs_endpoint
    client = _storage_client()
    try:
        bucket = client.create_bucket(BUCKET)
    except Conflict:
        bucket = client.bucket(BUCKET)
    # A re-run starts clean: outputs of an earlier run would be resumed from, not redone.
    for blob in client.list_blobs(BUCKET, prefix="runs/quickstart/"):
        blob.delete()
    bucket.blob("corpus/corpus.txt").upload_from_filename(str(CORPUS))


OBJECT_KINDS = "bertpretrainjobs,jobs,pods,configmaps,services,events"
"""What ``save_objects`` keeps: the job (with its status), its children and the events."""


def save_objects(state: plane.StackState, run_dir: Path) -> None:
    """Keep what the run did before the stack stops: objects, logs, and the containers.

    ``objects.json``: the demo namespace's objects; ``pods/<namespace>/<pod>.log``: every
    pod's log through ``kubectl logs`` (the operator's too); ``containers.json``: each
    container as containerd ran it (user, read-only root). The tests read all three.
    """
    snapshot_tokens(run_dir)
    try:
        objects = kubectl(state, "get", OBJECT_KINDS, "-n", NAMESPACE, "-o", "json")
    except SystemExit as e:  # kubectl failed: the stack may be half up
        print(f"    (objects not saved: {e})")
        return
    (run_dir / "objects.json").write_text(objects)
    for namespace in (NAMESPACE, local_cluster.OPERATOR_NAMESPACE):
        pods = json.loads(kubectl(state, "get", "pods", "-n", namespace, "-o", "json"))["items"]
        for pod in pods:
            name = pod["metadata"]["name"]
            logs = subprocess.run(
                ["kubectl", "--kubeconfig", state.kubeconfig, "logs", "-n", namespace, name],
                capture_output=True,
                text=True,
                check=False,
            )
            _save_token(pod, run_dir / "tokens" / namespace / f"{name}.token", run_dir)
            target = run_dir / "pods" / namespace / f"{name}.log"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(
                logs.stdout if logs.returncode == 0 else f"(kubectl logs: {logs.stderr})"
            )
    shutil.rmtree(run_dir / _TOKENS_BY_UID, ignore_errors=True)
    records = local_cluster.container_records(state)
    (run_dir / "containers.json").write_text(json.dumps(records, indent=2))


_TOKENS_BY_UID = "tokens/.by-uid"


def snapshot_tokens(run_dir: Path) -> None:
    """Copy every service-account token the kubelets have mounted, by pod uid.

    The credential scan (tests/reliability) looks for each pod's token by value in
    everything the run left behind, so it needs the tokens themselves; a kubelet
    removes a pod's token with its volumes once the pod has finished, so the demo
    copies them while the pods run.
    """
    pattern = "*/kubelet/pods/*/volumes/kubernetes.io~projected/*/token"
    for token in layout.VAR_ROOT.glob(pattern):
        uid = token.parents[3].name
        target = run_dir / _TOKENS_BY_UID / f"{uid}.token"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.write_text(token.read_text())
        except OSError:  # the pod's volumes went away meanwhile
            continue
        target.chmod(0o600)


def _save_token(pod: dict[str, Any], target: Path, run_dir: Path) -> None:
    """Name the copied token of ``pod`` after it: ``tokens/<namespace>/<pod>.token``."""
    copied = run_dir / _TOKENS_BY_UID / f"{pod['metadata']['uid']}.token"
    if copied.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        copied.rename(target)


def read_status(state: plane.StackState) -> dict[str, Any]:
    obj = json.loads(kubectl(state, "get", "bpj", "quickstart", "-n", NAMESPACE, "-o", "json"))
    return dict(obj.get("status") or {})


def describe(status: dict[str, Any]) -> str:
    progress = status.get("progress") or {}
    parts = [f"phase={status.get('phase', 'Pending')}"]
    if status.get("phase") == "Preparing" and status.get("stageProgress"):
        # The preparation's pass and its bytes, shards and instances, as kubectl get shows.
        parts.append(f"progress={status['stageProgress']!r}")
    if progress.get("step") is not None:
        parts.append(f"step={progress['step']}/{progress.get('totalSteps', '?')}")
    if progress.get("loss") is not None:
        parts.append(f"loss={progress['loss']:.4f}")
    if progress.get("examplesPerSecond"):
        parts.append(f"examples/s={progress['examplesPerSecond']:.1f}")
    if status.get("restarts"):
        parts.append(f"restarts={status['restarts']}")
    failing = [c for c in status.get("conditions", []) if c["type"] == "Failed"]
    if failing:
        parts.append(f"reason={failing[0]['reason']}: {failing[0]['message']}")
    return "  ".join(parts)


def download_export(state: plane.StackState, target: Path) -> list[str]:
    client = _storage_client()
    prefix = "runs/quickstart/export/huggingface/"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    files = []
    for blob in client.list_blobs(BUCKET, prefix=prefix):
        name = blob.name[len(prefix) :]
        if not name or name.endswith("/"):
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target / name))
        files.append(name)
    return sorted(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", type=Path, default=REPO / ".devstack" / "demo")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the job")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the stack running afterwards (stop it with `./dev stack down "
        "--run-dir .devstack/demo`)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    started = time.monotonic()

    print("==> building the operator and trainer images (cached by content)")
    # What an earlier run in this directory saved would be scanned as this run's.
    for stale in ("tokens", "pods", "objects.json", "containers.json"):
        path = Path(args.run_dir) / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    build_log = Path(args.run_dir) / "images.log"  # up() clears logs/
    built = local_cluster.prepare_images(build_log)
    print(f"    {built.operator}, {built.trainer} (build log: {build_log})")
    print("==> starting the local stack (control plane, real nodes, KWOK, GCS emulator)")
    state = plane.up(
        args.run_dir,
        pools=KWOK_POOLS,
        kubelet_pools=local_cluster.KUBELET_POOLS,
        images=built.archives,
    )
    try:
        print(f"    export KUBECONFIG={state.kubeconfig}")
        create_namespace(state)
        print(f"==> uploading the demo corpus to gs://{BUCKET}/corpus/")
        upload_corpus(state)
        print(
            f"==> helm install {local_cluster.RELEASE} charts/bert-pretrain-operator "
            f"-n {local_cluster.OPERATOR_NAMESPACE} (the operator runs from its image)"
        )
        values = local_cluster.chart_values(
            state, built, [NAMESPACE], resyncSeconds=5, progressReportSeconds=2
        )
        local_cluster.install_operator(state, values)
        kubectl(
            state,
            "delete",
            "bpj",
            "quickstart",
            "-n",
            NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
        )
        print(f"==> kubectl apply -f {EXAMPLE.relative_to(REPO)} -n {NAMESPACE}")
        print(f"    (watch it from another terminal: kubectl get bpj -n {NAMESPACE} -w)")
        kubectl(state, "apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
        status = wait(state, args.timeout, Path(args.run_dir))
        return summarize(state, status, Path(args.run_dir), time.monotonic() - started)
    finally:
        save_objects(state, Path(args.run_dir))
        if not args.keep:
            plane.down(args.run_dir)


def wait(state: plane.StackState, timeout: float, run_dir: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        snapshot_tokens(run_dir)
        status = read_status(state)
        line = describe(status)
        if line != last:
            print(f"    [{time.strftime('%H:%M:%S')}] {line}", flush=True)
            last = line
        if status.get("phase") in FINAL:
            return status
        time.sleep(1)
    raise SystemExit(f"the job did not finish within {timeout:.0f}s; last status: {last}")


def summarize(
    state: plane.StackState, status: dict[str, Any], run_dir: Path, elapsed: float
) -> int:
    if status.get("phase") != "Succeeded":
        print(f"==> the job failed: {describe(status)}")
        print(f"    logs: {run_dir / 'logs'} and {run_dir / 'pods'}; objects: objects.json")
        print(
            f"    with --keep: kubectl logs -n {NAMESPACE} <pod>, kubectl get events -n {NAMESPACE}"
        )
        return 1
    target = run_dir / "export"
    files = download_export(state, target)
    progress = status.get("progress") or {}
    print("==> Succeeded")
    prepared = status.get("preparation") or {}
    print(
        f"    prepared:        {prepared.get('instances')} instances from "
        f"{prepared.get('bytes')} bytes of text ({prepared.get('chunks')} chunk(s)), "
        f"{prepared.get('workers')} worker pod(s) per pass"
    )
    print(f"    trained steps:   {progress.get('step')} of {progress.get('totalSteps')}")
    print(f"    final loss:      {progress.get('loss')}")
    print(f"    last checkpoint: {progress.get('lastCheckpoint')}")
    print(f"    exported model:  gs://{BUCKET}/runs/quickstart/export/huggingface/")
    print(f"    downloaded to:   {target}  ({', '.join(files)})")
    print(f"    load it with:    transformers.BertForPreTraining.from_pretrained('{target}')")
    print(f"    total time:      {elapsed:.0f}s")
    print(
        yaml.safe_dump(
            {"status": {k: v for k, v in status.items() if k != "kopf"}}, sort_keys=False
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
