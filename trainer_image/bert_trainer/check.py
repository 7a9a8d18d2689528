"""The pre-flight check of a job's GCS inputs (``python -m bert_trainer check``).

Failing here costs a CPU pod's minute; failing on a TPU slice after its pods were
scheduled costs slice-minutes. So before any stage the operator runs this as a
short Job, under the job's own service account: it reads what the job's stages
would read, with their identity, never the operator's (a tenant must not learn
through the operator what another tenant's bucket holds). It checks that the
corpus or records exist, that a given vocab is readable, and that an init
checkpoint (Google's, or another job's output) has its files, bert_config.json and
a vocab of the size the config declares. What it learns (``CheckReport``: the
vocabulary size, the checkpoint's dimensions) goes to the termination message,
which the operator reads from the pod's status and keeps in the job's
``status.inputs``.

A problem raises ``InputError`` (exit ``EXIT_BAD_INPUT``), named by the spec field
it came from. Messages name the field, the URI and the failure (missing, not
readable, not a BERT config, sizes that disagree), never what an object holds.
"""

from __future__ import annotations

import json
import posixpath

from bert_trainer import storage
from bert_trainer.config import CheckConfig, CheckedDimensions, CheckReport
from bert_trainer.contract import CHECKPOINT_NAME
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
    weights = check_starting_weights(config)
    if weights is not None:
        return weights
    if config.vocab:
        return CheckReport(vocab_size=_count_vocab(config.vocab, "spec.data.vocab"))
    return CheckReport()


def check_starting_weights(config: CheckConfig) -> CheckReport | None:
    """The dimensions and vocabulary size of the weights the model starts from, if any.

    What ``bpj render`` reads too (with the user's credentials), to size the model.
    """
    if config.init_checkpoint:
        return check_checkpoint(config.init_checkpoint, config.vocab)
    if config.init_from_output:
        return check_output(config.init_from_output)
    return None


def check_checkpoint(prefix: str, given_vocab: str | None) -> CheckReport:
    """An init checkpoint's dimensions and vocabulary size."""
    field = "spec.model.initCheckpoint"
    if not storage.exists(prefix + ".index"):
        raise InputError(
            f"{field}: {prefix}.index does not exist (is this a checkpoint "
            "prefix such as .../bert_model.ckpt?)"
        )
    return _config_and_vocab(posixpath.dirname(prefix), field, given_vocab)


def check_output(output: str) -> CheckReport:
    """Another job's output: a checkpoint of ours, and the config and vocab beside it."""
    field = "spec.model.initFromOutput"
    directory = output.rstrip("/") + "/checkpoints"
    found = []
    for pattern in (f"{CHECKPOINT_NAME}-*.index", f"{CHECKPOINT_NAME}-*.npz"):
        try:
            found += storage.glob(f"{directory}/{pattern}")
        except InputError as exc:
            raise InputError(f"{field}: {exc}") from exc
    if not found:
        raise InputError(
            f"{field}: no checkpoint ({CHECKPOINT_NAME}-N) in {directory} (is this another "
            "job's spec.output, and has its train stage saved a checkpoint?)"
        )
    # A trained vocab may hold fewer tokens than the vocabSize the model embeds.
    return _config_and_vocab(directory, field, None, exact=False)


def _config_and_vocab(
    directory: str, field: str, given_vocab: str | None, *, exact: bool = True
) -> CheckReport:
    """The dimensions in ``directory``'s bert_config.json, checked against its vocab.txt.

    ``exact``: the vocab has as many tokens as the config's vocab_size (Google's
    releases); else at most as many (our runs embed spec.data.vocabSize rows, and a
    WordPiece vocab trained on a small corpus may stop short of it).
    """
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
    if lines > vocab_size or (exact and lines != vocab_size):
        raise InputError(
            f"{field}: {vocab} and {config_uri} disagree on the vocabulary's size; they "
            "must come from the same checkpoint"
        )
    return CheckReport(vocab_size=vocab_size, dimensions=dims)
