"""Hostile inputs to the compiled engine give the reference evaluator's answers, and a bad request fails alone.

Every column shape the API accepts (lists, tuples, numpy arrays, pandas Series of any string dtype,
Sequences that build a new string on each access), contexts that are Mappings but not dicts, str, int
and float subclasses whose methods lie or mutate what is being converted, lone surrogates, one key
spelled two ways, megabyte strings and thousands of keys. The expected decision is the reference's
for the plain values (``reference.evaluate(policies, Request.create(...))``), and hand-written too.

The engine keeps pointers to the UTF-8 of request strings and reads them without the GIL, so a string
it does not keep alive is read after it is freed. That may go unseen with the ordinary allocator:
``test_module_passes_under_the_debug_allocator_subprocess`` runs this module again under
``PYTHONMALLOC=debug``, which overwrites freed memory, with fewer rows (``IAM_EVAL_HOSTILE_ROWS``).
"""
from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iam_evaluator import DecisionKind, PolicySet, Request, RequestError, parse_policy, reference
from iam_evaluator.arrow import SchemaError, evaluate_arrow
from iam_evaluator.compile import CHUNK, CompiledPolicySet
from iam_evaluator.decision import Decision, failed

from .conftest import assert_passes_under_debug_allocator

ROWS = int(os.environ.get("IAM_EVAL_HOSTILE_ROWS", "200000"))
"""Rows of the threaded batches; the debug-allocator run sets fewer."""

ALLOW, IMPLICIT, EXPLICIT = DecisionKind.ALLOW, DecisionKind.IMPLICIT_DENY, DecisionKind.EXPLICIT_DENY
BUILDER = "arn:aws:iam::111122223333:role/Builder"
AUDITOR = "arn:aws:iam::444455556666:user/auditor"
TEAM = "aws:PrincipalTag/team"
LEVEL = "aws:PrincipalTag/level"
SHARED = "arn:aws:s3:::shared/reports/2026.csv"
PRIVATE = "arn:aws:s3:::private/key"

