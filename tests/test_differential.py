"""The compiled engine against the reference evaluator, on generated policy sets and requests.

Every way into the engine must give the reference's answer to every request: one request, rows
(``evaluate_batch``), columns (``evaluate_columns``, the context as one mapping per request or as
one column per key as spelled, on one thread or two) and Arrow (``evaluate_arrow``), explained or
not. Explained decisions must name the same layer, statements and missing keys; a request the
reference cannot evaluate must fail, alone. The generated sets and requests meet the per-service
rules (``evaluator.service_rules``): anonymous callers, GetCallerIdentity, trust and key policies,
services with and without RCPs, a VPC endpoint's policy; ``--hypothesis-show-statistics`` counts
the outcomes of each. ``test_store_differential`` runs the same paths on whole stores.

IAM_EVAL_DIFFERENTIAL_EXAMPLES runs more examples than CI's default. IAM_EVAL_DIFFERENTIAL_REFUSED=1
also draws requests that ``Request.create`` refuses (a context key or session tag given twice,
session tags on a principal that is no session), which the reference fails and so must every
path that can carry them; the converters do not refuse all of them yet, so CI leaves them out.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pyarrow as pa
from hypothesis import HealthCheck, event, given, settings

import iam_evaluator._arntrie as arntrie
from iam_evaluator import PolicySet, Request, reference, service_rules
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.compile import CHUNK, CompiledPolicies, CompiledPolicySet
from iam_evaluator.decision import Decision, failed
from iam_evaluator.principals import RequestError

from .strategies import policy_cases

EXAMPLES = int(os.environ.get("IAM_EVAL_DIFFERENTIAL_EXAMPLES", "1500"))
REFUSED = os.environ.get("IAM_EVAL_DIFFERENTIAL_REFUSED") == "1"


def assert_same(expected, got, where):
    assert got.decision == expected.decision, where
    assert got.decided_by == expected.decided_by, where
    assert got.statements == expected.statements, where
    assert (got.error is None) == (expected.error is None), where
    assert {k.lower() for k in got.missing_keys} == {k.lower() for k in expected.missing_keys}, where


def assert_same_code(expected, decisions, i, where):
    """An unexplained decision (``BatchDecisions``): the same decision, and an error exactly when
    the reference met one."""
    assert decisions[i] == expected.decision, where
    assert (i in decisions.errors) == (expected.error is not None), where


def assert_same_row(expected, row, where):
    """An explained row of ``evaluate_arrow``."""
    assert row["decision"] == str(expected.decision), where
    assert row["decided_by"] == expected.decided_by, where
    assert [(s["policy"], s["index"], s["sid"], s["effect"]) for s in row["statements"]] == \
        [(s.policy, s.index, s.sid, str(s.effect)) for s in expected.statements], where
    assert (row["error"] is None) == (expected.error is None), where
    assert {k.lower() for k in row["missing_keys"]} == {k.lower() for k in expected.missing_keys}, where


def reference_answers(requests_json: list[dict],
                      decide: Callable[[Request], Decision]) -> tuple[list[Request | None], list[Decision]]:
    """Each request as ``Request.from_json`` reads it (None where it refuses it), and the
    reference's answer: ``decide``'s, or the refusal as a failed evaluation."""
    built: list[Request | None] = []
    answers = []
    for request_json in requests_json:
        try:
            request = Request.from_json(request_json)
        except RequestError as exc:
            built.append(None)
            answers.append(failed(str(exc)))
        else:
            built.append(request)
            answers.append(decide(request))
    return built, answers


def context_columns(requests_json: list[dict]) -> dict[str, list]:
    """One column per context key as each request spells it (None where a request lacks that
    spelling): a key spelled two ways across requests is two columns, as in CloudTrail."""
    spellings = sorted({key for request in requests_json for key in request["context"]})
    return {key: [request["context"].get(key) for request in requests_json] for key in spellings}


def _struct(rows: list[dict | None], types: dict[str, pa.DataType]) -> pa.StructArray:
    """One field per key as spelled, null where a row lacks it; a row with no keys is null."""
    rows = [row or {} for row in rows]
    return pa.StructArray.from_arrays([pa.array([row.get(key) for row in rows], types[key]) for key in sorted(types)],
                                      names=sorted(types), mask=pa.array([not row for row in rows]))


def record_batch(requests_json: list[dict]) -> pa.RecordBatch:
    """Requests as Arrow columns: context and session tags as structs, a list field for a key
    given as a list (so every row must give a key's spelling as text, or every row as a list)."""
    columns = {field: pa.array([r[field] for r in requests_json], pa.string())
               for field in ("principal", "action", "resource")}
    if any("resource_account" in r for r in requests_json):
        columns["resource_account"] = pa.array([r.get("resource_account") for r in requests_json], pa.string())
    context_types = {key: pa.list_(pa.string()) if isinstance(value, list) else pa.string()
                     for r in requests_json for key, value in r["context"].items()}
    if context_types:
        columns["context"] = _struct([r["context"] for r in requests_json], context_types)
    tag_types = {key: pa.string() for r in requests_json for key in r.get("session_tags") or {}}
    if tag_types:
        columns["session_tags"] = _struct([r.get("session_tags") for r in requests_json], tag_types)
    return pa.RecordBatch.from_pydict(columns)


def arrow_batches(requests_json: list[dict]) -> list[tuple[list[int], pa.RecordBatch]]:
    """The requests as record batches, each with the request numbers of its rows. An Arrow struct
    field has one type: rows that give one spelling of a key as text and as a list go apart."""
    groups: list[tuple[list[int], dict[str, bool]]] = []
    for i, request in enumerate(requests_json):
        kinds = {key: isinstance(value, list) for key, value in request["context"].items()}
        for numbers, group_kinds in groups:
            if all(group_kinds.get(key, kind) == kind for key, kind in kinds.items()):
                numbers.append(i)
                group_kinds.update(kinds)
                break
        else:
            groups.append(([i], kinds))
    return [(numbers, record_batch([requests_json[i] for i in numbers])) for numbers, _ in groups]


def rule_met(request_json: dict) -> str | None:
    """The per-service rule (``service_rules``) a request meets, if any, to count its outcomes by."""
    if request_json.get("principal") == service_rules.ANONYMOUS:
        return "anonymous"
    action, resource = request_json.get("action"), request_json.get("resource")
    if not isinstance(action, str) or not isinstance(resource, str):
        return None
    flags = service_rules.action_flags(action)
    if flags & service_rules.ALWAYS:
        return "always allowed action"
    kind = service_rules.must_allow(flags, service_rules.resource_kind(resource))
    if kind:
        return service_rules.RULE_NAMES[kind]
    return None if flags & service_rules.RCP_APPLIES else "service without RCPs"


def count_outcomes(expected: list[Decision], requests_json: Sequence[dict] = ()) -> None:
    """How often each decision and deciding layer is reached, and each per-service rule met:
    ``--hypothesis-show-statistics``."""
    for decision in expected:
        event(f"{decision.decision} by {decision.decided_by.split('[')[0]}")
    for request_json, decision in zip(requests_json, expected, strict=False):
        rule = rule_met(request_json)
        if rule is not None:
            event(f"{rule}: {decision.decision} by {decision.decided_by.split('[')[0]}")
        if any(key.lower() == "aws:sourcevpce" for key in request_json.get("context", {})):
            event(f"aws:SourceVpce given: {decision.decision} by {decision.decided_by.split('[')[0]}")


def check_every_path(compiled: CompiledPolicies, requests_json: list[dict], built: list[Request | None],
                     expected: list[Decision]) -> None:
    """Every way into the engine gives ``expected[i]`` for request ``i``; a request that could not
    be built (``built[i]`` None) takes every path but rows and single requests."""

    def where(i: int, path: str):
        return path, requests_json[i], expected[i]

    valid = [i for i, request in enumerate(built) if request is not None]
    rows = [built[i] for i in valid]
    explained = compiled.evaluate_batch(rows, explain=True)
    fast = compiled.evaluate_batch(rows)
    for at, i in enumerate(valid):
        assert_same(expected[i], explained[at], where(i, "rows, explained"))
        assert_same_code(expected[i], fast, at, where(i, "rows"))
        assert_same(expected[i], compiled.evaluate(built[i]), where(i, "one request, explained"))
        alone = compiled.evaluate(built[i], explain=False)
        assert alone.decision == expected[i].decision, where(i, "one request")
        assert (alone.error is None) == (expected[i].error is None), where(i, "one request")

    n = len(requests_json)
    principals, actions, resources = ([r[field] for r in requests_json]
                                      for field in ("principal", "action", "resource"))
    accounts = [r.get("resource_account") for r in requests_json] \
        if any("resource_account" in r for r in requests_json) else None
    tags = [r.get("session_tags") for r in requests_json] if any("session_tags" in r for r in requests_json) else None
    columns = context_columns(requests_json)
    for form, contexts in (("mappings", [r["context"] for r in requests_json]), ("key columns", columns)):
        explained = compiled.evaluate_columns(principals, actions, resources, contexts, accounts, explain=True,
                                              session_tags=tags)
        fast = compiled.evaluate_columns(principals, actions, resources, contexts, accounts, session_tags=tags)
        for i in range(n):
            assert_same(expected[i], explained[i], where(i, f"columns, {form}, explained"))
            assert_same_code(expected[i], fast, i, where(i, f"columns, {form}"))

    # Two threads decide chunks of CHUNK requests each: repeat the batch past one chunk.
    times = CHUNK // n + 2

    def repeated(column):
        return None if column is None else column * times

    threaded = compiled.evaluate_columns(repeated(principals), repeated(actions), repeated(resources),
                                         {key: column * times for key, column in columns.items()},
                                         repeated(accounts), threads=2, session_tags=repeated(tags))
    for j in range(n * times):
        assert_same_code(expected[j % n], threaded, j, where(j % n, f"columns, two threads, row {j}"))

    for numbers, batch in arrow_batches(requests_json):
        fast = evaluate_arrow(compiled, batch).to_pydict()
        half = batch.num_rows // 2  # two slices: columns that start at an offset
        explained = evaluate_arrow(compiled, pa.Table.from_batches([batch.slice(0, half), batch.slice(half)]),
                                   explain=True).to_pylist()
        for at, i in enumerate(numbers):
            assert fast["decision"][at] == str(expected[i].decision), where(i, "Arrow")
            assert (fast["error"][at] is None) == (expected[i].error is None), where(i, "Arrow")
            assert_same_row(expected[i], explained[at], where(i, "Arrow, explained"))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(policy_cases(REFUSED))
def test_compiled_equals_reference(case):
    policies_json, requests_json = case
    policies = PolicySet.from_json(policies_json)
    built, expected = reference_answers(requests_json, lambda request: reference.evaluate(policies, request))
    count_outcomes(expected, requests_json)
    check_every_path(CompiledPolicySet(policies), requests_json, built, expected)


@settings(max_examples=EXAMPLES // 5, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(policy_cases(REFUSED))
def test_keyed_resource_patterns_equal_reference(case):
    """The same, with the Resource patterns keyed by their ARN fields however few they are (``_arntrie``)."""
    policies_json, requests_json = case
    policies = PolicySet.from_json(policies_json)
    built, expected = reference_answers(requests_json, lambda request: reference.evaluate(policies, request))
    threshold, arntrie.INDEX_MIN_PATTERNS = arntrie.INDEX_MIN_PATTERNS, 0
    try:
        compiled = CompiledPolicySet(policies)
    finally:
        arntrie.INDEX_MIN_PATTERNS = threshold
    assert compiled.get_stats()["resource_trie"]["indexed"]
    check_every_path(compiled, requests_json, built, expected)
