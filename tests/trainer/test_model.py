"""The pretraining model: keras-hub backbone, Google's heads, loss and weight names."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.helpers import PREDICTIONS, SEQ_LENGTH, TINY, batch_of, make_instance

pytestmark = pytest.mark.tensorflow


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from bert_trainer.model import build_pretrainer

    return build_pretrainer(TINY)


@pytest.fixture(scope="module")
def batch() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return batch_of([make_instance(rng) for _ in range(3)])


def test_outputs_have_pretraining_shapes(model, batch) -> None:  # type: ignore[no-untyped-def]
    outputs = model(batch[0], training=False)

    assert tuple(outputs["mlm_logits"].shape) == (3, PREDICTIONS, TINY.vocab_size)
    assert tuple(outputs["nsp_logits"].shape) == (3, 2)


def test_masked_lm_logits_use_the_token_embedding(model, batch) -> None:  # type: ignore[no-untyped-def]
    """The output projection is the embedding table itself, as in Google's BERT."""
    vocab_sized = [w.path for w in model.weights if TINY.vocab_size in tuple(w.shape)]
    assert sorted(vocab_sized) == ["masked_lm_head/output_bias", "token_embedding/embeddings"]

    # Perturb the row of a token absent from the input: only its logit can move.
    absent = next(t for t in range(TINY.vocab_size) if t not in batch[0]["token_ids"])
    table = model.backbone.token_embedding.embeddings
    before = np.asarray(model(batch[0], training=False)["mlm_logits"])
    original = table.numpy()
    try:
        perturbed = original.copy()
        perturbed[absent] += np.linspace(
            -1.0, 1.0, TINY.hidden_size
        )  # not constant: the head layer-normalises
        table.assign(perturbed)
        after = np.asarray(model(batch[0], training=False)["mlm_logits"])
    finally:
        table.assign(original)
    changed = np.abs(after - before).max(axis=(0, 1)) > 1e-6
    assert np.flatnonzero(changed).tolist() == [absent]


def test_config_round_trips(model) -> None:  # type: ignore[no-untyped-def]
    from bert_trainer.model import BertPretrainer

    config = model.get_config()
    clone = BertPretrainer.from_config(config)

    assert clone.get_config() == config
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    assert clone.backbone.get_config()["vocabulary_size"] == TINY.vocab_size


def test_attention_dropout_works_without_hidden_dropout() -> None:
    """hiddenDropout 0 with attentionDropout > 0 trained to a crash on the first step."""
    from bert_trainer.model import build_pretrainer

    model = build_pretrainer(
        TINY.model_copy(update={"hidden_dropout": 0.0, "attention_dropout": 0.5})
    )
    rng = np.random.default_rng(0)
    features, _ = batch_of([make_instance(rng) for _ in range(2)])

    def logits(training: bool) -> np.ndarray:
        out = model(features, training=training)
        first = next(iter(out.values())) if isinstance(out, dict) else out[0]
        return np.asarray(first)

    # Attention dropout is the only randomness left: training calls differ, eval ones not.
    assert not np.allclose(logits(True), logits(True))
    np.testing.assert_allclose(logits(False), logits(False))


def test_attention_dropout_is_separate_from_hidden_dropout() -> None:
    import keras

    from bert_trainer.model import build_pretrainer

    model = build_pretrainer(TINY.model_copy(update={"attention_dropout": 0.0}))
    layer = model.backbone.transformer_layers[0]

    assert layer._self_attention_layer._dropout == 0.0
    assert layer._feedforward_dropout.rate == pytest.approx(TINY.hidden_dropout)
    assert model.get_config()["attention_dropout"] == 0.0
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert restored.backbone.transformer_layers[0]._self_attention_layer._dropout == 0.0


