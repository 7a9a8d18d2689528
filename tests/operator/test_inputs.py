"""The operator's input check, on the GCS emulator: what it finds, and what it never says."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.api import BertPretrainJob
from bert_pretrain_operator.inputs import InputProblem, resolve
from bpj_devstack import plane

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: A string only an object's contents hold: no message may repeat it.
SECRET = "team-b-secret-7731"


@pytest.fixture
def bucket(devstack: plane.StackState, monkeypatch: pytest.MonkeyPatch) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", devstack.gcs_endpoint)
    client = storage.Client(project="bpj-test", credentials=AnonymousCredentials())
    return client.create_bucket(f"bpj-inputs-{uuid.uuid4().hex[:10]}")


def _checkpoint_job(bucket: str) -> BertPretrainJob:
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc["metadata"].update(namespace="team-a", uid="u", generation=1)
    doc["spec"]["data"] = {"corpus": [f"gs://{bucket}/corpus/*.txt"]}
    doc["spec"]["model"] = {"initCheckpoint": f"gs://{bucket}/ckpt/bert_model.ckpt"}
    return BertPretrainJob.from_manifest(doc)


def _config(vocab_size: Any) -> str:
    return json.dumps(
        {
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 512,
            "vocab_size": vocab_size,
        }
    )


def test_a_consistent_checkpoint_resolves_to_its_dimensions(bucket: Any) -> None:
    bucket.blob("corpus/a.txt").upload_from_string("One.\n")
    bucket.blob("ckpt/bert_model.ckpt.index").upload_from_string(b"i")
    bucket.blob("ckpt/bert_config.json").upload_from_string(_config(6))
    bucket.blob("ckpt/vocab.txt").upload_from_string("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    resolved = resolve(_checkpoint_job(bucket.name))
    assert resolved.vocab_size == 6
    assert resolved.dimensions is not None and resolved.dimensions.hidden_size == 128


@pytest.mark.parametrize(
    ("config", "vocab", "failure"),
    [
        (_config(SECRET), "a\nb\n", "is not a BERT config"),
        (f'{{"hidden_size": "{SECRET}"}}', "a\nb\n", "is not a BERT config"),
        (f"not json {SECRET}", "a\nb\n", "is not a BERT config"),
        (_config(30522), f"{SECRET}\n" * 3, "disagree on the vocabulary's size"),
    ],
)
def test_a_bad_checkpoint_is_named_without_quoting_it(
    bucket: Any, config: str, vocab: str, failure: str
) -> None:
    bucket.blob("corpus/a.txt").upload_from_string("One.\n")
    bucket.blob("ckpt/bert_model.ckpt.index").upload_from_string(b"i")
    bucket.blob("ckpt/bert_config.json").upload_from_string(config)
    bucket.blob("ckpt/vocab.txt").upload_from_string(vocab)
    with pytest.raises(InputProblem) as problem:
        resolve(_checkpoint_job(bucket.name))
    message = str(problem.value)
    assert message.startswith("spec.model.initCheckpoint: gs://") and failure in message
    assert SECRET not in message and "30522" not in message and " 3 " not in message
