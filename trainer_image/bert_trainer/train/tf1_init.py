"""Initialising the model from a google-research/bert TF1 checkpoint.

The released checkpoints (``bert_model.ckpt``) name their variables
``bert/embeddings/…``, ``bert/encoder/layer_N/…``, ``bert/pooler/…``,
``cls/predictions/…`` and ``cls/seq_relationship/…``; ``model.google_names``
knows where each lives in our model. Every mismatch is reported at once as an
InputError, before any weight is touched: a wrong checkpoint is the user's input.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import tensorflow as tf

from bert_trainer import storage
from bert_trainer.config import BertModelConfig
from bert_trainer.model import BertPretrainer, assign_google_weights, google_variables
from bert_trainer.storage import InputError

log = logging.getLogger(__name__)

WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"
OPTIONAL_PREFIXES = ("cls/",)
"""Heads some checkpoints lack (e.g. ones saved after fine-tuning); left random then."""

# bert_config.json key → our BertModelConfig field.
_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
}


def init_from_tf1_checkpoint(
    model: BertPretrainer,
    model_config: BertModelConfig,
    checkpoint: str,
    bert_config: str | None = None,
    vocab: str | None = None,
) -> list[str]:
    """Load ``checkpoint``'s weights into ``model``; returns the Google names loaded.

    ``bert_config`` (the checkpoint's bert_config.json) and ``vocab`` (the
    vocab.txt the training records were made with), when given, must agree
    with ``model_config`` and with the checkpoint's vocabulary size.
    """
    try:
        reader = tf.train.load_checkpoint(checkpoint)
    except (tf.errors.OpError, ValueError) as e:
        raise InputError(f"cannot read the init checkpoint {checkpoint}: {e}") from e
    shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    if bert_config is not None:
        _check_bert_config(bert_config, model_config)
    if vocab is not None:
        _check_vocab(vocab, checkpoint, shapes)

    expected = {entry.name: entry.shape for entry in google_variables(model)}
    missing = [
        name for name in expected if name not in shapes and not name.startswith(OPTIONAL_PREFIXES)
    ]
    mismatched = [
        f"{name} is {list(shapes[name])} in the checkpoint, {list(shape)} in the model"
        for name, shape in expected.items()
        if name in shapes and shapes[name] != shape
    ]
    if missing or mismatched:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        raise InputError(
            f"the init checkpoint {checkpoint} does not fit the model: "
            + "; ".join(problems + mismatched)
        )
    loaded = [name for name in expected if name in shapes]
    skipped = sorted(set(expected) - set(loaded))
    if skipped:
        log.warning("init checkpoint lacks %s; these stay randomly initialised", skipped)
    assign_google_weights(model, {name: np.asarray(reader.get_tensor(name)) for name in loaded})
    log.info("initialised %d variables from %s", len(loaded), checkpoint)
    return loaded


def _check_bert_config(path: str, model_config: BertModelConfig) -> None:
    try:
        theirs = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not JSON: {e}") from e
    if not isinstance(theirs, dict):
        raise InputError(f"{path} does not hold a JSON object")
    differences = [
        f"{key} is {theirs[key]} there, {getattr(model_config, ours)} in the model"
        for key, ours in _CONFIG_KEYS.items()
        if key in theirs and theirs[key] != getattr(model_config, ours)
    ]
    activation = theirs.get("hidden_act", "gelu")
    if activation != "gelu":
        differences.append(f"hidden_act is {activation!r}; this BERT uses gelu")
    if differences:
        raise InputError(f"{path} does not match the model: " + "; ".join(differences))


def _check_vocab(path: str, checkpoint: str, shapes: dict[str, tuple[int, ...]]) -> None:
    if WORD_EMBEDDINGS not in shapes:
        return  # reported with the other missing variables
    tokens = len(storage.read_text(path).splitlines())
    rows = shapes[WORD_EMBEDDINGS][0]
    if tokens != rows:
        raise InputError(
            f"vocab mismatch: {path} has {tokens} tokens but {checkpoint} embeds {rows}; "
            "the records must be made with the checkpoint's own vocab.txt"
        )
