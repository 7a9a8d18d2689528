"""Training on CPU with real TensorFlow: loss, checkpoints, resume, SIGTERM, reports."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bert_trainer import contract
from bert_trainer.config import TrainConfig
from tests.trainer.helpers import (
    PREDICTIONS,
    SEQ_LENGTH,
    TINY,
    config_json,
    run_in_fresh_process,
    train_config,
    write_records,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


class ListSink:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, progress: Any) -> None:
        self.sent.append(dict(progress))


def checkpoint_values(prefix: str) -> dict[str, int]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {
        "step": int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")),
        "iterations": int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")),
    }


def checkpoint_steps(directory: Path) -> list[int]:
    return sorted(
        int(p.name[len("ckpt-") : -len(".index")]) for p in directory.glob("ckpt-*.index")
    )


def keep_only_checkpoint(source: Path, target: Path, step: int) -> None:
    """``target`` holds ``source``'s checkpoint ``step`` alone, as the latest."""
    target.mkdir(parents=True)
    for path in source.glob(f"ckpt-{step}.*"):
        shutil.copy(path, target / path.name)
    (target / "checkpoint").write_text(
        f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n'
    )


def assert_same_checkpoint(want_prefix: Path, got_prefix: Path) -> None:
    """The two checkpoints hold the same model and optimizer values (within 1e-6)."""
    import tensorflow as tf

    want = tf.train.load_checkpoint(str(want_prefix))
    got = tf.train.load_checkpoint(str(got_prefix))
    names = [n for n in want.get_variable_to_shape_map() if "model/" in n or "optimizer/" in n]
    assert names
    for name in names:
        np.testing.assert_allclose(
            got.get_tensor(name), want.get_tensor(name), atol=1e-6, err_msg=name
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, ListSink]:
    """40 steps of the tiny model, checkpointed every 20, reporting to a list."""
    from bert_trainer.train.run import train

    tmp_path = tmp_path_factory.mktemp("trained")
    sink = ListSink()
    result = train(train_config(tmp_path), progress_sink=sink)
    return tmp_path, result, sink


@pytest.mark.tensorflow
def test_training_lowers_the_loss(trained: tuple[Path, Any, ListSink]) -> None:
    _, result, sink = trained
    losses = [report["loss"] for report in sink.sent]

    assert result.first_step == 0
    assert result.final_step == 40
    # The first report covers step 1 only; the last, the steps since the previous report.
    assert losses[-1] < losses[0] - 0.4
    assert result.metrics.mlm_accuracy > 0.1  # the most frequent word alone gets ~20%
    assert result.examples_per_second > 0
    assert 0 <= result.input_wait_fraction < 1


@pytest.mark.tensorflow
def test_bfloat16_precision_trains_and_checkpoints_on_cpu(tmp_path: Path) -> None:
    """``precision: bfloat16`` (the TPU's mixed policy) runs the same loop, here on CPU."""
    import math

    from bert_trainer.train.run import train

    sink = ListSink()
    settings = train_config(tmp_path, precision="bfloat16", train_steps=6, checkpoint_every_steps=3)
    result = train(settings, progress_sink=sink)
    assert result.final_step == 6
    assert all(math.isfinite(report["loss"]) for report in sink.sent)
    assert checkpoint_steps(tmp_path / "checkpoints") == [3, 6]


@pytest.mark.tensorflow
def test_training_leaves_checkpoints_with_matching_step_counters(
    trained: tuple[Path, Any, ListSink],
) -> None:
    tmp_path, result, _ = trained

    assert checkpoint_steps(tmp_path / "checkpoints") == [20, 40]
    assert result.last_checkpoint == str(tmp_path / "checkpoints" / "ckpt-40")
    assert checkpoint_values(result.last_checkpoint) == {"step": 40, "iterations": 40}


