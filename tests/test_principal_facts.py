"""Who the principal is comes from the store alone: a request can neither forge nor hide it.

Every expected decision here is written by hand from AWS's documentation (global condition keys:
aws:PrincipalTag/*, aws:PrincipalOrgID and the other properties of the principal are set by AWS,
and a session's tags override the role's tags of the same key), not computed by any evaluator.
Each case runs through every path: one request, rows, columns, and Arrow.
"""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from iam_evaluator import DecisionKind, PolicySet, Request, parse_policy, reference
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.compile import CompiledPolicySet
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.store import PolicyStore, reference_decision

ALLOW, EXPLICIT, IMPLICIT = DecisionKind.ALLOW, DecisionKind.EXPLICIT_DENY, DecisionKind.IMPLICIT_DENY

ORG = "o-aaaaaaaaaa"
UNTAGGED = "arn:aws:iam::111111111111:role/untagged"
BLOCKED = "arn:aws:iam::111111111111:role/blocked"
OUTSIDER = "arn:aws:iam::333333333333:role/outsider"
UNTAGGED_SESSION = "arn:aws:sts::111111111111:assumed-role/untagged/s1"
BLOCKED_SESSION = "arn:aws:sts::111111111111:assumed-role/blocked/s2"
OBJECT = "arn:aws:s3:::data/report.csv"
SECRET = "arn:aws:secretsmanager:us-east-1:111111111111:secret:payroll-AbCdEf"
KEY = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def document(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


GATE = document(
    {"Sid": "Read", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
    {"Sid": "Blocked", "Effect": "Deny", "Action": "*", "Resource": "*",
     "Condition": {"StringEquals": {"aws:PrincipalTag/team": "blocked"}}},
    {"Sid": "TopSecret", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*",
     "Condition": {"StringEquals": {"aws:PrincipalTag/clearance": "top"}}},
    {"Sid": "OrgKeys", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*",
     "Condition": {"StringEquals": {"aws:PrincipalOrgID": ORG}}},
)
STORE = {
    "managed_policies": [{"arn": "arn:aws:iam::111111111111:policy/Gate", "document": GATE}],
    "principals": [
        {"arn": UNTAGGED, "managed_policies": ["arn:aws:iam::111111111111:policy/Gate"]},
        {"arn": BLOCKED, "managed_policies": ["arn:aws:iam::111111111111:policy/Gate"], "tags": {"team": "blocked"}},
        {"arn": OUTSIDER, "inline_policies": {"Gate": GATE}},
    ],
    "organization": {"id": ORG, "root": {"id": "r-aaaa", "children": [{"id": "111111111111"}]}},
}

# (principal, action, resource, context, session tags) -> the decision AWS gives
CASES = [
    pytest.param(BLOCKED, "s3:GetObject", OBJECT, {}, None, EXPLICIT, id="the store's tag denies"),
    pytest.param(BLOCKED, "s3:GetObject", OBJECT, {"aws:PrincipalTag/team": "ok"}, None, EXPLICIT,
                 id="a request cannot overwrite the store's tag"),
    pytest.param(UNTAGGED, "s3:GetObject", OBJECT, {"aws:principaltag/TEAM": "blocked"}, None, ALLOW,
                 id="a tag the store lacks cannot be added (any spelling)"),
    pytest.param(UNTAGGED, "secretsmanager:GetSecretValue", SECRET, {"aws:PrincipalTag/clearance": "top"}, None,
                 IMPLICIT, id="forging a clearance tag grants nothing"),
    pytest.param(OUTSIDER, "kms:Decrypt", KEY, {"aws:PrincipalOrgID": ORG}, None, IMPLICIT,
                 id="forging the organisation from outside grants nothing"),
    pytest.param(UNTAGGED, "kms:Decrypt", KEY, {}, None, ALLOW, id="a member of the organisation"),
    pytest.param(UNTAGGED, "kms:Decrypt", KEY, {"aws:PrincipalOrgID": "o-bbbbbbbbbb"}, None, ALLOW,
                 id="nor can a member hide its organisation"),
    pytest.param(UNTAGGED_SESSION, "s3:GetObject", OBJECT, {}, {"team": "blocked"}, EXPLICIT,
                 id="a session's tag applies"),
    pytest.param(BLOCKED_SESSION, "s3:GetObject", OBJECT, {}, {"Team": "ok"}, ALLOW,
                 id="a session's tag overrides the role's tag of the same key"),
    pytest.param(UNTAGGED_SESSION, "secretsmanager:GetSecretValue", SECRET, {}, {"clearance": "top"}, ALLOW,
                 id="a session tag the role lacks"),
    pytest.param(BLOCKED_SESSION, "s3:GetObject", OBJECT, {"aws:PrincipalTag/team": "ok"}, None, EXPLICIT,
                 id="a session inherits its role's tags, and the request cannot change them"),
]


@pytest.fixture(scope="module")
def store():
    return PolicyStore.from_json(json.dumps(STORE))


@pytest.fixture(scope="module")
def engine(store):
    return CompiledStore(store)


@pytest.mark.parametrize("principal, action, resource, context, tags, want", CASES)
def test_principal_facts_on_every_path(store, engine, principal, action, resource, context, tags, want):
    request = Request.create(principal, action, resource, context, session_tags=tags)
    assert reference_decision(store, request).decision is want, "the reference evaluator"
    assert engine.evaluate(request).decision is want, "one request, explained"
    assert engine.evaluate(request, explain=False).decision is want, "one request"
    assert engine.evaluate_batch([request] * 3)[1] is want, "rows"
    columns = {key: [None, value, None] for key, value in context.items()}
    decided = engine.evaluate_columns([UNTAGGED, principal, BLOCKED], ["s3:ListBucket", action, "s3:GetObject"],
                                      [OBJECT, resource, OBJECT], columns, session_tags=[None, tags, None])
    assert list(decided) == [IMPLICIT, want, EXPLICIT], "columns, beside other principals"
    columns = {"principal": [principal], "action": [action], "resource": [resource]}
    if context:
        columns["context"] = pa.array([context], pa.struct([(k, pa.string()) for k in context]))
    if tags:
        columns["session_tags"] = pa.array([tags], pa.struct([(k, pa.string()) for k in tags]))
    assert evaluate_arrow(engine, pa.table(columns)).column("decision")[0].as_py() == str(want), "Arrow"


@pytest.mark.parametrize("tagged_first", [True, False])
def test_a_column_batch_mixing_principals_decides_each_row_as_alone(engine, tagged_first):
    """The column of a key the store sets for some principals: each row keeps its own meaning."""
    principals = [BLOCKED, UNTAGGED] if tagged_first else [UNTAGGED, BLOCKED]
    teams = [None, "blocked"] if tagged_first else ["blocked", None]
    decided = engine.evaluate_columns(principals, ["s3:GetObject"] * 2, [OBJECT] * 2,
                                      {"aws:PrincipalTag/team": teams})
    want = [EXPLICIT, ALLOW] if tagged_first else [ALLOW, EXPLICIT]
    assert list(decided) == want
    explained = engine.evaluate_columns(principals, ["s3:GetObject"] * 2, [OBJECT] * 2,
                                        {"aws:PrincipalTag/team": teams}, explain=True)
    assert [d.decision for d in explained] == want


def test_session_tags_only_for_a_session(engine):
    decided = engine.evaluate_columns([UNTAGGED], ["s3:GetObject"], [OBJECT], session_tags=[{"team": "ok"}])
    assert list(decided) == [IMPLICIT] and "assumed-role session" in decided.errors[0]
    table = pa.table({"principal": [UNTAGGED, UNTAGGED_SESSION], "action": ["s3:GetObject"] * 2,
                      "resource": [OBJECT] * 2, "session_tags": pa.array([{"team": "ok"}, {"team": "blocked"}])})
    arrow = evaluate_arrow(engine, table).to_pydict()
    assert arrow["decision"] == ["ImplicitDeny", "ExplicitDeny"] and "assumed-role session" in arrow["error"][0]
    with pytest.raises(ValueError, match="assumed-role session"):
        Request.create(UNTAGGED, "s3:GetObject", OBJECT, session_tags={"team": "ok"})
    with pytest.raises(ValueError, match="given twice"):
        Request.create(UNTAGGED_SESSION, "s3:GetObject", OBJECT, session_tags={"team": "a", "TEAM": "b"})


def test_without_a_store_the_request_says_who_the_principal_is():
    """Inline policies and ``check --policy`` know nothing of the caller: its keys are used as given."""
    policies = PolicySet(identity=(parse_policy(GATE, name="gate"),))
    compiled = CompiledPolicySet(policies)
    for context, tags, want in (({"aws:PrincipalTag/team": "blocked"}, None, EXPLICIT), ({}, None, ALLOW),
                                ({"aws:PrincipalTag/team": "blocked"}, {"team": "ok"}, ALLOW)):
        principal = UNTAGGED_SESSION if tags else UNTAGGED
        request = Request.create(principal, "s3:GetObject", OBJECT, context, session_tags=tags)
        assert reference.evaluate(policies, request).decision is want
        assert compiled.evaluate(request).decision is want
        assert compiled.evaluate_columns([principal], ["s3:GetObject"], [OBJECT], [context],
                                         session_tags=[tags])[0] is want


def test_a_request_that_gives_a_key_or_tag_twice_fails_even_where_the_store_or_session_decides_it(engine):
    """Request.create refuses a context key or session tag given twice, whatever supplies the key in the end
    and whether a policy tests it: the engine fails such a request too, on every path."""
    twice_tag = {"team": "ok", "TEAM": "ok"}  # no policy tests aws:PrincipalTag/TEAM … /team is tested
    twice_untested = {"project": "a", "PROJECT": "b"}  # aws:PrincipalTag/project: no policy tests it
    twice_key = {"aws:PrincipalTag/team": "ok", "AWS:PRINCIPALTAG/TEAM": "ok"}  # the store sets it anyway
    for principal, context, tags in ((UNTAGGED_SESSION, {}, twice_tag), (UNTAGGED_SESSION, {}, twice_untested),
                                     (BLOCKED, twice_key, None)):
        with pytest.raises(ValueError, match="given twice"):
            Request.create(principal, "s3:GetObject", OBJECT, context, session_tags=tags)
        decided = engine.evaluate_columns([principal], ["s3:GetObject"], [OBJECT], [context], session_tags=[tags])
        assert list(decided) == [IMPLICIT] and "given twice" in decided.errors[0]
        columns = {"principal": [principal], "action": ["s3:GetObject"], "resource": [OBJECT]}
        if context:
            columns["context"] = pa.array([context], pa.struct([(k, pa.string()) for k in context]))
        if tags:
            columns["session_tags"] = pa.array([tags], pa.struct([(k, pa.string()) for k in tags]))
        arrow = evaluate_arrow(engine, pa.table(columns)).to_pydict()
        assert arrow["decision"] == ["ImplicitDeny"] and "given twice" in arrow["error"][0]
