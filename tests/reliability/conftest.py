"""Fault-injection tests reuse the in-process operator and its namespace fixture."""

from tests.operator.conftest import namespace, operator  # noqa: F401
from tests.operator.test_operator_cluster import (  # noqa: F401
    bucket,
    pod_annotator,
    submit,
)
