"""How the policy layers combine into one decision, per the IAM User Guide
("Policy evaluation logic", single-account and cross-account evaluation,
permissions boundaries, session policies, SCPs and RCPs).

Expectations are written from the documented rules, never from the evaluator's
output:
* an applicable Deny in any layer wins;
* every SCP level and every RCP level must allow;
* an identity-based Allow counts only within the permissions boundary and the
  session policy;
* in the same account a resource-based policy that names the user or the
  role session grants on its own, one that names the role is still limited by
  the boundary and the session policy, one that names only the account grants
  nothing by itself;
* across accounts both the caller's identity-based policy and the resource's
  policy must allow.
"""
from __future__ import annotations

import pytest

from iam_evaluator import DecisionKind, Effect, PolicyKind, PolicySet, Request, StatementRef, parse_policy
from iam_evaluator.reference import evaluate

ACCOUNT = "111122223333"
OTHER = "444455556666"
USER = f"arn:aws:iam::{ACCOUNT}:user/alice"
OTHER_USER_SAME_ACCOUNT = f"arn:aws:iam::{ACCOUNT}:user/bob"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/Builder"
SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/Builder/build-42"
OTHER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/Deployer"
FOREIGN_USER = f"arn:aws:iam::{OTHER}:user/mallory"
FOREIGN_ROLE = f"arn:aws:iam::{OTHER}:role/Reader"
FOREIGN_SESSION = f"arn:aws:sts::{OTHER}:assumed-role/Reader/r-1"

ACTION = "sqs:SendMessage"
QUEUE = f"arn:aws:sqs:us-east-1:{ACCOUNT}:jobs"

ALLOW = DecisionKind.ALLOW
IMPLICIT = DecisionKind.IMPLICIT_DENY
EXPLICIT = DecisionKind.EXPLICIT_DENY


# -- policy builders ---------------------------------------------------------

def allow(sid: str | None = "AllowSend", action: str = ACTION, **extra) -> dict:
    statement = {"Effect": "Allow", "Action": action, "Resource": "*", **extra}
    if sid:
        statement["Sid"] = sid
    return statement


def deny(sid: str | None = "DenySend", action: str = ACTION, **extra) -> dict:
    statement = {"Effect": "Deny", "Action": action, "Resource": "*", **extra}
    if sid:
        statement["Sid"] = sid
    return statement


