"""BERT with Google's pretraining heads, on top of keras-hub's ``BertBackbone``.

The backbone is keras-hub's; the two heads reproduce google-research/bert's
``cls/predictions`` (a dense + gelu + layer-norm transform, then logits through
the token embedding with an output bias) and ``cls/seq_relationship`` (two
logits from the pooled ``[CLS]`` output), so Google's TF1 checkpoints load
into it and HuggingFace's ``BertForPreTraining`` can load what it learns.

Under a mixed bfloat16 policy (``precision: bfloat16``, the TPU's) the encoder's
matmuls run in bfloat16, but the two places where bfloat16's 8-bit mantissa hurts
stay in float32, as google-research/bert's and the TensorFlow Model Garden's bf16
BERT keep them: each attention softmax (``Float32Softmax``: computed in float32,
its probabilities handed back in bfloat16) and the pretraining heads, whose logits
(the masked-LM's over the whole vocabulary) are computed and returned in float32.
"""

from __future__ import annotations

from typing import Any

import keras
import keras_hub

from bert_trainer.config import BertModelConfig

LAYER_NORM_EPSILON = 1e-12


def gelu_approximate(x: Any) -> Any:
    return keras.activations.gelu(x, approximate=True)


def bert_initializer(stddev: float) -> keras.initializers.Initializer:
    return keras.initializers.TruncatedNormal(stddev=stddev)


@keras.saving.register_keras_serializable(package="bert_trainer")
class Float32Softmax(keras.layers.Softmax):  # type: ignore[misc]
    """A softmax computed in float32, returned in the layer's compute dtype."""

    def call(self, inputs: Any, mask: Any = None) -> Any:
        probabilities = super().call(keras.ops.cast(inputs, "float32"), mask)
        return keras.ops.cast(probabilities, self.compute_dtype)


@keras.saving.register_keras_serializable(package="bert_trainer")
class BertPretrainer(keras.Model):  # type: ignore[misc]
    """A ``BertBackbone`` with masked-LM and next-sentence-prediction heads.

    Inputs (a dict, all int32): ``token_ids``, ``segment_ids`` and
    ``padding_mask`` of shape ``[batch, seq]`` as for ``BertBackbone``, and
    ``mask_positions`` of shape ``[batch, predictions]``.
    Outputs (a dict): ``mlm_logits`` ``[batch, predictions, vocab]`` and
    ``nsp_logits`` ``[batch, 2]`` (index 0 means "B follows A", as in Google's data).

    Args:
        backbone: the encoder; its token embedding doubles as the masked-LM
            output projection (weights tied, as in Google's BERT).
        attention_dropout: dropout on the attention probabilities. keras-hub's
            backbone uses one rate for everything; when this is given it
            replaces the rate inside the attention layers only. None keeps
            the backbone's rate.
        initializer_range: standard deviation of the heads' initial weights.
    """

    def __init__(
        self,
        backbone: keras_hub.models.BertBackbone,
        attention_dropout: float | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        # === Layers ===
        self.backbone = backbone
        self.masked_lm_head = keras_hub.layers.MaskedLMHead(
            vocabulary_size=backbone.vocabulary_size,
            token_embedding=backbone.token_embedding,
            intermediate_activation=gelu_approximate,
            layer_norm_epsilon=LAYER_NORM_EPSILON,
            kernel_initializer=bert_initializer(initializer_range),
            dtype="float32",  # the logits, whatever the backbone's policy
            name="masked_lm_head",
        )
        self.next_sentence_head = keras.layers.Dense(
            2,
            kernel_initializer=bert_initializer(initializer_range),
            dtype="float32",
            name="next_sentence_head",
        )
        if attention_dropout is not None:
            _set_attention_dropout(backbone, attention_dropout)
        if backbone.compute_dtype != "float32":
            _keep_softmax_and_logits_in_float32(backbone)

        # === Functional Model ===
        inputs = {
            **backbone.input,
            "mask_positions": keras.Input(shape=(None,), dtype="int32", name="mask_positions"),
        }
        encoded = backbone(backbone.input)
        outputs = {
            "mlm_logits": self.masked_lm_head(encoded["sequence_output"], inputs["mask_positions"]),
            "nsp_logits": self.next_sentence_head(encoded["pooled_output"]),
        }
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range

    def get_config(self) -> dict[str, Any]:
        # A functional model's default config is its layer graph, which the
        # constructor cannot take; keras-hub's tasks serialise the backbone instead.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BertPretrainer:
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


def build_pretrainer(config: BertModelConfig, dtype: str | None = None) -> BertPretrainer:
    """A randomly initialised pretrainer with the dimensions of ``config``.

    ``dtype`` is a Keras dtype policy name (``"mixed_bfloat16"`` on TPU);
    variables stay float32 under mixed policies.
    """
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=config.vocab_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size,
        dropout=config.hidden_dropout,
        max_sequence_length=config.max_position_embeddings,
        num_segments=config.type_vocab_size,
        dtype=dtype,
    )
    if config.initializer_range != 0.02:
        # keras-hub initialises its backbone with stddev 0.02 and takes no
        # argument for it; re-draw so a config asking otherwise gets what it asks.
        _reinitialise(backbone, config.initializer_range)
    return BertPretrainer(
        backbone,
        attention_dropout=config.attention_dropout,
        initializer_range=config.initializer_range,
        name="bert_pretrainer",
    )


