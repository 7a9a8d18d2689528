"""Initialisation from google-research/bert TF1 checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.helpers import TINY, write_vocab

pytestmark = pytest.mark.tensorflow


def write_tf1_checkpoint(prefix: Path, weights: dict[str, np.ndarray]) -> str:
    """Save ``weights`` the way TF1's run_pretraining.py did: graph variables and a Saver.

    Like a released checkpoint it also holds the step and Adam's slots, which
    initialisation must ignore.
    """
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        variables = [
            tf.compat.v1.get_variable(name, initializer=tf.constant(value))
            for name, value in weights.items()
        ]
        for name, value in list(weights.items())[:3]:
            tf.compat.v1.get_variable(f"{name}/adam_m", initializer=tf.zeros_like(value))
        variables.append(tf.compat.v1.train.get_or_create_global_step())
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return str(saver.save(session, str(prefix)))


def google_shaped_random(
    overrides: dict[str, tuple[int, ...]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    from bert_trainer.model import build_pretrainer, google_variables

    rng = np.random.default_rng(seed)
    shapes = {entry.name: entry.shape for entry in google_variables(build_pretrainer(TINY))}
    shapes.update(overrides or {})
    return {name: rng.normal(size=shape).astype("float32") for name, shape in shapes.items()}


def bert_config(**overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TINY.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": TINY.intermediate_size,
        "max_position_embeddings": TINY.max_position_embeddings,
        "num_attention_heads": TINY.num_heads,
        "num_hidden_layers": TINY.num_layers,
        "type_vocab_size": 2,
        "vocab_size": TINY.vocab_size,
    }
    config.update(overrides)
    return config


def test_google_checkpoint_initialises_every_weight(tmp_path: Path) -> None:
    from bert_trainer.model import build_pretrainer, google_weights
    from bert_trainer.train.tf1_init import init_from_tf1_checkpoint

    weights = google_shaped_random()
    checkpoint = write_tf1_checkpoint(tmp_path / "bert_model.ckpt", weights)
    (tmp_path / "bert_config.json").write_text(json.dumps(bert_config()))
    model = build_pretrainer(TINY)

    loaded = init_from_tf1_checkpoint(
        model,
        TINY,
        checkpoint,
        bert_config=str(tmp_path / "bert_config.json"),
        vocab=str(write_vocab(tmp_path / "vocab.txt")),
    )

    assert sorted(loaded) == sorted(weights)
    actual = google_weights(model)
    for name, value in weights.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)
    # The 3-D attention kernels took the values in Google's order, not just the shape.
    query = model.backbone.transformer_layers[1]._self_attention_layer._query_dense.kernel
    np.testing.assert_array_equal(
        query.numpy()[:, 1, :],
        weights["bert/encoder/layer_1/attention/self/query/kernel"][:, 16:],
    )


def test_checkpoint_without_pretraining_heads_keeps_them_random(tmp_path: Path) -> None:
    from bert_trainer.model import build_pretrainer, google_weights
    from bert_trainer.train.tf1_init import init_from_tf1_checkpoint

    weights = {k: v for k, v in google_shaped_random().items() if not k.startswith("cls/")}
    checkpoint = write_tf1_checkpoint(tmp_path / "fine_tuned.ckpt", weights)
    model = build_pretrainer(TINY)
    head_before = google_weights(model)["cls/predictions/transform/dense/kernel"]

    loaded = init_from_tf1_checkpoint(model, TINY, checkpoint)

    assert not any(name.startswith("cls/") for name in loaded)
    after = google_weights(model)
    np.testing.assert_array_equal(after["cls/predictions/transform/dense/kernel"], head_before)
    np.testing.assert_array_equal(
        after["bert/pooler/dense/bias"], weights["bert/pooler/dense/bias"]
    )


def test_shape_mismatch_is_an_input_error_naming_the_variables(tmp_path: Path) -> None:
    from bert_trainer.model import build_pretrainer, google_weights
    from bert_trainer.storage import InputError
    from bert_trainer.train.tf1_init import init_from_tf1_checkpoint

    weights = google_shaped_random({"bert/encoder/layer_0/intermediate/dense/kernel": (32, 128)})
    checkpoint = write_tf1_checkpoint(tmp_path / "bert_model.ckpt", weights)
    model = build_pretrainer(TINY)
    before = google_weights(model)["bert/pooler/dense/kernel"]

    with pytest.raises(InputError, match=r"layer_0/intermediate/dense/kernel is \[32, 128\]"):
        init_from_tf1_checkpoint(model, TINY, checkpoint)
    np.testing.assert_array_equal(google_weights(model)["bert/pooler/dense/kernel"], before)


def test_vocab_mismatch_is_an_input_error(tmp_path: Path) -> None:
    from bert_trainer.model import build_pretrainer
    from bert_trainer.storage import InputError
    from bert_trainer.train.tf1_init import init_from_tf1_checkpoint

    checkpoint = write_tf1_checkpoint(tmp_path / "bert_model.ckpt", google_shaped_random())
    vocab = write_vocab(tmp_path / "vocab.txt", size=90)

    with pytest.raises(InputError, match=r"vocab mismatch: .* 90 tokens .* embeds 100"):
        init_from_tf1_checkpoint(build_pretrainer(TINY), TINY, checkpoint, vocab=str(vocab))


def test_vocab_size_mismatch_in_the_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    from bert_trainer.model import build_pretrainer
    from bert_trainer.storage import InputError
    from bert_trainer.train.tf1_init import init_from_tf1_checkpoint

    weights = google_shaped_random(
        {"bert/embeddings/word_embeddings": (120, 32), "cls/predictions/output_bias": (120,)}
    )
    checkpoint = write_tf1_checkpoint(tmp_path / "bert_model.ckpt", weights)

    with pytest.raises(InputError, match=r"word_embeddings is \[120, 32\] in the checkpoint"):
        init_from_tf1_checkpoint(build_pretrainer(TINY), TINY, checkpoint)


def test_bert_config_must_match_the_model(tmp_path: Path) -> None:
    from bert_trainer.model import build_pretrainer
    from bert_trainer.storage import InputError
    from bert_trainer.train.tf1_init import init_from_tf1_checkpoint

    checkpoint = write_tf1_checkpoint(tmp_path / "bert_model.ckpt", google_shaped_random())
    config = tmp_path / "bert_config.json"
    config.write_text(json.dumps(bert_config(num_hidden_layers=12, vocab_size=30522)))

    with pytest.raises(InputError, match="num_hidden_layers is 12 there, 2 in the model"):
        init_from_tf1_checkpoint(build_pretrainer(TINY), TINY, checkpoint, bert_config=str(config))


def test_missing_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    from bert_trainer.model import build_pretrainer
    from bert_trainer.storage import InputError
    from bert_trainer.train.tf1_init import init_from_tf1_checkpoint

    with pytest.raises(InputError, match="cannot read the init checkpoint"):
        init_from_tf1_checkpoint(build_pretrainer(TINY), TINY, str(tmp_path / "nothing.ckpt"))
