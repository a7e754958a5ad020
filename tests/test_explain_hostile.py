"""Hostile inputs on the new paths: explained decisions (the engine's context read back into Python for the
reference's rules), context keys, and the admin calls GetContextKeys and GetStatementUsage. Values that are
not text, lone surrogates, str subclasses that lie, contexts built anew on every access, megabyte values,
deep lists, thousands of statements: each is refused cleanly (its request fails alone, or the call fails with
a precise status) or explained as the reference explains the plain values.

The explanation reads the engine's copies of request strings after the batch is converted, when the caller's
objects may be gone; ``test_module_passes_under_the_debug_allocator_subprocess`` runs this module again under
``PYTHONMALLOC=debug``, which overwrites freed memory.
"""
from __future__ import annotations

import json

import grpc
import pytest

from iam_evaluator import PolicySet, Request, RequestError, parse_policy, reference
from iam_evaluator.compile import CompiledPolicySet
from iam_evaluator.context_keys import context_keys, store_context_keys
from iam_evaluator.decision import NEAR_MISSES, MissKind
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client
from iam_evaluator.store import PolicyStore

from .conftest import assert_passes_under_debug_allocator
from .service_helpers import EXAMPLE_STORE, RPC_TIMEOUT, copy_store, rpc_error, running_service
from .test_hostile_inputs import FreshMapping, FreshStrings, Impostor, fresh

