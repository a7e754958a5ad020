"""Statement-level matching, checked against AWS's documented behaviour.

Every expectation here comes from the IAM User Guide (condition operators,
single- and multi-valued context keys, policy variables, and the Action and
Resource elements), never from running the evaluator. Each case uses one
identity-based policy in the caller's own account, so the statement under test
alone decides: Allow when it applies, ImplicitDeny when it does not.
"""
from __future__ import annotations

from typing import Any

import pytest

from iam_evaluator import DecisionKind, Effect, PolicySet, Request, StatementRef, parse_policy
from iam_evaluator.reference import evaluate

ACCOUNT = "111122223333"
USER = f"arn:aws:iam::{ACCOUNT}:user/alice"
SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/Builder/build-42"
BUCKET = "arn:aws:s3:::example-bucket"
CURRENT = "2012-10-17"

ALLOW = DecisionKind.ALLOW
IMPLICIT = DecisionKind.IMPLICIT_DENY
EXPLICIT = DecisionKind.EXPLICIT_DENY


def policy_doc(*statements: dict, version: str | None = CURRENT) -> dict:
    doc: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        doc["Version"] = version
    return doc


def run(
    *statements: dict,
    action: str = "s3:GetObject",
    resource: str = f"{BUCKET}/object",
    context: dict | None = None,
    principal: str = USER,
    version: str | None = CURRENT,
):
    policy = parse_policy(policy_doc(*statements, version=version), name="id0")
    request = Request.create(
        principal=principal, action=action, resource=resource, context=context or {}, resource_account=ACCOUNT,
    )
    decision = evaluate(PolicySet(identity=(policy,)), request)
    assert decision.error is None, decision.error
    return decision


def allow_when(condition: dict, context: dict | None, **kwargs):
    """One Allow-everything statement guarded by ``condition``."""
    statement = {"Sid": "Guarded", "Effect": "Allow", "Action": "*", "Resource": "*", "Condition": condition}
    return run(statement, context=context, **kwargs)


def expect(decision, allowed: bool) -> None:
    assert decision.decision is (ALLOW if allowed else IMPLICIT), decision


# ---------------------------------------------------------------------------
# String operators
# ---------------------------------------------------------------------------

STRING_CASES = [
    # StringEquals: exact and case-sensitive; no wildcards; several values are OR-ed
    ("StringEquals", "alice", "alice", True),
    ("StringEquals", "alice", "Alice", False),
    ("StringEquals", ["bob", "alice"], "alice", True),
    ("StringEquals", "ali*", "alice", False),
    # StringNotEquals: true only when no policy value matches
    ("StringNotEquals", "alice", "alice", False),
    ("StringNotEquals", ["alice", "bob"], "bob", False),
    ("StringNotEquals", ["alice", "bob"], "carol", True),
    # IgnoreCase variants
    ("StringEqualsIgnoreCase", "ALICE", "alice", True),
    ("StringNotEqualsIgnoreCase", "ALICE", "alice", False),
    ("StringEqualsIgnoreCase", "alice", "alicia", False),
    # StringLike: case-sensitive, * any run of characters (also '/' and ':'), ? exactly one
    ("StringLike", "home/*", "home/a/b", True),
    ("StringLike", "h?me", "home", True),
    ("StringLike", "home/*", "Home/a", False),
    ("StringLike", "h?me", "hoome", False),
    ("StringLike", "a?c", "a/c", True),
    ("StringLike", "a.c", "abc", False),  # only * and ? are special
    # StringNotLike
    ("StringNotLike", "home/*", "work/x", True),
    ("StringNotLike", "home/*", "home/x", False),
    ("StringNotLike", ["a*", "b*"], "bz", False),
]


@pytest.mark.parametrize(("operator", "values", "actual", "allowed"), STRING_CASES)
def test_string_operators(operator, values, actual, allowed):
    expect(allow_when({operator: {"s3:prefix": values}}, {"s3:prefix": actual}), allowed)


# ---------------------------------------------------------------------------
# Numeric operators: compared as numbers (not text), integers or decimals,
# written as JSON numbers or strings in the policy and the request
# ---------------------------------------------------------------------------

