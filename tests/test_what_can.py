"""What can: every action of the IAM catalog one principal may perform, grouped by service and access level.

Checked two ways: against the reference evaluator over every action of the shipped catalog, for
principals blocked by a boundary, an SCP, allowed by a resource policy alone, and allowed everything;
and by hand on answers small enough to write down (``access_store``'s docstring says who is what).
"""
from __future__ import annotations

import json

import pytest

from iam_evaluator import Request, RequestError, reference
from iam_evaluator.access_queries import ACCESS_LEVELS, what_can
from iam_evaluator.catalog import Catalog
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.service_rules import ANONYMOUS

from .access_store import (
    ADMIN,
    AUDITOR,
    DEV,
    INTERN,
    ONCALL,
    PAYROLL,
    PAYROLL_OBJECT,
    PUBLIC_OBJECT,
    READER,
    SANDBOX,
    A,
    access_store,
    snapshot_file,
)
from .conftest import run_cli

CALLER_IDENTITY = ("sts", "Read", ("sts:GetCallerIdentity",))
"""Allowed to every principal whatever the policies say (service_rules.ALWAYS_ALLOWED)."""


@pytest.fixture(scope="module")
def store():
    return access_store()


@pytest.fixture(scope="module")
def compiled(store):
    return CompiledStore(store)


@pytest.fixture(scope="module")
def catalog_actions() -> list[str]:
    catalog = Catalog.shipped()
    return [f"{prefix}:{name}" for prefix, body in catalog.services.items() for name in body["actions"]]


def groups(access) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(g.service, g.access_level, g.actions) for g in access.groups]


def allowed(access) -> set[str]:
    return {action for group in access.groups for action in group.actions}


# ---------------------------------------------------------------- against the reference, every catalog action


@pytest.mark.parametrize(("principal", "resource"), [
    pytest.param(INTERN, PAYROLL, id="boundary-bucket"),
    pytest.param(AUDITOR, PAYROLL_OBJECT, id="resource-policy-only"),
    pytest.param(SANDBOX, "*", id="scp"),
    pytest.param(ADMIN, PUBLIC_OBJECT, id="everything"),
])
def test_every_catalog_action_as_the_reference_decides(store, compiled, catalog_actions, principal, resource):
    answer = what_can(compiled, principal, resource, resource_account=A)
    policies, facts = store.policy_set(principal, resource, A), store.facts(principal)
    want = {action for action in catalog_actions
            if reference.evaluate(policies, Request.create(principal, action, resource, resource_account=A),
                                  facts).allowed}
    assert [access.resource for access in answer.resources] == [resource]
    assert allowed(answer.resources[0]) == want
    assert answer.failures == ()


# ---------------------------------------------------------------- by hand


def test_resource_policy_alone(compiled):
    answer = what_can(compiled, AUDITOR, PAYROLL_OBJECT, resource_account=A)
    assert groups(answer.resources[0]) == [("s3", "Read", ("s3:GetObject",)), CALLER_IDENTITY]


def test_the_boundary_limits_s3_star_to_list_bucket(compiled):
    answer = what_can(compiled, INTERN, "*")
    assert groups(answer.resources[0]) == [("s3", "List", ("s3:ListBucket",)), CALLER_IDENTITY]


def test_the_scp_takes_every_s3_action_away(compiled, catalog_actions):
    answer = what_can(compiled, SANDBOX, "*")
    assert allowed(answer.resources[0]) == {a for a in catalog_actions if not a.startswith("s3:")}


def test_groups_follow_service_then_access_level(compiled, catalog_actions):
    answer = what_can(compiled, ADMIN, "*", service="iam")
    levels = [g.access_level for g in answer.resources[0].groups]
    assert levels == ["List", "Read", "Write", "Permissions management", "Tagging"]
    assert allowed(answer.resources[0]) == {a for a in catalog_actions if a.startswith("iam:")}
    everything = what_can(compiled, ADMIN, "*").resources[0].groups
    assert [g.service for g in everything] == sorted(g.service for g in everything)
    assert {g.access_level for g in everything} <= set(ACCESS_LEVELS.values())
    assert sum(len(g.actions) for g in everything) == len(catalog_actions)


def test_without_a_resource_star_and_each_pattern_its_policies_name(compiled):
    answer = what_can(compiled, READER)
    assert [(access.resource, groups(access)) for access in answer.resources] == [
        ("*", [CALLER_IDENTITY]),
        (f"{PAYROLL}/*", [("s3", "Read", ("s3:GetObject",))]),
    ]


def test_patterns_resolve_policy_variables_from_the_store(compiled):
    answer = what_can(compiled, DEV)  # Resource arn:aws:s3:::home/${aws:username}/*
    assert [(access.resource, groups(access)) for access in answer.resources] == [
        ("*", [CALLER_IDENTITY]),
        (READER, [("sts", "Write", ("sts:AssumeRole",))]),
        ("arn:aws:s3:::home/dev/*", [("s3", "Read", ("s3:GetObject",))]),
    ]


