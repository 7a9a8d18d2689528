"""Checkpoints as named arrays in one ``.npz`` file: the JAX runtime's format.

``tf.train.Checkpoint`` only saves TensorFlow variables, and a multi-host
slice trains Keras on JAX (``docs/multi-host.md``). This format is keyed by
Keras' variable paths, which are the same under every backend for the same
model, so the TensorFlow export restores these files too. Host 0 writes
``ckpt-<step>.npz`` next to where ``tf.train.CheckpointManager`` would write
``ckpt-<step>.index``; each file is written under a temporary name and renamed,
so a reader never sees half a checkpoint. Restoring walks from the newest file
to the oldest, like ``checkpoint.py``, so a corrupt file costs one interval.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import uuid
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from bert_trainer.contract import CHECKPOINT_NAME
from bert_trainer.storage import InputError

log = logging.getLogger(__name__)

SUFFIX = ".npz"
STEP_KEY = "step"
_NUMBERED = re.compile(rf"{CHECKPOINT_NAME}-(\d+){re.escape(SUFFIX)}$")


def checkpoint_path(directory: str, step: int) -> str:
    return str(tf.io.gfile.join(directory, f"{CHECKPOINT_NAME}-{step}{SUFFIX}"))


def list_checkpoints(directory: str) -> list[str]:
    """The ``ckpt-<step>.npz`` files in ``directory``, newest first."""
    if not tf.io.gfile.isdir(directory):
        return []
    pattern = tf.io.gfile.join(directory, f"{CHECKPOINT_NAME}-*{SUFFIX}")
    found = [path for path in tf.io.gfile.glob(pattern) if _NUMBERED.search(path)]
    return sorted(found, key=step_of, reverse=True)


def step_of(path: str) -> int:
    match = _NUMBERED.search(path)
    return int(match.group(1)) if match else -1


def write_arrays(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(temporary, "wb") as f:
        f.write(buffer.getvalue())
    tf.io.gfile.rename(temporary, path, overwrite=True)


def read_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array in ``path``; raises ValueError for a file that is not a whole .npz."""
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{path} is not a readable checkpoint: {e}") from e


def assign(variables: Sequence[Any], arrays: Mapping[str, np.ndarray], prefix: str) -> None:
    """Set each Keras variable from ``arrays[prefix + variable.path]``.

    Raises ValueError naming what is missing or differently shaped: a
    checkpoint of another model must not half-load.
    """
    problems = []
    for variable in variables:
        key = prefix + variable.path
        if key not in arrays:
            problems.append(f"{key} is missing")
        elif tuple(arrays[key].shape) != tuple(variable.shape):
            problems.append(f"{key} has shape {arrays[key].shape}, expected {variable.shape}")
    if problems:
        raise ValueError("; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
    for variable in variables:
        variable.assign(arrays[prefix + variable.path])


def restore_newest(
    directory: str, load: Callable[[dict[str, np.ndarray]], None]
) -> tuple[str, dict[str, np.ndarray]] | None:
    """Feed the newest readable checkpoint to ``load``; None when there is none.

    ``load`` raises ValueError when the arrays do not fit the model; that file
    is skipped like a corrupt one. Raises InputError when files exist but none
    loads (a retry would meet the same files). Storage errors propagate: the
    attempt should be retried.
    """
    failures = []
    for path in list_checkpoints(directory):
        try:
            arrays = read_arrays(path)
            load(arrays)
        except ValueError as e:
            log.warning("cannot restore %s, trying an older checkpoint: %s", path, e)
            failures.append(f"{path}: {e}")
            continue
        return path, arrays
    if failures:
        raise InputError(
            f"no checkpoint in {directory} can be restored (a different model, or "
            "corrupt files; remove them to start over): " + "; ".join(failures)
        )
    return None


def remove_older(directory: str, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for path in list_checkpoints(directory)[keep:]:
        # NotFound: another attempt's clean-up got there first.
        with contextlib.suppress(tf.errors.NotFoundError):
            tf.io.gfile.remove(path)