def doc(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def identity(name: str, *statements: dict):
    return parse_policy(doc(*statements), name=name)


def resource(name: str, *statements: dict):
    return parse_policy(doc(*statements), name=name, kind=PolicyKind.RESOURCE)


def everyone(statement: dict) -> dict:
    return {**statement, "Principal": "*"}


def naming(principal, statement: dict) -> dict:
    return {**statement, "Principal": {"AWS": principal}}


def ask(policies: PolicySet, principal: str = SESSION, action: str = ACTION, resource_arn: str = QUEUE,
        context: dict | None = None, resource_account: str | None = None):
    request = Request.create(principal=principal, action=action, resource=resource_arn, context=context,
                             resource_account=resource_account)
    decision = evaluate(policies, request)
    assert decision.error is None, decision.error
    return decision


ID_ALLOW = identity("id0", allow())
ONLY_EC2 = {"Sid": "OnlyEc2", "Effect": "Allow", "Action": "ec2:*", "Resource": "*"}


# ---------------------------------------------------------------------------
# An explicit Deny in any layer beats every Allow
# ---------------------------------------------------------------------------

LAYERS = ["identity", "resource", "permissions_boundary", "session", "scp[0]", "scp[1]", "rcp[0]"]
POLICY_NAMES = {
    "identity": "id0", "resource": "res", "permissions_boundary": "pb0", "session": "sess0",
    "scp[0]": "scp-root", "scp[1]": "scp-ou", "rcp[0]": "rcp-root",
}


def everything_allows(deny_in: str | None, *, identity_allows: bool, resource_allows: bool) -> PolicySet:
    """Every layer present and allowing (except as asked); ``deny_in`` also gets a Deny."""

    def statements(layer: str, allows: bool, principal: bool) -> list[dict]:
        wrap = everyone if principal else (lambda s: s)
        found = [wrap(allow())] if allows else []
        if layer == deny_in:
            found.append(wrap(deny()))
        return found

    def ident(layer: str, allows: bool = True):
        found = statements(layer, allows, principal=False)
        return identity(POLICY_NAMES[layer], *found) if found else None

    id_statements = statements("identity", identity_allows, principal=False)
    res_statements = [
        naming(SESSION, s) if s["Effect"] == "Allow" else everyone(s)
        for s in statements("resource", resource_allows, principal=False)
    ]
    return PolicySet(
        identity=(identity("id0", *id_statements),) if id_statements else (),
        resource=resource("res", *res_statements) if res_statements else None,
        permissions_boundary=(ident("permissions_boundary"),),
        session=(ident("session"),),
        scp=((ident("scp[0]"),), (ident("scp[1]"),)),
        rcp=((resource("rcp-root", *statements("rcp[0]", True, principal=True)),),),
    )


@pytest.mark.parametrize("grant", ["identity", "resource"])
def test_everything_allowing_is_allowed(grant):
    policies = everything_allows(None, identity_allows=grant == "identity", resource_allows=grant == "resource")
    assert ask(policies).decision is ALLOW


@pytest.mark.parametrize(
    ("layer", "grant"),
    [(layer, "identity") for layer in LAYERS]
    + [(layer, "resource") for layer in ("identity", "permissions_boundary", "session", "scp[1]")],
)
def test_explicit_deny_in_any_layer_wins(layer, grant):
    policies = everything_allows(layer, identity_allows=grant == "identity", resource_allows=grant == "resource")
    decision = ask(policies)
    assert decision.decision is EXPLICIT
    assert decision.decided_by == layer
    index = 0 if (layer == "identity" and grant != "identity") or (layer == "resource" and grant != "resource") else 1
    assert StatementRef(POLICY_NAMES[layer], index, "DenySend", Effect.DENY) in decision.statements
    assert all(ref.effect is Effect.DENY for ref in decision.statements)


def test_deny_with_an_unmet_condition_does_not_apply():
    policy = identity("id0", allow(), deny(Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}))
    assert ask(PolicySet(identity=(policy,)), context={"aws:RequestedRegion": "us-east-1"}).decision is ALLOW
    assert ask(PolicySet(identity=(policy,)), context={"aws:RequestedRegion": "eu-west-1"}).decision is EXPLICIT


def test_every_applicable_deny_is_listed():
    policies = PolicySet(
        identity=(identity("id0", allow(), deny("First")), identity("id1", deny(None, action="sqs:*"))),
        scp=((identity("scp-root", allow(action="*"), deny("Org")),),),
    )
    decision = ask(policies)
    assert decision.decision is EXPLICIT
    assert set(decision.statements) == {
        StatementRef("id0", 1, "First", Effect.DENY),
        StatementRef("id1", 0, None, Effect.DENY),
        StatementRef("scp-root", 1, "Org", Effect.DENY),
    }


# ---------------------------------------------------------------------------
# SCPs and RCPs: every level must allow; neither grants anything itself
# ---------------------------------------------------------------------------

SCP_ALLOW = identity("scp-allow", allow("FullAccess", action="*"))
SCP_EC2 = identity("scp-ec2", ONLY_EC2)
SCP_SQS = identity("scp-sqs", allow("SqsOnly", action="sqs:*"))


@pytest.mark.parametrize(
    ("levels", "decision", "decided_by"),
    [
        (((SCP_ALLOW,),), ALLOW, None),
        (((SCP_ALLOW,), (SCP_SQS,), (SCP_ALLOW,)), ALLOW, None),
        (((SCP_EC2,),), IMPLICIT, "scp[0]"),
        (((SCP_ALLOW,), (SCP_ALLOW,), (SCP_EC2,)), IMPLICIT, "scp[2]"),
        (((SCP_ALLOW,), (SCP_EC2, SCP_SQS)), ALLOW, None),  # one policy at a level is enough
    ],
)
def test_every_scp_level_must_allow(levels, decision, decided_by):
    result = ask(PolicySet(identity=(ID_ALLOW,), scp=levels))
    assert result.decision is decision
    if decided_by:
        assert result.decided_by == decided_by