def test_a_pattern_of_roles_and_the_service_filter(compiled):
    answer = what_can(compiled, ONCALL)  # may assume every role of account A: a pattern, not a role's ARN
    assert [(access.resource, groups(access)) for access in answer.resources] == [
        ("*", [CALLER_IDENTITY]),
        (f"arn:aws:iam::{A}:role/*", [("sts", "Write", ("sts:AssumeRole",))]),
    ]
    only_s3 = what_can(compiled, ONCALL, service="s3")
    assert [(access.resource, groups(access)) for access in only_s3.resources] == [("*", [])]


def test_anonymous_may_read_the_public_site_only(compiled):
    public = what_can(compiled, ANONYMOUS, PUBLIC_OBJECT)
    assert groups(public.resources[0]) == [("s3", "Read", ("s3:GetObject",))]
    assert [access.resource for access in what_can(compiled, ANONYMOUS).resources] == ["*"]


def test_the_service_filter_and_the_context(compiled):
    secure = what_can(compiled, AUDITOR, PAYROLL_OBJECT, service="S3", resource_account=A)
    assert groups(secure.resources[0]) == [("s3", "Read", ("s3:GetObject",))]
    insecure = what_can(compiled, AUDITOR, PAYROLL_OBJECT, service="s3", context={"aws:SecureTransport": False},
                        resource_account=A)
    assert groups(insecure.resources[0]) == []


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return snapshot_file(tmp_path_factory.mktemp("what-can"))


def test_cli_text(capsys, snapshot):
    code, out, err = run_cli(capsys, "what-can", "--store", snapshot, "--principal", INTERN)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{INTERN} may perform 2 action(s) on *",
        "  s3 List (1): ListBucket",
        "  sts Read (1): GetCallerIdentity",
    ]


def test_cli_json(capsys, snapshot):
    code, out, _ = run_cli(capsys, "what-can", "--store", snapshot, "--principal", DEV, "--json")
    assert code == 0
    assert json.loads(out) == {"principal": DEV, "failures": [], "resources": [
        {"resource": "*", "services": {"sts": {"Read": ["sts:GetCallerIdentity"]}}},
        {"resource": READER, "services": {"sts": {"Write": ["sts:AssumeRole"]}}},
        {"resource": "arn:aws:s3:::home/dev/*", "services": {"s3": {"Read": ["s3:GetObject"]}}},
    ]}


# ---------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize(("field", "value", "message"), [
    ("principal", 5, "request principal must be a string"),
    ("principal", None, "request principal must be a string"),
    ("principal", "arn:aws:iam::111111111111:user/\ud800", "lone surrogate"),
    ("principal", "arn:aws:iam::111111111111:user/" + "x" * 1_000_000, "is not in the policy store"),
    ("principal", f"arn:aws:iam::{A}:user/nobody", "is not in the policy store"),
    ("principal", "not-an-arn", "is not an IAM or STS ARN"),
    ("principal", "arn:aws:iam::12345:user/short", "no 12-digit account id"),
    ("resource", 5, "request resource must be a string"),
    ("resource", "not-an-arn", "neither an ARN"),
    ("resource", "arn:aws:s3:::\udcff", "lone surrogate"),
    ("service", 5, "service must be a string"),
    ("service", "nosuchservice" * 100_000, "the IAM catalog has no service"),
    ("service", "s\ud8003", "lone surrogate"),
    ("context", {"aws:SecureTransport": {"nested": 1}}, "values are strings, numbers, booleans"),
    ("resource_account", ["1"], "resource account must be a string"),
])
def test_hostile_query_is_refused(compiled, field, value, message):
    query = {"principal": INTERN, "resource": None, "service": None, "context": None, "resource_account": None}
    with pytest.raises(RequestError, match=message):
        what_can(compiled, **{**query, field: value})


def test_hostile_huge_resource_is_answered(compiled):
    resource = "arn:aws:s3:::payroll/" + "é" * 1_000_000
    answer = what_can(compiled, AUDITOR, resource, service="s3", resource_account=A)
    assert answer.resources[0].resource == resource
    assert groups(answer.resources[0]) == [("s3", "Read", ("s3:GetObject",))]


@pytest.mark.parametrize(("argv", "message"), [
    (["--principal", f"arn:aws:iam::{A}:user/nobody"], "is not in the policy store"),
    (["--principal", "bob"], "is not an IAM or STS ARN"),
    (["--principal", INTERN, "--resource", "bucket"], "neither an ARN"),
    (["--principal", INTERN, "--service", "nosuch"], "the IAM catalog has no service 'nosuch'"),
    (["--principal", "arn:aws:iam::111111111111:user/\udcff"], "lone surrogate"),
])
def test_hostile_cli_input_exits_2(capsys, snapshot, argv, message):
    code, out, err = run_cli(capsys, "what-can", "--store", snapshot, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err and "Traceback" not in err
