"""The compiled engine: it is really compiled, it stays linear on adversarial input, it is
thread-safe, and a bad request in a batch fails alone."""
from __future__ import annotations

import threading

import pytest

from iam_evaluator import DecisionKind, PolicySet, Request, parse_policy
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