USER = "arn:aws:iam::111122223333:user/bob"
OBJECT = "arn:aws:s3:::reports/q1.csv"
TEAM = "aws:PrincipalTag/team"
POLICIES = PolicySet(identity=(parse_policy({"Version": "2012-10-17", "Statement": [
    {"Sid": "TeamMfa", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::${aws:username}/*",
     "Condition": {"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}"},
                   "Bool": {"aws:MultiFactorAuthPresent": "true"}}},
    {"Sid": "Team", "Effect": "Allow", "Action": "s3:*", "Resource": "*",
     "Condition": {"StringEquals": {TEAM: ["red", "blue"]}}},
]}, name="p"),))


@pytest.fixture(scope="module")
def engine() -> CompiledPolicySet:
    return CompiledPolicySet(POLICIES)


def explained(engine, contexts, resources=None) -> list:
    n = len(contexts)
    return engine.evaluate_columns(FreshStrings([USER] * n), FreshStrings(["s3:GetObject"] * n),
                                   FreshStrings(resources or [OBJECT] * n), contexts, explain=True)


def by_reference(context: dict, resource: str = OBJECT):
    return reference.evaluate(POLICIES, Request.create(USER, "s3:GetObject", resource, context))


def test_contexts_built_anew_on_each_access_are_explained_as_the_reference(engine):
    plain = [{}, {TEAM: "green"}, {TEAM: ["red", "x"]}, {"aws:username": "reports", TEAM: "red"},
             {"aws:username": ["reports", "b"]}, {TEAM: "é" * 300, "aws:ResourceTag/team": "é"}]
    got = explained(engine, [FreshMapping(context) for context in plain])
    assert got == [by_reference(context) for context in plain]
    assert {m.miss.kind for d in got for m in d.near_misses} >= {MissKind.VARIABLE, MissKind.CONDITION}


def test_str_subclasses_are_explained_as_their_characters(engine):
    team = Impostor("blocked")  # equal to everything, printing as something else: read as "blocked"
    [got] = explained(engine, [{TEAM: team}])
    assert got == by_reference({TEAM: "blocked"})
    assert [m.miss.sent for m in got.near_misses if m.statement.sid == "Team"] == [("blocked",)]


@pytest.mark.parametrize("bad", ["\ud800", ["ok", "\udfff"], [["nested"]], {"a": "b"}, object(), b"bytes"])
def test_a_value_that_is_not_text_fails_its_request_alone(engine, bad):
    got = explained(engine, [{TEAM: "green"}, {TEAM: bad}, {"aws:username": "reports"}])
    assert got[1].error is not None and got[1].near_misses == () and got[1].missing_key_statements == ()
    assert got[0] == by_reference({TEAM: "green"}) and got[2] == by_reference({"aws:username": "reports"})
    with pytest.raises(RequestError):
        Request.create(USER, "s3:GetObject", OBJECT, {TEAM: bad})


def test_a_deep_list_is_refused_not_walked(engine):
    deep: list = ["x"]
    for _ in range(100_000):
        deep = [deep]
    [got] = explained(engine, [{TEAM: deep}])
    assert got.error is not None


def test_megabyte_values_are_shown_cut_short(engine):
    huge = "r" * (1 << 20)
    contexts = [{TEAM: huge, "aws:username": huge, "aws:ResourceTag/team": fresh(huge)}, {TEAM: [huge] * 64}]
    got = explained(engine, [FreshMapping(c) for c in contexts], [f"arn:aws:s3:::{huge}/k", OBJECT])
    assert got == [by_reference(contexts[0], f"arn:aws:s3:::{huge}/k"), by_reference(contexts[1])]
    shown = [value for d in got for m in d.near_misses for value in (*m.miss.sent, *m.miss.wanted)]
    assert shown and max(map(len, shown)) <= reference.SHOWN_CHARS + 1
    assert len(json.dumps([d.to_json() for d in got])) < 200_000  # the explanation does not grow with the input


def test_thousands_of_near_misses_list_the_first_and_count_the_rest():
    many = PolicySet(identity=(parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::bucket-{n}/*",
         "Condition": {"StringEquals": {f"aws:PrincipalTag/k{n % 50}": "v"}}} for n in range(5000)]}, name="many"),))
    request = Request.create(USER, "s3:GetObject", "arn:aws:s3:::bucket-7/x")
    for decision in (reference.evaluate(many, request), CompiledPolicySet(many).evaluate(request)):
        assert len(decision.near_misses) == NEAR_MISSES and decision.more_near_misses == 5000 - NEAR_MISSES
        assert [k.key for k in decision.missing_key_statements] == ["aws:PrincipalTag/k7"]  # the one bucket's


# ---------------------------------------------------------------- context keys


@pytest.mark.parametrize("action", [42, b"s3:GetObject", "s3:Get\ud800", Impostor("s3:GetObject")])
def test_context_keys_refuse_an_action_that_is_not_text_or_read_its_characters(action):
    if isinstance(action, str) and action.isprintable() and "\ud800" not in action:
        assert [k.key for k in context_keys(POLICIES.identity, action)] == [k.key for k in context_keys(
            POLICIES.identity, str.__str__(action))]
        return
    with pytest.raises(RequestError):
        context_keys(POLICIES.identity, action)


@pytest.mark.parametrize("principal", [None, 7, "\udfff", "arn:aws:iam::111122223333:user/" + "u" * (1 << 20)])
def test_store_context_keys_refuse_bad_principals(principal):
    store = PolicyStore.load(EXAMPLE_STORE)
    if principal is None:
        assert store_context_keys(store, principal)  # None: every policy
        return
    with pytest.raises((RequestError, LookupError)):
        store_context_keys(store, principal)


# ---------------------------------------------------------------- the admin calls

ADMIN_TOKEN = "admin-secret-for-hostile"
METADATA = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    with running_service(copy_store(root), root / "state", admin_token=ADMIN_TOKEN) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        yield connected


def raw(connected: Client, method: str, payload: bytes):
    return connected.channel.unary_unary(f"/iam_evaluator.v1.PolicyAdmin/{method}")(
        payload, timeout=RPC_TIMEOUT, metadata=METADATA)


def test_get_context_keys_refuses_invalid_utf8_and_huge_names(client):
    invalid = b"\x0a\x03\xff\xfe\xfd"  # field 1 (principal), three bytes that are not UTF-8
    assert rpc_error(lambda: raw(client, "GetContextKeys", invalid)).code() == grpc.StatusCode.INVALID_ARGUMENT
    huge = pb.GetContextKeysRequest(principal="arn:aws:iam::111122223333:user/" + "u" * (1 << 20))
    error = rpc_error(lambda: client.call(client.admin.GetContextKeys, huge))
    assert error.code() == grpc.StatusCode.NOT_FOUND and len(error.details()) < 4000
    odd = client.call(client.admin.GetContextKeys, pb.GetContextKeysRequest(action="\u0000*" * 10_000))
    assert [k.key for k in odd.keys] == ["aws:RequestedRegion"]  # the SCP's NotAction lets any other action in


def test_get_statement_usage_refuses_a_malformed_request(client):
    assert rpc_error(lambda: raw(client, "GetStatementUsage", b"\x08")).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.call(client.admin.GetStatementUsage, pb.GetStatementUsageRequest()).statements


# ---------------------------------------------------------------- the whole module under the debug allocator


def test_module_passes_under_the_debug_allocator_subprocess():
    """PYTHONMALLOC=debug fills freed memory, so a string read after it was freed gives a wrong answer."""
    assert_passes_under_debug_allocator("tests/test_explain_hostile.py")
