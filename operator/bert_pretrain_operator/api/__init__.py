"""The BertPretrainJob API: models, the CRD generated from them, offline validation.

- ``spec`` / ``status``: pydantic models of the resource (one class per concern);
  their field docstrings are the ``kubectl explain`` text.
- ``job``: the whole resource (``BertPretrainJob``), metadata and immutability rules.
- ``cel``: rules written once as CEL (admission) and Python (offline).
- ``sizes``: BERT's named model sizes as data.
- ``crd``: the generator of ``crds/bertpretrainjobs.pretraining.bert.dev.yaml``.
- ``validation``: ``validate_document``, the offline twin of admission.
"""

from bert_pretrain_operator.api.job import API_GROUP_VERSION, BertPretrainJob, ObjectMeta
from bert_pretrain_operator.api.sizes import SIZES, Dimensions, ModelSize
from bert_pretrain_operator.api.spec import (
    BertPretrainJobSpec,
    CpuResources,
    DataSpec,
    ExportSpec,
    ModelSpec,
    Optimizer,
    Precision,
    PreparationSpec,
    ResolvedPhase,
    RunPolicy,
    SequenceLength,
    TpuSpec,
    TrainingPhase,
    TrainingSpec,
)
from bert_pretrain_operator.api.status import (
    BertPretrainJobStatus,
    Condition,
    ConditionStatus,
    InputsStatus,
    Phase,
    PreparationReport,
    PreparationStatus,
    StageJobs,
    TrainingPhaseStatus,
    TrainingProgress,
)

__all__ = [
    "API_GROUP_VERSION",
    "SIZES",
    "BertPretrainJob",
    "BertPretrainJobSpec",
    "BertPretrainJobStatus",
    "Condition",
    "ConditionStatus",
    "CpuResources",
    "DataSpec",
    "Dimensions",
    "ExportSpec",
    "InputsStatus",
    "ModelSize",
    "ModelSpec",
    "ObjectMeta",
    "Optimizer",
    "Phase",
    "Precision",
    "PreparationReport",
    "PreparationSpec",
    "PreparationStatus",
    "ResolvedPhase",
    "RunPolicy",
    "SequenceLength",
    "StageJobs",
    "TpuSpec",
    "TrainingPhase",
    "TrainingPhaseStatus",
    "TrainingProgress",
    "TrainingSpec",
]
