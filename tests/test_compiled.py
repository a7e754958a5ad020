"""The compiled engine: it is really compiled, it stays linear on adversarial input, it is
thread-safe, and a bad request in a batch fails alone."""
from __future__ import annotations

import threading

import pytest

from iam_evaluator import DecisionKind, PolicySet, Request, parse_policy, reference
from iam_evaluator.compile import CHUNK, CompiledPolicySet

ROLE = "arn:aws:iam::111122223333:role/Builder"
ALLOW, IMPLICIT, EXPLICIT = DecisionKind.ALLOW, DecisionKind.IMPLICIT_DENY, DecisionKind.EXPLICIT_DENY


def compiled(*statements, **layers) -> CompiledPolicySet:
    identity = parse_policy({"Version": "2012-10-17", "Statement": list(statements)}, name="p")
    return CompiledPolicySet(PolicySet(identity=(identity,), **layers))


def allow(action="s3:GetObject", resource="*", **extra):
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


@pytest.mark.parametrize("module", ["_engine", "_globtrie", "_conditions", "_pattern"])
def test_extensions_are_compiled(module):
    imported = __import__(f"iam_evaluator.{module}", fromlist=["_"])
    assert imported.__file__.endswith(".so"), f"iam_evaluator.{module} did not load as a compiled extension"


def test_adversarial_pattern_against_a_long_resource():
    engine = compiled(allow(resource="arn:aws:s3:::" + "a*" * 8 + "b"))
    long_arn = "arn:aws:s3:::" + "a" * 100_000
    assert engine.evaluate(Request.create(ROLE, "s3:GetObject", long_arn)).decision is IMPLICIT
    assert engine.evaluate(Request.create(ROLE, "s3:GetObject", long_arn + "b")).decision is ALLOW


def test_pattern_with_hundreds_of_wildcards():
    engine = compiled(allow(action="s3:" + "*?" * 300, resource="arn:aws:s3:::" + "*/" * 300 + "*"))
    action = "s3:" + "G" * 600
    assert engine.evaluate(Request.create(ROLE, action, "arn:aws:s3:::" + "x/" * 300)).decision is ALLOW
    assert engine.evaluate(Request.create(ROLE, action, "arn:aws:s3:::" + "x/" * 299)).decision is IMPLICIT
    assert engine.evaluate(Request.create(ROLE, "s3:" + "G" * 299, "arn:aws:s3:::" + "x/" * 300)).decision \
        is IMPLICIT


def test_very_many_statements_match_only_their_own():
    statements = [allow(action="s3:GetObject", resource=f"arn:aws:s3:::bucket-{i}/*", Sid=f"S{i}")
                  for i in range(20_000)]
    engine = compiled(*statements)
    decision = engine.evaluate(Request.create(ROLE, "s3:GetObject", "arn:aws:s3:::bucket-12345/key"))
    assert decision.decision is ALLOW
    assert [ref.sid for ref in decision.statements] == ["S12345"]
    assert engine.evaluate(Request.create(ROLE, "s3:GetObject", "arn:aws:s3:::bucket-x/key")).decision is IMPLICIT


def test_two_threads_share_one_compiled_set():
    engine = compiled(allow(resource="arn:aws:s3:::even-*"), {"Effect": "Deny", "Action": "s3:*",
                                                                "Resource": "arn:aws:s3:::even-9*"})
    resources = [f"arn:aws:s3:::{'even' if i % 2 == 0 else 'odd'}-{i}" for i in range(20_000)]
    want = [(EXPLICIT if r.startswith("arn:aws:s3:::even-9") else ALLOW) if "even" in r else IMPLICIT
            for r in resources]
    principals, actions = [ROLE] * len(resources), ["s3:GetObject"] * len(resources)
    results = {}

    def run(name):
        results[name] = list(engine.evaluate_columns(principals, actions, resources))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == want and results[1] == want
    assert list(engine.evaluate_columns(principals, actions, resources, threads=2)) == want


