"""Policy test cases in the conformance format, and the runner behind ``iam-eval test``.

A case is one JSON object per line: ``{"id", "policies", "request",
"expect": {"decision"}}`` (see ``../shared/conformance/README.md``); ``expect`` may
also name the layer that decides (``decided_by``, as decisions name it). Users keep
such files beside their policies as regression tests, as ``opa test`` users do.

A case passes only when its request is decided without an evaluation error and
the decision is the expected one. An error denies the request (ImplicitDeny,
decided by "error"), but that is the engine failing closed, not the decision
AWS would make, and the format has no way to expect one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import reference
from .compile import CompiledPolicySet
from .decision import Decision, DecisionKind
from .findings import PolicyValidationError
from .parse import decode_json
from .principals import RequestError
from .request import PolicySet, Request

Engine = Callable[[PolicySet, Request], Decision]

def compiled(policies: PolicySet, request: Request) -> Decision:
    """Compile the case's policies and decide its request with the compiled engine."""
    return CompiledPolicySet(policies).evaluate(request)


ENGINES: dict[str, Engine] = {"compiled": compiled, "reference": reference.evaluate}
DEFAULT_ENGINE = "compiled"


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    category: str
    expected: str
    decision: Decision | None  # None when the case itself could not be read
    problem: str = ""
    expected_by: str | None = None  # the layer expected to decide, when the case names one

    @property
    def passed(self) -> bool:
        decision = self.decision
        return (decision is not None and decision.error is None and str(decision.decision) == self.expected
                and self.expected_by in (None, decision.decided_by))

    def describe_failure(self) -> str:
        if self.decision is None:
            return f"FAIL {self.case_id}: {self.problem}"
        d = self.decision
        if d.error is not None:
            return (f"FAIL {self.case_id} [{self.category}]: expected {self.expected}, but the evaluation failed "
                    f"(denied as {d.decision}): {d.error}")
        by = f" decided by {self.expected_by}" if self.expected_by else ""
        lines = [f"FAIL {self.case_id} [{self.category}]: expected {self.expected}{by}, got {d.decision} "
                 f"(decided by {d.decided_by}: {d.reason})"]
        lines += [f"    statement: {ref}" for ref in d.statements]
        if d.missing_keys:
            lines.append(f"    missing context keys: {', '.join(d.missing_keys)}")
        return "\n".join(lines)


def read_cases(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    """Yield (location, case, problem) per non-blank line; a bad line is yielded with its problem."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            location = f"{path}:{number}"
            try:
                case = decode_json(line, unique_keys=True)  # a key given twice is an error, not the last one
            except PolicyValidationError as exc:
                yield location, None, "; ".join(map(str, exc.findings))
                continue
            if not isinstance(case, dict) or not {"policies", "request", "expect"} <= set(case):
                yield location, None, "a case needs policies, request and expect"
                continue
            yield location, case, ""


def run_case(case: dict, location: str, engine: Engine) -> CaseResult:
    case_id = str(case.get("id", location))
    expected = case["expect"].get("decision") if isinstance(case["expect"], dict) else None
    if expected not in {str(kind) for kind in DecisionKind}:
        problem = f"{location}: expect.decision {expected!r} is not a decision"
        return CaseResult(case_id, "", str(expected), None, problem)
    try:
        policies = PolicySet.from_json(case["policies"])
        request = Request.from_json(case["request"])
    except (PolicyValidationError, RequestError) as exc:
        return CaseResult(case_id, case.get("category", ""), expected, None, f"{location}: {exc}")
    expected_by = case["expect"].get("decided_by")
    if expected_by is not None and not isinstance(expected_by, str):
        return CaseResult(case_id, "", expected, None, f"{location}: expect.decided_by must be a layer's name")
    return CaseResult(case_id, case.get("category", ""), expected, engine(policies, request), "", expected_by)


def run_files(paths: list[Path], engine: Engine, out: TextIO) -> tuple[int, int]:
    """Run every case, print each failure, end with ``N passed, M failed``."""
    passed = failed = 0
    for path in paths:
        for location, case, problem in read_cases(path):
            result = run_case(case, location, engine) if case else CaseResult(location, "", "", None, problem)
            if result.passed:
                passed += 1
            else:
                failed += 1
                print(result.describe_failure(), file=out)
    print(f"{passed} passed, {failed} failed", file=out)
    return passed, failed