NUMERIC_CASES = [
    ("NumericEquals", 10, "10", True),
    ("NumericEquals", "10", 10, True),
    ("NumericEquals", "1.5", "1.50", True),
    ("NumericNotEquals", "10", "11", True),
    ("NumericNotEquals", "10", "10.0", False),
    ("NumericLessThan", "100", "20", True),  # 20 < 100 although "20" > "100" as text
    ("NumericLessThan", "10", "10", False),
    ("NumericLessThan", ["5", "20"], "10", True),  # OR: 10 < 20
    ("NumericLessThanEquals", "10", "10", True),
    ("NumericLessThanEquals", "10", "10.01", False),
    ("NumericGreaterThan", "9", "10", True),  # 10 > 9 although "10" < "9" as text
    ("NumericGreaterThan", "10", "10", False),
    ("NumericGreaterThanEquals", "10", "10", True),
    ("NumericGreaterThanEquals", 2.5, "2.49", False),
]


@pytest.mark.parametrize(("operator", "values", "actual", "allowed"), NUMERIC_CASES)
def test_numeric_operators(operator, values, actual, allowed):
    expect(allow_when({operator: {"s3:max-keys": values}}, {"s3:max-keys": actual}), allowed)


def test_numeric_range_from_two_operators_on_one_key():
    condition = {"NumericGreaterThanEquals": {"s3:max-keys": "5"}, "NumericLessThan": {"s3:max-keys": "10"}}
    expect(allow_when(condition, {"s3:max-keys": "7"}), True)
    expect(allow_when(condition, {"s3:max-keys": "10"}), False)
    expect(allow_when(condition, {"s3:max-keys": "4"}), False)


# ---------------------------------------------------------------------------
# Date operators: compared as instants; ISO 8601 (W3C) or epoch seconds
# ---------------------------------------------------------------------------

NEW_YEAR = "2020-01-01T00:00:00Z"
NEW_YEAR_EPOCH = "1577836800"

DATE_CASES = [
    ("DateGreaterThan", "aws:CurrentTime", NEW_YEAR, "2020-01-01T00:00:01Z", True),
    ("DateGreaterThan", "aws:CurrentTime", NEW_YEAR, NEW_YEAR, False),
    ("DateGreaterThanEquals", "aws:CurrentTime", NEW_YEAR, NEW_YEAR, True),
    ("DateLessThanEquals", "aws:CurrentTime", NEW_YEAR, "2020-01-01T00:00:01Z", False),
    # the same instant written with an offset
    ("DateEquals", "aws:CurrentTime", NEW_YEAR, "2020-01-01T02:00:00+02:00", True),
    ("DateEquals", "aws:CurrentTime", NEW_YEAR, "2020-01-01T00:00:00+02:00", False),
    ("DateNotEquals", "aws:CurrentTime", NEW_YEAR, "2019-12-31T19:00:00-05:00", False),
    # offsets order by instant, not by text: 01:00+02:00 is 23:00Z the day before
    ("DateLessThan", "aws:CurrentTime", NEW_YEAR, "2020-01-01T01:00:00+02:00", True),
    ("DateLessThan", "aws:CurrentTime", "2020-01-01T00:00:00-05:00", "2020-01-01T05:00:00Z", False),
    # fractional seconds
    ("DateGreaterThan", "aws:CurrentTime", NEW_YEAR, "2020-01-01T00:00:00.500Z", True),
    ("DateEquals", "aws:CurrentTime", "2020-01-01T00:00:00.000Z", NEW_YEAR, True),
    # epoch seconds: aws:EpochTime in the request, epoch or ISO in the policy
    ("DateGreaterThan", "aws:EpochTime", 1577836800, 1577836801, True),
    ("DateLessThanEquals", "aws:EpochTime", NEW_YEAR_EPOCH, "1577836801", False),
    ("DateLessThan", "aws:EpochTime", NEW_YEAR, "1577836799", True),
    ("DateGreaterThan", "aws:CurrentTime", NEW_YEAR_EPOCH, "2020-01-01T00:00:01Z", True),
    # a W3C date-only value
    ("DateGreaterThan", "aws:CurrentTime", "2020-01-01", "2020-06-01T00:00:00Z", True),
    ("DateLessThan", "aws:CurrentTime", "2020-01-01", "2020-06-01T00:00:00Z", False),
]


@pytest.mark.parametrize(("operator", "key", "values", "actual", "allowed"), DATE_CASES)
def test_date_operators(operator, key, values, actual, allowed):
    expect(allow_when({operator: {key: values}}, {key: actual}), allowed)


