"""``bert_trainer.retry`` and its callers, with storage errors injected (no emulator needed).

The real outage, on fake-gcs-server, is ``tests/reliability/test_gcs_outage.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from bert_trainer import contract, retry
from bert_trainer.model import STATISTICS
from bert_trainer.storage import InputError

GAVE_UP = (
    "Graph execution error:\n\nDetected at node while/IteratorGetNext defined at (most recent "
    'call last):\n  File "/x/run.py", line 11, in <module>\n\n  File "/x/step.py", line 7, in f'
    "\n\nAll 3 retry attempts failed. The last failure: Error executing an HTTP request: "
    "libcurl code 7 meaning 'Could not connect to server'\n\t when reading "
    "gs://bucket/records/part-00000.tfrecord\n\t [[{{node while/IteratorGetNext}}]] "
    "[Op:__inference_f_72]"
)
"""What TensorFlow raised (as AbortedError) reading records with the endpoint gone."""


def aborted(message: str = GAVE_UP) -> Exception:
    error: Exception = tf.errors.AbortedError(None, None, message)
    return error


class FakeTime:
    """A clock that only moves when slept on (plus ``call_seconds`` per call)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """Fails with ``errors`` in turn (each taking ``seconds`` of fake time), then returns 42."""

    def __init__(self, time: FakeTime, errors: list[Exception], seconds: float = 3.0) -> None:
        self.time = time
        self.errors = list(errors)
        self.seconds = seconds
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.errors:
            self.time.now += self.seconds
            raise self.errors.pop(0)
        return 42


def test_transient_errors_are_retried_with_growing_jittered_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = FakeTime()
    fn = Flaky(time, [aborted()] * 7)
    with caplog.at_level(logging.WARNING, "bert_trainer.retry"):
        result = retry.retry_transient(
            fn,
            what="saving checkpoint gs://b/ckpt-100",
            budget_seconds=600,
            sleep=time.sleep,
            clock=time.clock,
        )

    assert (result, fn.calls) == (42, 8)
    nominal = [1, 2, 4, 8, 16, 30, 30]  # doubling from FIRST_DELAY_SECONDS, capped at MAX
    assert all(n / 2 <= s <= n for s, n in zip(time.sleeps, nominal, strict=True)), time.sleeps
    failures = [r for r in caplog.records if "failed (attempt" in r.getMessage()]
    assert len(failures) == 7
    assert all("gs://b/ckpt-100" in r.getMessage() for r in failures)
    assert "when reading gs://bucket/records/part-00000.tfrecord" in failures[0].getMessage()
    recovered = caplog.records[-1]
    assert "succeeded after 7 failed attempts" in recovered.getMessage()
    assert recovered.storage_outage_seconds == pytest.approx(time.now, abs=0.1)  # type: ignore[attr-defined]


def test_the_budget_bounds_the_outage_then_exits_20_naming_the_operation() -> None:
    time = FakeTime()
    fn = Flaky(time, [tf.errors.UnavailableError(None, None, "503 from GCS")] * 1000)
    with pytest.raises(retry.StorageUnavailable) as raised:
        retry.retry_transient(
            fn, what="saving checkpoint gs://b/ckpt-7", budget_seconds=60, sleep=time.sleep,
            clock=time.clock,
        )  # fmt: skip

    assert isinstance(raised.value, SystemExit)  # generic `except Exception` lets it through
    assert raised.value.code == contract.EXIT_INFRASTRUCTURE
    # The last retry is made at the deadline; the failure that ends it takes one call more.
    assert 60 <= time.now <= 60 + fn.seconds
    assert str(raised.value) == (
        f"storage unavailable for {time.now:.0f}s (retry budget 60s, {fn.calls} attempts) "
        "while saving checkpoint gs://b/ckpt-7: 503 from GCS"
    )


@pytest.mark.parametrize(
    "error",
    [
        tf.errors.NotFoundError(None, None, "gs://b/x not found"),
        tf.errors.PermissionDeniedError(None, None, "403"),
        tf.errors.AbortedError(None, None, "Aborted: the step was cancelled"),
        ValueError("a bug"),
        InputError("bad input"),
    ],
)
def test_other_errors_are_raised_at_once(error: Exception) -> None:
    time = FakeTime()
    fn = Flaky(time, [error])
    with pytest.raises(type(error)):
        retry.retry_transient(fn, what="x", budget_seconds=600, sleep=time.sleep, clock=time.clock)
    assert (fn.calls, time.sleeps) == (1, [])


