"""Starting from another run's checkpoints (``spec.model.initFromOutput``): weights only,
from either runtime's format, with the config and vocab the train stage writes beside them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainer.helpers import TINY, run_in_fresh_process, train_config, write_vocab


def _weights(model: Any) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v.numpy()) for v in model.trainable_variables}


def _assert_same(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert ours.keys() == theirs.keys()
    for path, value in ours.items():
        np.testing.assert_array_equal(value, theirs[path], err_msg=path)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of 20 steps: its checkpoints directory."""
    from bert_trainer.train.run import train

    tmp_path = tmp_path_factory.mktemp("source")
    vocab = write_vocab(tmp_path / "vocab.txt")
    train(train_config(tmp_path, train_steps=20, checkpoint_every_steps=10, vocab=str(vocab)))
    return tmp_path / "checkpoints"


@pytest.mark.tensorflow
def test_the_train_stage_writes_its_config_and_vocab_beside_its_checkpoints(
    source: Path,
) -> None:
    config = json.loads((source / "bert_config.json").read_text())
    assert config["vocab_size"] == TINY.vocab_size
    assert (config["hidden_size"], config["num_hidden_layers"]) == (
        TINY.hidden_size,
        TINY.num_layers,
    )
    assert (config["num_attention_heads"], config["hidden_act"]) == (TINY.num_heads, "gelu")
    vocab = (source / "vocab.txt").read_text().splitlines()
    assert (
        len(vocab)
        == config["vocab_size"]
        == len((source.parent / "vocab.txt").read_text().splitlines())
    )


@pytest.mark.tensorflow
def test_a_run_starts_from_the_newest_checkpoint_weights_only(source: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from bert_trainer.model import build_pretrainer
    from bert_trainer.train.checkpoint import restore_model
    from bert_trainer.train.run import start_step, train

    settings = train_config(tmp_path, train_steps=3, init_checkpoints=str(source)).train
    assert settings is not None
    reference = build_pretrainer(TINY)
    assert restore_model(str(source), reference).endswith("ckpt-20")
    model = build_pretrainer(TINY)
    assert start_step(None, model, settings) == 0  # step 0: the schedule starts over
    _assert_same(_weights(model), _weights(reference))

    # Its own checkpoint wins on a restart: the source's weights are not loaded again.
    fresh = build_pretrainer(TINY)
    before = _weights(fresh)
    assert start_step(7, fresh, settings) == 7
    _assert_same(_weights(fresh), before)

    result = train(train_config(tmp_path, train_steps=3, init_checkpoints=str(source)))
    assert (result.first_step, result.final_step) == (0, 3)
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-3"))
    # A new optimizer: 3 updates, not the source's 20 plus 3.
    assert int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == 3


@pytest.mark.tensorflow
def test_either_runtime_reads_the_newer_array_checkpoint(source: Path, tmp_path: Path) -> None:
    import shutil

    from bert_trainer.model import build_pretrainer
    from bert_trainer.train import array_checkpoint
    from bert_trainer.train.checkpoint import restore_model

    directory = tmp_path / "checkpoints"
    shutil.copytree(source, directory)
    rng = np.random.default_rng(5)
    other = build_pretrainer(TINY)
    arrays = {
        "model/" + v.path: rng.normal(size=v.shape).astype("float32")
        for v in other.trainable_variables
    }
    arrays[array_checkpoint.STEP_KEY] = np.asarray(30)
    array_checkpoint.write_arrays(array_checkpoint.checkpoint_path(str(directory), 30), arrays)

    model = build_pretrainer(TINY)
    assert restore_model(str(directory), model).endswith("ckpt-30.npz")
    _assert_same(_weights(model), {k[len("model/") :]: v for k, v in arrays.items() if k != "step"})
    expected = float(
        next(v for k, v in arrays.items() if k.endswith("token_embedding/embeddings")).sum()
    )
    env = {"KERAS_BACKEND": "jax"}
    on_jax = json.loads(run_in_fresh_process("tests.trainer.init_jax", str(directory), env=env))
    assert on_jax["path"].endswith("ckpt-30.npz")
    assert on_jax["sum"] == pytest.approx(expected, rel=1e-6)

    # TensorFlow's own format alone: JAX says it cannot, instead of starting at random.
    refused = json.loads(run_in_fresh_process("tests.trainer.init_jax", str(source), env=env))
    assert "holds only TensorFlow checkpoints (ckpt-N)" in refused["error"]


def test_both_init_checkpoint_kinds_at_once_is_an_input_error(tmp_path: Path) -> None:
    from bert_trainer.storage import InputError
    from bert_trainer.train.run import check_settings

    settings = train_config(
        tmp_path, init_checkpoint="gs://b/ckpt/bert_model.ckpt", init_checkpoints="gs://b/run"
    ).train
    assert settings is not None
    with pytest.raises(InputError, match="start from one"):
        check_settings(settings)


@pytest.mark.tensorflow
def test_the_companions_are_the_models_config_and_a_copy_of_a_readable_vocab(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bert_trainer.train.checkpoint import write_companions

    vocab = write_vocab(tmp_path / "vocab.txt")
    write_companions(str(tmp_path / "a"), TINY, str(vocab))
    assert json.loads((tmp_path / "a" / "bert_config.json").read_text()) == TINY.google_config()
    assert (tmp_path / "a" / "vocab.txt").read_bytes() == vocab.read_bytes()

    # A vocab that cannot be read does not stop training: the config alone is written.
    write_companions(str(tmp_path / "b"), TINY, str(tmp_path / "missing.txt"))
    assert (tmp_path / "b" / "bert_config.json").exists()
    assert not (tmp_path / "b" / "vocab.txt").exists()
    assert "vocab.txt not written beside the checkpoints" in caplog.text
