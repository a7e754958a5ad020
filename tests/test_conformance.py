"""Every public conformance case, through the same runner as ``iam-eval test``: a case passes only when
its decision matches and no evaluation error occurred (``CaseResult.passed``)."""
from __future__ import annotations

import pytest

from evaluator.cases import ENGINES, read_cases, run_case

from .conftest import CONFORMANCE, require

CASE_FILES = ["cases.jsonl", "sanity_cases.jsonl"]


def _cases():
    for name in CASE_FILES:
        for location, case, problem in read_cases(require(CONFORMANCE / name)):
            yield pytest.param(location, case, problem, id=(case or {}).get("id", location))


def test_every_file_has_cases():
    counts = {name: sum(1 for _ in read_cases(require(CONFORMANCE / name))) for name in CASE_FILES}
    assert counts["cases.jsonl"] >= 2000 and counts["sanity_cases.jsonl"] >= 40, counts


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize(("location", "case", "problem"), list(_cases()))
def test_case(engine, location, case, problem):
    assert not problem, f"{location}: {problem}"
    result = run_case(case, location, ENGINES[engine])
    assert result.passed, result.describe_failure()
