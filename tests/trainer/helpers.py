"""Shared pieces of the trainer's TensorFlow tests: a tiny BERT and records to train it on.

The records follow google-research/bert's feature format, written with
``tf.train.Example`` the way its create_pretraining_data.py does. Tokens are
drawn from a skewed (Zipf-like) distribution, so a few steps visibly lower the
masked-LM loss; next-sentence labels follow the first token of segment B, so
that head has something to learn too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bert_trainer import contract
from bert_trainer.config import BertModelConfig, TrainConfig, TrainerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, CLS, SEP, MASK = 0, 2, 3, 4
FIRST_WORD = len(SPECIAL_TOKENS)

TINY = BertModelConfig(
    vocab_size=100,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)
SEQ_LENGTH = 32
PREDICTIONS = 5


def write_vocab(path: Path, size: int = TINY.vocab_size) -> Path:
    words = [f"w{i}" for i in range(size - len(SPECIAL_TOKENS))]
    path.write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n")
    return path


def make_instance(
    rng: np.random.Generator,
    vocab_size: int = TINY.vocab_size,
    seq_length: int = SEQ_LENGTH,
    predictions: int = PREDICTIONS,
) -> dict[str, list[int] | list[float]]:
    """One pretraining instance in Google's feature layout (lists, padded)."""
    words = vocab_size - FIRST_WORD
    weights = 1.0 / np.arange(1, words + 1)
    length = int(rng.integers(seq_length // 2, seq_length + 1))
    body = length - 3
    a_len = int(rng.integers(1, body))
    tokens = (FIRST_WORD + rng.choice(words, size=body, p=weights / weights.sum())).tolist()
    is_random_next = int(rng.integers(0, 2))
    # Segment B of a "random next" pair starts with an odd token, else an even one.
    first_b = tokens[a_len]
    if (first_b - FIRST_WORD) % 2 != is_random_next:
        tokens[a_len] = first_b + 1 if first_b + 1 < vocab_size else first_b - 1
    sequence = [CLS, *tokens[:a_len], SEP, *tokens[a_len:], SEP]
    segments = [0] * (a_len + 2) + [1] * (len(sequence) - a_len - 2)
    candidates = [i for i, t in enumerate(sequence) if t not in (CLS, SEP)]
    count = min(predictions, max(1, round(len(candidates) * 0.15)))
    positions = sorted(rng.choice(candidates, size=count, replace=False).tolist())
    masked_ids = [sequence[p] for p in positions]
    inputs = list(sequence)
    for p in positions:
        inputs[p] = MASK
    pad = seq_length - len(sequence)
    pad_predictions = predictions - count
    return {
        "input_ids": inputs + [PAD] * pad,
        "input_mask": [1] * len(sequence) + [0] * pad,
        "segment_ids": segments + [0] * pad,
        "masked_lm_positions": positions + [0] * pad_predictions,
        "masked_lm_ids": masked_ids + [0] * pad_predictions,
        "masked_lm_weights": [1.0] * count + [0.0] * pad_predictions,
        "next_sentence_labels": [is_random_next],
    }


def write_records(
    directory: Path,
    count: int = 256,
    shards: int = 2,
    seed: int = 0,
    seq_length: int = SEQ_LENGTH,
    predictions: int = PREDICTIONS,
    vocab_size: int = TINY.vocab_size,
) -> str:
    """Write ``count`` instances over ``shards`` files; returns their glob."""
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writers = [
        tf.io.TFRecordWriter(str(directory / f"part-{i:05d}-of-{shards:05d}.tfrecord"))
        for i in range(shards)
    ]
    for index in range(count):
        instance = make_instance(rng, vocab_size, seq_length, predictions)
        features = {
            name: (
                tf.train.Feature(float_list=tf.train.FloatList(value=values))
                if name == "masked_lm_weights"
                else tf.train.Feature(int64_list=tf.train.Int64List(value=values))
            )
            for name, values in instance.items()
        }
        example = tf.train.Example(features=tf.train.Features(feature=features))
        writers[index % shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return str(directory / "part-*.tfrecord")


def train_config(tmp_path: Path, **overrides: Any) -> TrainerConfig:
    """A TrainerConfig for the tiny model on records under ``tmp_path``."""
    records = tmp_path / "records"
    pattern = str(records / "part-*.tfrecord") if records.exists() else write_records(records)
    fields: dict[str, Any] = {
        "tfrecords": pattern,
        "model": TINY,
        "max_seq_length": SEQ_LENGTH,
        "max_predictions_per_seq": PREDICTIONS,
        "global_batch_size": 16,
        "train_steps": 40,
        "learning_rate": 2e-3,
        "warmup_steps": 5,
        "checkpoint_every_steps": 20,
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "summary_dir": str(tmp_path / "summaries"),
    }
    fields.update(overrides)
    return TrainerConfig(train=TrainConfig(**fields))


def start_trainer_process(
    config_path: Path,
    log_path: Path,
    termination_path: Path,
    env: dict[str, str] | None = None,
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """``python -m bert_trainer train`` as a pod runs it: JSON log lines to ``log_path``.

    ``own_session`` gives the trainer a process group of its own (as a pod has), so
    a test can kill the trainer and every process it started at once.
    """
    environment = {**os.environ, **(env or {})}
    environment[contract.ENV_TERMINATION_MESSAGE_PATH] = str(termination_path)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bert_trainer", "train", "--config", str(config_path)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=own_session,
        )


def run_in_fresh_process(module: str, *arguments: str, env: dict[str, str] | None = None) -> str:
    """``python -m module arguments`` from the repository root; its stdout, once it exited 0.

    For what must start a process of its own: logical CPU devices, or another Keras
    backend, are fixed before TensorFlow or Keras first initialise.
    """
    completed = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def batch_of(instances: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model inputs and labels for ``instances``, as the input pipeline yields them."""

    def stack(name: str, dtype: str) -> np.ndarray:
        return np.asarray([instance[name] for instance in instances], dtype=dtype)

    features = {
        "token_ids": stack("input_ids", "int32"),
        "segment_ids": stack("segment_ids", "int32"),
        "padding_mask": stack("input_mask", "int32"),
        "mask_positions": stack("masked_lm_positions", "int32"),
    }
    labels = {
        "masked_lm_ids": stack("masked_lm_ids", "int32"),
        "masked_lm_weights": stack("masked_lm_weights", "float32"),
        "next_sentence_labels": stack("next_sentence_labels", "int32")[:, 0],
    }
    return features, labels


def config_json(config: TrainerConfig) -> str:
    return json.dumps(config.model_dump(mode="json", by_alias=True))


def hf_pretraining_logits(model_dir: str, inputs_npz: str, outputs_npz: str) -> None:
    """Run HuggingFace's BertForPreTraining on saved inputs (in a process without TF).

    transformers needs torch, and torch and TensorFlow each bring their own
    LLVM: importing torch after TensorFlow aborts the process, so the HF side
    of a comparison runs apart (``python -m tests.trainer.helpers``).
    """
    import torch
    from transformers import AutoTokenizer, BertForPreTraining

    loaded: Any = BertForPreTraining.from_pretrained(model_dir, output_loading_info=True)
    model, info = loaded
    model.eval()
    inputs = np.load(inputs_npz)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(inputs["token_ids"].astype(np.int64)),
            token_type_ids=torch.from_numpy(inputs["segment_ids"].astype(np.int64)),
            attention_mask=torch.from_numpy(inputs["padding_mask"].astype(np.int64)),
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer("w1 W2 w3", "w4")["input_ids"]
    tied = model.cls.predictions.decoder.weight.data_ptr() == (
        model.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    np.savez(
        outputs_npz,
        prediction_logits=out.prediction_logits.numpy(),
        seq_relationship_logits=out.seq_relationship_logits.numpy(),
        encoded=np.asarray(encoded),
        problems=np.asarray(
            [f"{kind}: {keys}" for kind, keys in info.items() if keys]
            + ([] if tied else ["untied"])
        ),
    )


def two_replica_difference(unequal_masks: bool = False) -> float:
    """Train 3 SGD steps on two CPU replicas and on one; the largest weight difference.

    Runs in a fresh process: logical CPU devices must be set up before
    TensorFlow initialises. Dropout is off. Plain SGD (unlike Adam) would show
    gradients summed twice as a doubled step. With ``unequal_masks`` the replicas'
    halves of the batch carry different numbers of masked positions (all of them,
    against one each): the two runs then agree only if both normalise the loss over
    the global batch, not per replica.
    """
    import keras
    import tensorflow as tf

    from bert_trainer.model import build_pretrainer
    from bert_trainer.train.optimizer import _SummedGradients
    from bert_trainer.train.step import make_train_function

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    class SGD(_SummedGradients, keras.optimizers.SGD):  # type: ignore[misc]
        pass

    rng = np.random.default_rng(5)
    instances = [make_instance(rng) for _ in range(8)]
    for i, instance in enumerate(instances):
        few = unequal_masks and i >= len(instances) // 2
        instance["masked_lm_weights"] = [1.0] + [0.0 if few else 1.0] * (PREDICTIONS - 1)
    features, labels = batch_of(instances)
    dataset = tf.data.Dataset.from_tensors((features, labels)).repeat()
    config = TINY.model_copy(update={"hidden_dropout": 0.0, "attention_dropout": 0.0})

    def train(strategy: Any, initial: list[np.ndarray] | None) -> list[np.ndarray]:
        with strategy.scope():
            model = build_pretrainer(config)
            if initial is not None:
                model.set_weights(initial)
            optimizer = SGD(learning_rate=0.5)
            optimizer.build(model.trainable_variables)
            step = tf.Variable(0, dtype=tf.int64)
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        function = make_train_function(strategy, model, optimizer, step)
        function(iterator, tf.constant(3))
        return [np.asarray(w) for w in model.get_weights()]

    keras.utils.set_random_seed(1)
    initial = [np.asarray(w) for w in build_pretrainer(config).get_weights()]
    single = train(tf.distribute.get_strategy(), initial)
    mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), initial)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(single, initial, strict=True))
    assert moved > 1e-3, "SGD did not move the weights"
    return max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored, strict=True))


def replica_losses(dropout: float) -> list[float]:
    """Each of two CPU replicas' loss on the same examples, through the train step's seeds.

    Runs in a fresh process (logical devices). With dropout the two may differ only by
    their masks: equal losses mean both replicas drew the same masks.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from bert_trainer.model import build_pretrainer, pretraining_loss
    from bert_trainer.train import replica_seeds

    rng = np.random.default_rng(5)
    half = [make_instance(rng) for _ in range(4)]
    features, labels = batch_of(half + half)  # each replica gets the same four examples
    dataset = tf.data.Dataset.from_tensors((features, labels)).repeat()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    replica_seeds.install()  # as make_train_function does for several replicas
    config = TINY.model_copy(update={"hidden_dropout": dropout, "attention_dropout": dropout})
    with strategy.scope():
        model = build_pretrainer(config)

    @tf.function
    def losses(iterator: Any) -> Any:
        def replica(x: Any, y: Any) -> Any:
            return pretraining_loss(model(x, training=True), y)[0]

        return strategy.run(replica, args=next(iterator))

    per_replica = losses(iter(strategy.experimental_distribute_dataset(dataset)))
    return [float(v) for v in strategy.experimental_local_results(per_replica)]


if __name__ == "__main__":
    import sys

    command, *arguments = sys.argv[1:]
    if command == "hf-logits":
        hf_pretraining_logits(*arguments)
    elif command == "replica-losses":
        print(f"losses {json.dumps(replica_losses(float(arguments[0])))}")
    elif command == "two-replicas":
        print(f"max difference {two_replica_difference(unequal_masks=arguments == ['unequal'])}")
    else:
        raise SystemExit(f"unknown command {command}")
