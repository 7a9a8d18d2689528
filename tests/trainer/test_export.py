"""The HuggingFace export: names, layouts and logits checked against transformers itself."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.helpers import TINY, batch_of, make_instance, run_in_fresh_process, write_vocab


def save_checkpoint(directory: Path, seed: int = 3):  # type: ignore[no-untyped-def]
    """A random (but not freshly initialised) model, checkpointed as training does."""
    import keras
    import tensorflow as tf

    from bert_trainer.config import TrainConfig
    from bert_trainer.model import build_pretrainer
    from bert_trainer.train.checkpoint import Checkpointer
    from bert_trainer.train.optimizer import make_optimizer

    keras.utils.set_random_seed(seed)
    model = build_pretrainer(TINY)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        # Non-zero biases and non-unit layer norms, so a swapped or dropped one shows.
        variable.assign(rng.normal(scale=0.2, size=variable.shape).astype("float32"))
    settings = TrainConfig(
        tfrecords="unused",
        model=TINY,
        global_batch_size=2,
        train_steps=10,
        checkpoint_dir=str(directory),
    )
    optimizer = make_optimizer(settings)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(7, dtype=tf.int64)
    Checkpointer(str(directory), model, optimizer, step, keep=2).save()
    return model


@pytest.mark.tensorflow
def test_export_loads_in_transformers_with_matching_logits(tmp_path: Path) -> None:
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the HuggingFace check needs them")
    from bert_trainer.config import ExportConfig
    from bert_trainer.export.run import export

    model = save_checkpoint(tmp_path / "checkpoints")
    vocab = write_vocab(tmp_path / "vocab.txt")
    out = tmp_path / "hf"
    checkpoint = export(
        ExportConfig(
            checkpoint_dir=str(tmp_path / "checkpoints"),
            model=TINY,
            vocab=str(vocab),
            output_dir=str(out),
        )
    )
    rng = np.random.default_rng(11)
    features, _ = batch_of([make_instance(rng) for _ in range(4)])
    assert features["padding_mask"].min() == 0  # padding is part of what must agree
    expected = model(features, training=False)
    np.savez(tmp_path / "inputs.npz", **features)

    run_in_fresh_process(
        "tests.trainer.helpers",
        "hf-logits",
        str(out),
        str(tmp_path / "inputs.npz"),
        str(tmp_path / "outputs.npz"),
    )
    hf = np.load(tmp_path / "outputs.npz")

    assert checkpoint == str(tmp_path / "checkpoints" / "ckpt-7")
    assert hf["problems"].tolist() == []  # no missing, unexpected or mismatched weights; tied
    hf_mlm = np.take_along_axis(
        hf["prediction_logits"], features["mask_positions"][:, :, None].astype(np.int64), axis=1
    )
    np.testing.assert_allclose(hf_mlm, np.asarray(expected["mlm_logits"]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        hf["seq_relationship_logits"], np.asarray(expected["nsp_logits"]), atol=1e-4, rtol=0
    )
    # [CLS] w1 w2 w3 [SEP] w4 [SEP] (w0 is id 5), lower-cased by the exported tokenizer.
    assert hf["encoded"].tolist() == [2, 6, 7, 8, 3, 9, 3]


@pytest.mark.tensorflow
def test_export_writes_a_bert_for_pretraining_directory(tmp_path: Path) -> None:
    import safetensors.numpy

    from bert_trainer.config import ExportConfig
    from bert_trainer.export.run import export

    save_checkpoint(tmp_path / "checkpoints")
    vocab = write_vocab(tmp_path / "vocab.txt", size=96)  # a vocab may be smaller than the table
    export(
        ExportConfig(
            checkpoint_dir=str(tmp_path / "checkpoints"),
            model=TINY,
            vocab=str(vocab),
            output_dir=str(tmp_path / "hf"),
            lowercase=False,
        )
    )
    out = tmp_path / "hf"
    config = json.loads((out / "config.json").read_text())
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    state = safetensors.numpy.load_file(str(out / "model.safetensors"))

    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert config["architectures"] == ["BertForPreTraining"]
    assert (config["vocab_size"], config["num_hidden_layers"], config["hidden_act"]) == (
        100,
        2,
        "gelu_new",
    )
    assert tokenizer["tokenizer_class"] == "BertTokenizer"
    assert tokenizer["do_lower_case"] is False
    assert (out / "vocab.txt").read_text() == vocab.read_text()
    assert state["bert.encoder.layer.1.intermediate.dense.weight"].shape == (64, 32)  # [out, in]
    assert state["cls.predictions.bias"].shape == (100,)
    assert state["cls.seq_relationship.weight"].shape == (2, 32)
    assert len(state) == 5 + 16 * TINY.num_layers + 2 + 5 + 2


@pytest.mark.tensorflow
def test_export_without_a_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    from bert_trainer.config import ExportConfig, TrainerConfig
    from bert_trainer.export.run import run_export
    from bert_trainer.storage import InputError

    config = ExportConfig(
        checkpoint_dir=str(tmp_path / "empty"),
        model=TINY,
        vocab=str(write_vocab(tmp_path / "vocab.txt")),
        output_dir=str(tmp_path / "hf"),
    )
    with pytest.raises(InputError, match="no checkpoint in"):
        run_export(TrainerConfig(export=config))
    too_big = write_vocab(tmp_path / "big.txt", size=101)
    with pytest.raises(InputError, match="101 tokens but the model embeds only 100"):
        run_export(TrainerConfig(export=config.model_copy(update={"vocab": str(too_big)})))


@pytest.mark.parametrize(
    ("google", "hf", "transposed"),
    [
        ("bert/embeddings/word_embeddings", "bert.embeddings.word_embeddings.weight", False),
        ("bert/embeddings/LayerNorm/gamma", "bert.embeddings.LayerNorm.weight", False),
        (
            "bert/encoder/layer_11/attention/self/query/kernel",
            "bert.encoder.layer.11.attention.self.query.weight",
            True,
        ),
        (
            "bert/encoder/layer_0/attention/output/LayerNorm/beta",
            "bert.encoder.layer.0.attention.output.LayerNorm.bias",
            False,
        ),
        ("bert/encoder/layer_2/output/dense/bias", "bert.encoder.layer.2.output.dense.bias", False),
        ("bert/pooler/dense/kernel", "bert.pooler.dense.weight", True),
        ("cls/predictions/output_bias", "cls.predictions.bias", False),
        (
            "cls/predictions/transform/LayerNorm/gamma",
            "cls.predictions.transform.LayerNorm.weight",
            False,
        ),
        ("cls/seq_relationship/output_weights", "cls.seq_relationship.weight", False),
        ("cls/seq_relationship/output_bias", "cls.seq_relationship.bias", False),
    ],
)
def test_hf_names(google: str, hf: str, transposed: bool) -> None:
    from bert_trainer.export.hf_names import hf_name

    assert hf_name(google) == (hf, transposed)