POLICIES = PolicySet(identity=(parse_policy({"Version": "2012-10-17", "Statement": [
    {"Sid": "Read", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
    {"Sid": "Blocked", "Effect": "Deny", "Action": "*", "Resource": "*",
     "Condition": {"StringEquals": {TEAM: "blocked"}}},
    {"Sid": "DevWrite", "Effect": "Allow", "Action": "s3:Put*", "Resource": "arn:aws:s3:::shared/*",
     "Condition": {"StringLike": {TEAM: "dev-*"}}},
]}, name="hostile"),))

LEVELS = PolicySet(identity=(parse_policy({"Version": "2012-10-17", "Statement": [
    {"Sid": "Levels", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
     "Condition": {"StringEquals": {LEVEL: ["5", "2.5", "true"]}}},
    {"Sid": "Lies", "Effect": "Deny", "Action": "*", "Resource": "*",
     "Condition": {"StringEquals": {LEVEL: "blocked"}}},
]}, name="levels"),))


@pytest.fixture(scope="module")
def engine() -> CompiledPolicySet:
    return CompiledPolicySet(POLICIES)


def expected(action: str, resource: str, team: str | None) -> DecisionKind:
    """POLICIES decided by hand."""
    if team == "blocked":
        return EXPLICIT
    if action == "s3:GetObject":
        return ALLOW
    if action.startswith("s3:Put") and resource.startswith("arn:aws:s3:::shared/") and (team or "").startswith("dev-"):
        return ALLOW
    return IMPLICIT


def plain(value):
    """A value as plain Python: the characters a str subclass holds, the number an int or float subclass holds."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


@lru_cache(maxsize=None)
def _reference(policies: PolicySet, principal: str, action: str, resource: str, context: tuple) -> Decision:
    try:
        request = Request.create(principal, action, resource, {key: list(value) if isinstance(value, tuple) else value
                                                               for key, value in context})
    except RequestError as exc:
        return failed(str(exc))
    return reference.evaluate(policies, request)


def reference_decision(principal, action, resource, context=None, policies: PolicySet = POLICIES) -> Decision:
    """The reference's decision for the plain values; a request it refuses is a failed (denied) decision."""
    items = tuple((plain(key), tuple(plain(value)) if isinstance(value, (list, tuple)) else plain(value))
                  for key, value in (context or {}).items() if value is not None)
    return _reference(policies, plain(principal), plain(action), plain(resource), items)


def assert_batch(decisions, want: list[Decision]) -> None:
    """BatchDecisions equal to the wanted decisions, errors at the failed rows exactly."""
    assert len(decisions) == len(want)
    wrong = [(i, str(got), str(w.decision)) for i, (got, w) in enumerate(zip(decisions, want, strict=True))
             if got != w.decision]
    assert not wrong, f"{len(wrong)} of {len(want)} rows differ (row, got, want): {wrong[:5]}"
    assert sorted(decisions.errors) == [i for i, w in enumerate(want) if w.error is not None]


def assert_explained(decisions: list[Decision], want: list[Decision]) -> None:
    assert len(decisions) == len(want)
    for i, (got, w) in enumerate(zip(decisions, want, strict=True)):
        where = f"row {i}: got {got.decision} by {got.decided_by} ({got.error}), want {w.decision} by {w.decided_by}"
        assert (got.decision, got.decided_by, got.statements) == (w.decision, w.decided_by, w.statements), where
        assert (got.error is None) == (w.error is None), where


# ------------------------------------------------------------------ shapes


def fresh(value):
    """An equal value that is a new object: only the caller holds it."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    if isinstance(value, list):
        return [fresh(item) for item in value]
    return value


class FreshStrings(Sequence):
    """A column that builds a new string on each access, as a lazy or decoding column does."""

    def __init__(self, values: list) -> None:
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return FreshStrings(self._values[index])
        return fresh(self._values[index])


class FreshMapping(Mapping):
    """A request context that is a Mapping, not a dict, and builds new keys and values on each access."""

    def __init__(self, data: Mapping) -> None:
        self._data = dict(data)

    def __getitem__(self, key):
        return fresh(self._data[key])

    def __iter__(self):
        return (fresh(key) for key in self._data)

    def __len__(self) -> int:
        return len(self._data)


class Impostor(str):
    """A str whose every overridable method lies: it prints as, equals and hashes like something else."""

    def __str__(self) -> str:
        return "ops" if str.__eq__(self, "blocked") else "blocked"

    def __repr__(self) -> str:
        return repr(str(self))

    def __eq__(self, other) -> bool:
        return True

    def __ne__(self, other) -> bool:
        return False

    def __hash__(self) -> int:
        return 1


SHAPES = {
    "list": list,
    "tuple": tuple,
    "numpy-object": lambda values: np.array(values, dtype=object),
    "numpy-str": np.array,  # its items are numpy.str_, made on each access
    "pandas-object": lambda values: pd.Series(values, dtype=object),
    "pandas-string-python": lambda values: pd.Series(values, dtype="string[python]"),
    "pandas-string-pyarrow": lambda values: pd.Series(values, dtype="string[pyarrow]"),
    "fresh-sequence": FreshStrings,
}

TEAMS = ("blocked", "dev-ops", "ops", "dev-blocked", "Blocked", "blocked ", "dev-" + "x" * 40, "blocked")


@lru_cache(maxsize=None)
def plain_rows(n: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """Principals, actions, resources and teams of n requests; every team value is a distinct object."""
    principals = [(BUILDER, AUDITOR)[i % 2] for i in range(n)]
    actions = [("s3:GetObject", "s3:PutObject", "s3:DeleteObject")[i % 3] for i in range(n)]
    resources = [(SHARED, PRIVATE)[(i // 3) % 2] for i in range(n)]
    teams = [fresh(TEAMS[(i * 7) % len(TEAMS)]) for i in range(n)]
    return principals, actions, resources, teams


@lru_cache(maxsize=None)
def wanted(n: int) -> list[Decision]:
    """The reference's decisions, checked against the hand-written expectation."""
    decided: dict[tuple, Decision] = {}
    want = []
    for row in zip(*plain_rows(n), strict=True):
        decision = decided.get(row)
        if decision is None:
            principal, action, resource, team = row
            decision = decided[row] = reference_decision(principal, action, resource, {TEAM: team})
            assert decision.decision is expected(action, resource, team), row
        want.append(decision)
    assert {EXPLICIT, ALLOW, IMPLICIT} <= {decision.decision for decision in decided.values()}
    return want


def shaped(shape: str, n: int):
    return [SHAPES[shape](column) for column in plain_rows(n)]


# ------------------------------------------------------------------ every shape, every entry point


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_through_columns_on_four_threads(engine, shape):
    principals, actions, resources, teams = shaped(shape, ROWS)
    decisions = engine.evaluate_columns(principals, actions, resources, {TEAM: teams}, threads=4)
    assert_batch(decisions, wanted(ROWS))


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_through_columns_on_one_thread(engine, shape):
    n = min(ROWS, 3 * CHUNK + 11)
    principals, actions, resources, teams = shaped(shape, n)
    decisions = engine.evaluate_columns(principals, actions, resources, {TEAM: teams}, threads=1)
    assert_batch(decisions, wanted(n))


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_through_columns_explained(engine, shape):
    n = 1500
    principals, actions, resources, teams = shaped(shape, n)
    assert_explained(engine.evaluate_columns(principals, actions, resources, {TEAM: teams}, explain=True), wanted(n))


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_through_requests(engine, shape):
    """Requests made from the column's items (numpy.str_ for a numpy str array): batch and one by one."""
    n = 600
    requests = [Request.create(p, a, r, {TEAM: t}) for p, a, r, t in zip(*shaped(shape, n), strict=True)]
    want = wanted(n)
    assert_batch(engine.evaluate_batch(requests), want)
    assert_batch(engine.evaluate_batch(requests, threads=4), want)
    assert_explained(engine.evaluate_batch(requests, explain=True), want)
    for request, w in list(zip(requests, want, strict=True))[:40]:
        assert_explained([engine.evaluate(request)], [w])
        assert engine.evaluate(request, explain=False).decision == w.decision


def test_contexts_as_mappings_that_are_not_dicts(engine):
    """One context per request, each a Mapping that builds its keys and values afresh."""
    principals, actions, resources, teams = plain_rows(ROWS // 4)
    contexts = [FreshMapping({TEAM: team, "aws:RequestedRegion": "eu-west-1"}) for team in teams]
    want = wanted(ROWS // 4)
    assert_batch(engine.evaluate_columns(principals, actions, resources, contexts, threads=4), want)
    assert_batch(engine.evaluate_columns(principals, actions, resources, FreshStrings(contexts)), want)
    n = 1500
    assert_explained(engine.evaluate_columns(principals[:n], actions[:n], resources[:n], contexts[:n],
                                             explain=True), want[:n])
    requests = [replace(Request.create(p, a, r, {TEAM: t}), context=FreshMapping({TEAM.lower(): t}))
                for p, a, r, t in zip(principals[:n], actions[:n], resources[:n], teams[:n], strict=True)]
    assert_batch(engine.evaluate_batch(requests), want[:n])
    for request, w in list(zip(requests, want[:n], strict=True))[:40]:
        assert_explained([engine.evaluate(request)], [w])


def test_contexts_as_mappings_with_list_values(engine):
    """A list value (any of its values may match) read from a fresh Mapping."""
    n = 3 * CHUNK
    teams = [[fresh("ops"), fresh(TEAMS[i % len(TEAMS)])] for i in range(n)]
    contexts = [FreshMapping({TEAM: values}) for values in teams]
    principals, actions, resources = [BUILDER] * n, ["s3:GetObject"] * n, [SHARED] * n
    want = [reference_decision(BUILDER, "s3:GetObject", SHARED, {TEAM: values}) for values in teams]
    assert [w.decision for w in want] == [EXPLICIT if "blocked" in values else ALLOW for values in teams]
    assert_batch(engine.evaluate_columns(principals, actions, resources, contexts, threads=2), want)
    assert_batch(engine.evaluate_columns(principals, actions, resources, {TEAM: FreshStrings(teams)}, threads=2),
                 want)


# ------------------------------------------------------------------ str subclasses


SUBCLASSES = {"numpy.str_": np.str_, "impostor": Impostor}


@pytest.mark.parametrize("make", SUBCLASSES.values(), ids=SUBCLASSES.keys())
@pytest.mark.parametrize("where", ["principal", "action", "resource", "value", "list item"])
def test_str_subclasses_are_read_as_their_characters(engine, make, where):
    """A str subclass is the characters it holds, whatever its __str__, __repr__, __eq__ and __hash__ say."""
    rows = list(zip(*plain_rows(64), strict=True))

    def wrap(row):
        principal, action, resource, team = row
        return (make(principal) if where == "principal" else principal,
                make(action) if where == "action" else action,
                make(resource) if where == "resource" else resource,
                make(team) if where == "value" else [make(team)] if where == "list item" else team)

    hostile = [wrap(row) for row in rows]
    want = [reference_decision(*row[:3], {TEAM: row[3]}) for row in rows]
    assert [w.decision for w in want] == [expected(*row[1:]) for row in rows]
    principals, actions, resources, teams = (list(column) for column in zip(*hostile, strict=True))
    assert_batch(engine.evaluate_columns(principals, actions, resources, {TEAM: teams}), want)
    contexts = [{TEAM: team} for team in teams]
    assert_batch(engine.evaluate_columns(principals, actions, resources, contexts), want)
    assert_explained(engine.evaluate_columns(principals, actions, resources, contexts, explain=True), want)
    for row, w in zip(hostile[:8], want, strict=False):
        assert_explained([engine.evaluate(Request.create(*row[:3], {TEAM: row[3]}))], [w])


@pytest.mark.parametrize("make", SUBCLASSES.values(), ids=SUBCLASSES.keys())
def test_str_subclass_context_keys_are_read_as_their_characters(engine, make):
    """Keys that lie about equality and hash: each is still the key its characters spell."""
    rows = [({make("s3:prefix"): "blocked"}, ALLOW), ({make(TEAM): "blocked"}, EXPLICIT),
            ({make("AWS:PRINCIPALTAG/TEAM"): "ops"}, ALLOW), ({make("aws:principaltag/team"): "blocked"}, EXPLICIT),
            ({make("s3:prefix"): "blocked"}, ALLOW)]
    contexts = [context for context, _ in rows]
    n = len(rows)
    want = [reference_decision(BUILDER, "s3:GetObject", SHARED, context) for context in contexts]
    assert [w.decision for w in want] == [decision for _, decision in rows]
    columns = ([BUILDER] * n, ["s3:GetObject"] * n, [SHARED] * n)
    assert_batch(engine.evaluate_columns(*columns, contexts), want)
    assert_explained(engine.evaluate_columns(*columns, contexts, explain=True), want)
    by_column = {make(TEAM): ["blocked", None, "ops"], "s3:prefix": ["x", "blocked", "blocked"]}
    want = [reference_decision(BUILDER, "s3:GetObject", SHARED, {TEAM: team}) for team in ["blocked", None, "ops"]]
    assert_batch(engine.evaluate_columns([BUILDER] * 3, ["s3:GetObject"] * 3, [SHARED] * 3, by_column), want)


@pytest.mark.parametrize("make", SUBCLASSES.values(), ids=SUBCLASSES.keys())
def test_str_subclass_principals_are_not_confused(make):
    """Principals that claim to equal each other still get their own resource-policy grants."""
    bucket = parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/Reader"}, "Action": "s3:GetObject",
         "Resource": "arn:aws:s3:::bucket/*"}]}, name="bucket", kind="resource")
    policies = PolicySet(resource=bucket)
    engine = CompiledPolicySet(policies)
    names = ["Reader", "Writer", "Reader", "Writer", "Writer", "Reader"]
    principals = [make(f"arn:aws:iam::111122223333:role/{name}") for name in names]
    n = len(principals)
    columns = (principals, ["s3:GetObject"] * n, ["arn:aws:s3:::bucket/k"] * n)
    want = [reference_decision(p, "s3:GetObject", "arn:aws:s3:::bucket/k", policies=policies) for p in principals]
    assert [w.decision for w in want] == [ALLOW if name == "Reader" else IMPLICIT for name in names]
    assert_batch(engine.evaluate_columns(*columns), want)
    assert_explained(engine.evaluate_columns(*columns, explain=True), want)
    for principal, w in zip(principals, want, strict=True):
        assert_explained([engine.evaluate(Request.create(principal, "s3:GetObject", "arn:aws:s3:::bucket/k"))], [w])


