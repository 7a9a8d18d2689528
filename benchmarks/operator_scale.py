"""Benchmark 3: the operator with hundreds of BertPretrainJobs on the local control plane.

    .venv/bin/python benchmarks/operator_scale.py [--burst 200] [--total 1000]

What it does, in one run on one machine:

1. Starts the local stack (``bpj_devstack.plane.up``: etcd, kube-apiserver,
   kube-controller-manager, kube-scheduler, KWOK nodes shaped like GKE TPU node
   pools, fake-gcs-server) in a temporary directory, installs the CRD, creates
   a namespace with the trainer's ServiceAccount and Role (as the chart does),
   and a bucket in the GCS emulator holding a records object and a vocab.
2. Runs the operator as its own process, as the chart's Deployment does
   (``python -m bert_pretrain_operator``, default settings: 4 reconcile
   workers, 30 s resync), watching that namespace.
3. Creates ``--burst`` BertPretrainJobs at once (32 client threads) and
   timestamps, on a watch, the moment each one's check Job appears, the moment
   it is Complete, and the moment its training Job appears. The jobs name
   prepared records, so after the input check training is their first stage.
   A KWOK check pod ends as soon as it runs, reporting the vocab's size as
   the real check would (``bpj_devstack.kwok_pods``); each job asks for a TPU
   v4 2x2x1 slice (one pod). The stack has one such node, so one
   pod runs and the rest wait, Pending, as jobs queue for capacity on a real
   cluster (the scheduler and the operator's pod watch see all of them).
4. Creates more jobs until ``--total`` are present, waits until all their
   training Jobs exist, then for ``--settle`` seconds (more than one 30 s
   resync), and reads the operator's peak resident set (VmHWM in
   /proc/<pid>/status). The window is timed, not waited out until the operator
   is idle: with 1,000 jobs the resync alone keeps it busy.
5. Reads the operator's own metrics: reconciles (``bpj_reconcile_seconds_count``)
   and Kubernetes API requests (``bpj_api_requests_total``, which counts every
   call of ``Kube``); requests per reconcile are reported per phase.

Latency is measured for each of the operator's two reactions: from the moment
the create request returned (the job is stored) to the watch event of its check
Job, and from the watch event of the check Job Complete to that of the training
Job. The whole path (create to training Job, which includes the check pod's
scheduling and run and the Job controller's update) is printed too. Everything
(the control plane, the client threads and the operator) shares this machine's
CPUs. As a same-run baseline,
before the operator starts, the script creates ``--burst`` bare, suspended Jobs
directly from the same client threads: the least API work any controller must
do for that many training Jobs.

The last line is ``RATIO operator_scale p99 <p99/2s>x of 2 s, peak RSS <rss/150MB>x of
150 MB (targets < 1x)``, the p99 being the slower of the operator's two reactions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine import machine  # benchmarks/ is the script's directory

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "quickstart.yaml"
TARGET_P99_SECONDS = 2.0
TARGET_RSS_MB = 150.0
CLIENT_THREADS = 32
REQUESTS_METRIC = "bpj_api_requests_total"
#: The bucket's vocab.txt.
VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the")


# --------------------------------------------------------------------------- stack and operator


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def install_crd(kubeconfig: str) -> None:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(path))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


def create_namespace(kubeconfig: str, namespace: str) -> None:
    from bert_pretrain_operator.rbac import trainer_rbac
    from bert_pretrain_operator.settings import Settings

    kubectl(kubeconfig, "create", "namespace", namespace)
    objects = trainer_rbac(namespace, Settings().trainer_service_account)
    kubectl(
        kubeconfig,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )


def create_bucket(gcs_endpoint: str) -> str:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = gcs_endpoint
    credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    client = storage.Client(project="bpj-bench", credentials=credentials)
    name = f"bpj-bench-{uuid.uuid4().hex[:8]}"
    bucket = client.create_bucket(name)
    bucket.blob("records/part-00000-of-00001.tfrecord").upload_from_string(b"x")
    bucket.blob("vocab.txt").upload_from_string("".join(f"{t}\n" for t in VOCAB))
    return name


def manifest(bucket: str, name: str) -> dict[str, Any]:
    import yaml

    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc = json.loads(json.dumps(doc).replace("bpj-quickstart", bucket))
    doc["metadata"] = {"name": name}
    doc["spec"]["data"] = {
        "tfrecords": f"gs://{bucket}/records/*.tfrecord",
        "vocab": f"gs://{bucket}/vocab.txt",
    }
    return doc


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    metrics_url: str
    log: Path

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    def metrics(self) -> dict[str, float]:
        """Unlabelled samples and ``name{labels}`` samples of /metrics."""
        samples: dict[str, float] = {}
        for line in self.metrics_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def memory(self) -> dict[str, float]:
        """VmHWM (peak) and VmRSS in MB (10^6 bytes)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.MULTILINE))
        return {key: int(value) * 1024 / 1e6 for key, value in found.items()}

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def run_operator(env: dict[str, str], namespace: str, log: Path) -> Iterator[Operator]:
    from bpj_devstack import plane

    metrics_port, health_port = plane.free_port(), plane.free_port()
    print("operator: python -m bert_pretrain_operator", flush=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bert_pretrain_operator"],
            env=dict(
                os.environ,
                **env,
                BPJ_NAMESPACES=namespace,
                BPJ_METRICS_PORT=str(metrics_port),
                BPJ_HEALTH_PORT=str(health_port),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    operator = Operator(process, f"http://127.0.0.1:{metrics_port}/metrics", log)
    try:
        wait_for(lambda: _responds(operator), 60, "the operator's /metrics")
        yield operator
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _responds(operator: Operator) -> bool:
    if operator.process.poll() is not None:
        raise SystemExit(f"the operator exited; see {operator.log}")
    try:
        text = operator.metrics_text()
    except OSError:
        return False
    if f"# HELP {REQUESTS_METRIC} " not in text:
        raise SystemExit(f"the operator's /metrics has no {REQUESTS_METRIC}")
    return True


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


# --------------------------------------------------------------------------- clients


def api_client(kubeconfig: str) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = CLIENT_THREADS
    return client.ApiClient(configuration)


@dataclass
class ChildJobWatch:
    """Records when each BertPretrainJob's check Job appears and completes, and when its
    training Job appears."""

    kubeconfig: str
    namespace: str
    seen: dict[str, float] = field(default_factory=dict)
    """The training Job's first sight, by BertPretrainJob."""
    checks: dict[str, float] = field(default_factory=dict)
    """The check Job's first sight."""
    checked: dict[str, float] = field(default_factory=dict)
    """The first sight of the check Job Complete."""
    started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise SystemExit("the Job watch did not start")

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        from bert_pretrain_operator.render import names

        batch = client.BatchV1Api(api_client(self.kubeconfig))
        selector = f"{names.LABEL_STAGE} in ({names.STAGE_CHECK},{names.STAGE_TRAIN})"

        def relist() -> str:
            listed = batch.list_namespaced_job(self.namespace, label_selector=selector)
            now = time.perf_counter()
            for job in listed.items:
                self._saw(job, now)
            return str(listed.metadata.resource_version)

        version = relist()
        self._ready.set()
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                batch.list_namespaced_job,
                self.namespace,
                label_selector=selector,
                resource_version=version,
                timeout_seconds=30,
                allow_watch_bookmarks=True,
            )
            try:
                for event in stream:
                    now = time.perf_counter()
                    if event["type"] == "BOOKMARK":
                        version = event["raw_object"]["metadata"]["resourceVersion"]
                        continue
                    job = event["object"]
                    version = job.metadata.resource_version
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._saw(job, now)
                    if self._stop.is_set():
                        return
            except ApiException as e:
                if e.status != 410:  # 410 Gone: the version is too old; list again
                    raise
                version = relist()
            except Exception:
                if self._stop.is_set():
                    return
                raise

    def _saw(self, job: Any, now: float) -> None:
        from bert_pretrain_operator.render import names

        labels = job.metadata.labels or {}
        owner = labels.get(names.LABEL_JOB)
        if not owner:
            return
        if labels.get(names.LABEL_STAGE) == names.STAGE_TRAIN:
            self.seen.setdefault(owner, now)
            return
        self.checks.setdefault(owner, now)
        conditions = (job.status and job.status.conditions) or []
        if any(c.type == "Complete" and c.status == "True" for c in conditions):
            self.checked.setdefault(owner, now)


@dataclass(frozen=True)
class Created:
    name: str
    sent: float
    stored: float


def create_jobs(api: Any, namespace: str, bucket: str, names: Sequence[str]) -> list[Created]:
    """Create the jobs at once from ``CLIENT_THREADS`` threads; returns their timestamps."""
    from kubernetes import client

    from bert_trainer import contract

    custom = client.CustomObjectsApi(api)
    bodies = {name: manifest(bucket, name) for name in names}

    def create(name: str) -> Created:
        sent = time.perf_counter()
        custom.create_namespaced_custom_object(
            contract.API_GROUP, contract.API_VERSION, namespace, contract.PLURAL, bodies[name]
        )
        return Created(name, sent, time.perf_counter())

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        return list(pool.map(create, names))


def delete_job(api: Any, namespace: str, name: str) -> None:
    from kubernetes import client

    from bert_trainer import contract

    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        contract.API_GROUP, contract.API_VERSION, namespace, contract.PLURAL, name
    )


