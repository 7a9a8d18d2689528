"""Our variables under google-research/bert's TF1 names and layouts.

Google's checkpoint names (``bert/encoder/layer_3/attention/self/query/kernel``)
are the lingua franca of BERT weights: TF1 init reads them and the HuggingFace
export renames them. Keras' attention kernels are 3-D (``[hidden, heads,
head_dim]``) where Google's are 2-D, and Google stores the next-sentence
weights as ``[2, hidden]``; every other variable has the same layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bert_trainer.model.pretrainer import BertPretrainer

_EMBEDDINGS = {
    "bert/embeddings/word_embeddings": "token_embedding/embeddings",
    "bert/embeddings/position_embeddings": "position_embedding/embeddings",
    "bert/embeddings/token_type_embeddings": "segment_embedding/embeddings",
    "bert/embeddings/LayerNorm/gamma": "embeddings_layer_norm/gamma",
    "bert/embeddings/LayerNorm/beta": "embeddings_layer_norm/beta",
}
_LAYER = {
    "attention/self/query": "self_attention_layer/query",
    "attention/self/key": "self_attention_layer/key",
    "attention/self/value": "self_attention_layer/value",
    "attention/output/dense": "self_attention_layer/attention_output",
    "attention/output/LayerNorm": "self_attention_layer_norm",
    "intermediate/dense": "feedforward_intermediate_dense",
    "output/dense": "feedforward_output_dense",
    "output/LayerNorm": "feedforward_layer_norm",
}
_HEADS = {
    "bert/pooler/dense/kernel": "pooled_dense/kernel",
    "bert/pooler/dense/bias": "pooled_dense/bias",
    "cls/predictions/transform/dense/kernel": "masked_lm_head/intermediate_dense/kernel",
    "cls/predictions/transform/dense/bias": "masked_lm_head/intermediate_dense/bias",
    "cls/predictions/transform/LayerNorm/gamma": "masked_lm_head/intermediate_layer_norm/gamma",
    "cls/predictions/transform/LayerNorm/beta": "masked_lm_head/intermediate_layer_norm/beta",
    "cls/predictions/output_bias": "masked_lm_head/output_bias",
    "cls/seq_relationship/output_weights": "next_sentence_head/kernel",
    "cls/seq_relationship/output_bias": "next_sentence_head/bias",
}
_TRANSPOSED = frozenset({"cls/seq_relationship/output_weights"})


@dataclass(frozen=True)
class GoogleVariable:
    """One of our variables as Google names and shapes it."""

    name: str
    """Google's TF1 variable name, e.g. ``bert/pooler/dense/kernel``."""
    variable: Any
    """The Keras variable holding it."""
    shape: tuple[int, ...]
    """The shape in Google's layout."""
    transposed: bool
    """Google's layout is the transpose of ours (else a reshape)."""

    def to_google(self, value: np.ndarray) -> np.ndarray:
        return value.T if self.transposed else value.reshape(self.shape)

    def from_google(self, value: np.ndarray) -> np.ndarray:
        ours = tuple(self.variable.shape)
        return value.T.reshape(ours) if self.transposed else value.reshape(ours)


def google_variables(model: BertPretrainer) -> list[GoogleVariable]:
    """Every variable of ``model`` under its Google name, in Google's order."""
    by_path = {variable.path: variable for variable in model.weights}
    names = dict(_EMBEDDINGS)
    for index in range(len(model.backbone.transformer_layers)):
        for google, ours in _LAYER.items():
            leaves = ("gamma", "beta") if google.endswith("LayerNorm") else ("kernel", "bias")
            for leaf in leaves:
                names[f"bert/encoder/layer_{index}/{google}/{leaf}"] = (
                    f"transformer_layer_{index}/{ours}/{leaf}"
                )
    names.update(_HEADS)
    missing = sorted(set(names.values()) - by_path.keys())
    unmapped = sorted(by_path.keys() - set(names.values()))
    if missing or unmapped:
        raise RuntimeError(
            f"the model's variables changed: missing {missing}, without a Google name {unmapped}"
        )
    return [
        GoogleVariable(
            name,
            by_path[path],
            _google_shape(path, tuple(int(d) for d in by_path[path].shape), name in _TRANSPOSED),
            name in _TRANSPOSED,
        )
        for name, path in names.items()
    ]


def _google_shape(path: str, shape: tuple[int, ...], transposed: bool) -> tuple[int, ...]:
    if transposed:
        return shape[::-1]
    if "attention_output/kernel" in path:  # [heads, head_dim, hidden]
        return (shape[0] * shape[1], shape[2])
    if len(shape) == 3:  # query/key/value kernels: [hidden, heads, head_dim]
        return (shape[0], shape[1] * shape[2])
    if len(shape) == 2 and path.endswith("/bias"):  # query/key/value biases: [heads, head_dim]
        return (shape[0] * shape[1],)
    return shape


def google_weights(model: BertPretrainer) -> dict[str, np.ndarray]:
    """The model's current weights as ``{google_name: array in Google's layout}``."""
    return {
        entry.name: entry.to_google(np.asarray(entry.variable.numpy()))
        for entry in google_variables(model)
    }


def assign_google_weights(model: BertPretrainer, weights: Mapping[str, np.ndarray]) -> None:
    """Set the variables named in ``weights`` (Google names and layouts).

    Raises ValueError naming every shape mismatch before assigning anything,
    so a bad checkpoint never leaves the model half-initialised.
    """
    entries = {entry.name: entry for entry in google_variables(model)}
    unknown = sorted(weights.keys() - entries.keys())
    if unknown:
        raise ValueError(f"not variables of this model: {unknown}")
    mismatched = [
        f"{name}: expected {list(entries[name].shape)}, got {list(np.shape(value))}"
        for name, value in weights.items()
        if tuple(np.shape(value)) != entries[name].shape
    ]
    if mismatched:
        raise ValueError("shape mismatch: " + "; ".join(mismatched))
    for name, value in weights.items():
        entry = entries[name]
        entry.variable.assign(entry.from_google(np.asarray(value)))