def _set_attention_dropout(backbone: keras_hub.models.BertBackbone, rate: float) -> None:
    # keras MultiHeadAttention reads `_dropout` at call time to choose between
    # the fused kernel (no dropout) and the explicit one, and applies
    # `_dropout_layer`; both are set here because neither keras-hub nor keras
    # exposes the attention rate apart from the hidden rate.
    for encoder in backbone.transformer_layers:
        attention = encoder._self_attention_layer
        if not hasattr(attention, "_dropout_layer"):
            raise RuntimeError(
                "keras MultiHeadAttention changed: cannot set the attention dropout rate"
            )
        attention._dropout = rate
        dropout = attention._dropout_layer
        dropout.rate = rate
        if rate > 0 and not hasattr(dropout, "seed_generator"):
            # keras' Dropout makes its seed generator only when built with a rate above
            # 0: with hiddenDropout 0 there is none, and the first training step would
            # fail. The layer's state is locked once built; this is the one addition.
            tracker = dropout._tracker
            tracker.unlock()
            try:
                dropout.seed_generator = keras.random.SeedGenerator(dropout.seed)
            finally:
                tracker.lock()


def _keep_softmax_and_logits_in_float32(backbone: keras_hub.models.BertBackbone) -> None:
    # The tied token embedding computes the masked-LM logits (its reverse projection):
    # in float32, reading the bfloat16 transform's output.
    backbone.token_embedding.reverse_dtype = "float32"
    for encoder in backbone.transformer_layers:
        attention = encoder._self_attention_layer
        softmax = getattr(attention, "_softmax", None)
        if not isinstance(softmax, keras.layers.Softmax):
            raise RuntimeError("keras MultiHeadAttention changed: cannot keep its softmax float32")
        if isinstance(softmax, Float32Softmax):
            continue
        tracker = attention._tracker
        tracker.unlock()  # a built layer's sub-layers are locked; this is the one swap
        try:
            attention._softmax = Float32Softmax(axis=softmax.axis, dtype=attention.dtype_policy)
        finally:
            tracker.lock()


def _reinitialise(backbone: keras_hub.models.BertBackbone, stddev: float) -> None:
    initializer = bert_initializer(stddev)
    for variable in backbone.weights:
        if variable.path.endswith(("kernel", "embeddings")):
            variable.assign(initializer(variable.shape, variable.dtype))