def api_floor(api: Any, kubeconfig: str, count: int) -> float:
    """Seconds for ``count`` bare Job creates at once, from ``CLIENT_THREADS`` threads.

    The same-run baseline for the operator's latency: any controller needs at
    least one API write per training Job, and this is how long ``count`` of
    them take on this stack. The Jobs are suspended (no pods) and live in a
    namespace the operator does not watch.
    """
    from kubernetes import client

    namespace = f"floor-{uuid.uuid4().hex[:6]}"
    kubectl(kubeconfig, "create", "namespace", namespace)
    batch = client.BatchV1Api(api)

    def create(i: int) -> float:
        body = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"floor-{i:04d}"},
            "spec": {
                "suspend": True,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "busybox"}],
                    }
                },
            },
        }
        batch.create_namespaced_job(namespace, body)
        return time.perf_counter()

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        done = list(pool.map(create, range(count)))
    return percentile([t - started for t in done], 99)


# --------------------------------------------------------------------------- measurement


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Counts:
    """Cumulative counters of the operator; differences describe a phase."""

    reconciles: float
    reconcile_seconds: float
    requests: float
    errors: float
    cpu_seconds: float
    calls: dict[str, float] = field(default_factory=dict)
    """API requests by ``verb resource``."""

    def minus(self, other: Counts) -> Counts:
        return Counts(
            self.reconciles - other.reconciles,
            self.reconcile_seconds - other.reconcile_seconds,
            self.requests - other.requests,
            self.errors - other.errors,
            self.cpu_seconds - other.cpu_seconds,
            {
                key: value - other.calls.get(key, 0.0)
                for key, value in self.calls.items()
                if value - other.calls.get(key, 0.0)
            },
        )

    def describe_calls(self) -> str:
        ordered = sorted(self.calls.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{key} {value:.0f}" for key, value in ordered) or "none"

    def describe(self) -> str:
        if not self.reconciles:
            return f"no reconciles, {self.requests:.0f} API requests"
        each = 1000 * self.reconcile_seconds / self.reconciles
        return (
            f"{self.reconciles:.0f} reconciles ({each:.0f} ms each on average), "
            f"{self.requests:.0f} API requests "
            f"({self.requests / self.reconciles:.2f} per reconcile), {self.errors:.0f} failed, "
            f"operator CPU {self.cpu_seconds:.1f}s "
            f"({1000 * self.cpu_seconds / self.reconciles:.0f} ms per reconcile)"
        )


def counts(operator: Operator) -> Counts:
    samples = operator.metrics()
    calls: dict[str, float] = {}
    for key, value in samples.items():
        if key.startswith(REQUESTS_METRIC + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
            calls[f"{labels.get('verb')} {labels.get('resource')}"] = value
    return Counts(
        reconciles=samples.get("bpj_reconcile_seconds_count", 0.0),
        reconcile_seconds=samples.get("bpj_reconcile_seconds_sum", 0.0),
        requests=sum(calls.values()),
        errors=samples.get("bpj_reconcile_errors_total", 0.0),
        cpu_seconds=operator.cpu_seconds(),
        calls=calls,
    )


def wait_until_idle(operator: Operator, timeout: float) -> bool:
    """Until the work queue is empty and no reconcile ran for two seconds; False on timeout."""
    deadline = time.monotonic() + timeout
    last = -1.0
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        samples = operator.metrics()
        done = samples.get("bpj_reconcile_seconds_count", 0.0)
        if done != last or samples.get("bpj_workqueue_depth", 0.0) > 0:
            last, quiet_since = done, time.monotonic()
        elif time.monotonic() - quiet_since >= 2.0:
            return True
        time.sleep(0.25)
    print(f"(the operator was still busy after {timeout:.0f}s)", flush=True)
    return False


def _sample_memory(operator: Operator, stop: threading.Event, peak: list[float]) -> None:
    while not stop.wait(0.5):
        try:
            peak[0] = max(peak[0], operator.memory().get("VmRSS", 0.0))
        except OSError:
            return


def benchmark(
    work: Path, burst: int, total: int, settle: float, unrelated: int, quiet: float
) -> tuple[float, float]:
    from bert_pretrain_operator.render import names
    from bpj_devstack import kwok_config, plane
    from bpj_devstack.kwok_pods import PodAnnotator

    started = time.perf_counter()
    # Pods that get the one v4 node run for an hour: nothing finishes during the run.
    state = plane.up(work / "stack", pod_run_for="60m")
    print(f"stack up in {time.perf_counter() - started:.0f}s", flush=True)
    try:
        install_crd(state.kubeconfig)
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        create_namespace(state.kubeconfig, namespace)
        bucket = create_bucket(state.gcs_endpoint)
        watch = ChildJobWatch(state.kubeconfig, namespace)
        watch.start()
        api = api_client(state.kubeconfig)
        # Every job's KWOK check pod ends at once, reporting the vocab's size as the
        # real check does (other pods run for the stack's hour).
        check_pods = PodAnnotator(api)
        check_pods.annotate(
            namespace,
            f"{names.LABEL_STAGE}={names.STAGE_CHECK}",
            {
                kwok_config.RUN_FOR: "0s",
                kwok_config.EXIT_MESSAGE: json.dumps({"vocabSize": len(VOCAB)}),
            },
        )
        floor = api_floor(api, state.kubeconfig, burst)
        print(
            f"API floor: {burst} bare Job creates at once from {CLIENT_THREADS} threads: "
            f"p99 done {floor:.2f}s after the first was sent",
            flush=True,
        )
        try:
            with run_operator(state.env(), namespace, work / "operator.log") as operator:
                return _measure(
                    operator, api, watch, namespace, bucket, burst, total, settle, unrelated, quiet
                )
        finally:
            check_pods.close()
            watch.stop()
    finally:
        plane.down(work / "stack")


def _measure(
    operator: Operator,
    api: Any,
    watch: ChildJobWatch,
    namespace: str,
    bucket: str,
    burst: int,
    total: int,
    settle: float,
    unrelated: int,
    quiet: float,
) -> tuple[float, float]:
    stop_sampling = threading.Event()
    rss_peak = [0.0]
    threading.Thread(
        target=_sample_memory, args=(operator, stop_sampling, rss_peak), daemon=True
    ).start()
    print(f"operator started: RSS {operator.memory()['VmRSS']:.1f} MB", flush=True)
    # One job first: the operator's watches are established and its code paths warm,
    # as in a long-running deployment. It is deleted before the measured burst.
    before = counts(operator)
    create_jobs(api, namespace, bucket, ["warm-up"])
    wait_for(lambda: "warm-up" in watch.seen, 120, "the warm-up job's training Job")
    wait_until_idle(operator, 60)
    one_job = counts(operator).minus(before)
    delete_job(api, namespace, "warm-up")
    wait_until_idle(operator, 60)
    idle = counts(operator)
    print(
        f"warm-up job: training Job {watch.seen['warm-up'] - watch.started:.1f}s after start; "
        f"a new job alone: {one_job.describe()}; RSS {operator.memory()['VmRSS']:.1f} MB",
        flush=True,
    )
    print(f"  its API requests: {one_job.describe_calls()}", flush=True)

    # Phase 1: a burst of new jobs.
    names = [f"bench-{i:04d}" for i in range(total)]
    created = create_jobs(api, namespace, bucket, names[:burst])
    spent = max(c.stored for c in created) - min(c.sent for c in created)
    print(
        f"created {burst} jobs in {spent:.2f}s from {CLIENT_THREADS} threads",
        flush=True,
    )
    wait_for(lambda: all(c.name in watch.seen for c in created), 180, "the burst's training Jobs")
    # The operator's two reactions, and the whole path with the check pod's run between.
    legs = {
        "create -> check Job": [watch.checks[c.name] - c.stored for c in created],
        "check Job complete -> training Job": [
            watch.seen[c.name] - watch.checked[c.name] for c in created
        ],
        "create -> training Job": [watch.seen[c.name] - c.stored for c in created],
    }
    for leg, values in legs.items():
        print(
            f"{leg}, {burst} jobs at once: p50 {percentile(values, 50):.3f}s, "
            f"p99 {percentile(values, 99):.3f}s, max {max(values):.3f}s",
            flush=True,
        )
    sent = [watch.checks[c.name] - c.sent for c in created]
    print(
        f"  create -> check Job from the request being sent: p50 {percentile(sent, 50):.3f}s, "
        f"p99 {percentile(sent, 99):.3f}s",
        flush=True,
    )
    p99 = max(percentile(legs[leg], 99) for leg in list(legs)[:2])
    wait_until_idle(operator, 120)
    after_burst = counts(operator)
    burst_counts = after_burst.minus(idle)
    print(f"burst: {burst_counts.describe()}", flush=True)
    print(f"  its API requests: {burst_counts.describe_calls()}", flush=True)

    # Phase 2: fill up to `total` jobs.
    more = names[burst:]
    started = time.perf_counter()
    create_jobs(api, namespace, bucket, more)
    wait_for(lambda: all(n in watch.seen for n in names), 600, "every training Job")
    print(
        f"{len(more)} more jobs: all {total} training Jobs exist "
        f"{time.perf_counter() - started:.1f}s after the first create",
        flush=True,
    )
    after_fill = counts(operator)
    fill_counts = after_fill.minus(after_burst)
    print(f"fill: {fill_counts.describe()}", flush=True)
    print(f"  its API requests: {fill_counts.describe_calls()}", flush=True)

    # Phase 3: every job present, for `settle` seconds (at least one full resync).
    # With this many jobs the periodic resync alone may keep the operator busy, so
    # this window is timed rather than waited out until idle.
    time.sleep(settle)
    steady = counts(operator).minus(after_fill)
    print(f"{settle:.0f}s with {total} jobs present: {steady.describe()}", flush=True)
    print(f"  its API requests: {steady.describe_calls()}", flush=True)
    stop_sampling.set()
    memory = operator.memory()
    print(
        f"operator memory with {total} jobs: peak (VmHWM) {memory['VmHWM']:.1f} MB, "
        f"now (VmRSS) {memory['VmRSS']:.1f} MB, highest sampled RSS {rss_peak[0]:.1f} MB",
        flush=True,
    )
    shared_cluster(operator, api, namespace, names, unrelated, quiet)
    overall = counts(operator).minus(idle)
    print(f"overall: {overall.describe()}", flush=True)
    phases = {
        key.split('"')[1]: value
        for key, value in operator.metrics().items()
        if key.startswith("bpj_jobs{") and value
    }
    print(f"jobs by phase: {phases}", flush=True)
    return p99, operator.memory()["VmHWM"]  # the whole run's peak, shared cluster included


def finish_jobs(api: Any, namespace: str, names: Sequence[str]) -> None:
    """Mark the jobs Succeeded, as the operator would have (status written as the admin)."""
    from kubernetes import client

    from bert_trainer import contract

    custom = client.CustomObjectsApi(api)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = {"status": {"phase": "Succeeded", "completionTime": now}}

    def finish(name: str) -> None:
        custom.patch_namespaced_custom_object_status(
            contract.API_GROUP, contract.API_VERSION, namespace, contract.PLURAL, name, body
        )

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(finish, names))


def create_unrelated_pods(api: Any, namespace: str, count: int) -> None:
    """``count`` pods of no job in the watched namespace, for KWOK's CPU nodes (or Pending)."""
    from kubernetes import client

    core = client.CoreV1Api(api)

    def create(i: int) -> None:
        core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"unrelated-{i:05d}", "labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "web", "image": "registry.example/web:1"}],
                },
            },
        )

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(create, range(count)))