# ------------------------------------------------------------------ int and float subclasses


class LyingInt(int):
    def __repr__(self) -> str:
        return "blocked"

    __str__ = __repr__


class LyingFloat(float):
    def __repr__(self) -> str:
        return "blocked"

    __str__ = __repr__


NUMBERS = {
    "int subclass 5": (LyingInt(5), ALLOW), "int subclass 6": (LyingInt(6), IMPLICIT),
    "float subclass 2.5": (LyingFloat(2.5), ALLOW), "float subclass 2.25": (LyingFloat(2.25), IMPLICIT),
    "numpy.float64": (np.float64(2.5), ALLOW), "true": (True, ALLOW), "false": (False, IMPLICIT), "int": (5, ALLOW),
    "float": (2.5, ALLOW), "list of subclasses": ([LyingInt(7), LyingFloat(2.5)], ALLOW),
    "list with numpy.float64": ([np.float64(1.0), LyingInt(5)], ALLOW), "list of one": ([LyingInt(4)], IMPLICIT),
}


@pytest.mark.parametrize("value, want", NUMBERS.values(), ids=NUMBERS.keys())
def test_number_subclasses_are_read_as_their_number(value, want):
    """int and float subclasses read as int.__repr__ / float.__repr__ of their value, never their own methods."""
    engine = CompiledPolicySet(LEVELS)
    reference_want = reference_decision(BUILDER, "s3:GetObject", SHARED, {LEVEL: value}, policies=LEVELS)
    assert reference_want.decision is want
    columns = ([BUILDER] * 3, ["s3:GetObject"] * 3, [SHARED] * 3)
    assert_batch(engine.evaluate_columns(*columns, {LEVEL: [value, None, value]}),
                 [reference_want, reference_decision(BUILDER, "s3:GetObject", SHARED, policies=LEVELS), reference_want])
    assert_batch(engine.evaluate_columns(*columns, [{LEVEL: value}] * 3), [reference_want] * 3)
    assert_explained(engine.evaluate_columns(*columns, [FreshMapping({LEVEL: value})] * 3, explain=True),
                     [reference_want] * 3)


@pytest.mark.parametrize("value, want", [(LyingInt(5), "5"), (LyingFloat(2.5), "2.5"), (np.float64(2.5), "2.5"),
                                         ([LyingInt(7), np.float64(1.0)], ("7", "1.0"))],
                         ids=["int subclass", "float subclass", "numpy.float64", "list"])
def test_request_reads_number_subclasses_as_their_number(value, want):
    """What Request.create gives evaluate(): the same reading as the compiled engine's."""
    assert Request.create(BUILDER, "s3:GetObject", SHARED, {LEVEL: value}).context[LEVEL.lower()] == want


def test_number_whose_repr_grows_the_list_being_converted():
    """Its __repr__ would make the list longer than the space reserved for it."""
    engine = CompiledPolicySet(LEVELS)

    class Growing(int):
        def __repr__(self) -> str:
            values.extend(["blocked"] * 100_000)
            return "5"

    values = [Growing(5), "x", "y"]
    want = reference_decision(BUILDER, "s3:GetObject", SHARED, {LEVEL: [5, "x", "y"]}, policies=LEVELS)
    assert want.decision is ALLOW
    assert_batch(engine.evaluate_columns([BUILDER], ["s3:GetObject"], [SHARED], [{LEVEL: values}]), [want])
    assert_batch(engine.evaluate_columns([BUILDER], ["s3:GetObject"], [SHARED], {LEVEL: [values]}), [want])
    assert len(values) == 3


def test_number_whose_repr_empties_the_column_being_converted():
    engine = CompiledPolicySet(LEVELS)

    class Emptying(int):
        def __repr__(self) -> str:
            column.clear()
            return "5"

    n = 50
    column = [Emptying(5)] + [fresh("blocked")] * (n - 1)
    want = [reference_decision(BUILDER, "s3:GetObject", SHARED, {LEVEL: 5}, policies=LEVELS)] + \
        [reference_decision(BUILDER, "s3:GetObject", SHARED, {LEVEL: "blocked"}, policies=LEVELS)] * (n - 1)
    assert [w.decision for w in want] == [ALLOW] + [EXPLICIT] * (n - 1)
    assert_batch(engine.evaluate_columns([BUILDER] * n, ["s3:GetObject"] * n, [SHARED] * n, {LEVEL: column}), want)
    assert len(column) == n


def test_number_whose_repr_grows_the_context_being_converted():
    engine = CompiledPolicySet(LEVELS)

    class Inserting(int):
        def __repr__(self) -> str:
            for i in range(100):
                context[f"aws:PrincipalTag/k{i}"] = "blocked"
            return "5"

    context = {LEVEL: Inserting(5), "aws:RequestedRegion": "eu-west-1"}
    want = reference_decision(BUILDER, "s3:GetObject", SHARED, {LEVEL: 5, "aws:RequestedRegion": "eu-west-1"},
                              policies=LEVELS)
    assert want.decision is ALLOW
    assert_batch(engine.evaluate_columns([BUILDER], ["s3:GetObject"], [SHARED], [context]), [want])
    assert len(context) == 2


# ------------------------------------------------------------------ what Request.create remembers


def lookalike(text: str) -> type[str]:
    """A str subclass whose instances hash like ``text`` and equal everything: a memo keyed by the object
    given, not by its characters, would take one for ``text``."""
    return type("Lookalike", (str,), {"__hash__": lambda self: hash(text), "__eq__": lambda self, other: True,
                                      "__ne__": lambda self, other: False})


def test_create_folds_a_key_by_its_characters_after_a_lookalike_was_folded():
    """Key names are folded once and remembered, by their characters."""
    Request.create(BUILDER, "s3:GetObject", SHARED, {"aws:RequestedRegion": "eu-west-1"})
    request = Request.create(BUILDER, "s3:GetObject", SHARED, {lookalike("aws:RequestedRegion")(TEAM): "ops"})
    assert request.context == {TEAM.lower(): "ops"}


def test_create_folds_each_key_by_its_characters_past_what_it_remembers():
    """Folded key names are remembered a few thousand at a time (then forgotten all at once): keys made
    afresh for each request, and gone after it, are folded by their own characters all along."""
    for i in range(20_000):
        key = f"Aws:Key{i}"
        assert Request.create(BUILDER, "s3:GetObject", SHARED, {key: "v"}).context == {f"aws:key{i}": "v"}


def test_create_reads_a_principal_by_its_characters_after_a_lookalike_was_parsed():
    """Parsed principals are remembered, by their characters: the account of a resource ARN that names none
    is the caller's own."""
    assert Request.create(AUDITOR, "s3:GetObject", PRIVATE).resource_account == "444455556666"
    assert Request.create(lookalike(AUDITOR)(BUILDER), "s3:GetObject", PRIVATE).resource_account == "111122223333"


def test_create_reads_the_resource_account_from_the_arn_as_written():
    """The account of a resource ARN, compared with the caller's by every character: the caller's own string is
    kept only when they are the same."""
    for account in ("111122223333", "444455556666", "11112222333", "1111222233334", "111122223334"):
        resource = f"arn:aws:dynamodb:us-east-1:{account}:table/t"
        assert Request.create(BUILDER, "dynamodb:GetItem", resource).resource_account == account