# ---------------------------------------------------------------------------
# Bool and BinaryEquals
# ---------------------------------------------------------------------------

BOOL_CASES = [
    ("true", "true", True),
    ("true", "false", False),
    ("true", True, True),
    (True, "true", True),
    (False, "false", True),
    (False, "true", False),
]


@pytest.mark.parametrize(("value", "actual", "allowed"), BOOL_CASES)
def test_bool(value, actual, allowed):
    expect(allow_when({"Bool": {"aws:SecureTransport": value}}, {"aws:SecureTransport": actual}), allowed)


@pytest.mark.parametrize("actual", ["yes", "1"])
def test_bool_never_matches_a_value_that_is_not_a_boolean(actual):
    # whether this is an error or a plain mismatch, the guarded Allow must not apply
    policy = parse_policy(policy_doc({"Effect": "Allow", "Action": "*", "Resource": "*",
                                      "Condition": {"Bool": {"aws:SecureTransport": "true"}}}), name="id0")
    request = Request.create(principal=USER, action="s3:GetObject", resource=f"{BUCKET}/object",
                             context={"aws:SecureTransport": actual})
    assert evaluate(PolicySet(identity=(policy,)), request).decision is not ALLOW


BLOB = "QmluYXJ5VmFsdWVJbkJhc2U2NA=="


@pytest.mark.parametrize(
    ("values", "actual", "allowed"),
    [
        (BLOB, BLOB, True),
        (BLOB, BLOB.lower(), False),
        (["QmluYXJ5", BLOB], BLOB, True),
    ],
)
def test_binary_equals_compares_the_base64_text(values, actual, allowed):
    expect(allow_when({"BinaryEquals": {"custom:Blob": values}}, {"custom:Blob": actual}), allowed)


# ---------------------------------------------------------------------------
# IP address operators
# ---------------------------------------------------------------------------

IP_CASES = [
    ("IpAddress", "203.0.113.0/24", "203.0.113.5", True),
    ("IpAddress", "203.0.113.0/24", "203.0.114.5", False),
    ("IpAddress", "203.0.113.5", "203.0.113.5", True),  # a bare address is a /32
    ("IpAddress", "203.0.113.5", "203.0.113.6", False),
    ("IpAddress", "2001:DB8:1234:5678::/64", "2001:db8:1234:5678::1", True),
    ("IpAddress", "2001:db8::/32", "2001:0db8:0000:0000:0000:0000:0000:0001", True),
    ("IpAddress", "2001:db8:1234:5678::/64", "2001:db8:1234:5679::1", False),
    # an IPv4 address is never inside an IPv6 range, nor the other way round
    ("IpAddress", "::/0", "203.0.113.5", False),
    ("IpAddress", "::ffff:0:0/96", "203.0.113.5", False),
    ("IpAddress", "0.0.0.0/0", "2001:db8::1", False),
    ("NotIpAddress", "203.0.113.0/24", "198.51.100.1", True),
    ("NotIpAddress", "::/0", "10.0.0.1", True),
    ("NotIpAddress", ["10.0.0.0/8", "2001:db8::/32"], "2001:db8::5", False),
]


@pytest.mark.parametrize(("operator", "values", "actual", "allowed"), IP_CASES)
def test_ip_address_operators(operator, values, actual, allowed):
    expect(allow_when({operator: {"aws:SourceIp": values}}, {"aws:SourceIp": actual}), allowed)


# ---------------------------------------------------------------------------
# ARN operators: case-sensitive, field by field; ArnEquals takes wildcards too
# ---------------------------------------------------------------------------

TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:topic"

