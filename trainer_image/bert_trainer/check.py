"""The pre-flight check of a job's GCS inputs (``python -m bert_trainer check``).

Failing here costs a CPU pod's minute; failing on a TPU slice after its pods were
scheduled costs slice-minutes. So before any stage the operator runs this as a
short Job, under the job's own service account: it reads what the job's stages
would read, with their identity, never the operator's (a tenant must not learn
through the operator what another tenant's bucket holds). It checks that the
corpus or records exist, that a given vocab is readable, and that an init
checkpoint has its index, bert_config.json and a vocab of the size the config
declares. What it learns (``CheckReport``: the vocabulary size, the checkpoint's
dimensions) goes to the termination message, which the operator reads from the
pod's status and keeps in the job's ``status.inputs``.

A problem raises ``InputError`` (exit ``EXIT_BAD_INPUT``), named by the spec field
it came from. Messages name the field, the URI and the failure (missing, not
readable, not a BERT config, sizes that disagree), never what an object holds.
"""

from __future__ import annotations

import json
import posixpath

from bert_trainer import storage
from bert_trainer.config import CheckConfig, CheckedDimensions, CheckReport
from bert_trainer.storage import InputError


def _count_vocab(uri: str, field: str) -> int:
    try:
        lines = [line for line in storage.read_text(uri).splitlines() if line.strip()]
    except InputError as exc:
        raise InputError(f"{field}: {exc}") from exc
    if not lines:
        raise InputError(f"{field}: {uri} is empty")
    return len(lines)


def _require_matches(pattern: str, field: str) -> None:
    try:
        found = storage.glob(pattern)
    except InputError as exc:
        raise InputError(f"{field}: {exc}") from exc
    if not found:
        raise InputError(f"{field}: no object matches {pattern}")


def check_inputs(config: CheckConfig) -> CheckReport:
    """Verify the inputs exist and return what they fix (vocab size, dimensions)."""
    for i, pattern in enumerate(config.corpus or []):
        _require_matches(pattern, f"spec.data.corpus[{i}]")
    if config.tfrecords:
        _require_matches(config.tfrecords, "spec.data.tfrecords")
    if config.init_checkpoint:
        return check_checkpoint(config.init_checkpoint, config.vocab)
    if config.vocab:
        return CheckReport(vocab_size=_count_vocab(config.vocab, "spec.data.vocab"))
    return CheckReport()


def check_checkpoint(prefix: str, given_vocab: str | None) -> CheckReport:
    """An init checkpoint's dimensions and vocabulary size (``bpj render`` reads them too)."""
    field = "spec.model.initCheckpoint"
    if not storage.exists(prefix + ".index"):
        raise InputError(
            f"{field}: {prefix}.index does not exist (is this a checkpoint "
            "prefix such as .../bert_model.ckpt?)"
        )
    directory = posixpath.dirname(prefix)
    config_uri = directory + "/bert_config.json"
    try:
        cfg = json.loads(storage.read_text(config_uri))
        dims = CheckedDimensions(
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
        )
        vocab_size = int(cfg["vocab_size"])
    except InputError as exc:
        raise InputError(f"{field}: {exc}") from exc
    except (ValueError, KeyError, TypeError):
        # Not the parser's words: they would quote the object.
        raise InputError(
            f"{field}: {config_uri} is not a BERT config (a JSON object with positive "
            "integer hidden_size, num_hidden_layers, num_attention_heads, "
            "intermediate_size and vocab_size)"
        ) from None
    vocab = given_vocab or directory + "/vocab.txt"
    lines = _count_vocab(
        vocab, "spec.data.vocab" if given_vocab else field + " (vocab.txt beside it)"
    )
    if lines != vocab_size:
        raise InputError(
            f"{field}: {vocab} and {config_uri} disagree on the vocabulary's size; they "
            "must come from the same checkpoint"
        )
    return CheckReport(vocab_size=vocab_size, dimensions=dims)
