"""The host side of training: call the compiled steps, checkpoint, report, stop.

Each call of the train function runs a chunk of steps sized to take about
``target_call_seconds`` (few Python round trips, yet frequent enough for
summaries, progress and a prompt reaction to SIGTERM), never crossing a
checkpoint boundary or the last step. On a multi-host slice every host must
run the same chunks and stop at the same step, or the hosts that go on wait
forever in a collective for the one that left: an ``agree`` function makes the
hosts settle each chunk's size and the stop decision together.

Storage outages: a call whose input reads fail with a transient storage error
(``retry.is_transient``) goes on with the rest of the same chunk, from the
step it reached, within the retry budget (``retry.retry_transient``), so no
step is lost or repeated and the hosts of a slice stay in step; checkpoints are
retried by the saver. Input calls are retried every ``INPUT_RETRY_SECONDS``,
not with a growing backoff: a read that really reaches storage fails only
after the gs:// filesystem's own backoff, while tf.data's parallel stages keep
the errors met during an outage in their buffers, and once storage is back
each call pops one of those in an instant; they must drain fast.
TensorBoard summaries are best effort: a flush that fails for the same reason
is logged and skipped, and its events stay in the writer's buffer for the next
flush.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from bert_trainer import contract, retry
from bert_trainer.config import TrainConfig
from bert_trainer.model import PretrainingMetrics
from bert_trainer.train.progress import Progress, ProgressReporter
from bert_trainer.train.signals import Preempted, StopFlag
from bert_trainer.train.step import TrainFunction

log = logging.getLogger(__name__)

MAX_STEPS_PER_CALL = 1000
INPUT_RETRY_SECONDS = 0.5
"""Pause before a call whose input reads failed is made again (within the budget)."""

# TensorFlow 2.21 no longer ships TensorBoard, whose tf.summary.scalar this
# replaces: a scalar tensor tagged for TensorBoard's "scalars" plugin.
_SCALAR_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


class StepCounter(Protocol):
    """The global step: a ``tf.Variable``, or the JAX runtime's counter."""

    def numpy(self) -> Any: ...


class Saver(Protocol):
    """Writes a checkpoint of the current step; ``current`` is the last one read or written."""

    current: str | None

    def save(self) -> str: ...


Agree = Callable[[int, bool], tuple[int, bool]]
"""``(steps this host wants next, this host's stop flag) -> (steps, stop)`` for all hosts."""


class Diverged(SystemExit):
    """The loss of a call's steps was NaN or infinite: stop, with nothing saved.

    A ``SystemExit`` with ``EXIT_DIVERGED``, as ``Preempted`` is one with its code, so
    the operator fails the job (``Diverged``) instead of retrying it.
    """

    def __init__(self, first: int, last: int, loss: float, checkpoint: str | None) -> None:
        super().__init__(contract.EXIT_DIVERGED)
        self.first, self.last, self.loss, self.checkpoint = first, last, loss, checkpoint

    def __str__(self) -> str:
        kept = (
            f"the last checkpoint, {self.checkpoint}, is kept"
            if self.checkpoint
            else "no checkpoint had been saved"
        )
        return (
            f"training diverged: the loss of steps {self.first}-{self.last} is {self.loss}; "
            f"nothing of them was saved and {kept}. Lower spec.training.learningRate, "
            "lengthen warmupSteps, or check the records"
        )


@dataclass(frozen=True)
class LoopSettings:
    """How the loop paces itself; everything but the step counts has a default."""

    train_steps: int
    checkpoint_every_steps: int
    global_batch_size: int
    target_call_seconds: float = 2.0
    """Wall time one call of the train function should take once warmed up."""
    first_call_steps: int = 1
    """Steps in the first call, which also traces (and compiles) the function."""
    run_steps: int | None = None
    """The whole run's steps over every phase, for progress reports (None: train_steps)."""
    eval_every_steps: int | None = None
    """Evaluate on the held-out records every this many steps (and always at the last
    step) when the loop has an ``evaluate``; None: at the last step only."""

    @classmethod
    def of(cls, config: TrainConfig) -> LoopSettings:
        return cls(
            train_steps=config.train_steps,
            checkpoint_every_steps=config.checkpoint_every_steps,
            global_batch_size=config.global_batch_size,
            run_steps=config.run_steps,
            eval_every_steps=config.eval_every_steps,
        )

    storage_retry_seconds: float | None = None
    """Retry budget of a call whose input reads fail (None: ``retry.budget_seconds()``)."""