ARN_CASES = [
    ("ArnEquals", TOPIC, TOPIC, True),
    ("ArnEquals", TOPIC, f"arn:aws:sns:us-east-1:{ACCOUNT}:Topic", False),
    ("ArnEquals", f"arn:aws:sns:*:{ACCOUNT}:*", TOPIC, True),
    ("ArnLike", f"arn:aws:sns:us-east-?:{ACCOUNT}:topic", TOPIC, True),
    # a * in the account field cannot swallow the ':' that follows it ...
    ("ArnLike", "arn:aws:sns:us-east-1:*:topic", f"arn:aws:sns:us-east-1:{ACCOUNT}:extra:topic", False),
    # ... nor can a * in the service field reach into the region and account
    ("ArnLike", f"arn:aws:*:us-east-1:{ACCOUNT}:x", f"arn:aws:sns:eu-west-1:us-east-1:{ACCOUNT}:x", False),
    # everything after the fifth ':' is one field, so a * there crosses ':' and '/'
    ("ArnLike", f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:*",
     f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:my-fn:prod", True),
    ("ArnLike", "arn:aws:s3:::*", "arn:aws:s3:::bucket/a/b", True),
    ("ArnNotEquals", TOPIC, f"arn:aws:sns:us-east-1:{ACCOUNT}:other", True),
    ("ArnNotEquals", TOPIC, TOPIC, False),
    ("ArnNotLike", f"arn:aws:sns:*:{ACCOUNT}:*", "arn:aws:sns:us-east-1:444455556666:topic", True),
    ("ArnNotLike", "arn:aws:sns:us-east-1:*:topic", f"arn:aws:sns:us-east-1:{ACCOUNT}:extra:topic", True),
]


@pytest.mark.parametrize(("operator", "values", "actual", "allowed"), ARN_CASES)
def test_arn_operators(operator, values, actual, allowed):
    expect(allow_when({operator: {"aws:SourceArn": values}}, {"aws:SourceArn": actual}), allowed)


# ---------------------------------------------------------------------------
# Null, ...IfExists, and absent keys
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "present", "allowed"),
    [
        ("true", False, True),
        (True, False, True),
        ("true", True, False),
        ("false", True, True),
        (False, True, True),
    ],
)
def test_null(value, present, allowed):
    context = {"aws:TokenIssueTime": "2020-01-01T00:00:00Z"} if present else {}
    expect(allow_when({"Null": {"aws:TokenIssueTime": value}}, context), allowed)


IF_EXISTS_CASES = [
    ("StringEqualsIfExists", "ec2:InstanceType", "m5.large", None, True),
    ("StringNotEqualsIfExists", "ec2:InstanceType", "m5.large", "m5.large", False),
    ("NumericLessThanIfExists", "s3:max-keys", "10", None, True),
    ("BoolIfExists", "aws:MultiFactorAuthPresent", "true", None, True),
    ("ArnLikeIfExists", "aws:SourceArn", "arn:aws:sns:*:*:topic", None, True),
    ("IpAddressIfExists", "aws:SourceIp", "10.0.0.0/8", "192.0.2.1", False),
    # "If the key is not present, evaluate the condition element as true", set qualifier or not.
    ("ForAnyValue:StringLikeIfExists", "aws:TagKeys", "team*", None, True),
    ("ForAnyValue:StringLikeIfExists", "aws:TagKeys", "team*", ["env"], False),
]


@pytest.mark.parametrize(("operator", "key", "values", "actual", "allowed"), IF_EXISTS_CASES)
def test_if_exists(operator, key, values, actual, allowed):
    context = {} if actual is None else {key: actual}
    expect(allow_when({operator: {key: values}}, context), allowed)


# an absent key: a positive operator is false, a negated one true;
# ForAllValues is true (nothing fails), ForAnyValue false (nothing matches)
ABSENT_KEY_CASES = [
    ("StringEquals", "s3:prefix", "a", False),
    ("StringLike", "s3:prefix", "*", False),
    ("DateEquals", "aws:CurrentTime", NEW_YEAR, False),
    ("BinaryEquals", "custom:Blob", BLOB, False),
    ("NumericEquals", "s3:max-keys", "1", False),
    ("Bool", "aws:SecureTransport", "false", False),
    ("IpAddress", "aws:SourceIp", "0.0.0.0/0", False),
    ("StringNotEquals", "s3:prefix", "a", True),
    ("DateNotEquals", "aws:CurrentTime", NEW_YEAR, True),
    ("NotIpAddress", "aws:SourceIp", "10.0.0.0/8", True),
    ("StringNotLike", "s3:prefix", "*", True),
    ("ArnNotEquals", "aws:SourceArn", TOPIC, True),
    ("ForAllValues:StringEquals", "aws:TagKeys", "a", True),
    ("ForAllValues:StringNotEquals", "aws:TagKeys", "a", True),
    ("ForAnyValue:StringEquals", "aws:TagKeys", "a", False),
    ("ForAnyValue:StringNotEquals", "aws:TagKeys", "a", False),
]