def test_create_refuses_a_key_given_twice_with_the_very_same_value():
    """Two spellings of one key are refused whatever their values: the same string, or one boolean (both read as
    the one string "true")."""
    for value in ("eu-west-1", True, ["eu-west-1"]):
        with pytest.raises(RequestError, match="given twice"):
            Request.create(BUILDER, "s3:GetObject", SHARED,
                           {"aws:RequestedRegion": value, "AWS:requestedregion": value})


def test_create_reads_a_context_that_its_list_value_changes_as_it_was_given():
    """A dict is read without a copy until a value could run the caller's code; then from a copy of it."""

    class Rewriting(list):
        def __iter__(self):
            context.clear()
            context[LEVEL] = "blocked"
            return super().__iter__()

    context = {"aws:RequestedRegion": "eu-west-1", TEAM: Rewriting(["dev-ops", fresh("x")]), "s3:prefix": "a/"}
    request = Request.create(BUILDER, "s3:PutObject", SHARED, context)
    assert request.context == {"aws:requestedregion": "eu-west-1", TEAM.lower(): ("dev-ops", "x"), "s3:prefix": "a/"}
    assert context == {LEVEL: "blocked"}


def test_a_class_object_new_would_call_unsafe_cannot_be_a_request():
    """Requests are made without ``object.__new__``'s checks once a class has passed them (``_request._new``); the
    one it makes on a subclass's layout cannot fail: Request's fields are slots, so no base of another layout
    (for which ``object.__new__`` is not safe) can be mixed in."""
    with pytest.raises(TypeError, match="lay-out"):
        type("Numbered", (Request, int), {})
    assert type(Request.create(BUILDER, "s3:GetObject", SHARED)) is Request


def test_a_request_subclass_is_set_and_read_by_its_own_attributes(engine):
    """A subclass may define a field anew: ``create`` sets, and a single call reads, a subclass's fields by name,
    never Request's slots beneath (which ``create`` fills and the engine reads in place for a Request itself)."""

    class Deleting(Request):
        action = property(lambda self: "s3:DeleteObject")

    with pytest.raises(AttributeError):
        Deleting.create(BUILDER, "s3:GetObject", SHARED)
    request = object.__new__(Deleting)
    fields = (BUILDER, "s3:GetObject", SHARED, "111122223333", {TEAM.lower(): "ops"}, {})
    for name, value in zip(("principal", "action", "resource", "resource_account", "context", "session_tags"),
                           fields, strict=True):
        Request.__dict__[name].__set__(request, value)  # the slot beneath the subclass's property
    deleted = reference.evaluate(POLICIES, Request.create(BUILDER, "s3:DeleteObject", SHARED, {TEAM: "ops"}))
    got = reference.evaluate(POLICIES, Request.create(BUILDER, "s3:GetObject", SHARED, {TEAM: "ops"}))
    assert deleted.decision is not got.decision
    for explain in (False, True):
        assert engine.evaluate(request, explain=explain).decision is deleted.decision


# ------------------------------------------------------------------ lone surrogates


SURROGATE_ROWS = {  # where the surrogate stands: (principal, action, resource, context)
    "principal": ("arn:aws:iam::111122223333:role/B\ud800", "s3:GetObject", SHARED, {TEAM: "ops"}),
    "action": (BUILDER, "s3:Get\udfffObject", SHARED, {TEAM: "ops"}),
    "resource": (BUILDER, "s3:GetObject", "arn:aws:s3:::shared/\ud800", {TEAM: "ops"}),
    "value": (BUILDER, "s3:GetObject", SHARED, {TEAM: "dev-\ud800"}),
    "list item": (BUILDER, "s3:GetObject", SHARED, {TEAM: ["ops", "\udc80"]}),
    "key no policy tests": (BUILDER, "s3:GetObject", SHARED, {TEAM: "ops", "aws:PrincipalTag/\ud800": "x"}),
    "value no policy tests": (BUILDER, "s3:GetObject", SHARED, {TEAM: "ops", "aws:SourceVpc": "vpc-\ud800"}),
    "list item no policy tests": (BUILDER, "s3:GetObject", SHARED, {TEAM: "ops", "aws:TagKeys": ["a", "\udc80"]}),
}


@pytest.mark.parametrize("where", SURROGATE_ROWS)
def test_reference_refuses_a_lone_surrogate(where):
    principal, action, resource, context = SURROGATE_ROWS[where]
    with pytest.raises(RequestError):
        Request.create(principal, action, resource, context)


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("where", SURROGATE_ROWS)
def test_a_lone_surrogate_fails_its_request_alone(engine, where, threads):
    """Every other request of the batch, before and after it and in other chunks, is answered."""
    n = 3 * CHUNK
    principals, actions, resources, teams = (list(column) for column in plain_rows(n))
    contexts: list[dict | None] = [{TEAM: team} for team in teams]
    bad = [5, CHUNK + 1, n - 1]
    for i in bad:
        principals[i], actions[i], resources[i], contexts[i] = SURROGATE_ROWS[where]
    want = [failed("lone surrogate") if i in bad else reference_decision(p, a, r, c)
            for i, (p, a, r, c) in enumerate(zip(principals, actions, resources, contexts, strict=True))]
    assert_batch(engine.evaluate_columns(principals, actions, resources, contexts, threads=threads), want)
    keys = sorted({key for context in contexts for key in context})
    columns = {key: [context.get(key) for context in contexts] for key in keys}
    assert_batch(engine.evaluate_columns(principals, actions, resources, columns, threads=threads), want)
    explained = engine.evaluate_columns(principals, actions, resources, contexts, explain=True)
    assert_explained(explained, want)
    assert all(explained[i].decided_by == "error" and explained[i].error for i in bad)


# ------------------------------------------------------------------ one key spelled two ways