def test_scp_allow_grants_nothing_alone():
    result = ask(PolicySet(scp=((SCP_ALLOW,),)))
    assert result.decision is IMPLICIT
    assert result.decided_by == "identity"


def test_scp_limits_a_same_account_resource_policy_grant():
    policies = PolicySet(resource=resource("res", naming(USER, allow())), scp=((SCP_EC2,),))
    result = ask(policies, principal=USER)
    assert result.decision is IMPLICIT
    assert result.decided_by == "scp[0]"


RCP_ALLOW = resource("rcp-allow", everyone(allow("RcpFull", action="*")))
RCP_EC2 = resource("rcp-ec2", everyone(ONLY_EC2))


@pytest.mark.parametrize(
    ("levels", "decision", "decided_by"),
    [
        (((RCP_ALLOW,),), ALLOW, None),
        (((RCP_EC2,),), IMPLICIT, "rcp[0]"),
        (((RCP_ALLOW,), (RCP_EC2,)), IMPLICIT, "rcp[1]"),
        (((RCP_ALLOW,), (RCP_EC2, RCP_ALLOW)), ALLOW, None),
    ],
)
def test_every_rcp_level_must_allow(levels, decision, decided_by):
    result = ask(PolicySet(identity=(ID_ALLOW,), rcp=levels))
    assert result.decision is decision
    if decided_by:
        assert result.decided_by == decided_by


def test_rcp_allow_grants_nothing_alone():
    result = ask(PolicySet(rcp=((RCP_ALLOW,),)))
    assert result.decision is IMPLICIT
    assert result.decided_by == "identity"


# ---------------------------------------------------------------------------
# Permissions boundary and session policy limit identity-based Allows
# ---------------------------------------------------------------------------

PB_ALLOW = identity("pb0", allow("Boundary"))
PB_EC2 = identity("pb0", ONLY_EC2)
SESSION_ALLOW = identity("sess0", allow("Session"))
SESSION_EC2 = identity("sess0", ONLY_EC2)
PB_IN_EU = identity("pb0", allow("EuOnly", Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}))


@pytest.mark.parametrize(
    ("identity_policies", "boundary", "session", "decision", "decided_by"),
    [
        ((ID_ALLOW,), (PB_ALLOW,), None, ALLOW, None),
        ((ID_ALLOW,), (PB_EC2,), None, IMPLICIT, "permissions_boundary"),
        ((ID_ALLOW,), (PB_IN_EU,), None, IMPLICIT, "permissions_boundary"),
        ((), (PB_ALLOW,), None, IMPLICIT, "identity"),
        ((ID_ALLOW,), None, (SESSION_EC2,), IMPLICIT, "session"),
        ((ID_ALLOW,), (PB_ALLOW,), (SESSION_EC2,), IMPLICIT, "session"),
        ((ID_ALLOW,), (PB_EC2,), (SESSION_ALLOW,), IMPLICIT, "permissions_boundary"),
        ((identity("id0", ONLY_EC2),), (PB_ALLOW,), (SESSION_ALLOW,), IMPLICIT, "identity"),
    ],
)
def test_boundary_and_session_policy_limit_identity_allows(identity_policies, boundary, session, decision,
                                                            decided_by):
    policies = PolicySet(identity=identity_policies, permissions_boundary=boundary, session=session)
    result = ask(policies, context={"aws:RequestedRegion": "us-east-1"})
    assert result.decision is decision
    if decided_by:
        assert result.decided_by == decided_by


def test_implicit_deny_still_lists_the_applicable_allows():
    result = ask(PolicySet(identity=(ID_ALLOW,), permissions_boundary=(PB_EC2,)))
    assert result.decision is IMPLICIT
    assert StatementRef("id0", 0, "AllowSend", Effect.ALLOW) in result.statements
    assert StatementRef("pb0", 0, "OnlyEc2", Effect.ALLOW) not in result.statements


