"""The pydantic models: wire format, defaults, helpers, and agreement with the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bert_pretrain_operator.api import (
    SIZES,
    BertPretrainJob,
    BertPretrainJobStatus,
    ModelSize,
    Phase,
    TrainingProgress,
)
from bert_pretrain_operator.api.job import API_GROUP_VERSION, IMMUTABLE_ONCE_STARTED
from bert_pretrain_operator.api.sizes import HEAD_SIZE, INTERMEDIATE_MULTIPLE
from bert_pretrain_operator.api.spec import (
    DEFAULT_MAX_PREDICTIONS_PER_SEQ,
    DEFAULT_MAX_SEQ_LENGTH,
    PREPARE_DEFAULTS,
    ModelSpec,
    SequenceLength,
    TrainingSpec,
)
from bert_pretrain_operator.api.status import EvalProgress
from bert_trainer import contract
from bert_trainer.config import PrepareConfig, TrainConfig
from tests.api.invalid_cases import BASES, updated

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_identity_matches_the_contract() -> None:
    job = BertPretrainJob.from_manifest(BASES["corpus"])
    assert job.api_version == API_GROUP_VERSION == f"{contract.API_GROUP}/{contract.API_VERSION}"
    assert job.kind == contract.KIND


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_round_trip_in_camel_case(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    job = BertPretrainJob.from_manifest(manifest)
    wire = job.spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert wire == manifest["spec"]


def test_defaults_follow_the_schema() -> None:
    spec = BertPretrainJob.from_manifest(BASES["corpus"]).spec
    # No schema default (they are forbidden with phases); the operator's: BERT's phase 1.
    assert spec.data.max_seq_length is None
    assert spec.sequence_lengths() == [SequenceLength(128, 20)]
    assert spec.data.lowercase is True
    assert spec.training.optimizer == "adamw"
    assert spec.training.precision == "float32"
    assert spec.export.hugging_face is True
    assert spec.run_policy.max_restarts == 3
    assert spec.run_policy.suspend is False
    assert spec.tpu.spot is False


def test_prepare_defaults_are_the_trainers() -> None:
    for name, value in PREPARE_DEFAULTS.items():
        assert PrepareConfig.model_fields[name].default == value, name


def test_schema_defaults_are_the_trainers() -> None:
    # The operator's defaults of the length (no schema default: phases forbid them).
    assert TrainConfig.model_fields["max_seq_length"].default == DEFAULT_MAX_SEQ_LENGTH
    assert (
        TrainConfig.model_fields["max_predictions_per_seq"].default
        == DEFAULT_MAX_PREDICTIONS_PER_SEQ
    )
    for name in (
        "learning_rate",
        "optimizer",
        "weight_decay",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "seed",
        "precision",
    ):
        assert TrainingSpec.model_fields[name].default == TrainConfig.model_fields[name].default


def test_prepare_setting_applies_operator_defaults() -> None:
    data = BertPretrainJob.from_manifest(BASES["corpus"]).spec.data
    assert data.prepare_setting("vocab_size") == 1000  # given
    assert data.prepare_setting("dupe_factor") == PREPARE_DEFAULTS["dupe_factor"]


def test_effective_warmup() -> None:
    training = TrainingSpec.model_validate({"globalBatchSize": 8, "trainSteps": 1_000_000})
    assert training.effective_warmup_steps == 10_000
    training = TrainingSpec.model_validate(
        {"globalBatchSize": 8, "trainSteps": 100, "warmupSteps": 7}
    )
    assert training.effective_warmup_steps == 7


@pytest.mark.parametrize("size", list(ModelSize))
def test_named_sizes_follow_berts_conventions(size: ModelSize) -> None:
    dims = SIZES[size]
    assert dims.num_heads * HEAD_SIZE == dims.hidden_size
    assert dims.intermediate_size == INTERMEDIATE_MULTIPLE * dims.hidden_size
    assert ModelSpec(size=size).dimensions() == dims


def test_google_research_bert_table() -> None:
    table = {name: (d.num_layers, d.hidden_size) for name, d in SIZES.items()}
    assert table == {
        "tiny": (2, 128),
        "mini": (4, 256),
        "small": (4, 512),
        "medium": (8, 512),
        "base": (12, 768),
        "large": (24, 1024),
    }


def test_explicit_dimensions() -> None:
    dims = ModelSpec.model_validate({"hiddenSize": 256, "numLayers": 4, "numHeads": 4}).dimensions()
    assert dims is not None
    assert dims.intermediate_size == 1024
    assert (
        ModelSpec.model_validate({"initCheckpoint": "gs://b-1/x/bert_model.ckpt"}).dimensions()
        is None
    )


def test_models_are_strict_like_the_api_server() -> None:
    with pytest.raises(ValidationError):
        TrainingSpec.model_validate({"globalBatchSize": "8", "trainSteps": 100})
    with pytest.raises(ValidationError):
        TrainingSpec.model_validate({"globalBatchSize": True, "trainSteps": 100})


def test_tpu_shape_comes_from_the_catalogue() -> None:
    spec = BertPretrainJob.from_manifest(BASES["records"]).spec
    shape = spec.tpu.shape()
    assert shape is not None
    assert (shape.chips, shape.vms) == (8, 2)


def test_progress_fields_are_the_trainers() -> None:
    aliases = tuple(f.alias for f in TrainingProgress.model_fields.values())
    assert aliases == contract.PROGRESS_FIELDS
    evaluated = tuple(f.alias for f in EvalProgress.model_fields.values())
    assert evaluated == contract.EVAL_FIELDS


def _status() -> dict[str, Any]:
    return {
        "observedGeneration": 2,
        "phase": "Training",
        "conditions": [
            {
                "type": "Prepared",
                "status": "True",
                "reason": "JobSucceeded",
                "message": "records written",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            }
        ],
        "jobs": {"prepare": "case-prepare", "train": "case-train-1"},
        "attempt": 1,
        "restarts": 0,
        "progress": {
            "step": 10,
            "totalSteps": 100,
            "loss": 7.5,
            "updatedTime": "2025-01-01T00:01:00Z",
        },
        "startTime": "2025-01-01T00:00:00Z",
        "kopf": {"progress": {"create": {"retries": 1}}},
        "fromTheFuture": 1,
    }


def test_status_parses_what_the_cluster_returns() -> None:
    doc = updated("corpus", {})
    doc["status"] = _status()
    job = BertPretrainJob.from_manifest(doc)
    assert job.status is not None
    assert job.status.phase is Phase.TRAINING
    assert job.status.progress is not None
    assert job.status.progress.step == 10
    assert job.status.kopf == {"progress": {"create": {"retries": 1}}}
    assert job.started()


def test_status_serialises_camel_case() -> None:
    status = BertPretrainJobStatus.model_validate(_status())
    wire = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["progress"]["totalSteps"] == 100
    assert wire["conditions"][0]["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert "fromTheFuture" not in wire


def test_unstarted_job() -> None:
    assert not BertPretrainJob.from_manifest(BASES["corpus"]).started()


def test_start_time_documents_the_frozen_fields() -> None:
    description = BertPretrainJobStatus.model_fields["start_time"].description or ""
    for path in IMMUTABLE_ONCE_STARTED:
        top, _, leaf = path.partition(".")
        assert f"spec.{top}" in description, path
        assert leaf in description, path
