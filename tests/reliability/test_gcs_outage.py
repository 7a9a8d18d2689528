"""GCS taken away in the middle of a training run, on a fake-gcs-server of the test's own.

The trainer runs as a pod runs it (``python -m bert_trainer train`` in a child
process) with its records, checkpoints and summaries on ``gs://``, reached
through the stack's TLS proxy (``tf_gcs_env``). Mid-run the emulator process is
stopped, so every storage request gets the proxy's 502 (as from a GCS front end
with no backend), and started again on the same port and data directory.

- A short outage (``OUTAGE_SECONDS``) is ridden out: exit 0 in one attempt,
  every interval's checkpoint written with step == optimizer iterations == its
  number, the logged step never goes back (no step lost or trained twice),
  training goes on soon after GCS is back, and the summaries whose flush failed
  meanwhile reach the event file.
- An outage longer than the retry budget ends the attempt with exit 20 and a
  termination message naming the storage path, within seconds of the budget
  (no hang); the next attempt resumes from the last checkpoint.

The emulator is this module's own (``outage_gcs``), so stopping it never
disturbs the session's shared one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bert_trainer import contract
from bpj_devstack import pki, plane
from bpj_devstack.gcs_proxy import GcsTlsProxy, issue_proxy_certificate
from tests.support import wait_for
from tests.trainer.helpers import (
    config_json,
    start_trainer_process,
    train_config,
    write_records,
)

pytestmark = [pytest.mark.gcs, pytest.mark.tensorflow]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Issue 9: an outage this long must cost no step.
OUTAGE_SECONDS = 15.0
#: Once GCS is back, training goes on within this long (the save's backoff, at most
#: 8 s after a 15 s outage, or draining the input errors tf.data buffered meanwhile).
RESUME_SECONDS = 30.0
#: Retry budget of the run that must give up (its outage lasts until it exits).
SHORT_BUDGET_SECONDS = 6.0
TRAIN_STEPS = 400
EVERY = 50


class OutageGcs:
    """fake-gcs-server behind the TLS proxy, which the test can stop and start again."""

    def __init__(self, run_dir: Path) -> None:
        port = plane.free_port()
        self.state = plane.StackState(
            run_dir=str(run_dir),
            kubeconfig="",
            apiserver_url="",
            gcs_endpoint=f"http://127.0.0.1:{port}",
            ports={"gcs": port},
        )
        keys = pki.create(run_dir / "pki")
        cert, key = issue_proxy_certificate(keys)
        plane.start_gcs(self.state)
        self.proxy = GcsTlsProxy(self.state.gcs_endpoint, cert, key).start()
        self.state.gcs_proxy_url = self.proxy.url
        self.state.ca_cert = str(keys.ca_cert)

    @property
    def up(self) -> bool:
        pid = self.state.pids.get("fake-gcs-server")
        return pid is not None and plane._alive(pid)

    def stop(self) -> None:
        plane._stop("fake-gcs-server", self.state.pids.pop("fake-gcs-server"), grace=5)

    def start(self) -> None:
        plane.start_gcs(self.state)  # same port, same -filesystem-root: the data is back

    def close(self) -> None:
        self.proxy.stop()
        if self.up:
            self.stop()

    def storage_client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="bpj-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.state.gcs_endpoint},
        )


@pytest.fixture(scope="module")
def outage_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutageGcs]:
    gcs = OutageGcs(tmp_path_factory.mktemp("outage-gcs"))
    try:
        yield gcs
    finally:
        gcs.close()


@pytest.fixture
def gcs_up(outage_gcs: OutageGcs) -> Iterator[OutageGcs]:
    """The module's emulator, running at the start and again at the end of the test."""
    if not outage_gcs.up:
        outage_gcs.start()
    yield outage_gcs
    if not outage_gcs.up:
        outage_gcs.start()