def test_loss_is_weighted_masked_lm_plus_next_sentence() -> None:
    from bert_trainer.model import STATISTICS, PretrainingMetrics, pretraining_loss

    rng = np.random.default_rng(0)
    mlm_logits = rng.normal(size=(2, 3, 5)).astype("float32")
    nsp_logits = rng.normal(size=(2, 2)).astype("float32")
    ids = np.array([[1, 2, 3], [4, 0, 0]], dtype="int32")
    weights = np.array([[1, 1, 1], [1, 0, 0]], dtype="float32")
    nsp = np.array([0, 1], dtype="int32")

    loss, statistics = pretraining_loss(
        {"mlm_logits": mlm_logits, "nsp_logits": nsp_logits},
        {"masked_lm_ids": ids, "masked_lm_weights": weights, "next_sentence_labels": nsp},
    )

    def nll(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]

    expected_mlm = (nll(mlm_logits, ids) * weights).sum() / (weights.sum() + 1e-5)
    expected_nsp = nll(nsp_logits, nsp).mean()
    assert float(loss) == pytest.approx(expected_mlm + expected_nsp, rel=1e-5)

    named = dict(zip(STATISTICS, np.asarray(statistics).tolist(), strict=True))
    hits = (mlm_logits.argmax(-1) == ids) * weights
    assert named["mlm_correct"] == pytest.approx(hits.sum())
    assert named["mlm_weight"] == 4.0
    assert named["nsp_count"] == 2.0
    metrics = PretrainingMetrics.from_statistics(
        (np.asarray(statistics) * 3).tolist()
    )  # three steps
    assert metrics.loss == pytest.approx(expected_mlm + expected_nsp, rel=1e-5)
    assert metrics.mlm_accuracy == pytest.approx(hits.sum() / 4)


def test_google_names_cover_every_variable_and_round_trip(model, batch) -> None:  # type: ignore[no-untyped-def]
    from bert_trainer.model import assign_google_weights, build_pretrainer, google_weights

    weights = google_weights(model)
    other = build_pretrainer(TINY)
    assign_google_weights(other, weights)

    assert len(weights) == len(model.weights)
    assert weights["bert/encoder/layer_1/attention/self/query/kernel"].shape == (32, 32)
    assert weights["bert/encoder/layer_0/attention/output/dense/kernel"].shape == (32, 32)
    assert weights["bert/encoder/layer_0/attention/self/key/bias"].shape == (32,)
    assert weights["cls/seq_relationship/output_weights"].shape == (2, 32)
    expected = model(batch[0], training=False)
    actual = other(batch[0], training=False)
    np.testing.assert_array_equal(actual["mlm_logits"], expected["mlm_logits"])
    np.testing.assert_array_equal(actual["nsp_logits"], expected["nsp_logits"])


def test_assigning_a_wrong_shape_changes_nothing(model) -> None:  # type: ignore[no-untyped-def]
    from bert_trainer.model import assign_google_weights, google_weights

    before = google_weights(model)
    wrong = {
        "bert/pooler/dense/bias": np.ones(32, "float32"),
        "bert/embeddings/word_embeddings": np.zeros((99, 32), "float32"),
    }
    with pytest.raises(ValueError, match=r"word_embeddings: expected \[100, 32\], got \[99, 32\]"):
        assign_google_weights(model, wrong)
    np.testing.assert_array_equal(
        google_weights(model)["bert/pooler/dense/bias"], before["bert/pooler/dense/bias"]
    )


def test_sequence_length_may_be_shorter_than_position_table(model) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    features, _ = batch_of([make_instance(rng, seq_length=16) for _ in range(2)])

    assert SEQ_LENGTH > 16
    assert tuple(model(features)["mlm_logits"].shape) == (2, PREDICTIONS, TINY.vocab_size)


