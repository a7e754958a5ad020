"""Explained decisions, with answers written by hand: the context keys a deny needed, with the statements that
needed them, and the Allow statements that nearly applied, with the first reason each did not.

Every test runs on both engines: the reference evaluator, and the compiled engine on each of its explained
paths (one request, and a batch of columns).
"""
from __future__ import annotations

import pytest

from iam_evaluator import PolicySet, Request, parse_policy, reference
from iam_evaluator.compile import CompiledPolicySet
from iam_evaluator.decision import NEAR_MISSES, Decision, DecisionKind, Miss, MissKind, StatementRef
from iam_evaluator.model import Effect, Policy
from iam_evaluator.parse import PolicyKind

ACCOUNT = "111122223333"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
PARTNER = "arn:aws:iam::444455556666:role/Partner"
OBJECT = "arn:aws:s3:::reports/q1.csv"


def policy(name: str, *statements: dict) -> Policy:
    kind = PolicyKind.RESOURCE if any("Principal" in s for s in statements) else PolicyKind.IDENTITY
    return parse_policy({"Version": "2012-10-17", "Statement": list(statements)}, name=name, kind=kind)


def allow(sid: str, action: str = "s3:GetObject", resource: str | list = "*", **rest) -> dict:
    return {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource, **rest}


def ref(policy_name: str, index: int, sid: str | None, effect: Effect = Effect.ALLOW) -> StatementRef:
    return StatementRef(policy_name, index, sid, effect)


def by_reference(policies: PolicySet, request: Request) -> Decision:
    return reference.evaluate(policies, request)


def one_request(policies: PolicySet, request: Request) -> Decision:
    return CompiledPolicySet(policies).evaluate(request)


def in_columns(policies: PolicySet, request: Request) -> Decision:
    [decision] = CompiledPolicySet(policies).evaluate_columns(
        [request.principal], [request.action], [request.resource], [dict(request.context)],
        [request.resource_account], explain=True)
    return decision


@pytest.fixture(params=[by_reference, one_request, in_columns], ids=["reference", "compiled", "columns"])
def decide(request):
    return request.param


def ask(principal: str = ALICE, action: str = "s3:GetObject", resource: str = OBJECT, **context) -> Request:
    return Request.create(principal, action, resource, {key.replace("__", ":").replace("_", "/"): value
                                                         for key, value in context.items()})


def missing(decision: Decision) -> dict[str, list[StatementRef]]:
    return {m.key: list(m.statements) for m in decision.missing_key_statements}


# ------------------------------------------------------------------ missing keys

TEAM_MFA = policy("team-mfa", allow("TeamMfa", Condition={
    "StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}"},
    "Bool": {"aws:MultiFactorAuthPresent": "true"}}))


def test_the_issues_example_lists_all_three_keys_at_once(decide):
    decision = decide(PolicySet(identity=(TEAM_MFA,)), Request.create(ALICE, "s3:GetObject", OBJECT))
    assert decision.decision is DecisionKind.IMPLICIT_DENY
    assert decision.missing_keys == ("aws:MultiFactorAuthPresent", "aws:PrincipalTag/team", "aws:ResourceTag/team")
    team_mfa = [ref("team-mfa", 0, "TeamMfa")]
    assert missing(decision) == {"aws:MultiFactorAuthPresent": team_mfa, "aws:PrincipalTag/team": team_mfa,
                                 "aws:ResourceTag/team": team_mfa}


def test_the_issues_example_one_key_at_a_time(decide):
    policies = PolicySet(identity=(TEAM_MFA,))
    tagged = decide(policies, Request.create(ALICE, "s3:GetObject", OBJECT, {"aws:PrincipalTag/team": "red"}))
    assert tagged.missing_keys == ("aws:MultiFactorAuthPresent", "aws:ResourceTag/team")
    everything = {"aws:PrincipalTag/team": "red", "aws:ResourceTag/team": "red", "aws:MultiFactorAuthPresent": "true"}
    allowed = decide(policies, Request.create(ALICE, "s3:GetObject", OBJECT, everything))
    assert (allowed.decision, allowed.missing_keys, allowed.near_misses) == (DecisionKind.ALLOW, (), ())


HOMES = policy("homes", allow("Home", resource="arn:aws:s3:::home/${aws:username}/*",
                              Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}))


def test_a_variable_in_resource_is_a_missing_key_where_the_resource_could_match(decide):
    decision = decide(PolicySet(identity=(HOMES,)), ask(resource="arn:aws:s3:::home/alice/notes.txt"))
    assert missing(decision) == {"aws:RequestedRegion": [ref("homes", 0, "Home")],
                                 "aws:username": [ref("homes", 0, "Home")]}


def test_no_key_is_missing_for_a_resource_no_value_could_match(decide):
    decision = decide(PolicySet(identity=(HOMES,)), ask(resource="arn:aws:s3:::other/alice/notes.txt"))
    assert (decision.missing_keys, decision.missing_key_statements) == ((), ())


