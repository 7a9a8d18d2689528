"""Cross-field rules written once, enforced twice: by the API server and offline.

A ``Rule`` pairs a CEL expression (``x-kubernetes-validations`` in the CRD,
evaluated by the API server at admission) with a Python predicate that states
the same condition over the pydantic model (evaluated by ``bpj validate`` and
the operator). Both report the same message, and the message always names the
offending field, so a user sees one text whichever side caught the mistake.
Keeping the pair in one object, declared in the model class next to the fields
it constrains, is what keeps the two sides from drifting; the admission test
replays the same invalid manifests against both.

``RuledModel`` is the base of every API model: it copies its ``rules`` into its
JSON schema (whence the CRD generator picks them up) and checks them after
field validation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel, to_snake
from pydantic_core import PydanticCustomError

#: Key of a schema node's CEL rules in a Kubernetes structural schema.
VALIDATIONS_KEY = "x-kubernetes-validations"
#: The pydantic error type that carries rule violations (one message per line).
RULE_ERROR_TYPE = "bpj_rule"

M = TypeVar("M")


class Reason(StrEnum):
    """The ``reason`` of an ``x-kubernetes-validations`` rule (how the API server labels it)."""

    INVALID = "FieldValueInvalid"
    FORBIDDEN = "FieldValueForbidden"
    REQUIRED = "FieldValueRequired"


@dataclass(frozen=True)
class Rule(Generic[M]):
    """One cross-field rule: the CEL the API server runs and the Python mirror of it."""

    rule: str
    """CEL over ``self``, the schema node (model) the rule is declared on."""
    message: str
    """What the user reads; starts with the path of the offending field."""
    holds: Callable[[M], bool]
    """The same condition in Python, over the validated model instance."""
    message_expression: str | None = None
    """CEL building a message with the offending values; ``message`` is its fallback.
    Only string operands: the API server cannot bound the cost of ``string(int)`` and
    rejects a CRD whose message expression uses it."""
    explain: Callable[[M], str] | None = None
    """The Python mirror of ``message_expression``: the same text from the model."""
    field_path: str | None = None
    """JSON path, relative to ``self``, of the field the API server blames (``.topology``)."""
    reason: Reason = Reason.INVALID

    def __post_init__(self) -> None:
        # A message expression without its Python twin would let the two sides disagree.
        if (self.message_expression is None) != (self.explain is None):
            raise ValueError(f"rule {self.rule!r}: message_expression and explain go together")

    def violation(self, obj: M) -> str | None:
        """The message when ``obj`` breaks the rule, else None."""
        if self.holds(obj):
            return None
        return self.explain(obj) if self.explain is not None else self.message

    def schema(self) -> dict[str, str]:
        """The rule as one item of ``x-kubernetes-validations``."""
        item = {"rule": self.rule, "message": self.message}
        if self.message_expression is not None:
            item["messageExpression"] = self.message_expression
        if self.field_path is not None:
            item["fieldPath"] = self.field_path
        item["reason"] = self.reason.value
        return item


def violations(obj: M, rules: Sequence[Rule[M]]) -> list[str]:
    """The messages of every rule in ``rules`` that ``obj`` breaks, in order."""
    return [message for rule in rules if (message := rule.violation(obj)) is not None]


def present(obj: object, path: str) -> bool:
    """The Python twin of CEL's ``has(self.<path>)``: the (camelCase, dotted) field is set."""
    value: object = obj
    for part in path.split("."):
        value = getattr(value, to_snake(part))
        if value is None:
            return False
    return True


def not_together(present_path: str, forbidden_path: str, *, message: str) -> Rule[Any]:
    """A rule that ``forbidden_path`` must not be set while ``present_path`` is."""
    return Rule(
        rule=f"!(has(self.{present_path}) && has(self.{forbidden_path}))",
        message=message,
        holds=lambda obj: not (present(obj, present_path) and present(obj, forbidden_path)),
        field_path=f".{forbidden_path}",
        reason=Reason.FORBIDDEN,
    )


def literal(value: object) -> str:
    """``value`` (str, int, bool, list, dict of those) as a CEL literal.

    CEL string literals accept JSON's escapes, so JSON quoting is exact for the
    simple strings used here; maps and lists are rendered the same way.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise TypeError(f"no CEL literal for {value!r}")


def _add_rules_to_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: Sequence[Rule[Any]] = getattr(cls, "rules", ())
    if rules:
        schema[VALIDATIONS_KEY] = [rule.schema() for rule in rules]


class RuledModel(BaseModel):
    """Base of the API models: camelCase on the wire, no unknown fields, rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        # No coercion ("8" -> 8, "yes" -> True): the API server rejects such values, and
        # offline validation must reject what admission rejects. Enum fields opt out
        # (strict mode would demand enum instances rather than their string values).
        strict=True,
        frozen=True,
        # Field descriptions (kubectl explain's text) are the docstrings under the fields.
        use_attribute_docstrings=True,
        json_schema_extra=_add_rules_to_schema,
    )

    rules: ClassVar[Sequence[Rule[Any]]] = ()
    """The model's cross-field rules; subclasses list theirs next to their fields."""

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        problems = violations(self, type(self).rules)
        if problems:
            # One error per model carrying every message: pydantic stops a model at its
            # first raised error, and the user should see all broken rules at once.
            raise PydanticCustomError(RULE_ERROR_TYPE, "{messages}", {"messages": problems})
        return self