def test_what_counts_as_transient() -> None:
    assert retry.is_transient(tf.errors.UnavailableError(None, None, "x"))
    assert retry.is_transient(tf.errors.DeadlineExceededError(None, None, "x"))
    assert retry.is_transient(aborted())  # TensorFlow's gs:// gave up after its own retries
    assert not retry.is_transient(aborted("Aborted: cancelled"))
    assert not retry.is_transient(ConnectionError("x"))


def test_describe_keeps_the_cause_and_path_of_a_graph_error() -> None:
    assert retry.describe(aborted()) == (
        "All 3 retry attempts failed. The last failure: Error executing an HTTP request: "
        "libcurl code 7 meaning 'Could not connect to server' when reading "
        "gs://bucket/records/part-00000.tfrecord"
    )
    eager = "{{function_node __wrapped__FlushSummaryWriter_device_/cpu:0}} All 3 retry attempts"
    assert retry.describe(aborted(eager)) == "All 3 retry attempts"


def test_the_budget_comes_from_the_environment() -> None:
    name = contract.ENV_STORAGE_RETRY_SECONDS
    assert retry.budget_seconds({}) == retry.DEFAULT_BUDGET_SECONDS == 600
    assert retry.budget_seconds({name: "45"}) == 45
    assert retry.budget_seconds({name: "0"}) == 0
    for bad in ("soon", "-1", "inf", "nan"):
        with pytest.raises(InputError, match=name):
            retry.budget_seconds({name: bad})


def test_a_zero_budget_fails_at_the_first_error() -> None:
    time = FakeTime()
    fn = Flaky(time, [aborted()])
    with pytest.raises(retry.StorageUnavailable):
        retry.retry_transient(fn, what="x", budget_seconds=0, sleep=time.sleep, clock=time.clock)
    assert fn.calls == 1


class FakeManager:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.saved: list[int] = []

    def save(self, checkpoint_number: int) -> str:
        if self.failures:
            self.failures -= 1
            raise aborted()
        self.saved.append(checkpoint_number)
        return f"/ckpt/ckpt-{checkpoint_number}"


def test_a_checkpoint_save_is_retried_through_an_outage(tmp_path: Path) -> None:
    from bert_trainer.train.checkpoint import Checkpointer

    step = tf.Variable(30, dtype=tf.int64)
    checkpointer = Checkpointer(
        str(tmp_path), tf.Variable(1.0), tf.Variable(2.0), step, keep=3, retry_seconds=30
    )
    checkpointer.manager = FakeManager(failures=2)  # type: ignore[assignment]

    assert checkpointer.save() == "/ckpt/ckpt-30"
    assert checkpointer.manager.saved == [30]  # type: ignore[attr-defined]
    assert checkpointer.current == "/ckpt/ckpt-30"

    checkpointer.manager = FakeManager(failures=1000)  # type: ignore[assignment]
    checkpointer.retry_seconds = 0.5
    with pytest.raises(retry.StorageUnavailable, match=f"saving checkpoint {tmp_path}/ckpt-30"):
        checkpointer.save()


def test_a_storage_error_while_restoring_is_not_taken_for_a_corrupt_checkpoint(
    tmp_path: Path,
) -> None:
    """Before, GCS's AbortedError made every checkpoint "corrupt": exit 10, the job failed."""
    from bert_trainer.train.checkpoint import _restore_newest

    (tmp_path / "ckpt-20.index").write_bytes(b"")

    class Unreachable:
        def restore(self, path: str) -> Any:
            raise aborted()

    with pytest.raises(tf.errors.AbortedError):
        _restore_newest(Unreachable(), str(tmp_path), [], partial=False)  # type: ignore[arg-type]


class FakeStep:
    def __init__(self) -> None:
        self.value = 0

    def numpy(self) -> int:
        return self.value


class FakeSaver:
    def __init__(self, step: FakeStep) -> None:
        self.step = step
        self.current: str | None = None
        self.saved: list[int] = []

    def save(self) -> str:
        self.saved.append(self.step.value)
        self.current = f"ckpt-{self.step.value}"
        return self.current


def _loop(train: Any, step: FakeStep, saver: FakeSaver, *, first_call_steps: int) -> Any:
    """A loop of 30 steps, a checkpoint every 10, around the fakes."""
    from bert_trainer.train.loop import LoopSettings, TrainLoop

    settings = LoopSettings(
        train_steps=30,
        checkpoint_every_steps=10,
        global_batch_size=8,
        first_call_steps=first_call_steps,
        storage_retry_seconds=30,
    )
    return TrainLoop(train, iter(()), step, saver, settings)