SPELLINGS = {
    "tested key": ("aws:PrincipalTag/team", "aws:principalTag/TEAM"),
    "key no policy tests": ("aws:SourceVpc", "AWS:sourceVPC"),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_two_spellings_of_a_key_fail_only_the_row_that_gives_both(engine, spelling):
    """CloudTrail spells some keys two ways: as columns they are one key, and a row may give it once."""
    first, second = SPELLINGS[spelling]
    n = 2 * CHUNK + 9
    principals, actions, resources, teams = plain_rows(n)
    one = [None] * n
    other = [None] * n
    for i in range(n):
        (one if i % 2 else other)[i] = teams[i]
    both = [3, CHUNK + 4, n - 1]
    for i in both:
        one[i], other[i] = "ops", "blocked"
    columns = {first: one, second: other} if spelling == "tested key" else \
        {TEAM: teams, first: one, second: other}
    want = []
    for i, (p, a, r, t) in enumerate(zip(principals, actions, resources, teams, strict=True)):
        context = {key: column[i] for key, column in columns.items() if column[i] is not None}
        want.append(reference_decision(p, a, r, context))
        assert (want[-1].error is not None) == (i in both)
        if i not in both and spelling == "tested key":
            assert want[-1].decision is expected(a, r, t)
    for threads in (1, 4):
        assert_batch(engine.evaluate_columns(principals, actions, resources, columns, threads=threads), want)
    assert_explained(engine.evaluate_columns(principals, actions, resources, columns, explain=True), want)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_two_spellings_in_an_arrow_struct_fail_only_the_row_that_gives_both(engine, spelling):
    n = 1000
    principals, actions, resources, teams = plain_rows(n)
    one = [team if i % 2 else None for i, team in enumerate(teams)]
    other = [None if i % 2 else team for i, team in enumerate(teams)]
    both = [2, 501, 999]
    for i in both:
        one[i], other[i] = "ops", "blocked"
    fields = [pa.array(one, pa.string()), pa.array(other, pa.string())]
    if spelling == "tested key":
        context = pa.StructArray.from_arrays(fields, list(SPELLINGS[spelling]))
    else:
        context = pa.StructArray.from_arrays([pa.array(teams, pa.string()), *fields], [TEAM, *SPELLINGS[spelling]])
    table = pa.table({"principal": principals, "action": actions, "resource": resources, "context": context})
    want = [failed("given twice") if i in both else reference_decision(p, a, r, {TEAM: t})
            for i, (p, a, r, t) in enumerate(zip(principals, actions, resources, teams, strict=True))]
    result = evaluate_arrow(engine, table).to_pydict()
    assert result["decision"] == [str(w.decision) for w in want]
    assert [i for i, error in enumerate(result["error"]) if error is not None] == both
    explained = evaluate_arrow(engine, table, explain=True).to_pydict()
    assert explained["decided_by"] == [w.decided_by for w in want]


# ------------------------------------------------------------------ size


MEGABYTE = 1 << 20


def test_megabyte_strings(engine):
    long_put = "s3:Put" + "x" * MEGABYTE
    long_shared = "arn:aws:s3:::shared/" + "k" * MEGABYTE
    long_dev = "dev-" + "y" * MEGABYTE
    rows = [  # principal, action, resource, team, decision by hand
        (BUILDER, long_put, SHARED, "dev-1", ALLOW),
        (BUILDER, long_put, SHARED, "blocked", EXPLICIT),
        (BUILDER, long_put, PRIVATE, "dev-1", IMPLICIT),
        (BUILDER, "s3:PutObject", long_shared, "dev-1", ALLOW),
        (BUILDER, "s3:GetObject", long_shared, "blocked", EXPLICIT),
        (BUILDER, "s3:PutObject", SHARED, long_dev, ALLOW),
        (BUILDER, "s3:PutObject", SHARED, "blocked" + long_dev, IMPLICIT),
        (BUILDER, "s3:PutObject", long_shared, [long_dev, "blocked"], EXPLICIT),
    ]
    want = [reference_decision(p, a, r, {TEAM: t}) for p, a, r, t, _ in rows]
    assert [w.decision for w in want] == [decision for *_, decision in rows]
    principals, actions, resources, teams, _ = (list(column) for column in zip(*rows, strict=True))
    assert_batch(engine.evaluate_columns(principals, actions, resources, {TEAM: FreshStrings(teams)}), want)
    # read in place: exact lists of plain strings (the last row's list value would send the chunk elsewhere)
    assert_batch(engine.evaluate_columns(principals[:-1], actions[:-1], resources[:-1], {TEAM: teams[:-1]}),
                 want[:-1])
    contexts = [FreshMapping({TEAM: team}) for team in teams]
    assert_explained(engine.evaluate_columns(FreshStrings(principals), FreshStrings(actions),
                                             FreshStrings(resources), contexts, explain=True), want)


def test_very_many_context_keys(engine):
    """Thousands of keys no policy tests, around the one it does: in one mapping each, or as columns."""
    n = 24
    principals, actions, resources, teams = plain_rows(n)
    noise = {f"aws:PrincipalTag/extra-{k}": fresh(f"value-{k}") for k in range(10_000)}
    contexts = [FreshMapping({**noise, TEAM: team}) for team in teams]
    want = [reference_decision(p, a, r, {TEAM: t}) for p, a, r, t in zip(principals, actions, resources, teams,
                                                                          strict=True)]
    assert_batch(engine.evaluate_columns(principals, actions, resources, contexts), want)
    columns = {f"aws:PrincipalTag/extra-{k}": FreshStrings([f"value-{k}"] * n) for k in range(3000)}
    columns[TEAM] = FreshStrings(list(teams))
    assert_batch(engine.evaluate_columns(principals, actions, resources, columns), want)


def test_very_many_tested_context_keys():
    """A Deny that needs 500 keys to match at once."""
    keys = [f"aws:PrincipalTag/k{k}" for k in range(500)]
    policies = PolicySet(identity=(parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
        {"Effect": "Deny", "Action": "*", "Resource": "*",
         "Condition": {"StringEquals": {key: f"v{k}" for k, key in enumerate(keys)}}},
    ]}, name="many"),))
    engine = CompiledPolicySet(policies)
    everything = {key: f"v{k}" for k, key in enumerate(keys)}
    contexts = [everything, {**everything, keys[499]: "other"},
                {key.upper(): value for key, value in everything.items()},
                {key: value for key, value in everything.items() if key != keys[0]}]
    want = [reference_decision(BUILDER, "s3:GetObject", SHARED, context, policies=policies) for context in contexts]
    assert [w.decision for w in want] == [EXPLICIT, ALLOW, EXPLICIT, ALLOW]
    columns = ([BUILDER] * 4, ["s3:GetObject"] * 4, [SHARED] * 4)
    assert_batch(engine.evaluate_columns(*columns, [FreshMapping(context) for context in contexts]), want)
    folded = [{key.lower(): value for key, value in context.items()} for context in contexts]
    by_key = {key.upper() if k % 2 else key: FreshStrings([context.get(key.lower()) for context in folded])
              for k, key in enumerate(keys)}
    assert_batch(engine.evaluate_columns(*columns, by_key), want)


# ------------------------------------------------------------------ single requests on kept converters


def raw_request(principal, action, resource, context=None) -> Request:
    """A Request built without ``Request.create``'s checks: the engine reads it as hostile input. The
    resource is in the caller's account, as ``Request.create`` places an ARN that names no account."""
    fields = str.__str__(principal).split(":")
    return Request(principal, action, resource, fields[4] if len(fields) > 4 else "111122223333",
                   context if context is not None else {})


def single_cases() -> list[tuple[tuple, Request]]:
    """Requests that differ in what a kept converter might carry over: a team tag that allows, then
    blocks, then is absent; a failing one between; strings only the request holds."""
    cases = [(BUILDER, "s3:PutObject", SHARED, {TEAM: "dev-ops"}),
             (BUILDER, "s3:PutObject", SHARED, {}),
             (BUILDER, "s3:GetObject", SHARED, {TEAM: "blocked"}),
             (BUILDER, "s3:GetObject", SHARED, {TEAM: "bl\ud800ocked"}),
             (BUILDER, "s3:GetObject", SHARED, {}),
             (BUILDER, "s3:GetObject", SHARED, {TEAM: 7}),
             (AUDITOR, "s3:PutObject", SHARED, {TEAM: ["dev-x"]}),
             (BUILDER, "s3:PutObject", SHARED, {TEAM: "dev-\ud800"}),
             (BUILDER, "s3:PutObject", PRIVATE, {TEAM: "dev-ops"}),
             ("not an arn", "s3:GetObject", SHARED, {}),
             (BUILDER, "s3:GetObject", "bad resource", {}),
             (AUDITOR, "s3:PutObject", SHARED, {TEAM.upper(): fresh("dev-ops")})]
    return [(case, raw_request(*map(fresh, case[:3]), FreshMapping(case[3]) if k % 2 else dict(case[3])))
            for k, case in enumerate(cases)]


@pytest.mark.parametrize("explain", [False, True])
def test_single_calls_carry_nothing_over(engine, explain):
    """The single-request path keeps its converter between calls: each answer is still the reference's."""
    cases = single_cases() * 3
    want = [reference_decision(*case) for case, _ in cases]
    assert [w.decision for w in want[:3]] == [ALLOW, IMPLICIT, EXPLICIT]  # by hand
    got = [engine.evaluate(request, explain=explain) for _, request in cases]
    assert [g.decision for g in got] == [w.decision for w in want]
    assert [g.error is None for g in got] == [w.error is None for w in want]
    if explain:
        assert_explained(got, want)


