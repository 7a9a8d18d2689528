"""Benchmark 5: the preparation on 4 worker pods against 1, on the local stack's real node.

    .venv/bin/python benchmarks/prepare_fanout.py [--corpus-mib 64] [--chunk-mib 4] [--keep DIR]

What it does, in one run on one machine (root; the stack's real kubelet and
containerd run the trainer image as on GKE):

1. Starts the local stack with one real CPU node (this machine's cores) and no
   TPU node, and installs the operator from its chart.
2. Generates a corpus deterministically (benchmark 1's generator) and uploads it
   to the GCS emulator.
3. Runs the same BertPretrainJob twice, one after the other (they would compete
   for the node's cores): once with ``preparation.workers: 1`` and a CPU request of
   ``--total-cpu``; once with 4 workers and a quarter of it each. The pods' process
   pools follow their CPU request (``BERT_TRAINER_CPUS``), so both runs are given
   the same total CPU. Every pass runs: plan, count, vocab (trained), records, shards.
4. Times each run from ``kubectl apply`` to the Prepared condition, and reads each
   pass Job's duration. The job would go on to train on a TPU slice, which this
   stack does not have; it is deleted once prepared.
5. Compares the two runs' outputs: vocab.txt and every shard, by their MD5 in GCS.

The last line is ``RATIO prepare_fanout <4 workers / 1 worker>x (target <= 1.2x)``,
from the wall times; the outputs must be the same bytes, or the script fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from machine import machine  # benchmarks/ is the script's directory
from prepare_vs_reference import generate_corpus

from bert_trainer import contract
from bpj_devstack import demo, local_cluster, plane

TARGET_RATIO = 1.2
NAMESPACE = "fanout"
BUCKET = "fanout"
PASSES = contract.PREPARE_PASSES


def job_manifest(name: str, workers: int, cpu: str, chunk_bytes: int) -> dict[str, Any]:
    return {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": name},
        "spec": {
            "data": {
                "corpus": [f"gs://{BUCKET}/corpus/*.txt"],
                "vocabSize": 8000,
                "maxSeqLength": 128,
                "maxPredictionsPerSeq": 20,
                "preparation": {
                    "workers": workers,
                    "chunkBytes": chunk_bytes,
                    "resources": {"cpu": cpu, "memory": "2Gi"},
                },
            },
            "model": {"size": "tiny"},
            "training": {"globalBatchSize": 8, "trainSteps": 10, "seed": 12345},
            "tpu": {
                "accelerator": "tpu-v4-podslice",
                "topology": "2x2x1",
                "resources": {"cpu": "1", "memory": "4Gi"},
            },
            "output": f"gs://{BUCKET}/runs/{name}",
            "runPolicy": {"maxRestarts": 0},
        },
    }


def upload(state: plane.StackState, corpus_dir: Path) -> int:
    from google.api_core.exceptions import Conflict

    os.environ["STORAGE_EMULATOR_HOST"] = state.gcs_endpoint
    client = demo._storage_client()
    try:
        bucket = client.create_bucket(BUCKET)
    except Conflict:
        bucket = client.bucket(BUCKET)
    total = 0
    for path in sorted(corpus_dir.iterdir()):
        bucket.blob(f"corpus/{path.name}").upload_from_filename(str(path))
        total += path.stat().st_size
    return total


def outputs(name: str) -> dict[str, str]:
    """Object name (under the run's output) to MD5, for vocab.txt and the shards."""
    client = demo._storage_client()
    prefix = f"runs/{name}/"
    found = {
        blob.name.removeprefix(prefix): blob.md5_hash
        for blob in client.list_blobs(BUCKET, prefix=prefix)
        if blob.name.endswith((".tfrecord", "vocab.txt"))
    }
    if not any(k.endswith(".tfrecord") for k in found):
        raise SystemExit(f"run {name} wrote no shard under gs://{BUCKET}/{prefix}")
    return found


def _status(state: plane.StackState, name: str) -> dict[str, Any]:
    raw = demo.kubectl(state, "get", "bpj", name, "-n", NAMESPACE, "-o", "json")
    status: dict[str, Any] = json.loads(raw).get("status") or {}
    return status


def _prepared(status: dict[str, Any]) -> bool | None:
    """True once Prepared, False while not; None when the job failed."""
    if status.get("phase") == "Failed":
        return None
    return any(
        c.get("type") == "Prepared" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _pass_seconds(state: plane.StackState, name: str) -> dict[str, float]:
    seconds = {}
    for prepare_pass in PASSES:
        raw = demo.kubectl(
            state, "get", "job", f"{name}-prep-{prepare_pass}", "-n", NAMESPACE, "-o", "json"
        )
        job_status = json.loads(raw)["status"]
        start = datetime.fromisoformat(job_status["startTime"])
        end = datetime.fromisoformat(job_status["completionTime"])
        seconds[prepare_pass] = (end - start).total_seconds()
    return seconds


def run(
    state: plane.StackState, name: str, workers: int, cpu: str, chunk_bytes: int, timeout: float
) -> tuple[float, dict[str, float], dict[str, Any]]:
    manifest = json.dumps(job_manifest(name, workers, cpu, chunk_bytes))
    started = time.monotonic()
    demo.kubectl(state, "apply", "-n", NAMESPACE, "-f", "-", stdin=manifest)
    deadline = started + timeout
    while True:
        status = _status(state, name)
        prepared = _prepared(status)
        if prepared is None:
            raise SystemExit(f"{name} failed: {demo.describe(status)}")
        if prepared:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} was not prepared within {timeout:.0f}s: {status}")
        # A measurement's resolution, not a synchronisation: the status is polled.
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    passes = _pass_seconds(state, name)
    demo.kubectl(state, "delete", "bpj", name, "-n", NAMESPACE, "--wait=true")
    return elapsed, passes, status.get("preparation") or {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus-mib", type=float, default=64)
    parser.add_argument("--chunk-mib", type=float, default=4)
    parser.add_argument(
        "--total-cpu", type=float, default=1.6, help="CPUs of the run (the operator needs some)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the local stack's real node needs root")
    print(machine())
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-prepare-fanout-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        info = generate_corpus(work / "corpus", int(args.corpus_mib * 2**20))
        chunk_bytes = int(args.chunk_mib * 2**20)
        print(
            f"corpus {info.bytes / 2**20:.1f} MiB: {info.documents:,} documents in "
            f"{len(info.files)} files; chunks of {args.chunk_mib:g} MiB"
        )
        built = local_cluster.prepare_images(work / "images.log")
        state = plane.up(
            work / "stack",
            pools=(),
            kubelet_pools=(local_cluster.CPU_POOL,),
            images=built.archives,
        )
        try:
            demo.create_namespace(state, NAMESPACE)
            uploaded = upload(state, work / "corpus")
            values = local_cluster.chart_values(
                state, built, [NAMESPACE], resyncSeconds=5, progressReportSeconds=2
            )
            local_cluster.install_operator(state, values)
            print(f"stack up; {uploaded / 2**20:.1f} MiB uploaded")
            sides = {1: f"{args.total_cpu:g}", 4: f"{int(args.total_cpu * 1000 / 4)}m"}
            walls: dict[int, list[float]] = {1: [], 4: []}
            hashes: dict[int, dict[str, str]] = {}
            for repeat in range(args.repeats):
                order = (1, 4) if repeat % 2 == 0 else (4, 1)
                for workers in order:
                    name = f"w{workers}-r{repeat}"
                    elapsed, passes, prep = run(
                        state, name, workers, sides[workers], chunk_bytes, args.timeout
                    )
                    walls[workers].append(elapsed)
                    found = outputs(name)
                    if workers in hashes and hashes[workers] != found:
                        raise SystemExit(f"{name}'s output differs from an earlier run's")
                    hashes[workers] = found
                    per_pass = ", ".join(f"{p} {s:.0f}s" for p, s in passes.items())
                    print(
                        f"{workers} worker(s) x {sides[workers]} CPU, run {repeat + 1}: "
                        f"prepared in {elapsed:.1f}s ({prep.get('instances', 0):,} instances, "
                        f"{prep.get('chunks')} chunks); pass Jobs: {per_pass}",
                        flush=True,
                    )
        finally:
            plane.down(work / "stack")
        same = hashes[1] == hashes[4]
        shards = sum(k.endswith(".tfrecord") for k in hashes[1])
        print(
            f"outputs: vocab.txt and {shards} shards "
            f"{'byte-identical (MD5)' if same else 'DIFFER'} between 1 and 4 workers"
        )
        if not same:
            raise SystemExit("the 4-worker run wrote other bytes than the 1-worker run")
        best = {w: min(t) for w, t in walls.items()}
        ratio = best[4] / best[1]
        print(
            f"best wall time to Prepared: 1 worker {best[1]:.1f}s, 4 workers {best[4]:.1f}s "
            f"(all runs: {walls})"
        )
        print(f"RATIO prepare_fanout {ratio:.2f}x (target <= {TARGET_RATIO}x)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