@pytest.mark.parametrize(("operator", "key", "values", "allowed"), ABSENT_KEY_CASES)
def test_absent_key(operator, key, values, allowed):
    expect(allow_when({operator: {key: values}}, {}), allowed)


def test_missing_keys_are_reported_as_spelled_in_the_policy():
    decision = allow_when({"StringEquals": {"aws:PrincipalTag/Team": "blue"}}, {})
    assert decision.decision is IMPLICIT
    assert "aws:PrincipalTag/Team" in decision.missing_keys


def test_every_missing_key_is_reported():
    condition = {"StringEquals": {"aws:PrincipalTag/Team": "blue"}, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}
    decision = allow_when(condition, {})
    assert decision.decision is IMPLICIT
    assert {"aws:PrincipalTag/Team", "aws:SourceIp"} <= set(decision.missing_keys)


def test_no_missing_keys_when_the_context_has_them():
    decision = allow_when({"StringEquals": {"aws:PrincipalTag/Team": "blue"}}, {"aws:PrincipalTag/Team": "red"})
    assert decision.decision is IMPLICIT
    assert decision.missing_keys == ()


# ---------------------------------------------------------------------------
# Set operators on multi-valued keys (a plain string is a set of one)
# ---------------------------------------------------------------------------

SET_CASES = [
    ("ForAllValues:StringEquals", ["a", "b"], ["a", "c"], False),
    ("ForAllValues:StringEquals", ["a", "b"], "a", True),
    ("ForAllValues:StringEquals", ["a", "b"], [], True),
    ("ForAllValues:StringNotEquals", ["a"], [], True),
    ("ForAllValues:StringEquals", "a", ["A"], False),
    ("ForAnyValue:StringEquals", ["a", "b"], [], False),
    ("ForAnyValue:StringEquals", ["a", "b"], "a", True),
    ("ForAllValues:StringNotEquals", ["a"], ["a", "b"], False),
    ("ForAnyValue:StringNotEquals", ["a"], ["a", "b"], True),
    ("ForAnyValue:StringNotEquals", ["a"], [], False),
    ("ForAnyValue:StringNotEquals", ["a"], "b", True),
    ("ForAllValues:StringLike", "team-*", ["team-a", "team-b"], True),
    ("ForAnyValue:StringLike", ["team-*"], ["x", "team-z"], True),
    ("ForAllValues:StringEqualsIgnoreCase", "Dept", ["dept", "DEPT"], True),
]


@pytest.mark.parametrize(("operator", "values", "actual", "allowed"), SET_CASES)
def test_set_operators(operator, values, actual, allowed):
    expect(allow_when({operator: {"aws:TagKeys": values}}, {"aws:TagKeys": actual}), allowed)


def test_set_operator_with_arn_values():
    arns = [TOPIC, "arn:aws:sns:us-east-1:444455556666:other"]
    condition = {"ForAnyValue:ArnLike": {"custom:Arns": f"arn:aws:sns:*:{ACCOUNT}:*"}}
    expect(allow_when(condition, {"custom:Arns": arns}), True)
    condition = {"ForAllValues:ArnLike": {"custom:Arns": f"arn:aws:sns:*:{ACCOUNT}:*"}}
    expect(allow_when(condition, {"custom:Arns": arns}), False)


# ---------------------------------------------------------------------------
# Key names are case-insensitive; keys and operators are AND-ed
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("condition", "context", "allowed"),
    [
        ({"IpAddress": {"AWS:SourceIP": "10.0.0.0/8"}}, {"aws:SourceIp": "10.1.2.3"}, True),
        ({"StringEquals": {"aws:PrincipalTag/Team": "blue"}}, {"AWS:PRINCIPALTAG/TEAM": "blue"}, True),
        # the key name is case-insensitive, the value still is not
        ({"StringEquals": {"aws:PrincipalTag/Team": "blue"}}, {"aws:principaltag/team": "Blue"}, False),
        ({"Null": {"AWS:TokenIssueTime": "false"}}, {"aws:tokenissuetime": NEW_YEAR}, True),
    ],
)
def test_key_names_are_case_insensitive(condition, context, allowed):
    expect(allow_when(condition, context), allowed)


