"""Check a job's GCS inputs before any stage starts, and read the facts they fix.

Failing here costs nothing; failing on a TPU slice after the pods were
scheduled costs slice-minutes. So before the first Job is created the operator
checks that the corpus or records exist, that a given vocab is readable, and
that an init checkpoint has its index, bert_config.json and a vocab of the
size the config declares. A problem becomes a ``BadInput`` condition naming the
field and the object.

Messages name the field, the URI and the failure (missing, not readable, not a BERT
config, sizes that disagree), never what an object holds: the status and Events are
read by the job's submitters, and the read here is the operator's.
"""

from __future__ import annotations

import json

from bert_pretrain_operator.api import BertPretrainJob, Dimensions
from bert_pretrain_operator.render.trainer_config import ResolvedInputs, layout
from bert_trainer import storage


class InputProblem(Exception):
    """A user input in GCS is missing or inconsistent; the message names the field."""


def _count_vocab(uri: str, field: str) -> int:
    try:
        lines = [line for line in storage.read_text(uri).splitlines() if line.strip()]
    except storage.InputError as exc:
        raise InputProblem(f"{field}: {exc}") from exc
    if not lines:
        raise InputProblem(f"{field}: {uri} is empty")
    return len(lines)


def _require_matches(pattern: str, field: str) -> None:
    try:
        found = storage.glob(pattern)
    except storage.InputError as exc:
        raise InputProblem(f"{field}: {exc}") from exc
    if not found:
        raise InputProblem(f"{field}: no object matches {pattern}")


def resolve(job: BertPretrainJob) -> ResolvedInputs:
    """Verify the inputs exist and return what they fix (vocab size, dimensions)."""
    spec = job.spec
    data = spec.data
    for i, pattern in enumerate(data.corpus or []):
        _require_matches(pattern, f"spec.data.corpus[{i}]")
    if data.tfrecords:
        _require_matches(data.tfrecords, "spec.data.tfrecords")
    if spec.model.init_checkpoint:
        return _resolve_checkpoint(job)
    if data.vocab:
        return ResolvedInputs(vocab_size=_count_vocab(data.vocab, "spec.data.vocab"))
    return ResolvedInputs()


def _resolve_checkpoint(job: BertPretrainJob) -> ResolvedInputs:
    prefix = job.spec.model.init_checkpoint
    assert prefix
    paths = layout(job)
    field = "spec.model.initCheckpoint"
    if not storage.exists(prefix + ".index"):
        raise InputProblem(
            f"{field}: {prefix}.index does not exist (is this a checkpoint "
            "prefix such as .../bert_model.ckpt?)"
        )
    assert paths.init_checkpoint_config
    try:
        cfg = json.loads(storage.read_text(paths.init_checkpoint_config))
        dims = Dimensions(
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
        )
        vocab_size = int(cfg["vocab_size"])
    except storage.InputError as exc:
        raise InputProblem(f"{field}: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        # Not the parser's words: they would quote the object.
        raise InputProblem(
            f"{field}: {paths.init_checkpoint_config} is not a BERT config (a JSON object "
            "with integer hidden_size, num_hidden_layers, num_attention_heads, "
            "intermediate_size and vocab_size)"
        ) from exc
    lines = _count_vocab(paths.vocab, field + " (vocab.txt beside it)")
    if lines != vocab_size:
        raise InputProblem(
            f"{field}: {paths.vocab} and {paths.init_checkpoint_config} disagree on the "
            "vocabulary's size; they must come from the same checkpoint"
        )
    return ResolvedInputs(vocab_size=vocab_size, dimensions=dims)