def in_four_threads(ask) -> None:
    """``ask(offset)`` for offsets 0 to 3, each on a thread of its own, all at once."""
    threads = [threading.Thread(target=ask, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class Reentrant(Mapping):
    """A context whose reading asks the same engine another question, mid-conversion."""

    def __init__(self, engine: CompiledPolicySet, data: Mapping, inner: Request, answers: list) -> None:
        self._engine, self._data, self._inner, self._answers = engine, dict(data), inner, answers

    def __getitem__(self, key):
        self._answers.append(self._engine.evaluate(self._inner, explain=len(self._answers) % 2 == 0))
        return fresh(self._data[key])

    def __iter__(self):
        self._answers.append(self._engine.evaluate(self._inner, explain=False))
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)


@pytest.mark.parametrize("explain", [False, True])
def test_a_single_call_made_while_another_converts(engine, explain):
    inner = raw_request(BUILDER, "s3:GetObject", SHARED, {TEAM: "blocked"})
    answers: list[Decision] = []
    outer = raw_request(BUILDER, "s3:PutObject", SHARED, Reentrant(engine, {TEAM: "dev-ops"}, inner, answers))
    got = engine.evaluate(outer, explain=explain)
    assert got.decision is ALLOW  # by hand: DevWrite
    assert got.decision is reference_decision(BUILDER, "s3:PutObject", SHARED, {TEAM: "dev-ops"}).decision
    assert answers and {a.decision for a in answers} == {EXPLICIT}  # the inner request: Blocked


def test_single_calls_from_threads(engine):
    cases = single_cases()
    want = [reference_decision(*case).decision for case, _ in cases]
    failures: list = []

    def ask(offset: int) -> None:
        for k in range(300):
            i = (k + offset) % len(cases)
            got = engine.evaluate(cases[i][1], explain=k % 3 == 0).decision
            if got is not want[i]:
                failures.append((i, got, want[i]))

    in_four_threads(ask)
    assert not failures


def test_single_calls_past_what_a_converter_keeps(engine):
    """More principals than a kept converter remembers (it is then dropped for a fresh one)."""
    for n in range(5000):
        principal = f"arn:aws:iam::111122223333:role/r{n}"
        team = ("dev-ops", "blocked", None)[n % 3]
        request = raw_request(principal, "s3:PutObject", SHARED, {TEAM: team} if team else {})
        assert engine.evaluate(request, explain=n % 2 == 0).decision is expected("s3:PutObject", SHARED, team), n


def test_an_action_is_service_colon_action_of_letters_digits_underscores_and_hyphens_every_character(engine):
    """Every character of the first 512 (every byte of UTF-8 among them) inside an action: allowed only the
    ASCII letters and digits, '_' and '-', by ``Request.create`` and by a single call alike."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    for code in range(512):
        action = f"s3:Get{chr(code)}Object" if code != ord(":") else "s3:Get:Object"
        try:
            Request.create(BUILDER, action, SHARED)
            created = True
        except RequestError:
            created = False
        decided = engine.evaluate(raw_request(BUILDER, action, SHARED), explain=False)
        assert created == (chr(code) in allowed) == (decided.error is None), repr(chr(code))


def test_single_calls_match_an_action_by_its_characters_after_a_lookalike_was_matched(engine):
    """What each action matches is kept between calls, by its characters."""
    assert engine.evaluate(raw_request(BUILDER, "s3:GetObject", SHARED), explain=False).decision is ALLOW
    for explain in (False, True):
        request = raw_request(BUILDER, lookalike("s3:GetObject")("s3:DeleteObject"), SHARED)
        assert engine.evaluate(request, explain=explain).decision is IMPLICIT


def test_single_calls_hold_what_they_read_until_the_next_call_only(engine):
    """A single call's batch keeps the request's values alive while it reads them, and lets them go when the
    next call empties it (keeping its room, not its items)."""

    class Context(dict):  # a dict that can be watched going away
        pass

    contexts = [Context({TEAM.lower(): "ops", f"aws:PrincipalTag/k{k}": "v"}) for k in range(20)]
    gone = [weakref.ref(context) for context in contexts]
    for context in contexts:
        assert engine.evaluate(raw_request(BUILDER, "s3:GetObject", SHARED, context), explain=False).decision is ALLOW
    del context, contexts
    assert engine.evaluate(raw_request(BUILDER, "s3:GetObject", SHARED), explain=False).decision is ALLOW
    assert [ref() for ref in gone] == [None] * 20


def test_a_single_call_checks_the_shape_of_what_create_did_not_check_last(engine):
    """``create`` remembers the very strings it checked last, so that a call on the request it just made does not
    check them again: any other string is checked, whatever create saw before it."""
    for action, resource, problem in (("s3 GetObject", SHARED, "is not service:Action"),
                                      ("s3:GetObject", "arn:aws:s3", "is neither an ARN")):
        made = Request.create(BUILDER, "s3:GetObject", SHARED)
        assert engine.evaluate(made, explain=False).error is None
        for explain in (False, True):
            decided = engine.evaluate(raw_request(BUILDER, action, resource), explain=explain)
            assert problem in (decided.error or ""), decided


def test_a_request_changed_between_single_calls_is_read_anew(engine):
    request = Request.create(BUILDER, "s3:PutObject", SHARED, {TEAM: "dev-ops"})
    assert engine.evaluate(request, explain=False).decision is ALLOW
    request.context[TEAM.lower()] = "blocked"
    assert engine.evaluate(request, explain=False).decision is EXPLICIT
    request.context[TEAM.lower()] = "dev-ops"
    object.__setattr__(request, "resource", PRIVATE)
    assert engine.evaluate(request).decision is IMPLICIT
    object.__setattr__(request, "action", "s3:Get\ud800Object")
    assert engine.evaluate(request, explain=False).error is not None


def test_single_explained_decisions_are_kept_only_for_what_they_depend_on(engine):
    """An explained decision is given again to the requests alike (the same statements and place, and for a
    deny the same action) when nothing of the request's own went into it: no key it lacked, no near miss."""
    cases = [(BUILDER, "s3:GetObject", SHARED, {TEAM: "ops"}),  # allowed: kept
             (BUILDER, "s3:GetObject", SHARED, {}),  # alike, but the Blocked deny needed a key it lacks
             (BUILDER, "s3:DeleteObject", SHARED, {TEAM: "ops"}),  # denied, no Allow of its action: kept
             (BUILDER, "s3:PutObject", SHARED, {TEAM: "ops"}),  # denied alike, DevWrite a near miss (condition)
             (BUILDER, "s3:PutObject", PRIVATE, {TEAM: "dev-ops"})]  # alike, DevWrite a near miss (resource)
    want = [reference.evaluate(POLICIES, Request.create(*case)) for case in cases]
    assert want[1].missing_keys and not want[0].missing_keys
    assert want[3].near_misses[0].miss != want[4].near_misses[0].miss and not want[2].near_misses
    for _ in range(2):
        assert [engine.evaluate(Request.create(*case)) for case in cases] == want


def test_single_calls_on_an_engine_large_enough_to_decide_without_the_gil():
    """Past 4,096 statements a single request is matched and decided with the GIL released, from many threads."""
    statements = [{"Sid": f"Bucket{i}", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
                   "Resource": f"arn:aws:s3:::bucket-{i}/*", "Condition": {"StringLike": {TEAM: f"team-{i % 7}*"}}}
                  for i in range(5000)]
    statements.append({"Sid": "Blocked", "Effect": "Deny", "Action": "*", "Resource": "*",
                       "Condition": {"StringEquals": {TEAM: "blocked"}}})
    policies = PolicySet(identity=(parse_policy({"Version": "2012-10-17", "Statement": statements}, name="big"),))
    engine = CompiledPolicySet(policies)
    cases = [(BUILDER, action, f"arn:aws:s3:::bucket-{i}/k", {TEAM: team} if team else {})
             for i, action, team in [(3, "s3:GetObject", "team-3x"), (3, "s3:PutObject", "team-4"),
                                     (9, "s3:GetObject", None), (4999, "s3:PutObject", "team-1"),
                                     (12, "s3:GetObject", "blocked")]]
    want = [reference.evaluate(policies, Request.create(*case)) for case in cases]
    assert [w.decision for w in want] == [ALLOW, IMPLICIT, IMPLICIT, ALLOW, EXPLICIT]
    failures: list = []

    def ask(offset: int) -> None:
        for k in range(40):
            i, explain = (k + offset) % len(cases), k % 2 == 0
            got = engine.evaluate(Request.create(*cases[i]), explain=explain)
            if (got if explain else got.decision) != (want[i] if explain else want[i].decision):
                failures.append((i, got))

    in_four_threads(ask)
    assert not failures


# ------------------------------------------------------------------ Arrow buffers, read without Python objects


def arrow_text(values: list[bytes | None], large: bool = False) -> pa.Array:
    """A string array of exactly these bytes: Arrow does not check that they are UTF-8."""
    raw = pa.array(values, pa.large_binary() if large else pa.binary())
    return pa.Array.from_buffers(pa.large_string() if large else pa.string(), len(raw), raw.buffers())


def with_offsets(array: pa.Array, offsets: list[int]) -> pa.Array:
    """``array`` read by other offsets, which Arrow's cheap validation lets through (it checks the last)."""
    validity, _, data = array.buffers()
    return pa.Array.from_buffers(array.type, len(offsets) - 1,
                                 [validity, pa.py_buffer(np.array(offsets, np.int32).tobytes()), data])


BAD_OFFSETS = (([0, 29, 3, 30], [0, 2, 1, 3]), ([0, 4000, 5, 30], [0, 400, 1, 3]), ([0, -5, 3, 30], [0, -1, 2, 3]))
"""Offsets of three strings over 30 bytes, and of three lists over three items, that run backwards, far past
their data, or before it."""


def request_table(principals, actions, resources, **columns) -> pa.Table:
    return pa.table({"principal": principals, "action": actions, "resource": resources, **columns})


def ten_byte_strings() -> pa.Array:
    return arrow_text([b"0123456789", b"abcdefghij", b"ABCDEFGHIJ"])


def hostile_columns(offsets: list[int], list_offsets: list[int]) -> dict[str, dict]:
    """Each column the Arrow path reads, in turn given the bad offsets, the others well formed."""
    bad = with_offsets(ten_byte_strings(), offsets)
    plain = [BUILDER] * 3, ["s3:GetObject"] * 3, [SHARED] * 3
    items = pa.ListArray.from_arrays(pa.array([0, 1, 2, 3], pa.int32()), bad)
    bad_lists = pa.Array.from_buffers(pa.list_(pa.string()), 3, [None, pa.py_buffer(np.array(
        list_offsets, np.int32).tobytes())], children=[pa.array(["a", "b", "c"])])
    return {
        "principal": dict(principal=bad),
        "action": dict(action=bad),
        "resource": dict(resource=bad),
        "resource_account": dict(resource_account=bad),
        "context value": dict(context=pa.StructArray.from_arrays([bad], [TEAM])),
        "context value no policy tests": dict(context=pa.StructArray.from_arrays([bad], ["aws:SourceVpc"])),
        "context list items": dict(context=pa.StructArray.from_arrays([items], [TEAM])),
        "context lists": dict(context=pa.StructArray.from_arrays([bad_lists], [TEAM])),
        "session tag": dict(session_tags=pa.StructArray.from_arrays([bad], ["team"])),
    } | {"plain": dict(zip(("principal", "action", "resource"), plain, strict=True))}


@pytest.mark.parametrize("offsets", BAD_OFFSETS)
@pytest.mark.parametrize("where", ["principal", "action", "resource", "resource_account", "context value",
                                   "context value no policy tests", "context list items", "context lists",
                                   "session tag"])
def test_arrow_offsets_outside_their_data_refuse_the_batch(engine, offsets, where):
    """A string or list array whose offsets point outside its buffers is refused whole, before any row is
    decided (reading it would run outside the buffers: a crash, or text from freed memory)."""
    columns = hostile_columns(*offsets)
    table = pa.table({**columns["plain"], **columns[where]})
    for explain in (False, True):
        with pytest.raises(ValueError, match="offsets point outside"):
            evaluate_arrow(engine, table, explain=explain)


@pytest.mark.parametrize("offsets", BAD_OFFSETS)
def test_arrow_large_and_dictionary_text_with_bad_offsets_is_refused(engine, offsets):
    """Layouts that Arrow's own kernels convert first are checked whole before they are converted."""
    large = pa.Array.from_buffers(pa.large_string(), 3, [
        None, pa.py_buffer(np.array(offsets[0], np.int64).tobytes()), ten_byte_strings().buffers()[2]])
    dictionary = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2], pa.int32()),
                                                with_offsets(ten_byte_strings(), offsets[0]))
    for column in (large, dictionary):
        table = request_table([BUILDER] * 3, column, [SHARED] * 3)
        with pytest.raises(ValueError, match="not a well-formed Arrow array"):
            evaluate_arrow(engine, table)
    outside = pa.DictionaryArray.from_arrays(pa.array([0, 7, 1], pa.int32()), pa.array(["s3:GetObject", "s3:Put"]),
                                             safe=False)
    with pytest.raises(ValueError, match="not a well-formed Arrow array"):
        evaluate_arrow(engine, request_table([BUILDER] * 3, outside, [SHARED] * 3))