TWO_KEYS = {"StringEquals": {"aws:PrincipalTag/team": "blue", "aws:RequestedRegion": "us-east-1"}}
TWO_OPERATORS = {"StringEquals": {"aws:PrincipalTag/team": "blue"}, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}


@pytest.mark.parametrize(
    ("condition", "context", "allowed"),
    [
        (TWO_KEYS, {"aws:PrincipalTag/team": "blue", "aws:RequestedRegion": "us-east-1"}, True),
        (TWO_KEYS, {"aws:PrincipalTag/team": "blue", "aws:RequestedRegion": "eu-west-1"}, False),
        (TWO_OPERATORS, {"aws:PrincipalTag/team": "blue", "aws:SourceIp": "10.9.9.9"}, True),
        (TWO_OPERATORS, {"aws:PrincipalTag/team": "red", "aws:SourceIp": "10.9.9.9"}, False),
    ],
)
def test_keys_and_operators_are_anded(condition, context, allowed):
    expect(allow_when(condition, context), allowed)


def test_condition_on_a_deny_statement_decides_whether_it_applies():
    statements = (
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Sid": "OnlyFromCorp", "Effect": "Deny", "Action": "*", "Resource": "*",
         "Condition": {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
    )
    assert run(*statements, context={"aws:SourceIp": "10.0.0.1"}).decision is ALLOW
    denied = run(*statements, context={"aws:SourceIp": "192.0.2.1"})
    assert denied.decision is EXPLICIT
    assert denied.statements == (StatementRef("id0", 1, "OnlyFromCorp", Effect.DENY),)


# ---------------------------------------------------------------------------
# Policy variables
# ---------------------------------------------------------------------------

HOME = f"{BUCKET}/home/${{aws:username}}/*"


def allow_resource(resource: str, request_resource: str, context: dict, *, principal: str = USER,
                   version: str | None = CURRENT):
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": resource}
    return run(statement, resource=request_resource, context=context, principal=principal, version=version)


@pytest.mark.parametrize(
    ("resource", "request_resource", "context", "allowed"),
    [
        (HOME, f"{BUCKET}/home/alice/notes.txt", {"aws:username": "alice"}, True),
        (HOME, f"{BUCKET}/home/bob/notes.txt", {"aws:username": "alice"}, False),
        (f"{BUCKET}/home/${{AWS:UserName}}/*", f"{BUCKET}/home/alice/x", {"aws:username": "alice"}, True),
        (f"{BUCKET}/${{aws:PrincipalTag/team}}/*", f"{BUCKET}/blue/x", {"aws:PrincipalTag/team": "blue"}, True),
        # defaults apply only when the key is absent
        (f"{BUCKET}/${{aws:PrincipalTag/team, 'shared'}}/*", f"{BUCKET}/shared/x", {}, True),
        (f"{BUCKET}/${{aws:PrincipalTag/team, 'shared'}}/*", f"{BUCKET}/blue/x", {"aws:PrincipalTag/team": "blue"},
         True),
        (f"{BUCKET}/${{aws:PrincipalTag/team, 'shared'}}/*", f"{BUCKET}/shared/x",
         {"aws:PrincipalTag/team": "blue"}, False),
        # ${*}, ${?} and ${$} stand for the literal characters
        (f"{BUCKET}/${{*}}", f"{BUCKET}/*", {}, True),
        (f"{BUCKET}/${{*}}", f"{BUCKET}/x", {}, False),
        (f"{BUCKET}/a${{?}}", f"{BUCKET}/a?", {}, True),
        (f"{BUCKET}/${{$}}x", f"{BUCKET}/$x", {}, True),
    ],
)
def test_variables_in_resource(resource, request_resource, context, allowed):
    expect(allow_resource(resource, request_resource, context), allowed)


@pytest.mark.parametrize(
    "request_resource",
    [f"{BUCKET}/home/alice/x", f"{BUCKET}/home//x", f"{BUCKET}/home/${{aws:username}}/x"],
)
def test_absent_variable_in_resource_makes_the_allow_not_apply(request_resource):
    # an assumed-role session has no aws:username
    expect(allow_resource(HOME, request_resource, {}, principal=SESSION), False)


def test_absent_variable_in_resource_makes_the_deny_not_apply():
    statements = (
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"{BUCKET}/${{aws:PrincipalTag/team}}/*"},
    )
    assert run(*statements, resource=f"{BUCKET}/blue/x", principal=SESSION).decision is ALLOW
    present = run(*statements, resource=f"{BUCKET}/blue/x", principal=SESSION,
                  context={"aws:PrincipalTag/team": "blue"})
    assert present.decision is EXPLICIT