# ---------------------------------------------------------------------------
# Same-account resource-based policies: what the Principal names matters
# ---------------------------------------------------------------------------

SAME_ACCOUNT_CASES = [
    # an IAM user ARN: grants on its own, even past a boundary that does not allow
    ("user-direct", USER, USER, None, None, ALLOW, None),
    ("user-direct-past-boundary", USER, USER, (PB_EC2,), None, ALLOW, None),
    ("another-user", USER, OTHER_USER_SAME_ACCOUNT, None, None, IMPLICIT, "identity"),
    # an assumed-role session ARN: grants on its own, not limited by boundary or session policy
    ("session-direct", SESSION, SESSION, None, None, ALLOW, None),
    ("session-direct-past-boundary", SESSION, SESSION, (PB_EC2,), None, ALLOW, None),
    ("session-direct-past-session-policy", SESSION, SESSION, None, (SESSION_EC2,), ALLOW, None),
    # the role ARN, for a session of that role: grants, but within boundary and session policy
    ("role", SESSION, ROLE, None, None, ALLOW, None),
    ("role-limited-by-boundary", SESSION, ROLE, (PB_EC2,), None, IMPLICIT, "permissions_boundary"),
    ("role-limited-by-session-policy", SESSION, ROLE, None, (SESSION_EC2,), IMPLICIT, "session"),
    ("another-role", SESSION, OTHER_ROLE, None, None, IMPLICIT, "identity"),
    # only the account: delegates to identity-based policies, grants nothing itself
    ("account-id-user", USER, ACCOUNT, None, None, IMPLICIT, "identity"),
    ("account-root-user", USER, f"arn:aws:iam::{ACCOUNT}:root", None, None, IMPLICIT, "identity"),
]


@pytest.mark.parametrize(
    ("caller", "principal", "boundary", "session", "decision", "decided_by"),
    [case[1:] for case in SAME_ACCOUNT_CASES],
    ids=[case[0] for case in SAME_ACCOUNT_CASES],
)
def test_same_account_resource_policy_without_identity_allow(caller, principal, boundary, session, decision,
                                                             decided_by):
    policies = PolicySet(
        resource=resource("res", naming(principal, allow("QueuePolicy"))),
        permissions_boundary=boundary,
        session=session,
    )
    result = ask(policies, principal=caller)
    assert result.decision is decision
    if decided_by:
        assert result.decided_by == decided_by
    if decision is ALLOW:
        assert StatementRef("res", 0, "QueuePolicy", Effect.ALLOW) in result.statements


@pytest.mark.parametrize("principal", [ACCOUNT, f"arn:aws:iam::{ACCOUNT}:root"])
def test_account_principal_with_identity_allow_is_allowed(principal):
    policies = PolicySet(identity=(ID_ALLOW,), resource=resource("res", naming(principal, allow())))
    assert ask(policies, principal=USER).decision is ALLOW


@pytest.mark.parametrize(
    "principal_element",
    [{"Service": "sqs.amazonaws.com"}, {"Service": ["lambda.amazonaws.com", "sns.amazonaws.com"]}],
)
def test_service_principal_never_names_an_iam_caller(principal_element):
    granting = resource("res", {**allow(), "Principal": principal_element})
    assert ask(PolicySet(resource=granting), principal=USER).decision is IMPLICIT
    denying = resource("res", {**deny(), "Principal": principal_element})
    assert ask(PolicySet(identity=(ID_ALLOW,), resource=denying), principal=USER).decision is ALLOW


@pytest.mark.parametrize("caller", [SESSION, FOREIGN_USER])
def test_resource_deny_for_everyone_applies_to_every_caller(caller):
    policies = PolicySet(
        identity=(ID_ALLOW,),
        resource=resource("res", naming([caller], allow("Grant")), everyone(deny("Lockdown"))),
    )
    result = ask(policies, principal=caller)
    assert result.decision is EXPLICIT
    assert result.decided_by == "resource"
    assert result.statements == (StatementRef("res", 1, "Lockdown", Effect.DENY),)


