"""Policy test cases in the conformance format, and the runner behind ``iam-eval test``.

A case is one JSON object per line: ``{"id", "policies", "request",
"expect": {"decision"}}`` (see ``../shared/conformance/README.md``); ``expect`` may
also name the layer that decides (``decided_by``, as decisions name it). Users keep
such files beside their policies as regression tests, as ``opa test`` users do.

Cases test the files a repository keeps. Wherever ``policies`` holds a policy document
(an object), it may hold a string instead: the path of a policy file, relative to the case
file's folder (or absolute), read as strict JSON (a key given twice is an error). A string
is always a path, never JSON text: ``{"identity": ["policies/dev.json"], "scp":
[["scps/root.json"]]}``. Decisions name a policy read from a file by that path. Instead of
``policies``, a case may name a policy store, ``"store": "path"`` (a store directory or a
snapshot file, see ``store.py``; relative in the same way): the request is decided against
what the store holds for its principal. A run loads and compiles each store once.

A case passes only when its request is decided without an evaluation error and
the decision is the expected one. An error denies the request (ImplicitDeny,
decided by "error"), but that is the engine failing closed, not the decision
AWS would make, and the format has no way to expect one. A case that cannot be
run at all (a bad line, a missing file, an invalid policy) fails with its problem;
JUnit reports it as an error, a wrong decision as a failure.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from . import reference
from .compile import CompiledPolicySet
from .compiled_store import CompiledStore
from .decision import Decision, DecisionKind
from .findings import PolicyValidationError
from .parse import decode_json
from .principals import RequestError
from .request import PolicySet, Request
from .store import PolicyStore, StoreError, reference_decision


def compiled(policies: PolicySet, request: Request) -> Decision:
    """Compile the case's policies and decide its request with the compiled engine."""
    return CompiledPolicySet(policies).evaluate(request)


@dataclass(frozen=True)
class Engine:
    """How an engine decides a case: with the case's own policies, or with a store, which it
    prepares once (``for_store``) and then asks per request."""

    evaluate: Callable[[PolicySet, Request], Decision]
    for_store: Callable[[PolicyStore], Callable[[Request], Decision]]

    def __call__(self, policies: PolicySet, request: Request) -> Decision:
        return self.evaluate(policies, request)


ENGINES: dict[str, Engine] = {
    "compiled": Engine(compiled, lambda store: CompiledStore(store).evaluate),
    "reference": Engine(reference.evaluate, lambda store: partial(reference_decision, store)),
}
DEFAULT_ENGINE = "compiled"

Stores = dict[Path, tuple[PolicyStore, Callable[[Request], Decision]]]
"""The stores one run has loaded and prepared for its engine, by resolved path."""


class CaseError(ValueError):
    """A case that cannot be run as written: a file it names cannot be read, a store is no path."""


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
        if self.expected == DecisionKind.ALLOW:  # what to look at when a request expected allowed is denied
            lines += [f"    nearly applied: {miss}" for miss in d.near_misses]
            if d.more_near_misses:
                lines.append(f"    … and {d.more_near_misses} more statement(s) that nearly applied")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """Every field, always present: null or empty where it does not apply."""
        decision = self.decision.to_json() if self.decision is not None else {
            "decision": None, "decided_by": None, "statements": [], "missing_keys": [], "reason": None, "error": None,
            "missing_key_statements": [], "near_misses": [], "more_near_misses": 0}
        return {"id": self.case_id, "category": self.category, "passed": self.passed,
                "expected": {"decision": self.expected or None, "decided_by": self.expected_by}, **decision,
                "problem": self.problem or None}