def test_missing_keys_of_every_layer_each_with_its_statements(decide):
    policies = PolicySet(
        identity=(policy("id", allow("Office", Condition={"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}),
                         allow("Other", action="s3:PutObject", Condition={"Bool": {"aws:SecureTransport": "true"}}),
                         allow("Vpc", Condition={"StringEquals": {"aws:SourceVpc": "vpc-1"}})),),
        permissions_boundary=(policy("boundary", allow("Dept", action="s3:*", Condition={
            "StringEquals": {"aws:PrincipalTag/dept": "finance", "aws:SourceVpc": "vpc-1"}})),),
        scp=((policy("root", allow("All", action="*")),),
             (policy("ou", allow("Region", action="*",
                                 Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}),
                     {"Sid": "NoTor", "Effect": "Deny", "Action": "*", "Resource": "*",
                      "Condition": {"IpAddress": {"aws:SourceIp": "198.51.100.0/24"}}}),)),
    )
    decision = decide(policies, ask())
    assert missing(decision) == {
        "aws:PrincipalTag/dept": [ref("boundary", 0, "Dept")],
        "aws:RequestedRegion": [ref("ou", 0, "Region")],
        "aws:SourceIp": [ref("id", 0, "Office"), ref("ou", 1, "NoTor", Effect.DENY)],
        "aws:SourceVpc": [ref("boundary", 0, "Dept"), ref("id", 2, "Vpc")],
    }  # not aws:SecureTransport: that statement's action is another
    assert decision.missing_keys == ("aws:PrincipalTag/dept", "aws:RequestedRegion", "aws:SourceIp", "aws:SourceVpc")


def test_a_resource_policy_statement_that_does_not_name_the_caller_needs_no_key(decide):
    bucket = policy("bucket", allow("Partner", Principal={"AWS": PARTNER},
                                    Condition={"StringEquals": {"aws:SourceVpce": "vpce-1"}}),
                    allow("Alice", Principal={"AWS": ALICE}, Condition={"Bool": {"aws:SecureTransport": "true"}}))
    decision = decide(PolicySet(resource=bucket), ask())
    assert missing(decision) == {"aws:SecureTransport": [ref("bucket", 1, "Alice")]}


# ------------------------------------------------------------------ near misses, one kind each


def misses(decision: Decision) -> list[tuple[StatementRef, str, Miss]]:
    return [(m.statement, m.layer, m.miss) for m in decision.near_misses]


def test_resource_did_not_match_names_the_patterns(decide):
    policies = PolicySet(identity=(policy("p", allow("Other", resource=["arn:aws:s3:::other/*", "arn:aws:s3:::x"]),
                                          {"Sid": "NotReports", "Effect": "Allow", "Action": "s3:*",
                                           "NotResource": "arn:aws:s3:::reports/*"}),))
    decision = decide(policies, ask())
    assert misses(decision) == [
        (ref("p", 0, "Other"), "identity", Miss(MissKind.RESOURCE, f"Resource does not match {OBJECT}",
                                                patterns=("arn:aws:s3:::other/*", "arn:aws:s3:::x"))),
        (ref("p", 1, "NotReports"), "identity", Miss(MissKind.RESOURCE, f"NotResource matches {OBJECT}",
                                                     patterns=("arn:aws:s3:::reports/*",))),
    ]
    assert decision.more_near_misses == 0


def test_a_false_condition_says_operator_key_value_sent_and_values_wanted(decide):
    policies = PolicySet(identity=(TEAM_MFA,))
    decision = decide(policies, ask(aws__PrincipalTag_team="red", aws__ResourceTag_team="blue",
                                    aws__MultiFactorAuthPresent="true"))
    assert misses(decision) == [(ref("team-mfa", 0, "TeamMfa"), "identity", Miss(
        MissKind.CONDITION, "condition StringEquals on aws:ResourceTag/team is false", operator="StringEquals",
        key="aws:ResourceTag/team", sent=("blue",), wanted=("red",)))]  # the variable resolved


def test_a_missing_key_is_the_first_reason_when_its_condition_comes_first(decide):
    policies = PolicySet(identity=(policy("p", allow("Mfa", Condition={
        "Bool": {"aws:MultiFactorAuthPresent": "true"}, "StringEquals": {"aws:RequestedRegion": "eu-west-1"}})),))
    decision = decide(policies, ask(aws__RequestedRegion="us-east-1"))
    assert misses(decision) == [(ref("p", 0, "Mfa"), "identity", Miss(
        MissKind.MISSING_KEY, "context key aws:MultiFactorAuthPresent is missing (Bool)", operator="Bool",
        key="aws:MultiFactorAuthPresent"))]


def test_an_unresolved_variable_absent_or_multivalued(decide):
    policies = PolicySet(identity=(HOMES,))
    home = "arn:aws:s3:::home/alice/notes.txt"
    absent = decide(policies, ask(resource=home))
    assert misses(absent) == [(ref("homes", 0, "Home"), "identity", Miss(
        MissKind.VARIABLE, "policy variable ${aws:username} is not in the request context", key="aws:username"))]
    listed = decide(policies, ask(resource=home, aws__username=["alice", "bob"]))
    assert misses(listed) == [(ref("homes", 0, "Home"), "identity", Miss(
        MissKind.VARIABLE, "policy variable ${aws:username} is multi-valued in the request context",
        key="aws:username", sent=("alice", "bob")))]
    assert listed.missing_keys == ("aws:RequestedRegion",)  # given, though as a list: not missing


def test_a_resource_policy_that_does_not_name_the_caller(decide):
    bucket = policy("bucket", allow("Partner", Principal={"AWS": PARTNER}))
    decision = decide(PolicySet(resource=bucket), ask())
    assert misses(decision) == [(ref("bucket", 0, "Partner"), "resource",
                                 Miss(MissKind.PRINCIPAL, "its Principal does not name the caller"))]


READS = policy("reads", allow("Read"))


@pytest.mark.parametrize("layers, decided_by, reason", [
    ({"permissions_boundary": (policy("boundary", allow("Writes", action="s3:PutObject")),)},
     "permissions_boundary", "the permissions boundary does not allow the request"),
    ({"session": (policy("session", allow("Lists", action="s3:ListBucket")),)},
     "session", "the session policy does not allow the request"),
    ({"scp": ((policy("root", allow("All", action="*")),), (policy("ou", allow("Ec2", action="ec2:*")),))},
     "scp[1]", "no SCP at organisation level 1 allows the request"),
])
def test_an_allow_cut_by_a_layer_names_the_layer(decide, layers, decided_by, reason):
    decision = decide(PolicySet(identity=(READS,), **layers), ask())
    assert (decision.decision, decision.decided_by) == (DecisionKind.IMPLICIT_DENY, decided_by)
    # The SCP root level's Allow applied, but an SCP only limits: it is no near miss.
    assert misses(decision) == [(ref("reads", 0, "Read"), "identity",
                                 Miss(MissKind.LAYER, reason, cut_by=decided_by))]


def test_an_allow_cut_by_an_explicit_deny(decide):
    denied = policy("deny", {"Sid": "No", "Effect": "Deny", "Action": "s3:*", "Resource": "*"})
    decision = decide(PolicySet(identity=(READS, denied)), ask())
    assert decision.decision is DecisionKind.EXPLICIT_DENY
    assert misses(decision) == [(ref("reads", 0, "Read"), "identity", Miss(
        MissKind.LAYER, "explicitly denied by Deny deny#0 (No)", cut_by="identity"))]


def test_limiting_layers_list_what_did_not_apply_there(decide):
    boundary = policy("boundary", allow("EuOnly", action="s3:*",
                                        Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}))
    decision = decide(PolicySet(identity=(READS,), permissions_boundary=(boundary,)),
                      ask(aws__RequestedRegion="us-east-1"))
    assert misses(decision) == [
        (ref("reads", 0, "Read"), "identity", Miss(MissKind.LAYER, "the permissions boundary does not allow the "
                                                   "request", cut_by="permissions_boundary")),
        (ref("boundary", 0, "EuOnly"), "permissions_boundary", Miss(
            MissKind.CONDITION, "condition StringEquals on aws:RequestedRegion is false", operator="StringEquals",
            key="aws:RequestedRegion", sent=("us-east-1",), wanted=("eu-west-1",))),
    ]


