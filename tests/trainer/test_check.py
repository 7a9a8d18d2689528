"""The pre-flight check of a job's inputs, on the GCS emulator: what it finds, what it
never says, and how the ``check`` command reports it to the operator."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.api import BertPretrainJob
from bert_pretrain_operator.render.trainer_config import check_config
from bert_trainer import __main__ as entry
from bert_trainer import contract
from bert_trainer.check import check_inputs
from bert_trainer.config import CheckConfig, CheckReport, JobRef, TrainerConfig
from bert_trainer.storage import InputError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: A string only an object's contents hold: no message may repeat it.
SECRET = "team-b-secret-7731"


@pytest.fixture
def bucket(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
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
    report = check_inputs(check_config(_checkpoint_job(bucket.name)))
    assert report.vocab_size == 6
    assert report.dimensions is not None and report.dimensions.hidden_size == 128


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
    with pytest.raises(InputError) as problem:
        check_inputs(check_config(_checkpoint_job(bucket.name)))
    message = str(problem.value)
    assert message.startswith("spec.model.initCheckpoint: gs://") and failure in message
    assert SECRET not in message and "30522" not in message and " 3 " not in message


def _continued_job(bucket: str) -> BertPretrainJob:
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc["metadata"].update(namespace="team-a", uid="u", generation=1)
    doc["spec"]["data"] = {"tfrecords": f"gs://{bucket}/records/*.tfrecord"}
    doc["spec"]["model"] = {"initFromOutput": f"gs://{bucket}/runs/phase1"}
    return BertPretrainJob.from_manifest(doc)


@pytest.mark.parametrize("checkpoint", ["ckpt-40.index", "ckpt-40.npz"])
def test_another_jobs_output_resolves_to_the_config_beside_its_checkpoints(
    bucket: Any, checkpoint: str
) -> None:
    bucket.blob("records/part-0.tfrecord").upload_from_string(b"r")
    bucket.blob(f"runs/phase1/checkpoints/{checkpoint}").upload_from_string(b"c")
    bucket.blob("runs/phase1/checkpoints/bert_config.json").upload_from_string(_config(6))
    # A trained vocab may stop short of the vocabSize the model embeds: 5 tokens of 6.
    bucket.blob("runs/phase1/checkpoints/vocab.txt").upload_from_string("a\nb\nc\nd\ne\n")
    report = check_inputs(check_config(_continued_job(bucket.name)))
    assert report.vocab_size == 6  # the model's, from the config
    assert report.dimensions is not None and report.dimensions.num_layers == 2
    bucket.blob("runs/phase1/checkpoints/vocab.txt").upload_from_string("t\n" * 7)
    with pytest.raises(InputError, match="disagree on the vocabulary's size"):
        check_inputs(check_config(_continued_job(bucket.name)))


def test_an_output_without_checkpoints_is_bad_input_naming_the_field(bucket: Any) -> None:
    bucket.blob("records/part-0.tfrecord").upload_from_string(b"r")
    # The config and vocab are there, as after a train stage that saved nothing yet.
    bucket.blob("runs/phase1/checkpoints/bert_config.json").upload_from_string(_config(6))
    with pytest.raises(InputError) as problem:
        check_inputs(check_config(_continued_job(bucket.name)))
    assert str(problem.value).startswith(
        f"spec.model.initFromOutput: no checkpoint (ckpt-N) in gs://{bucket.name}/runs/phase1/"
        "checkpoints"
    )


def _run_check(check: CheckConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    config = tmp_path / "config.json"
    config.write_text(
        TrainerConfig(job=JobRef(namespace="team-a", name="j"), check=check).model_dump_json(
            by_alias=True, exclude_none=True
        )
    )
    message = tmp_path / "termination-log"
    monkeypatch.setenv(contract.ENV_TERMINATION_MESSAGE_PATH, str(message))
    code = entry.main(["check", "--config", str(config)])
    return f"{code} {message.read_text()}"


def test_the_check_command_reports_its_findings_in_the_termination_message(
    bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket.blob("corpus/a.txt").upload_from_string("One.\n")
    bucket.blob("vocab.txt").upload_from_string("[PAD]\n[UNK]\nthe\n")
    check = CheckConfig(
        corpus=[f"gs://{bucket.name}/corpus/*.txt"], vocab=f"gs://{bucket.name}/vocab.txt"
    )
    code, message = _run_check(check, tmp_path, monkeypatch).split(" ", 1)
    assert code == str(contract.EXIT_OK)
    assert CheckReport.model_validate_json(message) == CheckReport(vocab_size=3)
    assert len(message.encode()) < 4096, "Kubernetes keeps 4 KiB of a termination message"


def test_a_missing_input_exits_as_bad_input_naming_its_field(
    bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket.blob("corpus/a.txt").upload_from_string("One.\n")
    check = CheckConfig(
        corpus=[f"gs://{bucket.name}/corpus/*.txt", f"gs://{bucket.name}/more/*.txt"]
    )
    code, message = _run_check(check, tmp_path, monkeypatch).split(" ", 1)
    assert code == str(contract.EXIT_BAD_INPUT)
    assert message.strip() == (
        f"check: spec.data.corpus[1]: no object matches gs://{bucket.name}/more/*.txt"
    )
    missing = CheckConfig(tfrecords=f"gs://{bucket.name}/r/*.tfrecord")
    code, message = _run_check(missing, tmp_path, monkeypatch).split(" ", 1)
    assert code == str(contract.EXIT_BAD_INPUT) and "spec.data.tfrecords" in message
