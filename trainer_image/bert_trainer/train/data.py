"""The input pipeline: google-research/bert TFRecords into fixed-shape batches.

Files are listed with ``tf.io.gfile`` (local paths and ``gs://`` alike), shuffled,
sharded across input pipelines (one per host under ``tf.distribute``),
read by a parallel, non-deterministic interleave, shuffled again per record,
batched with ``drop_remainder`` (TPUs need static shapes), parsed a batch at a
time (one ``parse_example`` call per batch is far cheaper than one per record)
and prefetched, so the accelerator never waits for the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from bert_trainer import retry
from bert_trainer.storage import InputError

INT_FEATURES = ("input_ids", "input_mask", "segment_ids")
"""Per-token features, ``max_seq_length`` int64 values each."""
PREDICTION_FEATURES = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")
"""Per-prediction features, ``max_predictions_per_seq`` values each (weights are floats)."""

_READ_BUFFER_BYTES = 8 * 1024 * 1024  # fewer, larger GCS reads
_MAX_PARALLEL_FILES = 16


@dataclass(frozen=True)
class RecordShape:
    """The fixed sizes every record must have."""

    max_seq_length: int
    max_predictions_per_seq: int


def feature_spec(shape: RecordShape) -> dict[str, tf.io.FixedLenFeature]:
    """Google's feature format (run_pretraining.py's ``name_to_features``)."""
    spec = {name: tf.io.FixedLenFeature([shape.max_seq_length], tf.int64) for name in INT_FEATURES}
    spec["masked_lm_positions"] = tf.io.FixedLenFeature([shape.max_predictions_per_seq], tf.int64)
    spec["masked_lm_ids"] = tf.io.FixedLenFeature([shape.max_predictions_per_seq], tf.int64)
    spec["masked_lm_weights"] = tf.io.FixedLenFeature([shape.max_predictions_per_seq], tf.float32)
    spec["next_sentence_labels"] = tf.io.FixedLenFeature([1], tf.int64)
    return spec


def list_records(pattern: str, shape: RecordShape) -> list[str]:
    """The files matching ``pattern``, after checking that they hold such records.

    Raises InputError when nothing matches, when no file holds a record, or when
    the first record's features are missing or sized differently from ``shape``
    (a mismatch would otherwise surface as an opaque error deep in training).
    Retried while storage is unavailable (``retry.retry_transient``).
    """
    return retry.retry_transient(
        lambda: _list_records(pattern, shape),
        what=f"listing training records {pattern}",
        budget_seconds=retry.budget_seconds(),
    )


def _list_records(pattern: str, shape: RecordShape) -> list[str]:
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise InputError(f"no TFRecord files match {pattern}")
    for path in files:
        try:
            first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise InputError(f"{path} is not a readable TFRecord file: {e.message}") from e
        if first is not None:
            _check_example(path, bytes(first.numpy()), shape)
            return files
    raise InputError(f"the {len(files)} files matching {pattern} hold no records")


def _check_example(path: str, record: bytes, shape: RecordShape) -> None:
    try:
        example = tf.train.Example.FromString(record)
    except Exception as e:  # protobuf's DecodeError has no stable import path
        raise InputError(f"{path} does not hold tf.train.Example records: {e}") from e
    features = example.features.feature
    problems = []
    for name, spec in feature_spec(shape).items():
        if name not in features:
            problems.append(f"{name} is missing")
            continue
        kind = features[name].WhichOneof("kind")
        values = getattr(features[name], kind).value if kind else []
        if len(values) != spec.shape[0]:
            problems.append(f"{name} has {len(values)} values, expected {spec.shape[0]}")
    if problems:
        raise InputError(
            f"records in {path} do not match max_seq_length={shape.max_seq_length}, "
            f"max_predictions_per_seq={shape.max_predictions_per_seq}: " + "; ".join(problems)
        )


def make_dataset(
    files: list[str],
    shape: RecordShape,
    batch_size: int,
    seed: int,
    input_context: tf.distribute.InputContext | None = None,
    shuffle_buffer: int = 10_000,
    shuffle: bool = True,
    skip_records: int = 0,
) -> tf.data.Dataset:
    """Endless ``(features, labels)`` batches of ``batch_size`` for one input pipeline.

    ``features`` are the model's inputs (``token_ids``, ``segment_ids``,
    ``padding_mask``, ``mask_positions``, all int32); ``labels`` are
    ``masked_lm_ids`` (int32), ``masked_lm_weights`` (float32) and
    ``next_sentence_labels`` (int32, shape ``[batch]``). ``shuffle=False``
    reads files and records in order, for reproducible comparisons; a resumed run
    then passes ``skip_records``, the records this pipeline's earlier steps consumed,
    and goes on where they stopped instead of from record 0 (they are read and
    dropped, not parsed). A shuffled run ignores it: it resumes with a new shuffle.
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    mine = pipeline_files(files, pipelines, pipeline)
    shard_records = pipelines > 1 and mine == files
    deterministic = shard_records or not shuffle
    dataset = tf.data.Dataset.from_tensor_slices(mine)
    if shuffle:
        dataset = dataset.shuffle(len(mine), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES),
        cycle_length=min(len(mine), _MAX_PARALLEL_FILES),
        num_parallel_calls=tf.data.AUTOTUNE,
        # Splitting records between pipelines needs every pipeline to see them in
        # the same order (same seed, deterministic reads); otherwise order is free.
        deterministic=deterministic,
    )
    if shard_records:
        # Files that do not divide between the pipelines: split the records instead.
        dataset = dataset.shard(pipelines, pipeline)
    if skip_records and not shuffle:
        dataset = dataset.skip(skip_records)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    spec = feature_spec(shape)
    dataset = dataset.map(
        lambda records: _to_model_inputs(tf.io.parse_example(records, spec)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def pipeline_files(files: list[str], pipelines: int, pipeline: int) -> list[str]:
    """The files input pipeline ``pipeline`` of ``pipelines`` reads.

    When the files divide evenly between the pipelines (one per host), each gets its
    own, so hosts read disjoint data of the same size. Otherwise every pipeline reads
    all files and keeps every ``pipelines``-th record: ``files[i::n]`` would give some
    hosts more files than others, and those hosts' records would be over-sampled
    (10 files on 4 hosts: 3 files for two hosts, 2 for the others, 1.5x). That costs
    each host a read of every file, so records in a multiple of the host count of
    files read less (the prepare stage writes 8: even on 1, 2, 4 or 8 hosts).
    """
    if pipelines > 1 and len(files) % pipelines == 0:
        return files[pipeline::pipelines]
    return files


def _to_model_inputs(parsed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    features = {
        "token_ids": tf.cast(parsed["input_ids"], tf.int32),
        "segment_ids": tf.cast(parsed["segment_ids"], tf.int32),
        "padding_mask": tf.cast(parsed["input_mask"], tf.int32),
        "mask_positions": tf.cast(parsed["masked_lm_positions"], tf.int32),
    }
    labels = {
        "masked_lm_ids": tf.cast(parsed["masked_lm_ids"], tf.int32),
        "masked_lm_weights": parsed["masked_lm_weights"],
        "next_sentence_labels": tf.cast(parsed["next_sentence_labels"][:, 0], tf.int32),
    }
    return features, labels
