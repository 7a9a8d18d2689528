"""Google's TF1 BERT names → HuggingFace ``BertForPreTraining`` parameter names.

HuggingFace's own TF1 converter walks the same names: ``/`` becomes ``.``,
``layer_N`` becomes ``layer.N``, layer-norm ``gamma``/``beta`` become
``weight``/``bias``, embedding tables gain ``.weight``, and dense ``kernel``s
(``[in, out]``) become ``weight``s stored ``[out, in]`` as torch.nn.Linear
keeps them. ``cls/seq_relationship/output_weights`` is already ``[out, in]``.
The masked-LM decoder weight and bias are tied to the word embeddings and
``cls.predictions.bias`` in HuggingFace, so they are not written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

_LAYER = re.compile(r"^layer_(\d+)$")
_EMBEDDING_TABLES = frozenset({"word_embeddings", "position_embeddings", "token_type_embeddings"})
_LEAVES = {"gamma": "weight", "beta": "bias", "bias": "bias", "output_weights": "weight"}


def hf_name(google_name: str) -> tuple[str, bool]:
    """The HuggingFace name of ``google_name`` and whether the array is transposed."""
    *path, leaf = google_name.split("/")
    parts = [_LAYER.sub(r"layer.\1", part) for part in path]
    if leaf in _EMBEDDING_TABLES:
        return ".".join([*parts, leaf, "weight"]), False
    if leaf == "kernel":
        return ".".join([*parts, "weight"]), True
    if leaf == "output_bias":
        # cls/predictions/output_bias → cls.predictions.bias, and
        # cls/seq_relationship/output_bias → cls.seq_relationship.bias.
        return ".".join([*parts, "bias"]), False
    if leaf in _LEAVES:
        return ".".join([*parts, _LEAVES[leaf]]), False
    raise ValueError(f"no HuggingFace name for {google_name}")


def to_hf_state_dict(google_weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename and re-lay-out Google-named weights as a HuggingFace state dict."""
    state: dict[str, np.ndarray] = {}
    for name, value in google_weights.items():
        hf, transposed = hf_name(name)
        array = np.asarray(value, dtype=np.float32)
        # safetensors stores the bytes as laid out: transposes must be materialised.
        state[hf] = np.ascontiguousarray(array.T if transposed else array)
    return state