#: google-research/bert's names of run_pretraining.py's do_eval metrics.
EVAL_NAMES = (
    "masked_lm_accuracy",
    "masked_lm_loss",
    "next_sentence_accuracy",
    "next_sentence_loss",
)


@dataclass(frozen=True)
class EvalResult:
    """One held-out evaluation: the step it ran at and what it measured."""

    step: int
    metrics: PretrainingMetrics

    def by_name(self) -> dict[str, float]:
        """The metrics by google-research/bert's names (``EVAL_NAMES``)."""
        m = self.metrics
        return dict(
            zip(EVAL_NAMES, (m.mlm_accuracy, m.mlm_loss, m.nsp_accuracy, m.nsp_loss), strict=True)
        )

    def scalars(self) -> dict[str, float]:
        """TensorBoard's tags: ``eval/<name>``, beside the training scalars."""
        return {f"eval/{name}": value for name, value in self.by_name().items()}

    def status(self) -> dict[str, float | int]:
        """``status.progress.eval``: the step and the metrics, camelCase."""
        m = self.metrics
        return {
            "step": self.step,
            "maskedLmAccuracy": m.mlm_accuracy,
            "maskedLmLoss": m.mlm_loss,
            "nextSentenceAccuracy": m.nsp_accuracy,
            "nextSentenceLoss": m.nsp_loss,
        }


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run measured."""

    first_step: int
    final_step: int
    metrics: PretrainingMetrics | None
    """Of the last call; None when no step ran."""
    examples_per_second: float | None
    """Steady state: excludes the first call (tracing)."""
    input_wait_fraction: float | None
    """Share of steady-state wall time the loop waited for input batches."""
    last_checkpoint: str | None
    eval: EvalResult | None = None
    """The last held-out evaluation (None without eval records)."""


@dataclass
class _Throughput:
    steps: int = 0
    seconds: float = 0.0
    waited: float = 0.0


class TrainLoop:
    """Drives ``train_function`` from the current step to ``settings.train_steps``."""

    def __init__(
        self,
        train_function: TrainFunction,
        iterator: Any,
        step: StepCounter,
        checkpointer: Saver,
        settings: LoopSettings,
        reporter: ProgressReporter | None = None,
        summary_writer: Any = None,
        learning_rate: Callable[[int], float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        agree: Agree | None = None,
        evaluate: Callable[[], PretrainingMetrics] | None = None,
    ) -> None:
        self._train = train_function
        self._iterator = iterator
        self._step = step
        self._checkpointer = checkpointer
        self._settings = settings
        self._reporter = reporter
        self._writer = summary_writer
        self._learning_rate = learning_rate
        self._clock = clock
        self._agree = agree
        self._evaluate = evaluate
        self._eval: EvalResult | None = None
        self._retry_seconds = (
            retry.budget_seconds()
            if settings.storage_retry_seconds is None
            else settings.storage_retry_seconds
        )
        self._last_checkpoint = checkpointer.current
        self._last_checkpoint_step: int | None = (
            int(step.numpy()) if self._last_checkpoint else None
        )

    @property
    def step(self) -> int:
        return int(self._step.numpy())

    def run(self, stop: StopFlag) -> TrainResult:
        # (Diverged, below, ends the run without a save; Preempted saves first.)
        """Train to the last step; raises Preempted (after a checkpoint) if ``stop`` is set."""
        first_step = self.step
        steady = _Throughput()
        metrics: PretrainingMetrics | None = None
        chunk = self._settings.first_call_steps
        first_call = True
        while self.step < self._settings.train_steps:
            steps = self._steps_for_next_call(chunk)
            stopping = stop.is_set
            if self._agree is not None:
                steps, stopping = self._agree(steps, stopping)
            if stopping:
                path = self._save()
                self._report(metrics, steady, force=True)
                raise Preempted(self.step, path)
            ran, sums, waited, seconds = retry.retry_transient(
                functools.partial(self._call, self.step + steps),
                what=f"training steps {self.step + 1}-{self.step + steps} (reading input records)",
                budget_seconds=self._retry_seconds,
                first_delay_seconds=INPUT_RETRY_SECONDS,
                max_delay_seconds=INPUT_RETRY_SECONDS,
            )
            if not ran:
                self._after_lost_call(metrics, steady)
                continue
            metrics = PretrainingMetrics.from_statistics(sums.tolist())
            if not math.isfinite(metrics.loss):
                # Before anything is saved: the weights are no longer finite either, and
                # keepCheckpoints would push the last good checkpoints out.
                raise Diverged(self.step - ran + 1, self.step, metrics.loss, self._last_checkpoint)
            if not first_call:
                steady.steps += ran
                steady.seconds += seconds
                steady.waited += waited
            first_call = False
            chunk = self._next_chunk(ran, seconds)
            self._after_call(metrics, ran, seconds, waited, steady)
        if self._last_checkpoint_step != self.step:
            self._save()
        if self._evaluate is not None and (self._eval is None or self._eval.step != self.step):
            self._run_eval()
        self._report(metrics, steady, force=True)
        return TrainResult(
            first_step=first_step,
            final_step=self.step,
            metrics=metrics,
            examples_per_second=self._examples_per_second(steady),
            input_wait_fraction=steady.waited / steady.seconds if steady.seconds else None,
            last_checkpoint=self._last_checkpoint,
            eval=self._eval,
        )

    def _call(self, until: int) -> tuple[int, Any, float, float]:
        """Train up to step ``until``: steps run, statistic sums, seconds waited, seconds.

        After a call cut short by an input error, the steps it finished are
        trained and counted in ``step``; the retry runs only the rest, which
        may be nothing (0 steps, sums None).
        """
        steps = until - self.step
        if steps <= 0:
            return 0, None, 0.0, 0.0
        started = self._clock()
        sums, waited = self._train(self._iterator, tf.constant(steps, tf.int32))
        sums = np.asarray(sums)  # waits for the device
        return steps, sums, float(waited), self._clock() - started

    def _after_lost_call(self, metrics: PretrainingMetrics | None, steady: _Throughput) -> None:
        """After calls that input errors cut short trained the whole chunk between them.

        Their statistics went with the errors: no metrics, summaries or
        throughput for these steps, but the checkpoint and the report are due.
        """
        step = self.step
        log.info(
            "step %d/%d (statistics lost with calls cut short by storage errors)",
            step,
            self._settings.train_steps,
        )
        saved = step % self._settings.checkpoint_every_steps == 0
        if saved:
            self._save()
        self._report(metrics, steady, force=saved)

    def _steps_for_next_call(self, chunk: int) -> int:
        step = self.step
        every = self._settings.checkpoint_every_steps
        next_checkpoint = (step // every + 1) * every
        bound = min(chunk, next_checkpoint - step, self._settings.train_steps - step)
        if self._evaluate is not None and self._settings.eval_every_steps:
            every = self._settings.eval_every_steps
            bound = min(bound, (step // every + 1) * every - step)
        return max(1, bound)

    def _eval_due(self) -> bool:
        every = self._settings.eval_every_steps
        return self._evaluate is not None and every is not None and self.step % every == 0

    def _run_eval(self) -> None:
        """Evaluate on the held-out batches; summaries under google-research/bert's names."""
        assert self._evaluate is not None
        started = self._clock()
        metrics = self._evaluate()
        self._eval = EvalResult(self.step, metrics)
        log.info(
            "eval at step %d: masked_lm_accuracy %.4f masked_lm_loss %.4f "
            "next_sentence_accuracy %.4f next_sentence_loss %.4f (%.1f s)",
            self.step,
            metrics.mlm_accuracy,
            metrics.mlm_loss,
            metrics.nsp_accuracy,
            metrics.nsp_loss,
            self._clock() - started,
        )
        self._write_scalars(self.step, self._eval.scalars())

    def _next_chunk(self, steps: int, seconds: float) -> int:
        per_step = seconds / steps if steps else 0.0
        if per_step <= 0:
            return MAX_STEPS_PER_CALL
        wanted = int(self._settings.target_call_seconds / per_step)
        return max(1, min(MAX_STEPS_PER_CALL, wanted))

    def _after_call(
        self,
        metrics: PretrainingMetrics,
        steps: int,
        seconds: float,
        waited: float,
        steady: _Throughput,
    ) -> None:
        step = self.step
        examples_per_second = self._settings.global_batch_size * steps / seconds
        log.info(
            "step %d/%d loss %.4f mlm_acc %.4f nsp_acc %.4f %.1f examples/s input wait %.1f%%",
            step,
            self._settings.train_steps,
            metrics.loss,
            metrics.mlm_accuracy,
            metrics.nsp_accuracy,
            examples_per_second,
            100 * waited / seconds,
        )
        self._summarise(step, metrics, examples_per_second, waited / seconds)
        saved = step % self._settings.checkpoint_every_steps == 0
        if saved:
            self._save()
        evaluated = self._eval_due()
        if evaluated:
            self._run_eval()
        self._report(metrics, steady, force=saved or evaluated)

    def _save(self) -> str:
        path = self._checkpointer.save()
        self._last_checkpoint = path
        self._last_checkpoint_step = self.step
        return path

    def _summarise(
        self, step: int, metrics: PretrainingMetrics, examples_per_second: float, wait: float
    ) -> None:
        if self._writer is None:
            return
        scalars = {
            "loss": metrics.loss,
            "mlm_loss": metrics.mlm_loss,
            "nsp_loss": metrics.nsp_loss,
            "mlm_accuracy": metrics.mlm_accuracy,
            "nsp_accuracy": metrics.nsp_accuracy,
            "examples_per_second": examples_per_second,
            "input_wait_fraction": wait,
        }
        if self._learning_rate is not None:
            scalars["learning_rate"] = self._learning_rate(step)
        self._write_scalars(step, scalars)

    def _write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is None:
            return
        try:
            with self._writer.as_default(step=step):
                for tag, value in scalars.items():
                    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
            self._writer.flush()
        except Exception as error:
            if not retry.is_transient(error):
                raise
            log.warning(
                "summaries of step %d not flushed, storage unavailable (kept for the next "
                "flush): %s",
                step,
                retry.describe(error),
            )

    def _report(self, metrics: PretrainingMetrics | None, steady: _Throughput, force: bool) -> None:
        if self._reporter is None:
            return
        step = self.step
        rate = self._examples_per_second(steady)
        steps_per_second = steady.steps / steady.seconds if steady.seconds else None
        total = self._settings.run_steps or self._settings.train_steps
        eta = (total - step) / steps_per_second if steps_per_second else None
        self._reporter.report(
            Progress(
                step=step,
                total_steps=total,
                loss=metrics.loss if metrics else None,
                mlm_accuracy=metrics.mlm_accuracy if metrics else None,
                nsp_accuracy=metrics.nsp_accuracy if metrics else None,
                examples_per_second=rate,
                eta_seconds=eta,
                last_checkpoint=self._last_checkpoint,
                last_checkpoint_step=self._last_checkpoint_step,
                eval=self._eval.status() if self._eval else None,
            ),
            force=force,
        )

    def _examples_per_second(self, steady: _Throughput) -> float | None:
        if not steady.seconds:
            return None
        return self._settings.global_batch_size * steady.steps / steady.seconds