class FailingInput:
    """A train function whose call fails once it has trained each step in ``fail_after``.

    Like the compiled loop: the steps before the failing read are trained and
    counted, and the error discards the call's statistics. The graph loop runs
    iterations ahead, so a call may even fail after its last step (seen on
    the emulator: the retry then had nothing left to run).
    """

    def __init__(self, step: FakeStep, fail_after: list[int]) -> None:
        self.step = step
        self.fail_after = list(fail_after)
        self.trained: list[int] = []
        self.calls: list[int] = []

    def __call__(self, iterator: Any, num_steps: Any) -> tuple[np.ndarray, float]:
        self.calls.append(int(num_steps))
        for _ in range(int(num_steps)):
            self.step.value += 1
            self.trained.append(self.step.value)
            if self.fail_after and self.step.value == self.fail_after[0]:
                self.fail_after.pop(0)
                raise aborted()
        sums = np.ones(len(STATISTICS), np.float32) * int(num_steps)
        return sums, 0.0


def test_the_loop_retries_failed_input_with_the_rest_of_the_same_chunk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bert_trainer.train.signals import StopFlag

    step = FakeStep()
    saver = FakeSaver(step)
    # Fails after step 3 (inside 1-10), after 14 and after 20: the chunk 11-20 was then
    # all trained by calls that failed, and its retry has nothing left to run.
    train = FailingInput(step, fail_after=[3, 14, 20])
    loop = _loop(train, step, saver, first_call_steps=10)
    with caplog.at_level(logging.INFO), StopFlag(signals=()) as flag:
        result = loop.run(flag)

    assert train.trained == list(range(1, 31))  # every step once, none lost or repeated
    assert saver.saved == [10, 20, 30]
    assert result.final_step == 30
    assert train.calls == [10, 7, 10, 6, 10]  # a retry runs the rest of its chunk only
    messages = [r.getMessage() for r in caplog.records]
    assert "step 20/30 (statistics lost with calls cut short by storage errors)" in messages
    assert not [m for m in messages if "loss 0.0000" in m]
    assert any("training steps 11-20 (reading input records) succeeded" in m for m in messages)


def test_a_clean_up_failure_does_not_hide_the_stage_exit() -> None:
    """run.py closes the summary writer in ``finally``; during the outage that fails too."""
    from bert_trainer.__main__ import _stage_exit_behind

    try:
        try:
            raise retry.StorageUnavailable("saving checkpoint gs://b/c-1", 61, 9, 60, aborted())
        finally:
            raise aborted("flush of the summary writer failed")
    except Exception as error:
        masked = _stage_exit_behind(error)

    assert masked is not None
    code, message = masked
    assert code == contract.EXIT_INFRASTRUCTURE
    assert message.startswith("storage unavailable for 61s (retry budget 60s, 9 attempts)")
    assert _stage_exit_behind(ValueError("plain")) is None


class DivergingInput:
    """A train function whose loss turns NaN at the call that reaches ``at``."""

    def __init__(self, step: FakeStep, at: int) -> None:
        self.step, self.at = step, at

    def __call__(self, iterator: Any, num_steps: Any) -> tuple[np.ndarray, float]:
        self.step.value += int(num_steps)
        sums = np.ones(len(STATISTICS), np.float32) * int(num_steps)
        if self.step.value >= self.at:
            sums[STATISTICS.index("loss")] = np.nan
        return sums, 0.0


def test_a_diverged_loss_stops_training_before_anything_is_saved() -> None:
    from bert_trainer import contract
    from bert_trainer.train.loop import Diverged
    from bert_trainer.train.signals import StopFlag

    step = FakeStep()
    saver = FakeSaver(step)
    loop = _loop(DivergingInput(step, at=15), step, saver, first_call_steps=5)
    with StopFlag(signals=()) as flag, pytest.raises(Diverged) as diverged:
        loop.run(flag)
    assert diverged.value.code == contract.EXIT_DIVERGED
    assert saver.saved == [10]  # the checkpoint before; nothing after the NaN
    message = str(diverged.value)
    assert "training diverged: the loss of steps" in message and "nan" in message
    assert "ckpt-10, is kept" in message and "learningRate" in message
