"""Issue 9's bad-input set: its size and categories (the cases run in tests/api)."""

from __future__ import annotations

from tests.api.invalid_cases import CASES, CATEGORIES

#: The categories issue 9 asks for, each with at least this many cases.
REQUIRED_CATEGORIES = {
    "wrong-type",
    "missing-required",
    "impossible-topology",
    "batch-not-divisible",
    "not-gcs-path",
    "over-long",
    "huge-number",
    "unicode",
    "unknown-field",
}
MIN_PER_CATEGORY = 5


def test_at_least_110_distinct_invalid_manifests() -> None:
    assert len(CASES) >= 110
    assert len({case.id for case in CASES}) == len(CASES)


def test_every_category_is_covered() -> None:
    # Issue 9's categories, and any added since (each as thorough).
    assert set(CATEGORIES) >= REQUIRED_CATEGORIES
    for name, cases in CATEGORIES.items():
        assert len(cases) >= MIN_PER_CATEGORY, name
        assert {c.id for c in cases} <= {c.id for c in CASES}, name


def test_every_case_names_a_field() -> None:
    for case in CASES:
        assert case.field.split(".")[0] in {"spec", "metadata"}, case.id
