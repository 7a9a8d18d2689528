"""Checkpoints of the model, the optimizer and the step, under one prefix.

``tf.train.CheckpointManager`` names them ``ckpt-<step>`` and keeps the newest
few. Restoring walks from the newest to the oldest, so a checkpoint cut short
(a preempted upload, a truncated file) costs the steps since the one before it
rather than the whole run.

Saving and restoring go through ``retry.retry_transient``: while storage is
unavailable they are retried for ``$BERT_TRAINER_STORAGE_RETRY_SECONDS``, so a
short GCS outage delays the run instead of ending the attempt.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import keras
import tensorflow as tf

from bert_trainer import retry, storage
from bert_trainer.config import BertModelConfig
from bert_trainer.contract import CHECKPOINT_NAME
from bert_trainer.storage import InputError

log = logging.getLogger(__name__)

_NUMBERED = re.compile(rf"{CHECKPOINT_NAME}-(\d+)\.index$")


class Checkpointer:
    """Saves and restores ``model``, ``optimizer`` and ``step`` in ``directory``.

    Create it inside the strategy's scope, after the optimizer is built, so
    every variable a checkpoint holds already exists when it is restored.
    ``retry_seconds`` is the storage retry budget (None: from the environment).
    """

    def __init__(
        self,
        directory: str,
        model: Any,
        optimizer: Any,
        step: tf.Variable,
        keep: int,
        retry_seconds: float | None = None,
    ) -> None:
        self.directory = directory
        self.retry_seconds = retry.budget_seconds() if retry_seconds is None else retry_seconds
        self.step = step
        self.current: str | None = None
        """The checkpoint the variables last came from or went to."""
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, directory, max_to_keep=keep, checkpoint_name=CHECKPOINT_NAME
        )

    def save(self) -> str:
        """Write a checkpoint numbered with the current step; returns its prefix.

        Retried while storage is unavailable (writing the same files again);
        raises ``retry.StorageUnavailable`` once the retry budget is spent.
        """
        number = int(self.step.numpy())
        path: str = retry.retry_transient(
            lambda: self.manager.save(checkpoint_number=number),
            what=f"saving checkpoint {self.directory}/{CHECKPOINT_NAME}-{number}",
            budget_seconds=self.retry_seconds,
        )
        log.info("saved checkpoint %s", path)
        self.current = path
        return path

    def restore_latest(self) -> int | None:
        """Restore the newest readable checkpoint; returns its step, None if there is none.

        Raises InputError when checkpoints exist but none can be restored (all
        corrupt, or written by a model of other dimensions): a retry would
        meet the same files. Storage errors are retried, not taken for corruption.
        """
        path = retry.retry_transient(
            lambda: _restore_newest(
                self.checkpoint, self.directory, self.manager.checkpoints, partial=False
            ),
            what=f"restoring the latest checkpoint in {self.directory}",
            budget_seconds=self.retry_seconds,
        )
        if path is None:
            return None
        self.current = path
        step = int(self.step.numpy())
        log.info("restored %s at step %d", path, step)
        return step


def restore_model(directory: str, model: Any) -> str:
    """Restore only ``model`` from the newest readable checkpoint in ``directory``.

    For the export, which has no optimizer, and for a run that starts from another
    run's weights (``TrainConfig.init_checkpoints``). Reads both formats: TensorFlow's
    (single-host training) and ``array_checkpoint``'s (training on JAX); a model on
    the JAX backend reads only the latter. Returns the checkpoint's path; raises
    InputError when there is none or none can be restored.
    """
    from bert_trainer.train import array_checkpoint

    arrays = array_checkpoint.list_checkpoints(directory)
    tf_format = _candidates(directory, [])
    on_jax = keras.backend.backend() == "jax"
    newest_are_arrays = not tf_format or (
        bool(arrays) and array_checkpoint.step_of(arrays[0]) > _number(tf_format[0])
    )
    if arrays and (newest_are_arrays or on_jax):
        restored = array_checkpoint.restore_newest(
            directory,
            lambda found: array_checkpoint.assign(model.trainable_variables, found, "model/"),
        )
        if restored is not None:
            return restored[0]
    if on_jax and tf_format:
        raise InputError(
            f"{directory} holds only TensorFlow checkpoints ({CHECKPOINT_NAME}-N), which "
            f"training on JAX cannot read; start from {CHECKPOINT_NAME}-N.npz checkpoints "
            "(written by JAX runs, as on TPU slices)"
        )
    checkpoint = tf.train.Checkpoint(model=model)
    path = retry.retry_transient(
        lambda: _restore_newest(checkpoint, directory, [], partial=True),
        what=f"restoring the latest checkpoint in {directory}",
        budget_seconds=retry.budget_seconds(),
    )
    if path is None:
        raise InputError(f"no checkpoint in {directory}")
    return path


def _restore_newest(
    checkpoint: tf.train.Checkpoint, directory: str, listed: list[str], partial: bool
) -> str | None:
    failures = []
    for path in _candidates(directory, listed):
        try:
            status = checkpoint.restore(path)
            if partial:
                status.expect_partial()
            status.assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
            if retry.is_transient(e):
                raise  # storage trouble (e.g. GCS's AbortedError), not a bad checkpoint
            # IndexError: the checkpoint reader's answer to a truncated file.
            log.warning("cannot restore %s, trying an older checkpoint: %s", path, e)
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            failures.append(f"{path}: {first_line}")
            continue
        return path
    if failures:
        raise InputError(
            f"no checkpoint in {directory} can be restored (a different model, or "
            "corrupt files; remove them to start over): " + "; ".join(failures)
        )
    return None


def _candidates(directory: str, listed: list[str]) -> list[str]:
    # The manager's state file lists what it kept; the directory listing also
    # finds checkpoints when that small file is itself lost or stale.
    found = set(listed)
    if tf.io.gfile.isdir(directory):
        pattern = tf.io.gfile.join(directory, f"{CHECKPOINT_NAME}-*.index")
        found.update(path[: -len(".index")] for path in tf.io.gfile.glob(pattern))
    return sorted(found, key=_number, reverse=True)


def _number(prefix: str) -> int:
    match = _NUMBERED.search(prefix + ".index")
    return int(match.group(1)) if match else -1


def write_companions(directory: str, model: BertModelConfig, vocab: str | None) -> None:
    """bert_config.json and vocab.txt beside the checkpoints, as Google's releases have.

    So that another job can start from this one's output (``spec.model.initFromOutput``):
    its pre-flight check reads the dimensions and the vocabulary from them. Written
    whole at every start (the same bytes), retried while storage is unavailable.
    """
    config = json.dumps(model.google_config(), indent=2, sort_keys=True) + "\n"
    files = {"bert_config.json": config}
    target = storage.join(directory, "vocab.txt")
    if vocab and vocab != target:
        try:
            files["vocab.txt"] = retry.retry_transient(
                lambda: storage.read_text(vocab),
                what=f"reading {vocab}",
                budget_seconds=retry.budget_seconds(),
            )
        except InputError as error:
            # Training does not need it; a job started from this output will be told.
            log.warning("vocab.txt not written beside the checkpoints: %s", error)
    for name, text in files.items():
        path = storage.join(directory, name)
        retry.retry_transient(
            lambda: storage.write_text(path, text),  # noqa: B023  (called at once)
            what=f"writing {path}",
            budget_seconds=retry.budget_seconds(),
        )
