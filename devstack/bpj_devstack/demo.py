"""``./dev demo``: one BertPretrainJob from ``kubectl apply`` to an exported model, on this machine.

It brings up the local stack with two kinds of nodes: KWOK's fake TPU node pools
(for show, and for the scheduling tests) and the local pod runner's nodes, a CPU
pool and a TPU-shaped v4 2x2x1 pool, whose pods really run here as processes.
It installs the CRD, the trainer's RBAC and progress policy, starts the operator
as a process (as the chart would), uploads the bundled CC0 corpus to the GCS
emulator, applies examples/quickstart.yaml, prints the job's phase, step and
loss as the operator and the trainer report them, and ends with the exported
model's path and a summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bpj_devstack import plane
from bpj_devstack.kwok_config import DEFAULT_POOLS, NodePool

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "data" / "corpus.txt"
EXAMPLE = REPO / "examples" / "quickstart.yaml"
NAMESPACE = "bpj-demo"
BUCKET = "bpj-quickstart"

#: Nodes whose pods run for real. The quickstart's slice (v4 2x2x1) and every CPU
#: stage land here; KWOK keeps the other TPU pools, which this job does not select.
LOCAL_POOLS = (
    NodePool("local-cpu", nodes=1, cpu="8", memory="32Gi"),
    NodePool(
        "local-tpu-v4-2x2x1",
        nodes=1,
        accelerator="tpu-v4-podslice",
        topology="2x2x1",
        chips_per_node=4,
    ),
)
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


def install(state: plane.StackState) -> None:
    from bert_pretrain_operator.api.crd import crd_yaml
    from bert_pretrain_operator.rbac import progress_policy, trainer_rbac
    from bert_pretrain_operator.settings import Settings

    kubectl(state, "apply", "--server-side", "-f", "-", stdin=crd_yaml())
    kubectl(state, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl(
        state,
        "apply",
        "-f",
        "-",
        stdin=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        ),
    )
    sa = Settings().trainer_service_account
    objects = trainer_rbac(NAMESPACE, sa) + progress_policy(sa)
    kubectl(
        state,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
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


def start_operator(state: plane.StackState) -> subprocess.Popen[bytes]:
    # Settings are explicit, never inherited: an operator's BPJ_* variables in the caller's
    # environment (a test session's, say) must not change what the demo runs.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("BPJ_")}
    env = dict(
        inherited,
        **state.env(),
        BPJ_NAMESPACES=NAMESPACE,
        BPJ_METRICS_PORT=str(plane.free_port()),
        BPJ_HEALTH_PORT="0",
        BPJ_PROGRESS_SECONDS="2",
        BPJ_RESYNC_SECONDS="5",
        BPJ_TRAINER_IMAGE="local/bert-trainer:dev",
    )
    log = Path(state.run_dir) / "logs" / "operator.log"
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bert_pretrain_operator"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


OBJECT_KINDS = "bertpretrainjobs,jobs,pods,configmaps,services,events"
"""What ``save_objects`` keeps: the job (with its status), its children and the events."""


def save_objects(state: plane.StackState, run_dir: Path) -> None:
    """Write the demo namespace's objects to ``run_dir/objects.json`` before the stack stops.

    For looking into a run afterwards; the tests also scan them for credentials.
    """
    try:
        objects = kubectl(state, "get", OBJECT_KINDS, "-n", NAMESPACE, "-o", "json")
    except SystemExit as e:  # kubectl failed: the stack may be half up
        print(f"    (objects not saved: {e})")
        return
    (run_dir / "objects.json").write_text(objects)


def read_status(state: plane.StackState) -> dict[str, Any]:
    obj = json.loads(kubectl(state, "get", "bpj", "quickstart", "-n", NAMESPACE, "-o", "json"))
    return dict(obj.get("status") or {})


def describe(status: dict[str, Any]) -> str:
    progress = status.get("progress") or {}
    parts = [f"phase={status.get('phase', 'Pending')}"]
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

    print("==> starting the local stack (control plane, KWOK, pod runner, GCS emulator)")
    state = plane.up(args.run_dir, pools=KWOK_POOLS, local_pools=LOCAL_POOLS)
    operator = None
    try:
        print(f"    export KUBECONFIG={state.kubeconfig}")
        print("==> installing the CRD, the trainer's RBAC and the progress policy")
        install(state)
        print(f"==> uploading the demo corpus to gs://{BUCKET}/corpus/")
        upload_corpus(state)
        print("==> starting the operator")
        operator = start_operator(state)
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
        status = wait(state, args.timeout)
        return summarize(state, status, Path(args.run_dir), time.monotonic() - started)
    finally:
        save_objects(state, Path(args.run_dir))
        if operator is not None:
            os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
        if not args.keep:
            plane.down(args.run_dir)


def wait(state: plane.StackState, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
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
        return 1
    target = run_dir / "export"
    files = download_export(state, target)
    progress = status.get("progress") or {}
    print("==> Succeeded")
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