@dataclass
class Trainer:
    """``python -m bert_trainer train`` against the module's emulator; stderr in a file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    message_path: Path

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):  # a line being written
                    out.append(json.loads(line))
        return out

    def logged(self, fragment: str) -> bool:
        return any(fragment in entry["message"] for entry in self.lines())

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"the trainer did not exit within {timeout:.0f}s:\n{self.tail()}"
            ) from None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_trainer(
    gcs: OutageGcs, tmp_path: Path, bucket: str, name: str, shuffle: bool = True, **env: str
) -> Trainer:
    """A trainer over ``bucket``; ``shuffle=False`` streams records from GCS (no 10k buffer)."""
    config = train_config(
        tmp_path,
        tfrecords=f"gs://{bucket}/records/part-*.tfrecord",
        checkpoint_dir=f"gs://{bucket}/checkpoints",
        summary_dir=f"gs://{bucket}/summaries",
        train_steps=TRAIN_STEPS,
        checkpoint_every_steps=EVERY,
        keep_checkpoints=TRAIN_STEPS // EVERY,  # keep them all, to see every interval's
    )
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(config_json(config))
    log_path = tmp_path / f"{name}.log"
    message_path = tmp_path / f"{name}.termination-log"
    process = start_trainer_process(
        config_path,
        log_path,
        message_path,
        {**gcs.state.tensorflow_env(), "CUDA_VISIBLE_DEVICES": "", **env},
    )
    return Trainer(process, log_path, message_path)


def make_bucket(gcs: OutageGcs, tmp_path: Path) -> str:
    """A fresh bucket holding the tiny model's records."""
    name = f"bpj-outage-{uuid.uuid4().hex[:8]}"
    bucket = gcs.storage_client().create_bucket(name)
    write_records(tmp_path / "records")
    for path in sorted((tmp_path / "records").glob("*.tfrecord")):
        bucket.blob(f"records/{path.name}").upload_from_filename(str(path))
    return name