def test_a_bad_request_fails_alone():
    engine = compiled(allow(resource="*", Condition={"NumericLessThan": {"s3:max-keys": "10"}}))
    principals = [ROLE, "not-an-arn", ROLE, ROLE, 7]
    actions = ["s3:GetObject", "s3:GetObject", "s3 GetObject", "s3:GetObject", "s3:GetObject"]
    resources = ["*", "*", "*", "*", "*"]
    contexts = [{"s3:max-keys": "5"}, None, None, {"s3:max-keys": "ten"}, None]
    result = engine.evaluate_columns(principals, actions, resources, contexts)
    assert list(result) == [ALLOW, IMPLICIT, IMPLICIT, IMPLICIT, IMPLICIT]
    assert result.codes[3] == 3 and sorted(result.errors) == [1, 2, 3, 4]
    assert "s3:max-keys" in result.errors[3]
    assert "not an IAM or STS ARN" in result.errors[1]
    explained = engine.evaluate_columns(principals, actions, resources, contexts, explain=True)
    assert [d.decided_by for d in explained] == ["identity", "error", "error", "error", "error"]
    assert "s3:max-keys" in explained[3].error


def test_a_failed_condition_names_its_statement_and_keys():
    engine = compiled(allow(Sid="Few", Condition={"NumericLessThan": {"s3:max-keys": "10", "aws:EpochTime": "9"},
                                                  "NumericGreaterThan": {"s3:max-keys": "1"}}))
    result = engine.evaluate_columns([ROLE], ["s3:GetObject"], ["*"], [{"s3:max-keys": "ten"}])
    assert result.errors == {0: "a condition of Allow p#0 (Few) cannot read the request's value of "
                                "aws:EpochTime or s3:max-keys"}


def test_context_keys_fold_case_and_lists_count_as_given():
    engine = compiled(allow(Condition={"ForAllValues:StringEquals": {"aws:TagKeys": ["a", "b"]},
                                       "StringEquals": {"AWS:PrincipalTag/Team": "web"}}))
    columns = ([ROLE] * 3, ["s3:GetObject"] * 3, ["*"] * 3)
    contexts = [{"aws:tagkeys": ["a"], "aws:principaltag/team": "web"},
                {"AWS:TAGKEYS": ["a", "c"], "aws:PrincipalTag/Team": "web"},
                {"aws:TagKeys": [], "aws:PrincipalTag/team": "web", "aws:principaltag/TEAM": "web"}]
    result = engine.evaluate_columns(*columns, contexts)
    assert list(result)[:2] == [ALLOW, IMPLICIT]
    assert "given twice" in result.errors[2]


def test_stats_describe_the_indexes():
    stats = compiled(allow(action=["s3:Get*", "s3:List*"], resource=["arn:aws:s3:::a/*", "arn:aws:s3:::b/*"])) \
        .get_stats()
    assert (stats["statements"], stats["action_patterns"], stats["resource_patterns"]) == (1, 2, 2)
    assert stats["action_trie"]["nodes"] > 1


def test_context_columns_decide_like_context_mappings():
    engine = compiled(allow(Condition={"StringEquals": {"aws:PrincipalTag/team": "web"},
                                       "ForAnyValue:StringEquals": {"aws:TagKeys": "a"}}))
    contexts = [{"aws:PrincipalTag/team": "web", "aws:TagKeys": ["a", "b"]}, {"aws:PrincipalTag/team": "web"},
                {"aws:TagKeys": ["a"]}, {"aws:PrincipalTag/team": "ops", "aws:TagKeys": "a"}, {}]
    columns = ([ROLE] * 5, ["s3:GetObject"] * 5, ["*"] * 5)
    by_request = engine.evaluate_columns(*columns, contexts)
    by_key = engine.evaluate_columns(*columns, {
        "AWS:PrincipalTag/Team": [c.get("aws:PrincipalTag/team") for c in contexts],
        "aws:TagKeys": [c.get("aws:TagKeys") for c in contexts],
        "aws:unused": ["x"] * 5,
    })
    assert list(by_request) == list(by_key) == [ALLOW, IMPLICIT, IMPLICIT, IMPLICIT, IMPLICIT]
    # Two spellings of one key are one key: only a row that gives both fails, alone.
    spelled_twice = engine.evaluate_columns(*columns, {
        "aws:PrincipalTag/team": ["web", None, "web", None, None],
        "AWS:PRINCIPALTAG/TEAM": [None, "web", "web", None, None],
        "aws:TagKeys": [["a"]] * 5,
    })
    assert list(spelled_twice) == [ALLOW, ALLOW, IMPLICIT, IMPLICIT, IMPLICIT]
    assert list(spelled_twice.errors) == [2] and "given twice" in spelled_twice.errors[2]
    with pytest.raises(ValueError, match="one entry per request"):
        engine.evaluate_columns(*columns, {"aws:TagKeys": [None] * 4})


