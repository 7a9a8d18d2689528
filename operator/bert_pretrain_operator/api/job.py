"""The ``BertPretrainJob`` resource as a whole: metadata rules and immutability.

Rules that need more than the spec live here, at the root of the schema: the
name (children are named after it) and transition rules that freeze parts of
the spec once the job has started. Transition rules compare the new object with
the stored one (``oldSelf``), so the offline validator mirrors them with
``transition_violations(old, new)`` instead of a model validator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from bert_pretrain_operator.api.cel import Reason, Rule, RuledModel, violations
from bert_pretrain_operator.api.spec import BertPretrainJobSpec
from bert_pretrain_operator.api.status import BertPretrainJobStatus
from bert_trainer.contract import API_GROUP, API_VERSION, KIND, PLURAL

#: ``apiVersion`` of the resource.
API_GROUP_VERSION: Final = f"{API_GROUP}/{API_VERSION}"
SHORT_NAME: Final = "bpj"
#: ``kubectl get bert`` lists every kind in this category.
CATEGORY: Final = "bert"
__all__ = [
    "API_GROUP",
    "API_GROUP_VERSION",
    "API_VERSION",
    "CATEGORY",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "BertPretrainJob",
    "ObjectMeta",
    "transition_violations",
]

#: Longest metadata.name: the operator appends stage and attempt suffixes to it for
#: child Jobs and the training Service, whose names must stay within 63 characters.
NAME_MAX_LENGTH: Final = 40
#: Characters the API server appends to metadata.generateName.
GENERATED_SUFFIX_LENGTH: Final = 5
#: A DNS-1035 label: the training Job's headless Service is named after the job,
#: and Service names must start with a letter.
NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_NAME_RE: Final = re.compile(NAME_PATTERN)

#: CEL over the stored object: the job has started (the operator set startTime, or a
#: training attempt exists). From then on the IMMUTABLE_ONCE_STARTED fields are frozen.
STARTED_CEL: Final = (
    "has(oldSelf.status) && (has(oldSelf.status.startTime) "
    "|| (has(oldSelf.status.attempt) && oldSelf.status.attempt > 0))"
)
#: Spec fields (camelCase paths under spec) that cannot change once the job started.
#: They decide what the prepared records, the checkpoints and the export contain;
#: changing one mid-run would mix two different runs under one spec.output.
#: (trainSteps, learningRate, runPolicy, image, export and queueName stay mutable.)
IMMUTABLE_ONCE_STARTED: Final = (
    "data",
    "model",
    "tpu",
    "output",
    "training.globalBatchSize",
    "training.phases",
    "training.optimizer",
)


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta the API reads; the rest is kept as given."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @property
    def name_to_validate(self) -> str:
        """The name, or what generateName becomes (``x`` stands in for the random suffix)."""
        if self.name is not None:
            return self.name
        return (self.generate_name or "") + "x" * GENERATED_SUFFIX_LENGTH


def _name_ok(job: BertPretrainJob) -> bool:
    return _NAME_RE.fullmatch(job.metadata.name_to_validate) is not None


class BertPretrainJob(RuledModel):
    """A BertPretrainJob: one BERT pretraining run, from raw text to an exported model."""

    # Read-side model: objects from the cluster carry whatever status a newer or older
    # operator wrote, and the metadata is Kubernetes'. The spec itself stays strict.
    model_config = ConfigDict(extra="ignore")

    # The literals repeat bert_trainer.contract's API_GROUP/API_VERSION/KIND (a typing
    # Literal cannot be built from constants); test_models checks they agree.
    api_version: Literal["pretraining.bert.dev/v1alpha1"] = "pretraining.bert.dev/v1alpha1"
    kind: Literal["BertPretrainJob"] = "BertPretrainJob"
    metadata: ObjectMeta
    spec: BertPretrainJobSpec
    status: BertPretrainJobStatus | None = None

    rules: ClassVar[tuple[Rule[BertPretrainJob], ...]] = (
        Rule(
            rule=f"self.metadata.name.size() <= {NAME_MAX_LENGTH}",
            message=f"metadata.name: must be at most {NAME_MAX_LENGTH} characters "
            "(child Job and Service names are derived from it)",
            holds=lambda j: len(j.metadata.name_to_validate) <= NAME_MAX_LENGTH,
            field_path=".metadata.name",
        ),
        Rule(
            rule=f"self.metadata.name.matches('{NAME_PATTERN}')",
            message="metadata.name: must start with a letter and contain only lowercase "
            "letters, digits and '-' (a DNS-1035 label: it also names the training Service)",
            holds=_name_ok,
            field_path=".metadata.name",
        ),
    )

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> BertPretrainJob:
        """Parse and validate a manifest (a dict as in YAML/JSON, camelCase keys)."""
        return cls.model_validate(manifest)

    def started(self) -> bool:
        """True once the operator started the job (mirrors ``STARTED_CEL``)."""
        status = self.status
        return status is not None and (status.start_time is not None or (status.attempt or 0) > 0)


def _immutability_rule(path: str) -> Rule[tuple[BertPretrainJob, BertPretrainJob]]:
    def unchanged(pair: tuple[BertPretrainJob, BertPretrainJob]) -> bool:
        old, new = pair
        return not old.started() or _spec_value(old, path) == _spec_value(new, path)

    new, old = f"self.spec.{path}", f"oldSelf.spec.{path}"
    # Fields under spec's required sections may be absent (globalBatchSize with phases).
    same = (
        f"{new} == {old}"
        if "." not in path
        else f"(has({new}) ? has({old}) && {new} == {old} : !has({old}))"
    )
    return Rule(
        rule=f"!({STARTED_CEL}) || {same}",
        message=f"spec.{path}: cannot change once the job has started (status.startTime is "
        "set); create a new BertPretrainJob instead",
        holds=unchanged,
        field_path=f".spec.{path}",
        reason=Reason.FORBIDDEN,
    )


def _spec_value(job: BertPretrainJob, path: str) -> Any:
    # Compare the wire form (camelCase, defaults applied), as the API server does.
    value: Any = job.spec.model_dump(mode="json", by_alias=True)
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


#: Transition rules at the schema root (self = new object, oldSelf = stored object).
TRANSITION_RULES: Final = tuple(_immutability_rule(path) for path in IMMUTABLE_ONCE_STARTED)


def transition_violations(old: BertPretrainJob, new: BertPretrainJob) -> list[str]:
    """The messages of every transition rule an update from ``old`` to ``new`` breaks."""
    return violations((old, new), TRANSITION_RULES)


def root_rule_schemas() -> list[dict[str, str]]:
    """The root schema's ``x-kubernetes-validations``: metadata rules, then transitions."""
    return [rule.schema() for rule in BertPretrainJob.rules] + [
        rule.schema() for rule in TRANSITION_RULES
    ]
