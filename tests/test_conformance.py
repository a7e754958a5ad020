"""Every public conformance case, through the same runner as ``iam-eval test``: a case passes only when
its decision matches and no evaluation error occurred (``CaseResult.passed``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from iam_evaluator.cases import ENGINES, read_cases, run_case

from .conftest import CONFORMANCE, require

CASE_FILES = ["cases.jsonl", "sanity_cases.jsonl"]
SERVICE_RULES = Path(__file__).parent / "data" / "service_rules.jsonl"
"""Our own cases for the rules AWS documents per service or per kind of caller, each quoting its sentence."""
SERVICE_RULE_CATEGORIES = ["get_caller_identity", "trust_policy", "key_policy", "rcp_scope", "anonymous",
                           "vpc_endpoint"]


def _paths() -> list[Path]:
    return [*(require(CONFORMANCE / name) for name in CASE_FILES), SERVICE_RULES]


def _cases():
    for path in _paths():
        for location, case, problem in read_cases(path):
            yield pytest.param(location, case, problem, id=(case or {}).get("id", location))


def test_every_file_has_cases():
    counts = {path.name: sum(1 for _ in read_cases(path)) for path in _paths()}
    assert counts["cases.jsonl"] >= 2000 and counts["sanity_cases.jsonl"] >= 40, counts


def test_every_service_rule_has_its_cases():
    """At least 20 cases per rule, each quoting the documentation it follows."""
    by_category: dict[str, int] = {}
    for location, case, problem in read_cases(SERVICE_RULES):
        assert not problem and case is not None, f"{location}: {problem}"
        assert "AWS: " in case["description"], f"{location}: the description quotes no documentation"
        by_category[case["category"]] = by_category.get(case["category"], 0) + 1
    assert sorted(by_category) == sorted(SERVICE_RULE_CATEGORIES)
    assert min(by_category.values()) >= 20, by_category


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize(("location", "case", "problem"), list(_cases()))
def test_case(engine, location, case, problem):
    assert not problem, f"{location}: {problem}"
    result = run_case(case, location, ENGINES[engine])
    assert result.passed, result.describe_failure()