POLICIES = PolicySet(identity=(parse_policy({"Version": "2012-10-17", "Statement": [
    allow(resource="arn:aws:s3:::shared/*", Condition={"StringEquals": {"aws:PrincipalTag/team": "web"}}),
    {"Effect": "Deny", "Action": "s3:*", "Resource": "*",
     "Condition": {"ForAnyValue:StringEquals": {"aws:TagKeys": "b"}}}]}, name="p"),))
TEAM, KEYS, VPC = "aws:PrincipalTag/team", "aws:TagKeys", "aws:SourceVpc"
FAULT_ROWS = [  # principal, action, resource, resource account, {key: value}: the reference's decision by hand
    (ROLE, "s3:GetObject", "arn:aws:s3:::shared/a", None, {TEAM: "web", KEYS: ("a", "b")}),  # Deny: b
    (ROLE, "s3:GetObject", "arn:aws:s3:::shared/a", None, {TEAM: "ops", KEYS: ("a",)}),  # implicit: not web
    (ROLE, "s3:GetObject", "arn:aws:s3:::shared/a", "444455556666", {TEAM: "web", KEYS: ()}),  # cross-account
    (ROLE, "s3:GetObject", "arn:aws:s3:::shared/c", "111122223333", {TEAM: "web", VPC: "vpc-1"}),  # Allow
    (ROLE, "s3GetObject", "arn:aws:s3:::shared/a", None, {TEAM: "web"}),  # refused: the action
    (ROLE, "s3:GetObject", "not-an-arn", None, {TEAM: "web"}),  # refused: the resource
    ("nobody", "s3GetObject", "not-an-arn", None, {}),  # refused: the principal first
    (ROLE, "s3:GetObject", "arn:aws:s3:::shared/b", None, {TEAM: "web", "AWS:PrincipalTag/TEAM": "web"}),  # twice
    (ROLE, "s3:GetObject", "arn:aws:s3:::shared/b", None, {VPC: "vpc-1", "aws:sourcevpc": "vpc-2"}),  # twice
    (ROLE, "s3:PutObject", "arn:aws:s3:::shared/b", None, {TEAM: "web", KEYS: ("a",)}),  # implicit: no Put
]


def by_reference(principal, action, resource, owner, context) -> DecisionKind | None:
    """The reference's decision, None for a request ``Request.create`` refuses."""
    try:
        request = Request.create(principal, action, resource, {key: list(value) if isinstance(value, tuple) else value
                                                               for key, value in context.items()}, owner)
    except ValueError:
        return None
    return reference.evaluate(POLICIES, request).decision


def as_columns(rows):
    """The rows as exact lists, and their contexts as one column per key."""
    names = sorted({key for *_, context in rows for key in context})
    columns = [list(column) for column in zip(*(row[:4] for row in rows), strict=True)]
    return columns, {name: [context.get(name) for *_, context in rows] for name in names}


def test_columns_read_in_place_answer_as_python_objects_are_read():
    """Exact lists of plain strings are read in place (as an Arrow batch's columns are); tuples, by the
    converter of Python objects. Both give the reference's decisions, and the same reasons for the same
    faults."""
    engine = CompiledPolicySet(POLICIES)
    want = [by_reference(*row) for row in FAULT_ROWS]
    assert want == [EXPLICIT, IMPLICIT, IMPLICIT, ALLOW, None, None, None, None, None, IMPLICIT]  # by hand
    (principals, actions, resources, owners), contexts = as_columns(FAULT_ROWS)
    in_place = engine.evaluate_columns(principals, actions, resources, contexts, owners)
    as_objects = engine.evaluate_columns(tuple(principals), tuple(actions), tuple(resources),
                                         {key: tuple(column) for key, column in contexts.items()}, tuple(owners))
    assert list(in_place) == [IMPLICIT if w is None else w for w in want]
    assert in_place.codes == as_objects.codes
    assert in_place.errors == as_objects.errors and sorted(in_place.errors) == [4, 5, 6, 7, 8]