@pytest.mark.parametrize(
    ("caller", "decision"),
    [(USER, ALLOW), (OTHER_USER_SAME_ACCOUNT, EXPLICIT)],
)
def test_resource_deny_applies_only_to_whom_it_names(caller, decision):
    policies = PolicySet(
        identity=(identity("id0", allow()),),
        resource=resource("res", naming(OTHER_USER_SAME_ACCOUNT, deny())),
    )
    assert ask(policies, principal=caller).decision is decision


@pytest.mark.parametrize(
    ("caller", "decision"),
    [(USER, ALLOW), (OTHER_USER_SAME_ACCOUNT, EXPLICIT)],
)
def test_resource_deny_with_not_principal(caller, decision):
    policies = PolicySet(
        identity=(identity("id0", allow()),),
        resource=resource("res", {**deny(), "NotPrincipal": {"AWS": USER}}),
    )
    assert ask(policies, principal=caller).decision is decision


# ---------------------------------------------------------------------------
# Cross-account: the caller's identity policy AND the resource policy must allow
# ---------------------------------------------------------------------------

CROSS_ACCOUNT_CASES = [
    ("names-user", FOREIGN_USER, (ID_ALLOW,), [naming(FOREIGN_USER, allow())], None, ALLOW, None),
    ("names-account-id", FOREIGN_USER, (ID_ALLOW,), [naming(OTHER, allow())], None, ALLOW, None),
    ("names-account-root", FOREIGN_USER, (ID_ALLOW,), [naming(f"arn:aws:iam::{OTHER}:root", allow())], None,
     ALLOW, None),
    ("names-everyone", FOREIGN_USER, (ID_ALLOW,), [everyone(allow())], None, ALLOW, None),
    ("names-aws-star", FOREIGN_USER, (ID_ALLOW,), [naming("*", allow())], None, ALLOW, None),
    ("names-role-of-session", FOREIGN_SESSION, (ID_ALLOW,), [naming(FOREIGN_ROLE, allow())], None, ALLOW, None),
    ("names-session", FOREIGN_SESSION, (ID_ALLOW,), [naming(FOREIGN_SESSION, allow())], None, ALLOW, None),
    ("no-identity-allow", FOREIGN_USER, (), [naming(FOREIGN_USER, allow())], None, IMPLICIT, "identity"),
    ("no-resource-policy", FOREIGN_USER, (ID_ALLOW,), None, None, IMPLICIT, "resource"),
    ("names-owner-account", FOREIGN_USER, (ID_ALLOW,), [naming(ACCOUNT, allow())], None, IMPLICIT, "resource"),
    ("names-someone-else", FOREIGN_USER, (ID_ALLOW,), [naming(f"arn:aws:iam::{OTHER}:user/eve", allow())], None,
     IMPLICIT, "resource"),
    ("boundary-still-limits", FOREIGN_USER, (ID_ALLOW,), [naming(FOREIGN_USER, allow())], (PB_EC2,), IMPLICIT,
     "permissions_boundary"),
    ("resource-deny", FOREIGN_USER, (ID_ALLOW,), [naming(OTHER, allow()), everyone(deny())], None, EXPLICIT,
     "resource"),
]


@pytest.mark.parametrize(
    ("caller", "identity_policies", "resource_statements", "boundary", "decision", "decided_by"),
    [case[1:] for case in CROSS_ACCOUNT_CASES],
    ids=[case[0] for case in CROSS_ACCOUNT_CASES],
)
def test_cross_account(caller, identity_policies, resource_statements, boundary, decision, decided_by):
    policies = PolicySet(
        identity=identity_policies,
        resource=resource("res", *resource_statements) if resource_statements else None,
        permissions_boundary=boundary,
    )
    result = ask(policies, principal=caller)
    assert result.decision is decision
    if decided_by:
        assert result.decided_by == decided_by


