"""The ``export`` command: the latest checkpoint as a HuggingFace BERT directory.

transformers 5 has no TensorFlow loader, so the directory is written directly:
``config.json`` (``BertForPreTraining``), ``model.safetensors`` (HuggingFace's
names and layouts, float32), ``vocab.txt`` and the tokenizer's
``tokenizer_config.json`` / ``special_tokens_map.json``.
``BertForPreTraining.from_pretrained`` and ``AutoTokenizer.from_pretrained``
load it as is. Local paths and ``gs://`` alike.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import safetensors.numpy

from bert_trainer import storage
from bert_trainer.config import BertModelConfig, ExportConfig, TrainerConfig
from bert_trainer.export.hf_names import to_hf_state_dict
from bert_trainer.model import build_pretrainer, google_weights
from bert_trainer.storage import InputError
from bert_trainer.train.checkpoint import restore_model

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
#: transformers' name for the tanh-approximated GELU that Google's bert_config.json
#: calls "gelu" (transformers' "gelu" is the exact one).
HIDDEN_ACT = "gelu_new"
"""The tanh approximation of gelu, which Google's BERT and keras-hub compute;
HuggingFace's "gelu" is the exact erf form and would shift every logit slightly."""


def run_export(config: TrainerConfig) -> None:
    """Write the HuggingFace directory ``config.export.output_dir``."""
    if config.export is None:
        raise InputError("the trainer config has no 'export' section")
    export(config.export)


def export(settings: ExportConfig) -> str:
    """Export the newest readable checkpoint; returns the checkpoint's prefix."""
    vocab_text = storage.read_text(settings.vocab)
    tokens = vocab_text.splitlines()
    _check_vocab(settings.vocab, tokens, settings.model)
    model = build_pretrainer(settings.model)
    checkpoint = restore_model(settings.checkpoint_dir, model)
    log.info("exporting %s to %s", checkpoint, settings.output_dir)
    state = to_hf_state_dict(google_weights(model))
    files = {
        "model.safetensors": safetensors.numpy.save(state, metadata={"format": "pt"}),
        "config.json": _json(hf_config(settings.model, pad_token_id=tokens.index("[PAD]"))),
        "vocab.txt": vocab_text.encode("utf-8"),
        "tokenizer_config.json": _json(tokenizer_config(settings)),
        "special_tokens_map.json": _json(SPECIAL_TOKENS),
    }
    for name, data in files.items():
        storage.write_bytes(storage.join(settings.output_dir, name), data)
    return checkpoint


def hf_config(model: BertModelConfig, pad_token_id: int = 0) -> dict[str, Any]:
    """transformers' ``BertConfig`` for ``model``, as config.json holds it."""
    return {
        "architectures": ["BertForPreTraining"],
        "model_type": "bert",
        **model.google_config(),
        "hidden_act": HIDDEN_ACT,
        "layer_norm_eps": 1e-12,
        "pad_token_id": pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


def tokenizer_config(settings: ExportConfig) -> dict[str, Any]:
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": settings.lowercase,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": settings.model.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        **SPECIAL_TOKENS,
    }


def _check_vocab(path: str, tokens: list[str], model: BertModelConfig) -> None:
    if len(tokens) > model.vocab_size:
        raise InputError(
            f"{path} has {len(tokens)} tokens but the model embeds only {model.vocab_size}"
        )
    missing = [token for token in SPECIAL_TOKENS.values() if token not in tokens]
    if missing:
        raise InputError(f"{path} lacks the special tokens {missing}")


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")