def _watch_events(samples: dict[str, float], *, ours: bool) -> float:
    """``bpj_watch_events_total`` summed over resources, for children of ours or not."""
    label = f'ours="{"true" if ours else "false"}"'
    return sum(
        value
        for key, value in samples.items()
        if key.startswith("bpj_watch_events_total{") and label in key
    )


def shared_cluster(
    operator: Operator,
    api: Any,
    namespace: str,
    names: Sequence[str],
    unrelated: int,
    quiet: float,
) -> None:
    """Phase 4: every job finished, and ``unrelated`` pods of no job beside them.

    What a platform team's cluster looks like between runs. The targets: API requests
    that follow the active jobs (none here, so a handful per minute at most) and no
    event of an unrelated pod reaching the operator (``bpj_watch_events_total``).
    """
    started = time.perf_counter()
    finish_jobs(api, namespace, names)
    create_unrelated_pods(api, namespace, unrelated)
    print(
        f"shared cluster: {len(names)} jobs marked Succeeded and {unrelated} unrelated pods "
        f"created in {time.perf_counter() - started:.0f}s",
        flush=True,
    )
    wait_for(
        lambda: operator.metrics().get('bpj_jobs{phase="Succeeded"}', 0.0) >= len(names),
        300,
        "the operator to see every job finished",
    )
    wait_until_idle(operator, 120)
    before, events_before = counts(operator), operator.metrics()
    time.sleep(quiet)  # the window is timed: what happens in it is the measurement
    window = counts(operator).minus(before)
    events = operator.metrics()
    unrelated_events = _watch_events(events, ours=False) - _watch_events(events_before, ours=False)
    ours_events = _watch_events(events, ours=True) - _watch_events(events_before, ours=True)
    per_minute = 60 * window.requests / quiet
    print(
        f"{quiet:.0f}s with 0 active jobs, {len(names)} finished and {unrelated} unrelated "
        f"pods: {window.describe()}; {per_minute:.1f} API requests per minute; child watch "
        f"events {ours_events:.0f} of ours, {unrelated_events:.0f} unrelated",
        flush=True,
    )
    print(f"  its API requests: {window.describe_calls()}", flush=True)
    total_unrelated = _watch_events(events, ours=False)
    print(f"unrelated pod events that reached the operator, whole run: {total_unrelated:.0f}")
    memory = operator.memory()
    print(
        f"operator memory in the shared cluster: peak (VmHWM) {memory['VmHWM']:.1f} MB, "
        f"now (VmRSS) {memory['VmRSS']:.1f} MB",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=200, help="jobs created at once")
    parser.add_argument("--total", type=int, default=1000, help="jobs present for the RSS figure")
    parser.add_argument(
        "--settle",
        type=float,
        default=35.0,
        help="seconds to wait with every job present (at least one 30 s resync)",
    )
    parser.add_argument(
        "--unrelated", type=int, default=5000, help="pods of no job, for the shared-cluster phase"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=120.0,
        help="seconds of the shared-cluster phase's window (several 30 s resyncs)",
    )
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-operator-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        p99, rss = benchmark(
            work,
            args.burst,
            max(args.total, args.burst),
            args.settle,
            args.unrelated,
            args.quiet,
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"RATIO operator_scale p99 {p99 / TARGET_P99_SECONDS:.2f}x of "
        f"{TARGET_P99_SECONDS:.0f} s ({p99:.2f} s), peak RSS {rss / TARGET_RSS_MB:.2f}x of "
        f"{TARGET_RSS_MB:.0f} MB ({rss:.0f} MB) (targets < 1x)",
        flush=True,
    )


if __name__ == "__main__":
    main()