def test_resource_account_overrides_an_arn_without_account():
    bucket_object = "arn:aws:s3:::shared-bucket/report.csv"
    policies = PolicySet(identity=(identity("id0", allow(action="s3:GetObject")),))
    same = ask(policies, principal=USER, action="s3:GetObject", resource_arn=bucket_object)
    assert same.decision is ALLOW
    foreign = ask(policies, principal=USER, action="s3:GetObject", resource_arn=bucket_object,
                  resource_account=OTHER)
    assert foreign.decision is IMPLICIT
    assert foreign.decided_by == "resource"


# ---------------------------------------------------------------------------
# Decisions and the statements behind them
# ---------------------------------------------------------------------------

def test_no_policies_at_all_is_an_implicit_deny():
    result = ask(PolicySet(), principal=USER)
    assert result.decision is IMPLICIT
    assert result.decided_by == "identity"
    assert result.statements == ()


def test_allow_lists_every_applicable_allow_and_nothing_else():
    policies = PolicySet(identity=(
        identity("id0", ONLY_EC2, allow("Send")),
        identity("id1", allow(None, action="sqs:*")),
        identity("id2", allow("Unrelated", action="s3:*")),
    ))
    result = ask(policies)
    assert result.decision is ALLOW
    assert set(result.statements) == {
        StatementRef("id0", 1, "Send", Effect.ALLOW),
        StatementRef("id1", 0, None, Effect.ALLOW),
    }


def test_layers_from_json():
    policies = PolicySet.from_json({
        "identity": [doc(allow())],
        "resource": None,
        "permissions_boundary": [doc(allow(action="sqs:*"))],
        "session": None,
        "scp": [[doc(allow(action="*"))], [doc(ONLY_EC2), doc(allow(action="sqs:Send*"))]],
        "rcp": None,
    })
    request = Request.from_json({"principal": USER, "action": ACTION, "resource": QUEUE, "context": {}})
    assert evaluate(policies, request).decision is ALLOW

    narrowed = PolicySet.from_json({
        "identity": [doc(allow())],
        "scp": [[doc(allow(action="*"))], [doc(ONLY_EC2)]],
    })
    result = evaluate(narrowed, request)
    assert result.decision is IMPLICIT
    assert result.decided_by == "scp[1]"


def test_cross_account_from_json():
    policies = PolicySet.from_json({
        "identity": [doc(allow())],
        "resource": doc(naming(OTHER, allow())),
    })
    request = Request.from_json({"principal": FOREIGN_USER, "action": ACTION, "resource": QUEUE})
    assert evaluate(policies, request).decision is ALLOW


# ---------------------------------------------------------------------------
# A non-numeric request value never satisfies a Numeric condition
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("operator", "actual"),
    [
        ("NumericLessThan", "abc"),
        ("NumericNotEquals", "abc"),
        ("NumericNotEquals", "NaN"),
        ("NumericLessThanIfExists", "abc"),
        ("ForAnyValue:NumericLessThan", ["abc"]),
    ],
)
def test_non_numeric_value_is_not_allowed(operator, actual):
    policy = identity("id0", allow("Paged", Condition={operator: {"sqs:MaxResults": "10"}}))
    request = Request.create(principal=USER, action=ACTION, resource=QUEUE, context={"sqs:MaxResults": actual})
    assert evaluate(PolicySet(identity=(policy,)), request).decision is not ALLOW


def test_deny_with_not_principal_denies_a_caller_that_has_a_permissions_boundary():
    # IAM User Guide, permissions boundaries: a Deny statement with NotPrincipal always denies an IAM
    # principal that has a permissions boundary attached, whatever NotPrincipal lists.
    policies = PolicySet(
        identity=(identity("id0", allow()),),
        resource=resource("res", {**deny(), "NotPrincipal": {"AWS": USER}}),
        permissions_boundary=(PB_ALLOW,),
    )
    result = ask(policies, principal=USER)
    assert result.decision is EXPLICIT
    assert result.decided_by == "resource"