@pytest.mark.tensorflow
def test_progress_reports_carry_the_contract_fields(trained: tuple[Path, Any, ListSink]) -> None:
    tmp_path, _, sink = trained
    final = sink.sent[-1]

    assert all(tuple(report) == contract.PROGRESS_FIELDS for report in sink.sent)
    assert final["step"] == final["totalSteps"] == 40
    assert final["lastCheckpoint"] == str(tmp_path / "checkpoints" / "ckpt-40")
    assert final["lastCheckpointStep"] == 40
    assert final["examplesPerSecond"] > 0
    assert 0 <= final["mlmAccuracy"] <= 1
    assert datetime.strptime(final["updatedTime"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    ) <= datetime.now(UTC)


@pytest.mark.tensorflow
def test_summaries_are_read_by_tensorboard(trained: tuple[Path, Any, ListSink]) -> None:
    """TensorBoard's own reader (what ``tensorboard --logdir`` runs) finds every scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    tmp_path, result, _ = trained
    events = EventAccumulator(str(tmp_path / "summaries"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    expected = {
        "loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "learning_rate",
        "examples_per_second", "input_wait_fraction",
    }  # fmt: skip
    assert expected <= tags, tags
    for tag in expected:
        # The scalars plugin's own data: that is what its dashboard charts.
        assert events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars", tag
    loss = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors("loss")}
    assert max(loss) == 40
    assert loss[40] == pytest.approx(result.metrics.loss, rel=0.5)
    rates = [
        float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors("learning_rate")
    ]
    assert all(0 <= r <= 2e-3 for r in rates)


@pytest.mark.tensorflow
def test_a_finished_run_restarted_does_nothing(trained: tuple[Path, Any, ListSink]) -> None:
    from bert_trainer.train.run import train

    tmp_path, _, _ = trained
    result = train(train_config(tmp_path), progress_sink=ListSink())

    assert (result.first_step, result.final_step) == (40, 40)
    assert checkpoint_steps(tmp_path / "checkpoints") == [20, 40]


@pytest.mark.tensorflow
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(
    trained: tuple[Path, Any, ListSink], tmp_path: Path
) -> None:
    import shutil

    import tensorflow as tf

    from bert_trainer.model import build_pretrainer
    from bert_trainer.train.checkpoint import Checkpointer
    from bert_trainer.train.optimizer import make_optimizer

    source, _, _ = trained
    shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
    for data in (tmp_path / "checkpoints").glob("ckpt-40.data-*"):
        data.write_bytes(data.read_bytes()[:100])
    settings = train_config(source).train
    assert settings is not None

    model = build_pretrainer(settings.model)
    optimizer = make_optimizer(settings)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"), model, optimizer, step, keep=3)

    assert checkpointer.restore_latest() == 20
    assert int(optimizer.iterations.numpy()) == 20
    assert checkpointer.current == str(tmp_path / "checkpoints" / "ckpt-20")


class TrainerProcess:
    """``python -m bert_trainer train`` in a child process, as a pod runs it; logs read live."""

    def __init__(self, config_path: Path, termination_log: Path) -> None:
        env = dict(os.environ)
        env[contract.ENV_TERMINATION_MESSAGE_PATH] = str(termination_log)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bert_trainer", "train", "--config", str(config_path)],
            cwd=REPO_ROOT,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, fragment: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.log.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no log line with {fragment!r}; log:\n{''.join(self.log[-30:])}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def processes() -> Iterator[list[TrainerProcess]]:
    started: list[TrainerProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.mark.tensorflow
def test_sigterm_checkpoints_exits_preempted_and_the_next_attempt_finishes(
    tmp_path: Path, processes: list[TrainerProcess]
) -> None:
    from bert_trainer.train.run import train

    config = train_config(tmp_path, train_steps=120, checkpoint_every_steps=1000)
    config_path = tmp_path / "config.json"
    config_path.write_text(config_json(config))
    checkpoints = tmp_path / "checkpoints"

    termination_log = tmp_path / "termination-log"

    trainer = TrainerProcess(config_path, termination_log)
    processes.append(trainer)
    trainer.wait_for("/120 loss")
    trainer.process.send_signal(signal.SIGTERM)
    assert trainer.process.wait(timeout=120) == contract.EXIT_PREEMPTED
    trainer.wait_for("saved checkpoint")
    [preempted_at] = checkpoint_steps(checkpoints)  # no periodic checkpoint came before
    assert 0 < preempted_at < 120
    assert f"preempted (SIGTERM) at step {preempted_at}" in termination_log.read_text()
    assert checkpoint_values(str(checkpoints / f"ckpt-{preempted_at}")) == {
        "step": preempted_at,
        "iterations": preempted_at,
    }

    result = train(config, progress_sink=ListSink())

    assert result.first_step == preempted_at
    assert result.final_step == 120
    assert checkpoint_values(str(checkpoints / "ckpt-120")) == {"step": 120, "iterations": 120}


@pytest.mark.tensorflow
def test_a_run_killed_between_checkpoints_resumes_from_the_last_one(
    trained: tuple[Path, Any, ListSink], tmp_path: Path
) -> None:
    """As if the pod died after step 20's checkpoint: ckpt-40 never got written."""
    import shutil

    from bert_trainer.train.run import train

    source, _, _ = trained
    shutil.copytree(source / "records", tmp_path / "records")
    shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
    for path in (tmp_path / "checkpoints").glob("ckpt-40.*"):
        path.unlink()  # the manager's state file still names it, as after a kill mid-save

    result = train(train_config(tmp_path), progress_sink=ListSink())

    assert (result.first_step, result.final_step) == (20, 40)
    assert checkpoint_values(str(tmp_path / "checkpoints" / "ckpt-40")) == {
        "step": 40,
        "iterations": 40,
    }


@pytest.mark.tensorflow
def test_a_run_in_order_resumed_reads_on_where_it_stopped(tmp_path: Path) -> None:
    """shuffle: false, no dropout: resumed from step 4, step 8 is the uninterrupted run's."""
    import shutil

    from bert_trainer.train.run import train

    still = TINY.model_copy(update={"hidden_dropout": 0.0, "attention_dropout": 0.0})
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    write_records(whole / "records", count=256)
    shutil.copytree(whole / "records", resumed / "records")

    def config(root: Path) -> Any:
        return train_config(
            root, model=still, shuffle=False, train_steps=8, checkpoint_every_steps=4,
            warmup_steps=1,
        )  # fmt: skip

    train(config(whole), progress_sink=ListSink())
    keep_only_checkpoint(whole / "checkpoints", resumed / "checkpoints", 4)
    result = train(config(resumed), progress_sink=ListSink())
    assert (result.first_step, result.final_step) == (4, 8)
    assert_same_checkpoint(whole / "checkpoints" / "ckpt-8", resumed / "checkpoints" / "ckpt-8")


@pytest.mark.tensorflow
@pytest.mark.parametrize("masks", ["equal", "unequal"])
def test_two_replicas_train_as_one_on_the_global_batch(masks: str) -> None:
    """Gradients summed once; with unequal mask counts, the loss normalised globally."""
    out = run_in_fresh_process("tests.trainer.helpers", "two-replicas", masks)
    difference = float(out.split("max difference ")[1])
    assert difference < 1e-5


@pytest.mark.tensorflow
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_each_replica_draws_its_own_dropout_masks(dropout: float) -> None:
    """Two replicas, the same examples: their losses differ by the masks alone."""
    out = run_in_fresh_process("tests.trainer.helpers", "replica-losses", str(dropout))
    first, second = json.loads(out.split("losses ")[1])
    if dropout:
        assert first != second  # one mirrored seed state used to give both the same masks
    else:
        assert first == pytest.approx(second, abs=1e-6)


@pytest.mark.tensorflow
def test_records_of_another_shape_are_an_input_error(tmp_path: Path) -> None:
    from bert_trainer.storage import InputError
    from bert_trainer.train.data import RecordShape, list_records

    pattern = write_records(tmp_path / "records", count=4, shards=1)

    assert list_records(pattern, RecordShape(SEQ_LENGTH, PREDICTIONS))
    with pytest.raises(InputError, match="input_ids has 32 values, expected 64"):
        list_records(pattern, RecordShape(64, PREDICTIONS))
    with pytest.raises(InputError, match="no TFRecord files match"):
        list_records(str(tmp_path / "none-*.tfrecord"), RecordShape(SEQ_LENGTH, PREDICTIONS))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.tfrecord").write_bytes(b"")
    with pytest.raises(InputError, match="hold no records"):
        list_records(str(tmp_path / "empty" / "*.tfrecord"), RecordShape(SEQ_LENGTH, PREDICTIONS))


@pytest.mark.tensorflow
def test_batches_have_fixed_shapes_and_model_names(tmp_path: Path) -> None:
    from bert_trainer.train.data import RecordShape, make_dataset

    pattern = write_records(tmp_path / "records", count=10, shards=3)
    files = sorted(str(p) for p in (tmp_path / "records").glob("*.tfrecord"))
    dataset = make_dataset(files, RecordShape(SEQ_LENGTH, PREDICTIONS), batch_size=4, seed=1)
    features, labels = next(iter(dataset))

    assert pattern.endswith("*.tfrecord")
    assert {k: tuple(v.shape) for k, v in dataset.element_spec[0].items()} == {
        "token_ids": (4, SEQ_LENGTH),
        "segment_ids": (4, SEQ_LENGTH),
        "padding_mask": (4, SEQ_LENGTH),
        "mask_positions": (4, PREDICTIONS),
    }
    assert tuple(dataset.element_spec[1]["next_sentence_labels"].shape) == (4,)
    assert features["token_ids"].dtype.name == "int32"
    assert labels["masked_lm_weights"].dtype.name == "float32"
    assert int(features["token_ids"][0, 0]) == 2  # [CLS]


@pytest.mark.tensorflow
def test_config_errors_are_input_errors(tmp_path: Path) -> None:
    from bert_trainer.storage import InputError
    from bert_trainer.train.run import run_train

    too_long = train_config(tmp_path, max_seq_length=128)
    with pytest.raises(InputError, match="exceeds the model's maxPositionEmbeddings 64"):
        run_train(too_long)
    with pytest.raises(InputError, match="no 'train' section"):
        run_train(too_long.model_copy(update={"train": None}))


@pytest.mark.tensorflow
def test_learning_rate_is_google_research_berts_schedule() -> None:
    from bert_trainer.train.optimizer import WarmupLinearDecay

    def google(step: int, peak: float, warmup: int, total: int) -> float:
        # optimization.py: polynomial_decay(power=1) over all steps, warm-up before W.
        decayed = peak * (1 - min(step, total) / total)
        return peak * step / warmup if step < warmup else decayed

    schedule = WarmupLinearDecay(peak=1.0, warmup_steps=10, total_steps=110)
    steps = (0, 5, 9, 10, 11, 60, 109, 110, 200)
    assert [float(schedule(s)) for s in steps] == pytest.approx(
        [google(s, 1.0, 10, 110) for s in steps]
    )
    # Google's drop at the end of warm-up, kept: from the peak to (T - W) / T of it.
    assert float(schedule(10)) == pytest.approx(100 / 110)
    assert WarmupLinearDecay.from_config(schedule.get_config()).total_steps == 110


@pytest.mark.tensorflow
def test_weight_decay_skips_biases_and_layer_norms(tmp_path: Path) -> None:
    from bert_trainer.model import build_pretrainer
    from bert_trainer.train.optimizer import make_optimizer

    settings = train_config(tmp_path, optimizer="lamb").train
    assert isinstance(settings, TrainConfig)
    optimizer = make_optimizer(settings)
    decayed = {
        w.path for w in build_pretrainer(settings.model).weights if optimizer._use_weight_decay(w)
    }

    assert "transformer_layer_0/feedforward_output_dense/kernel" in decayed
    assert "token_embedding/embeddings" in decayed
    assert not any(p.endswith(("bias", "gamma", "beta")) for p in decayed)
    assert type(optimizer).__name__ == "Lamb"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(step: int) -> Any:
    from bert_trainer.train.progress import Progress

    return Progress(step=step, total_steps=100, loss=float("nan"), eta_seconds=12.6)


def test_reporter_rate_limits_and_sends_the_newest_report() -> None:
    from bert_trainer.train.progress import ProgressReporter

    sent = threading.Event()

    class Sink(ListSink):
        def send(self, progress: Any) -> None:
            super().send(progress)
            sent.set()

    consulted = threading.Event()

    class WatchedClock(FakeClock):
        """Signals each reading: the reporter reads the clock to decide if a report is due."""

        watching = False

        def __call__(self) -> float:
            if self.watching:
                consulted.set()
            return super().__call__()

    sink = Sink()
    clock = WatchedClock()
    reporter = ProgressReporter(sink, min_interval_seconds=3600, clock=clock)
    reporter.report(report(1))
    assert sent.wait(5)
    clock.watching = True
    reporter.report(report(2))
    reporter.report(report(3))
    # The reporter thread has looked at a pending report (2 or 3) and, the clock being
    # frozen, must hold it. Had it taken it to send instead, the report(4) below could
    # not replace it, and it would show up in the final list.
    assert consulted.wait(5)
    assert [r["step"] for r in sink.sent] == [1]  # 2 and 3 wait for the interval
    sent.clear()
    reporter.report(report(4), force=True)
    assert sent.wait(5)
    reporter.report(report(5))
    reporter.close()

    assert [r["step"] for r in sink.sent] == [1, 4, 5]  # close flushes the pending one
    assert sink.sent[0]["loss"] is None  # NaN is not JSON
    assert sink.sent[0]["etaSeconds"] == 13


def test_reporter_survives_a_failing_api(caplog: pytest.LogCaptureFixture) -> None:
    from bert_trainer.train.progress import ProgressReporter

    class Broken:
        calls = 0

        def send(self, progress: Any) -> None:
            Broken.calls += 1
            raise ConnectionError("API server unreachable")

    reporter = ProgressReporter(Broken(), min_interval_seconds=0)
    reporter.report(report(1))
    reporter.report(report(2), force=True)
    reporter.close()

    assert Broken.calls >= 1
    assert "progress report dropped" in caplog.text


def test_kubernetes_sink_merge_patches_the_status_subresource() -> None:
    from bert_trainer.config import JobRef
    from bert_trainer.train.progress import KubernetesStatusSink

    calls: list[dict[str, Any]] = []

    class Api:
        def patch_namespaced_custom_object_status(self, **kwargs: Any) -> None:
            calls.append(kwargs)

    sink = KubernetesStatusSink(JobRef(namespace="ml", name="bert-small"))
    sink._api = Api()
    sink.send({"step": 3})

    assert calls[0]["group"] == contract.API_GROUP
    assert calls[0]["version"] == contract.API_VERSION
    assert calls[0]["plural"] == contract.PLURAL
    assert (calls[0]["namespace"], calls[0]["name"]) == ("ml", "bert-small")
    assert calls[0]["body"] == {"status": {"progress": {"step": 3}}}


def test_only_worker_zero_of_a_reporting_job_reports() -> None:
    from bert_trainer.config import JobRef
    from bert_trainer.train.progress import make_reporter

    job = JobRef(namespace="ml", name="bert-small")

    assert make_reporter(None, is_chief=True) is None
    assert make_reporter(job, is_chief=False) is None
    assert make_reporter(job.model_copy(update={"report_progress": False}), is_chief=True) is None
    reporter = make_reporter(job, is_chief=True)
    assert reporter is not None
    reporter.close()


def test_placement_comes_from_tpu_device_files_not_env() -> None:
    from bert_trainer.train.strategy import detect_placement

    def no_devices(pattern: str) -> list[str]:
        return []

    def v4_devices(pattern: str) -> list[str]:
        return ["/dev/accel0", "/dev/accel1"] if pattern == "/dev/accel*" else []

    cpu_pod = detect_placement({"TPU_WORKER_ID": "2", "TPU_WORKER_HOSTNAMES": "a,b"}, no_devices)
    tpu_host = detect_placement({"TPU_WORKER_ID": "0"}, v4_devices)

    assert (cpu_pod.on_tpu, cpu_pod.worker_id, cpu_pod.is_chief) == (False, 2, False)
    assert (tpu_host.on_tpu, tpu_host.is_chief) == (True, True)
    assert detect_placement({}, no_devices).is_chief