def stored(gcs: OutageGcs, bucket: str) -> tuple[dict[int, tuple[int, int]], set[int]]:
    """What the run left on GCS, read in a TF process: checkpoint number -> (step, optimizer
    iterations) stored in it, and the steps with a "loss" summary in the event files."""
    script = (
        "import json, sys, tensorflow as tf\n"
        "root = f'gs://{sys.argv[1]}'\n"
        "out = {}\n"
        "for index in tf.io.gfile.glob(f'{root}/checkpoints/ckpt-*.index'):\n"
        "    prefix = index[: -len('.index')]\n"
        "    reader = tf.train.load_checkpoint(prefix)\n"
        "    out[prefix.rsplit('-', 1)[1]] = [\n"
        "        int(reader.get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE')),\n"
        "        int(reader.get_tensor('optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE')),\n"
        "    ]\n"
        "steps = []\n"
        "for events in tf.io.gfile.glob(f'{root}/summaries/events.out.tfevents.*'):\n"
        "    for record in tf.data.TFRecordDataset(events):\n"
        "        event = tf.compat.v1.Event.FromString(record.numpy())\n"
        "        steps += [event.step for v in event.summary.value if v.tag == 'loss']\n"
        "print(json.dumps([out, steps]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, bucket],
        env={**os.environ, **gcs.state.tensorflow_env(), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found, summary_steps = json.loads(result.stdout.strip().splitlines()[-1])
    saved = {int(number): (step, iterations) for number, (step, iterations) in found.items()}
    return saved, set(summary_steps)


def _log_time(entry: dict[str, Any]) -> float:
    stamp = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return stamp.timestamp()


def logged_steps(trainer: Trainer, with_metrics: bool = False) -> list[int]:
    """The steps the trainer logged reaching (``with_metrics``: those it had a loss for)."""
    steps = []
    for entry in trainer.lines():
        message = entry["message"]
        if message.startswith("step ") and f"/{TRAIN_STEPS} " in message:
            if with_metrics and " loss " not in message:
                continue
            steps.append(int(message.split()[1].split("/")[0]))
    return steps


def wait_for_first_checkpoint(trainer: Trainer, bucket: str) -> None:
    wait_for(
        lambda: (
            trainer.logged(f"saved checkpoint gs://{bucket}/checkpoints/ckpt-{EVERY}")
            or trainer.process.poll() is not None
        ),
        180,
        "the first checkpoint",
    )
    assert trainer.process.poll() is None, f"the trainer ended early:\n{trainer.tail()}"


@pytest.mark.timeout(420)
def test_a_gcs_outage_mid_run_is_ridden_out_without_losing_a_step(
    gcs_up: OutageGcs, tmp_path: Path
) -> None:
    bucket = make_bucket(gcs_up, tmp_path)
    trainer = start_trainer(gcs_up, tmp_path, bucket, "outage")
    wait_for_first_checkpoint(trainer, bucket)

    gcs_up.stop()
    down_at = time.monotonic()
    time.sleep(OUTAGE_SECONDS)  # not synchronisation: the outage's length is the test's input
    assert trainer.process.poll() is None, f"the trainer gave up:\n{trainer.tail()}"
    gcs_up.start()
    outage = time.monotonic() - down_at
    back_at = time.time()
    code = trainer.wait(timeout=300)

    assert code == contract.EXIT_OK, trainer.tail()
    entries = trainer.lines()
    retries = [e for e in entries if e["logger"] == "bert_trainer.retry"]
    recovered = [e for e in retries if "succeeded after" in e["message"]]
    # The outage was felt (retries logged, naming the path), and every retried call recovered.
    assert any(f"gs://{bucket}/" in e["message"] for e in retries), retries
    assert recovered, retries
    # A checkpoint falls due during the outage; input reads fail too unless the shuffle
    # buffer carried training through (they did in every run seen).
    saves = [e for e in retries if e["message"].startswith(f"saving checkpoint gs://{bucket}/")]
    reads = [e for e in retries if "(reading input records)" in e["message"]]
    assert saves, retries
    assert not [e for e in retries if e["level"] == "error"]
    longest = max(e["storage_outage_seconds"] for e in recovered)
    assert longest >= OUTAGE_SECONDS / 3, retries
    resumed_after = max(_log_time(e) for e in recovered) - back_at
    assert resumed_after < RESUME_SECONDS, retries

    # No step lost or trained twice: one attempt, every interval's checkpoint, each
    # holding as many optimizer iterations as steps, and a step counter that only grows.
    saved, summarised = stored(gcs_up, bucket)
    assert sorted(saved) == list(range(EVERY, TRAIN_STEPS + 1, EVERY))
    assert all(step == iterations == number for number, (step, iterations) in saved.items())
    steps = logged_steps(trainer)
    assert steps == sorted(set(steps)), steps
    assert steps[-1] == TRAIN_STEPS
    # Summaries whose flush failed during the outage were uploaded by a later flush.
    with_metrics = logged_steps(trainer, with_metrics=True)
    assert set(with_metrics) <= summarised, sorted(set(with_metrics) - summarised)
    starts = [e for e in entries if e["message"].startswith("training from step")]
    assert [e["message"] for e in starts] == [f"training from step 0 to {TRAIN_STEPS}"]
    print(
        f"\nGCS down {outage:.1f}s; {len(retries) - len(recovered)} failed storage calls "
        f"retried ({len(saves)} checkpoint, {len(reads)} input log lines); longest failing "
        f"call {longest:.1f}s; training went on {resumed_after:.1f}s "
        f"after GCS was back; final step {steps[-1]}; checkpoints "
        f"{len(saved)}/{TRAIN_STEPS // EVERY}; steps lost 0"
    )


@pytest.mark.timeout(420)
def test_an_outage_longer_than_the_budget_exits_20_naming_the_path(
    gcs_up: OutageGcs, tmp_path: Path
) -> None:
    bucket = make_bucket(gcs_up, tmp_path)
    trainer = start_trainer(
        gcs_up,
        tmp_path,
        bucket,
        "give-up",
        shuffle=False,
        **{contract.ENV_STORAGE_RETRY_SECONDS: str(SHORT_BUDGET_SECONDS)},
    )
    wait_for_first_checkpoint(trainer, bucket)

    gcs_up.stop()
    down_at = time.monotonic()
    code = trainer.wait(timeout=120)
    seconds_to_exit = time.monotonic() - down_at
    gcs_up.start()

    assert code == contract.EXIT_INFRASTRUCTURE, trainer.tail()
    message = trainer.message_path.read_text()
    assert message.startswith("train: storage unavailable for "), message
    assert f"retry budget {SHORT_BUDGET_SECONDS:.0f}s" in message
    assert f"gs://{bucket}/" in message
    assert "retry attempts failed" in message  # TensorFlow's own cause, not a clean-up error
    # Bounded: the budget, the call in flight (TensorFlow's own retries take ~3 s with
    # tf_gcs_env) and closing the summary writer; the exit skips TensorFlow's teardown.
    assert seconds_to_exit < SHORT_BUDGET_SECONDS + 20, seconds_to_exit

    # The next attempt resumes from the last checkpoint written before the outage.
    saved = [
        int(e["message"].rsplit("-", 1)[1])
        for e in trainer.lines()
        if e["message"].startswith(f"saved checkpoint gs://{bucket}/")
    ]
    resumed = start_trainer(gcs_up, tmp_path, bucket, "next-attempt", shuffle=False)
    assert resumed.wait(timeout=300) == contract.EXIT_OK, resumed.tail()
    saved_before = max(saved)
    assert resumed.logged(f"training from step {saved_before} to {TRAIN_STEPS}"), resumed.tail()
    lost = max(logged_steps(trainer)) - saved_before
    assert 0 <= lost <= EVERY
    print(
        f"\nbudget {SHORT_BUDGET_SECONDS:.0f}s: exit {code} {seconds_to_exit:.1f}s after GCS "
        f"went down; next attempt resumed at {saved_before}, steps lost {lost}; "
        f"message: {message.strip()[:200]}"
    )