def test_multi_valued_variable_makes_the_statement_not_apply():
    resource = f"{BUCKET}/${{aws:TagKeys}}/*"
    for request_resource in (f"{BUCKET}/blue/x", f"{BUCKET}/red/x"):
        expect(allow_resource(resource, request_resource, {"aws:TagKeys": ["blue", "red"]}), False)


VARIABLE_CONDITION_CASES = [
    ({"StringEquals": {"aws:ResourceTag/owner": "${aws:username}"}},
     {"aws:username": "alice", "aws:ResourceTag/owner": "alice"}, True),
    ({"StringLike": {"s3:prefix": ["home/${aws:username}/*"]}},
     {"aws:username": "alice", "s3:prefix": "home/alice/docs"}, True),
    ({"StringLike": {"s3:prefix": ["home/${aws:username}/*"]}},
     {"aws:username": "alice", "s3:prefix": "home/bob/docs"}, False),
    ({"ArnLike": {"aws:SourceArn": f"arn:aws:iam::{ACCOUNT}:user/${{aws:username}}"}},
     {"aws:username": "alice", "aws:SourceArn": USER}, True),
    ({"ArnLike": {"aws:SourceArn": f"arn:aws:iam::{ACCOUNT}:user/${{aws:username}}"}},
     {"aws:username": "bob", "aws:SourceArn": USER}, False),
    # default value when the key is absent
    ({"StringEquals": {"aws:ResourceTag/owner": "${aws:username, 'alice'}"}},
     {"aws:ResourceTag/owner": "alice"}, True),
    ({"StringEquals": {"aws:ResourceTag/owner": "${aws:username, 'alice'}"}},
     {"aws:username": "bob", "aws:ResourceTag/owner": "alice"}, False),
    # literal characters: a ${*} in StringLike is a plain '*', not a wildcard
    ({"StringLike": {"s3:prefix": "a${*}"}}, {"s3:prefix": "a*"}, True),
    ({"StringLike": {"s3:prefix": "a${*}"}}, {"s3:prefix": "ab"}, False),
    ({"StringEquals": {"s3:prefix": "${$}{x}"}}, {"s3:prefix": "${x}"}, True),
    # an absent variable without a default: the condition does not match
    ({"StringEquals": {"aws:ResourceTag/owner": "${aws:username}"}},
     {"aws:ResourceTag/owner": "${aws:username}"}, False),
]


@pytest.mark.parametrize(("condition", "context", "allowed"), VARIABLE_CONDITION_CASES)
def test_variables_in_condition_values(condition, context, allowed):
    principal = USER if "aws:username" in context else SESSION
    expect(allow_when(condition, context, principal=principal), allowed)


@pytest.mark.parametrize("version", ["2008-10-17", None])
@pytest.mark.parametrize(
    ("request_resource", "allowed"),
    [(f"{BUCKET}/home/alice/x", False), (f"{BUCKET}/home/${{aws:username}}/x", True)],
)
def test_old_version_keeps_variables_literal_in_resource(version, request_resource, allowed):
    decision = allow_resource(HOME, request_resource, {"aws:username": "alice"}, version=version)
    expect(decision, allowed)


@pytest.mark.parametrize(("prefix", "allowed"), [("alice", False), ("${aws:username}", True)])
def test_old_version_keeps_variables_literal_in_conditions(prefix, allowed):
    condition = {"StringEquals": {"s3:prefix": "${aws:username}"}}
    decision = allow_when(condition, {"aws:username": "alice", "s3:prefix": prefix}, version="2008-10-17")
    expect(decision, allowed)


# ---------------------------------------------------------------------------
# Action and NotAction
# ---------------------------------------------------------------------------