def test_near_misses_are_bounded_by_policy_order_with_a_count_of_the_rest(decide):
    buckets = policy("buckets", *(allow(f"B{n}", resource=f"arn:aws:s3:::bucket{n}/*") for n in range(9)),
                     allow("Writes", action="s3:PutObject"),
                     {"Sid": "Denied", "Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::x/*"})
    decision = decide(PolicySet(identity=(buckets,)), ask())
    assert [m.statement.sid for m in decision.near_misses] == [f"B{n}" for n in range(NEAR_MISSES)]
    assert decision.more_near_misses == 9 - NEAR_MISSES  # neither another action's Allow nor a Deny counts


def test_an_allowed_request_has_no_near_misses(decide):
    decision = decide(PolicySet(identity=(READS, policy("other", allow("Elsewhere", resource="arn:aws:s3:::x/*")))),
                      ask())
    assert decision.allowed and decision.near_misses == () and decision.more_near_misses == 0


def test_a_huge_value_sent_is_shown_cut_short(decide):
    policies = PolicySet(identity=(policy("p", allow("Team", Condition={
        "StringEquals": {"aws:PrincipalTag/team": ["red", "blue"]}})),))
    huge = "x" * (1 << 20)
    decision = decide(policies, ask(aws__PrincipalTag_team=[huge] * 1000))
    [near] = decision.near_misses
    assert near.miss.sent == (("x" * reference.SHOWN_CHARS + "…"),) * reference.SHOWN_VALUES
    assert near.miss.wanted == ("red", "blue")