UTF8_EDGES = [
    b"", b"\xc3\xa9", b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xf0\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf",  # UTF-8: the first and last of each length, around the surrogates
    b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf",  # overlong
    b"\xed\xa0\x80", b"\xed\xbf\xbf",  # surrogates
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\x80", b"\xbf",  # past U+10FFFF, never a lead
    b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xe2\x28\xa1",  # cut short, or broken by ASCII
    # around the 8-byte words read at once
    b"1234567\xc3", b"12345678\xc3\xa9", b"1234567\xc3\xa9abcdefgh", b"abcdefgh\xed\xa0\x80abcdefgh",
]


def decoded(value: bytes) -> str | None:
    """The text of the bytes as Python's strict decoder reads it, or None (the oracle the engine must agree with)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def assert_text_rows(engine, suffixes: list[bytes]) -> None:
    """Each suffix appended to the resource and given as the team and a session-free context key of its own row:
    rows whose bytes Python cannot decode fail with that reason; the others get the reference's decisions."""
    rows = [(BUILDER, "s3:PutObject", SHARED.encode() + suffix, b"dev-" + suffix, b"vpc-" + suffix)
            for suffix in suffixes]
    rows += [(BUILDER.encode() + suffix, f"s3:Put{i % 2}".encode() + suffix, SHARED.encode(), b"dev-1", None)
             for i, suffix in enumerate(suffixes)]
    table = request_table(arrow_text([p if isinstance(p, bytes) else p.encode() for p, *_ in rows]),
                          arrow_text([a for _, a, *_ in rows]), arrow_text([r for _, _, r, *_ in rows]),
                          context=pa.StructArray.from_arrays([arrow_text([t for *_, t, _ in rows]),
                                                              arrow_text([v for *_, v in rows])],
                                                             [TEAM, "aws:SourceVpc"]))
    for explain in (False, True):
        result = evaluate_arrow(engine, table, explain=explain).to_pydict()
        for i, row in enumerate(rows):
            texts = [decoded(value) if isinstance(value, bytes) else value for value in row]
            if any(text is None for text, value in zip(texts, row, strict=True) if value is not None):
                assert result["decision"][i] == "ImplicitDeny" and "not valid UTF-8" in result["error"][i], (i, row)
                continue
            principal, action, resource, team, vpc = texts
            want = reference_decision(principal, action, resource,
                                      {TEAM: team} | ({"aws:SourceVpc": vpc} if vpc is not None else {}))
            assert result["decision"][i] == str(want.decision), (i, row)
            assert (result["error"][i] is None) == (want.error is None), (i, row, result["error"][i])