ACTION_CASES = [
    ("s3:GetObject", "s3:GetObject", True),
    ("S3:GETOBJECT", "s3:GetObject", True),
    ("s3:get*", "S3:GetObject", True),
    ("s3:Get*", "s3:PutObject", False),
    ("s3:GetObject", "s3:GetObjectAcl", False),
    ("s3:*Object", "s3:GetObject", True),
    ("s3:Get?bject", "s3:GetObject", True),
    ("s3:Get?bject", "s3:GetObbject", False),
    ("*:GetObject", "s3:GetObject", True),
    ("*", "s3:GetObject", True),
    ("ec2:GetObject", "s3:GetObject", False),
    (["ec2:*", "s3:GetObject"], "s3:GetObject", True),
]


@pytest.mark.parametrize(("actions", "request_action", "allowed"), ACTION_CASES)
def test_action_matching(actions, request_action, allowed):
    statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
    expect(run(statement, action=request_action), allowed)


@pytest.mark.parametrize(
    ("not_actions", "request_action", "allowed"),
    [
        ("iam:*", "s3:GetObject", True),
        ("iam:*", "iam:CreateUser", False),
        ("IAM:*", "iam:CreateUser", False),
    ],
)
def test_not_action_with_allow(not_actions, request_action, allowed):
    statement = {"Effect": "Allow", "NotAction": not_actions, "Resource": "*"}
    expect(run(statement, action=request_action), allowed)


@pytest.mark.parametrize(
    ("request_action", "decision"),
    [("s3:GetObject", EXPLICIT), ("iam:CreateUser", ALLOW), ("IAM:ListUsers", ALLOW)],
)
def test_not_action_with_deny(request_action, decision):
    statements = (
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "NotAction": "iam:*", "Resource": "*"},
    )
    assert run(*statements, action=request_action).decision is decision


# ---------------------------------------------------------------------------
# Resource and NotResource
# ---------------------------------------------------------------------------

RESOURCE_CASES = [
    (f"{BUCKET}/object", f"{BUCKET}/object", True),
    (f"{BUCKET}/Object", f"{BUCKET}/object", False),
    (f"{BUCKET}/*", f"{BUCKET}/a/b/c", True),
    (f"{BUCKET}/*", BUCKET, False),
    (f"{BUCKET}/a?c", f"{BUCKET}/a/c", True),
    (f"{BUCKET}/[ab]", f"{BUCKET}/a", False),  # only * and ? are special
    (f"{BUCKET}/?", f"{BUCKET}/a", True),
    (f"{BUCKET}/?", f"{BUCKET}/ab", False),
    (f"arn:aws:ec2:*:{ACCOUNT}:instance/*", f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-1", True),
    (f"arn:aws:ec2:*:{ACCOUNT}:instance/*", "arn:aws:ec2:us-east-1:444455556666:instance/i-1", False),
    (f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:*",
     f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:app:log-stream:s1", True),
    # a * at the end of a segment may expand past the ':' that ends it
    (f"arn:aws:ec2:*:{ACCOUNT}:instance/i-1",
     f"arn:aws:ec2:us-east-1:444455556666:{ACCOUNT}:instance/i-1", True),
    # a request on "*" is matched only by the policy Resource "*"
    ("arn:aws:s3:::*", "*", False),
    ("*", "*", True),
]


@pytest.mark.parametrize(("resources", "request_resource", "allowed"), RESOURCE_CASES)
def test_resource_matching(resources, request_resource, allowed):
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": resources}
    expect(run(statement, resource=request_resource), allowed)


@pytest.mark.parametrize(
    ("not_resources", "request_resource", "allowed"),
    [
        ("arn:aws:s3:::secret/*", "arn:aws:s3:::public/x", True),
        ("arn:aws:s3:::secret/*", "arn:aws:s3:::secret/x", False),
        (["arn:aws:s3:::secret", "arn:aws:s3:::secret/*"], "*", True),
        ("*", "*", False),
    ],
)
def test_not_resource_with_allow(not_resources, request_resource, allowed):
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "NotResource": not_resources}
    expect(run(statement, resource=request_resource), allowed)


@pytest.mark.parametrize(
    ("request_resource", "decision"),
    [("arn:aws:s3:::allowed/x", ALLOW), ("arn:aws:s3:::other/x", EXPLICIT), ("*", EXPLICIT)],
)
def test_not_resource_with_deny(request_resource, decision):
    statements = (
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "*", "NotResource": "arn:aws:s3:::allowed/*"},
    )
    assert run(*statements, resource=request_resource).decision is decision