def test_replicas_shares_of_the_loss_add_up_to_the_global_batchs() -> None:
    """Halves with unequal mask counts: their shares sum to the loss of the whole batch."""
    from bert_trainer.model import STATISTICS, PretrainingMetrics, pretraining_loss

    rng = np.random.default_rng(1)
    outputs = {
        "mlm_logits": rng.normal(size=(4, 3, 5)).astype("float32"),
        "nsp_logits": rng.normal(size=(4, 2)).astype("float32"),
    }
    labels = {
        "masked_lm_ids": rng.integers(0, 5, size=(4, 3)).astype("int32"),
        "masked_lm_weights": np.array([[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 0, 0]], "float32"),
        "next_sentence_labels": np.array([0, 1, 1, 0], dtype="int32"),
    }
    whole, whole_stats = pretraining_loss(outputs, labels)
    totals = (np.float32(8.0), np.float32(4.0))
    halves = [
        pretraining_loss(
            {k: v[part] for k, v in outputs.items()},
            {k: v[part] for k, v in labels.items()},
            totals,
        )
        for part in (slice(0, 2), slice(2, 4))
    ]
    assert float(halves[0][0] + halves[1][0]) == pytest.approx(float(whole), rel=1e-5)
    # Per-replica normalisation (Google's, per core) would give a different loss here.
    per_replica = [pretraining_loss(
        {k: v[part] for k, v in outputs.items()}, {k: v[part] for k, v in labels.items()}
    )[0] for part in (slice(0, 2), slice(2, 4))]  # fmt: skip
    assert abs(float(sum(per_replica)) / 2 - float(whole)) > 1e-3
    summed = np.asarray(halves[0][1]) + np.asarray(halves[1][1])
    np.testing.assert_allclose(summed, np.asarray(whole_stats), rtol=1e-5)
    named = dict(zip(STATISTICS, summed.tolist(), strict=True))
    assert named["steps"] == pytest.approx(1.0)
    assert PretrainingMetrics.from_statistics(summed.tolist()).loss == pytest.approx(
        float(whole), rel=1e-5
    )


def test_bfloat16_keeps_the_attention_softmax_and_the_logits_in_float32(batch) -> None:  # type: ignore[no-untyped-def]
    import keras

    from bert_trainer.model import build_pretrainer
    from bert_trainer.model.pretrainer import Float32Softmax

    model = build_pretrainer(TINY, dtype="mixed_bfloat16")
    assert model.backbone.compute_dtype == "bfloat16"  # the encoder does run in bf16
    outputs = model(batch[0], training=False)
    dtypes = [keras.backend.standardize_dtype(outputs[k].dtype) for k in outputs]
    assert dtypes == ["float32", "float32"]
    softmaxes = [e._self_attention_layer._softmax for e in model.backbone.transformer_layers]
    assert all(isinstance(s, Float32Softmax) for s in softmaxes)
    # Close to the float32 model with the same weights (bf16 matmuls, float32 logits).
    reference = build_pretrainer(TINY)
    reference.set_weights(model.get_weights())
    expected = np.asarray(reference(batch[0], training=False)["mlm_logits"])
    got = np.asarray(outputs["mlm_logits"])
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()
    # It survives serialisation (the swap is made again on deserialising).
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(
        clone.backbone.transformer_layers[0]._self_attention_layer._softmax, Float32Softmax
    )


def test_the_float32_softmax_rounds_only_its_result_to_bfloat16() -> None:
    import keras

    from bert_trainer.model.pretrainer import Float32Softmax

    # Scores that a bfloat16 softmax gets visibly wrong: many near-equal large values.
    # They reach the layer in bfloat16 (the attention's einsum makes them), so the exact
    # softmax to compare with is that of the rounded scores.
    scores = np.linspace(30.0, 34.0, 64, dtype="float32")[None, :]
    rounded = np.asarray(keras.ops.cast(keras.ops.cast(scores, "bfloat16"), "float32"))
    shifted = np.exp(rounded - rounded.max())
    exact = shifted / shifted.sum()
    ours = np.asarray(keras.ops.cast(Float32Softmax(dtype="mixed_bfloat16")(scores), "float32"))
    # Only the final rounding to bfloat16. (TensorFlow's CPU kernel happens to accumulate
    # a bfloat16 softmax in float32 too; JAX's, the TPU runtime's, does not: the layer
    # makes it so on every backend.)
    assert np.abs(ours - exact).max() <= 2**-8 * exact.max()