def test_arrow_text_is_utf8_exactly_as_python_decodes_it(engine):
    assert_text_rows(engine, UTF8_EDGES)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=12) | st.sampled_from(UTF8_EDGES).map(lambda b: b * 3), min_size=1,
                max_size=12))
def test_arrow_text_of_any_bytes(engine, suffixes):
    assert_text_rows(engine, suffixes)


def test_arrow_list_items_are_utf8_exactly_as_python_decodes_them(engine):
    """An item of a list value that is not UTF-8 fails its row; the other rows get the reference's decisions."""
    lists = [[b"dev-1"], [b"dev-1", b"\xff"], [b"ok", b"\xc3\xa9"], [b"blocked", b"\xed\xa0\x80"], [b"blocked"]]
    items = arrow_text([item for values in lists for item in values])
    offsets = pa.array([0, *[sum(map(len, lists[:k + 1])) for k in range(len(lists))]], pa.int32())
    n = len(lists)
    table = request_table([BUILDER] * n, ["s3:PutObject"] * n, [SHARED] * n,
                          context=pa.StructArray.from_arrays([pa.ListArray.from_arrays(offsets, items)], [TEAM]))
    result = evaluate_arrow(engine, table).to_pydict()
    for i, values in enumerate(lists):
        texts = [decoded(value) for value in values]
        if None in texts:
            assert result["decision"][i] == "ImplicitDeny" and "not valid UTF-8" in result["error"][i], i
            continue
        want = reference_decision(BUILDER, "s3:PutObject", SHARED, {TEAM: texts})
        assert (result["decision"][i], result["error"][i]) == (str(want.decision), want.error), i


def test_arrow_null_item_in_a_list_fails_its_row_and_never_reads_as_empty_text():
    """A null inside a list value is no text: ``Request.create`` refuses it, and so does every batch path. Read
    as "", it would satisfy a condition that wants "" (an Allow the request's own text never asked for)."""
    policies = PolicySet(identity=(parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
         "Condition": {"ForAnyValue:StringEquals": {"aws:TagKeys": ["", "a"]}}}]}, name="empty"),))
    compiled = CompiledPolicySet(policies)
    with pytest.raises(RequestError):
        Request.create(BUILDER, "s3:GetObject", "*", {"aws:TagKeys": ["x", None]})
    values = [["x", None], ["a"], [None], ["x"]]
    table = request_table([BUILDER] * 4, ["s3:GetObject"] * 4, ["*"] * 4, context=pa.StructArray.from_arrays(
        [pa.array(values, pa.list_(pa.string()))], ["aws:TagKeys"]))
    result = evaluate_arrow(compiled, table).to_pydict()
    assert result["decision"] == ["ImplicitDeny", "Allow", "ImplicitDeny", "ImplicitDeny"]  # by hand
    assert [error is not None for error in result["error"]] == [True, False, True, False]
    columns = compiled.evaluate_columns([BUILDER] * 4, ["s3:GetObject"] * 4, ["*"] * 4, {"aws:TagKeys": values})
    assert result["error"] == [columns.errors.get(i) for i in range(4)]


UNREADABLE_VALUES = {  # what Request.create refuses as a context value, of a key no policy tests
    "mapping": {"a": "b"},
    "object": object(),
    "None in a list": ["a", None],
    "nested list": ["a", ["b"]],
    "bytes": b"vpc-1",
    "lone surrogate": "vpc-\ud800",
}


@pytest.mark.parametrize("value", UNREADABLE_VALUES)
def test_a_value_no_policy_tests_is_read_all_the_same(engine, value):
    """A request is refused for what ``Request.create`` refuses, by every path, whether a policy tests the key
    or not: one rule of what a request is, not one per path."""
    context = {TEAM: "ops", "aws:SourceVpc": UNREADABLE_VALUES[value]}
    with pytest.raises(RequestError):
        Request.create(BUILDER, "s3:GetObject", SHARED, context)
    n = 7
    principals, actions, resources = [BUILDER] * n, ["s3:GetObject"] * n, [SHARED] * n
    contexts = [context if i == 3 else {TEAM: "ops"} for i in range(n)]
    allowed = reference_decision(BUILDER, "s3:GetObject", SHARED, {TEAM: "ops"})
    assert allowed.decision is ALLOW  # by hand: Read
    want = [failed("unreadable") if i == 3 else allowed for i in range(n)]
    assert_batch(engine.evaluate_columns(principals, actions, resources, contexts), want)
    columns = {TEAM: ["ops"] * n, "aws:SourceVpc": [contexts[i].get("aws:SourceVpc") for i in range(n)]}
    assert_batch(engine.evaluate_columns(principals, actions, resources, columns), want)
    for explain in (False, True):
        assert engine.evaluate(raw_request(BUILDER, "s3:GetObject", SHARED, context), explain=explain).error


def test_arrow_fields_no_policy_tests_are_read_too(engine):
    """A null item of a list no policy tests fails its row; numbers and booleans are context values, and other
    types are refused, tested or not."""
    n = 4
    table = request_table([BUILDER] * n, ["s3:GetObject"] * n, [SHARED] * n, context=pa.StructArray.from_arrays(
        [pa.array(["ops"] * n), pa.array([["a"], ["a", None], None, []], pa.list_(pa.string())),
         pa.array([1, 2, None, 4]), pa.array([True, None, False, True])],
        [TEAM, "aws:TagKeys", "aws:MultiFactorAuthAge", "aws:MultiFactorAuthPresent"]))
    result = evaluate_arrow(engine, table).to_pydict()
    assert result["decision"] == ["Allow", "ImplicitDeny", "Allow", "Allow"]  # by hand: Read
    assert [error is not None for error in result["error"]] == [False, True, False, False]
    odd = request_table([BUILDER], ["s3:GetObject"], [SHARED], context=pa.StructArray.from_arrays(
        [pa.array([{"a": "b"}])], ["aws:SourceVpc"]))
    with pytest.raises(SchemaError):
        evaluate_arrow(engine, odd)


def test_arrow_many_distinct_values_alike_sliced_and_with_nulls(engine):
    """Thousands of distinct resources and actions of one length that differ only in their last bytes (the
    distinct values are found by hashing), nulls among them, read from a slice of a larger batch."""
    n = 6000
    principals = [(BUILDER, AUDITOR, None)[i % 7 % 3] if i % 11 else None for i in range(n)]
    actions = [None if i % 13 == 5 else ("s3:PutObject", "s3:GetObject", f"s3:Put{i % 997:04d}x")[i % 3]
               for i in range(n)]
    resources = [None if i % 17 == 3 else f"arn:aws:s3:::shared/{i % 3001:05d}" if i % 2 else PRIVATE
                 for i in range(n)]
    teams = [(None, "dev-1", "blocked", "ops")[i % 4] for i in range(n)]
    table = request_table(principals, actions, resources, context=pa.StructArray.from_arrays(
        [pa.array(teams, pa.string())], [TEAM])).slice(1000, 4000)
    result = evaluate_arrow(engine, table).to_pydict()
    answers: dict[tuple, Decision] = {}
    for row, i in enumerate(range(1000, 5000)):
        p, a, r, t = principals[i], actions[i], resources[i], teams[i]
        if p is None or a is None or r is None:
            assert result["decision"][row] == "ImplicitDeny" and "must not be null" in result["error"][row]
            continue
        key = (p, a, r, t)
        if key not in answers:
            answers[key] = reference_decision(p, a, r, {TEAM: t} if t is not None else {})
        assert result["decision"][row] == str(answers[key].decision), (i, key)
        assert (result["error"][row] is None) == (answers[key].error is None), (i, key)


# ------------------------------------------------------------------ the whole module under the debug allocator


def test_module_passes_under_the_debug_allocator_subprocess():
    """PYTHONMALLOC=debug fills freed memory, so a string read after it was freed gives a wrong answer."""
    assert_passes_under_debug_allocator("tests/test_hostile_inputs.py", IAM_EVAL_HOSTILE_ROWS="20000")