def _numbered_cases(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """Yield (line, case, problem) per non-blank line; a bad line is yielded with its problem."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                case = decode_json(line, unique_keys=True)  # a key given twice is an error, not the last one
            except PolicyValidationError as exc:
                yield number, None, "; ".join(map(str, exc.findings))
                continue
            if not isinstance(case, dict) or not {"request", "expect"} <= set(case) or \
                    ("policies" in case) == ("store" in case):
                yield number, None, "a case needs request, expect, and either policies or a store"
                continue
            yield number, case, ""


def read_cases(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    """Yield (location ``path:line``, case, problem) per non-blank line, as ``_numbered_cases``."""
    for number, case, problem in _numbered_cases(path):
        yield f"{path}:{number}", case, problem


def _shown(path: str) -> str:
    """A path as messages show it: quoted, escaped, cut short."""
    return repr(path[:200]) + ("…" if len(path) > 200 else "")


def _read_policy_file(folder: Path, name: str) -> Any:
    """A policy file a case names, as strict JSON: a key given twice is an error, as everywhere."""
    try:
        return decode_json((folder / name).read_bytes(), unique_keys=True)
    except PolicyValidationError as exc:
        raise CaseError(f"policy file {_shown(name)}: {'; '.join(map(str, exc.findings))}") from None
    except (OSError, ValueError) as exc:  # ValueError: a path no file system takes (a NUL, a lone surrogate)
        raise CaseError(f"cannot read policy file {_shown(name)}: {getattr(exc, 'strerror', None) or exc}") from None


def _policy_set(raw: Any, folder: Path) -> PolicySet:
    """A case's ``policies``, each string read as the policy file it names, relative to ``folder``."""
    return PolicySet.from_json(raw, read=lambda name: _read_policy_file(folder, name))


def _prepared_store(folder: Path, name: Any, engine: Engine,
                    stores: Stores) -> tuple[PolicyStore, Callable[[Request], Decision]]:
    """The store a case names (a directory or a snapshot file), loaded and prepared once per run."""
    if not isinstance(name, str):
        raise CaseError(f"store must be the path of a store directory or snapshot file, not {type(name).__name__}")
    path = folder / name
    try:
        key = path.resolve()
        if key not in stores:
            store = PolicyStore.load(path)
            stores[key] = store, engine.for_store(store)
    except StoreError:
        raise  # its findings say what is wrong
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL, a lone surrogate, a symlink loop
        raise CaseError(f"cannot read store {_shown(name)}: {getattr(exc, 'strerror', None) or exc}") from None
    return stores[key]


def run_case(case: dict, location: str, engine: Engine, folder: Path = Path(),
             stores: Stores | None = None) -> CaseResult:
    """Decide one case; the paths it names are relative to ``folder`` (its file's), and ``stores`` keeps
    the stores its run has prepared."""
    given_id = case.get("id")
    case_id = str(given_id) if isinstance(given_id, (str, int)) else location
    category = case.get("category", "")
    expected = case["expect"].get("decision") if isinstance(case["expect"], dict) else None
    if expected not in {str(kind) for kind in DecisionKind}:
        problem = f"{location}: expect.decision {expected!r} is not a decision"
        return CaseResult(case_id, "", str(expected), None, problem)
    expected_by = case["expect"].get("decided_by")
    if expected_by is not None and not isinstance(expected_by, str):
        return CaseResult(case_id, "", expected, None, f"{location}: expect.decided_by must be a layer's name")
    try:
        if "store" in case:
            _, decide = _prepared_store(folder, case["store"], engine, {} if stores is None else stores)
            decision = decide(Request.from_json(case["request"]))
        else:
            policies = _policy_set(case["policies"], folder)
            decision = engine(policies, Request.from_json(case["request"]))
    except (PolicyValidationError, RequestError, StoreError, CaseError) as exc:
        return CaseResult(case_id, category, expected, None, f"{location}: {exc}")
    return CaseResult(case_id, category, expected, decision, "", expected_by)


Results = list[tuple[Path, list[tuple[int, CaseResult]]]]
"""Each case file, with each case's line and result."""


def run_files(paths: list[Path], engine: Engine) -> Results:
    """Run every case of every file; each store is loaded and prepared once."""
    stores: Stores = {}
    return [(path, [(line, run_case(case, f"{path}:{line}", engine, path.parent, stores) if case
                     else CaseResult(f"{path}:{line}", "", "", None, problem))
                    for line, case, problem in _numbered_cases(path)])
            for path in paths]


def print_report(results: Results, out: TextIO) -> None:
    """Print each failure, then ``N passed, M failed``."""
    outcomes = [result for _, cases in results for _, result in cases]
    for result in outcomes:
        if not result.passed:  # a lone surrogate (in an id, say) is printed escaped, not raised
            print(result.describe_failure().encode("utf-8", "backslashreplace").decode("utf-8"), file=out)
    passed = sum(result.passed for result in outcomes)
    print(f"{passed} passed, {len(outcomes) - passed} failed", file=out)


def json_report(results: Results) -> dict:
    """Every case, where it is and how it went, and the totals."""
    cases = [{"file": str(path), "line": line, **result.to_json()} for path, outcomes in results
             for line, result in outcomes]
    passed = sum(case["passed"] for case in cases)
    return {"cases": cases, "totals": {"cases": len(cases), "passed": passed, "failed": len(cases) - passed}}


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 cannot hold (control characters, lone surrogates)."""


def _xml(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def junit_report(results: Results) -> ET.ElementTree:
    """JUnit XML, as CI servers show test results: a ``testsuite`` per case file, a ``testcase`` per case.
    A wrong decision (or an evaluation error) is a ``failure``, a case that could not be run an ``error``."""
    suites = ET.Element("testsuites")
    totals = dict.fromkeys(("tests", "failures", "errors"), 0)
    for path, outcomes in results:
        counts = {"tests": len(outcomes), "failures": 0, "errors": 0}
        suite = ET.SubElement(suites, "testsuite", name=_xml(str(path)))
        for _, result in outcomes:
            testcase = ET.SubElement(suite, "testcase", classname=_xml(str(path)), name=_xml(result.case_id))
            if not result.passed:
                kind = "failure" if result.decision is not None else "error"
                counts[f"{kind}s"] += 1
                description = _xml(result.describe_failure())
                ET.SubElement(testcase, kind, message=description.splitlines()[0]).text = description
        for key, count in counts.items():
            suite.set(key, str(count))
            totals[key] += count
    for key, count in totals.items():
        suites.set(key, str(count))
    return ET.ElementTree(suites)