@pytest.mark.parametrize("threads", [1, 2])
def test_chunks_that_cannot_be_read_in_place_are_read_as_python_objects(threads):
    """A value that is not a plain string (text beyond ASCII, a number, a list among strings) sends its chunk
    to the converter of Python objects; every other chunk is read in place, and each answers as the other."""
    engine = CompiledPolicySet(POLICIES)
    n = 4 * CHUNK
    rows = [(*row[:4], dict(row[4])) for row in FAULT_ROWS * -(-n // len(FAULT_ROWS))][:n]
    rows[CHUNK + 5][4][TEAM] = "wéb"
    rows[2 * CHUNK + 5][4][VPC] = 7
    rows[3 * CHUNK + 7][4][TEAM] = ["web"]
    (principals, actions, resources, owners), contexts = as_columns(rows)
    mixed = engine.evaluate_columns(principals, actions, resources, contexts, owners, threads=threads)
    as_objects = engine.evaluate_columns(tuple(principals), actions, resources, contexts, owners, threads=threads)
    assert mixed.codes == as_objects.codes and mixed.errors == as_objects.errors
    want = {i: by_reference(*rows[i]) for i in (CHUNK + 5, 2 * CHUNK + 5, 3 * CHUNK + 7)}
    assert want[CHUNK + 5] is IMPLICIT and FAULT_ROWS[(CHUNK + 5) % len(FAULT_ROWS)][4][TEAM] == "web"  # changed
    expected = [want[i] if i in want else by_reference(*FAULT_ROWS[i % len(FAULT_ROWS)]) for i in range(n)]
    assert list(mixed) == [IMPLICIT if w is None else w for w in expected]


@pytest.mark.parametrize("threads", [1, 2])
def test_errors_keep_their_request_index_across_chunks(threads):
    engine = compiled(allow(Condition={"NumericLessThan": {"s3:max-keys": "10"}}))
    n = 3 * CHUNK + 17
    principals = [ROLE] * n
    contexts = [{"s3:max-keys": "5"}] * n
    bad_principal, bad_value = CHUNK + 3, 2 * CHUNK + 5
    principals[bad_principal] = "nobody"
    contexts[bad_value] = {"s3:max-keys": "many"}
    result = engine.evaluate_columns(principals, ["s3:GetObject"] * n, ["*"] * n, contexts, threads=threads)
    assert sorted(result.errors) == [bad_principal, bad_value]
    assert [i for i, decision in enumerate(result) if decision is not ALLOW] == [bad_principal, bad_value]
    by_key = engine.evaluate_columns(principals, ["s3:GetObject"] * n, ["*"] * n,
                                     {"s3:max-keys": [c["s3:max-keys"] for c in contexts]}, threads=threads)
    assert by_key.codes == result.codes and sorted(by_key.errors) == sorted(result.errors)


def test_a_batch_is_decided_only_by_the_engine_it_was_converted_for():
    """As Hyperscan checks that a scratch belongs to its database: another engine's batch would index its
    tables with foreign numbers, so it is refused before any C code reads it."""
    one, other = compiled(allow()), compiled(allow(), allow("s3:PutObject"))
    batch = one._convert([ROLE], ["s3:GetObject"], ["*"])
    with pytest.raises(ValueError, match="another engine"):
        other._engine.evaluate_range(batch, 0, 1)
    with pytest.raises(ValueError, match="another engine"):
        other._engine.explain_range(batch, 0, 1)
    with pytest.raises(IndexError):
        one._engine.evaluate_range(batch, 0, 2)
    one._engine.evaluate_range(batch, 0, 1)
    assert batch.codes_view() == bytes([1])


def test_compiling_pauses_the_garbage_collector_and_restores_it():
    import gc

    from iam_evaluator.compile import CompiledPolicies

    assert gc.isenabled()
    engine = compiled(allow())
    assert gc.isenabled(), "on again after compiling"
    gc.disable()
    try:
        compiled(allow())
        assert not gc.isenabled(), "a collector the caller turned off stays off"
    finally:
        gc.enable()
    with pytest.raises(AttributeError):
        CompiledPolicies([object()])  # fails while compiling
    assert gc.isenabled(), "on again after a compile that failed"
    assert engine.evaluate(Request.create(ROLE, "s3:GetObject", "*")).decision is ALLOW
