"""The per-service rules (``service_rules``) on every path: a store, one request, rows, columns and Arrow.

Expected decisions are written by hand from AWS's documentation (quoted in ``service_rules`` and in
``tests/data/service_rules.jsonl``), not computed by any evaluator.
"""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from iam_evaluator import DecisionKind, PolicySet, Request, parse_policy, reference
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.compile import CompiledPolicySet
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.parse import PolicyKind
from iam_evaluator.principals import RequestError
from iam_evaluator.store import PolicyStore, StoreError, reference_decision

ALLOW, EXPLICIT, IMPLICIT = DecisionKind.ALLOW, DecisionKind.EXPLICIT_DENY, DecisionKind.IMPLICIT_DENY

A, B = "111111111111", "222222222222"
ALICE = f"arn:aws:iam::{A}:user/alice"
DEPLOYER = f"arn:aws:iam::{A}:role/Deployer"
DEPLOYER_SESSION = f"arn:aws:sts::{A}:assumed-role/Deployer/s1"
OUTSIDER = f"arn:aws:iam::{B}:user/olga"
PUBLIC_OBJECT = "arn:aws:s3:::public-site/index.html"
PRIVATE_OBJECT = "arn:aws:s3:::private-data/report.csv"
KEY = f"arn:aws:kms:us-east-1:{A}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
FUNCTION = f"arn:aws:lambda:us-east-1:{A}:function:resize"
ENDPOINT = "vpce-1a2b3c4d"
CLOSED_ENDPOINT = "vpce-0f0f0f0f"


def document(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


EVERYTHING = document({"Effect": "Allow", "Action": "*", "Resource": "*"},
                      {"Effect": "Deny", "Action": "sts:GetCallerIdentity", "Resource": "*"})
STORE = {
    "managed_policies": [{"arn": f"arn:aws:iam::{A}:policy/Everything", "document": EVERYTHING}],
    "principals": [
        {"arn": ALICE, "managed_policies": [f"arn:aws:iam::{A}:policy/Everything"]},
        {"arn": DEPLOYER, "managed_policies": [f"arn:aws:iam::{A}:policy/Everything"]},
        {"arn": OUTSIDER, "managed_policies": [f"arn:aws:iam::{A}:policy/Everything"]},
    ],
    "rcps": [{"name": "NoDeletes", "document": document(
        {"Effect": "Deny", "Principal": "*", "Action": ["s3:DeleteObject", "lambda:DeleteFunction", "kms:Decrypt"],
         "Resource": "*"})}],
    "organization": {"id": "o-aaaaaaaaaa", "root": {"id": "r-aaaa", "rcps": ["NoDeletes"],
                                                    "children": [{"id": A}]}},
    "resource_policies": [
        {"resource": "arn:aws:s3:::public-site", "document": document(
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::public-site/*",
             "Condition": {"StringNotEquals": {"aws:PrincipalArn": "arn:aws:iam::999999999999:root"}}})},
        {"resource": "arn:aws:s3:::private-data", "document": document(
            {"Effect": "Allow", "Principal": {"AWS": A}, "Action": "s3:GetObject", "Resource": "*"})},
        {"resource": DEPLOYER, "document": document(  # the role's trust policy: only the root of account A
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"})},
        {"resource": KEY, "document": document(  # the key policy names the role alone
            {"Effect": "Allow", "Principal": {"AWS": DEPLOYER}, "Action": "kms:*", "Resource": "*"})},
    ],
    "vpc_endpoints": [
        {"id": ENDPOINT, "document": document(
            {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "sts:*"], "Resource": "*"})},
        {"id": CLOSED_ENDPOINT, "document": document(
            {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"},
            {"Effect": "Deny", "Principal": {"AWS": ALICE}, "Action": "s3:*", "Resource": "*"})},
    ],
}

# (principal, action, resource, context, resource account) -> (decision, decided by), as AWS documents them
CASES = [
    pytest.param(ALICE, "sts:GetCallerIdentity", "*", {}, None, ALLOW, "always_allowed",
                 id="GetCallerIdentity despite an explicit Deny"),
    pytest.param(ALICE, "sts:AssumeRole", DEPLOYER, {}, None, IMPLICIT, "trust_policy",
                 id="an identity Allow does not assume a role whose trust policy names another"),
    pytest.param(ALICE, "iam:GetRole", DEPLOYER, {}, None, ALLOW, "identity",
                 id="other actions on the role are decided as usual"),
    pytest.param(ALICE, "kms:Encrypt", KEY, {}, None, IMPLICIT, "key_policy",
                 id="a key policy naming another principal"),
    pytest.param(DEPLOYER_SESSION, "kms:Encrypt", KEY, {}, None, ALLOW, "identity",
                 id="a key policy naming the caller's role"),
    pytest.param(DEPLOYER_SESSION, "kms:Decrypt", KEY, {}, None, EXPLICIT, "rcp[0]",
                 id="an RCP Deny applies to KMS"),
    pytest.param(ALICE, "lambda:DeleteFunction", FUNCTION, {}, None, ALLOW, "identity",
                 id="an RCP does not apply to Lambda"),
    pytest.param(ALICE, "s3:DeleteObject", PRIVATE_OBJECT, {}, A, EXPLICIT, "rcp[0]",
                 id="an RCP applies to S3"),
    pytest.param("anonymous", "s3:GetObject", PUBLIC_OBJECT, {}, A, ALLOW, "resource",
                 id="anonymous read of a public object"),
    pytest.param("anonymous", "s3:GetObject", PUBLIC_OBJECT, {"aws:PrincipalArn": "arn:aws:iam::999999999999:root"},
                 A, ALLOW, "resource", id="an anonymous request cannot claim to be a principal"),
    pytest.param("anonymous", "s3:GetObject", PRIVATE_OBJECT, {}, A, IMPLICIT, "resource",
                 id="anonymous and a policy naming an account"),
    pytest.param("anonymous", "s3:DeleteObject", PUBLIC_OBJECT, {}, A, EXPLICIT, "rcp[0]",
                 id="RCPs apply to anonymous requests"),
    pytest.param("anonymous", "sts:GetCallerIdentity", "*", {}, None, IMPLICIT, "resource",
                 id="GetCallerIdentity needs a signed request"),
    pytest.param(ALICE, "s3:GetObject", PRIVATE_OBJECT, {"aws:SourceVpce": ENDPOINT}, A, ALLOW, "identity",
                 id="the endpoint's policy allows"),
    pytest.param(ALICE, "s3:PutObject", PRIVATE_OBJECT, {"aws:SourceVpce": ENDPOINT}, A, IMPLICIT, "vpc_endpoint",
                 id="the endpoint's policy does not allow"),
    pytest.param(ALICE, "s3:PutObject", PRIVATE_OBJECT, {"AWS:SOURCEVPCE": CLOSED_ENDPOINT}, A, EXPLICIT,
                 "vpc_endpoint", id="the endpoint's policy denies its principal"),
    pytest.param(DEPLOYER, "s3:PutObject", PRIVATE_OBJECT, {"aws:sourcevpce": CLOSED_ENDPOINT}, A, ALLOW, "identity",
                 id="an endpoint Deny applies only to the principals it names"),
    pytest.param(ALICE, "s3:PutObject", PRIVATE_OBJECT, {"aws:SourceVpce": "vpce-99999999"}, A, ALLOW, "identity",
                 id="an endpoint the store does not hold has the default policy"),
    pytest.param(ALICE, "s3:PutObject", PRIVATE_OBJECT, {"aws:SourceVpce": [ENDPOINT]}, A, ALLOW, "identity",
                 id="a list names no endpoint"),
    pytest.param("anonymous", "s3:GetObject", PUBLIC_OBJECT, {"aws:SourceVpce": CLOSED_ENDPOINT}, A, ALLOW,
                 "resource", id="anonymous through an endpoint that allows everyone"),
    pytest.param("anonymous", "sts:GetCallerIdentity", "*", {"aws:SourceVpce": ENDPOINT}, None, IMPLICIT,
                 "resource", id="anonymous through an endpoint: still only resource policies allow"),
]


@pytest.fixture(scope="module")
def store():
    return PolicyStore.from_json(json.dumps(STORE))


@pytest.fixture(scope="module")
def engine(store):
    return CompiledStore(store)


@pytest.mark.parametrize("principal, action, resource, context, account, want, by", CASES)
def test_service_rules_on_every_path(store, engine, principal, action, resource, context, account, want, by):
    request = Request.create(principal, action, resource, context, resource_account=account)
    decided = reference_decision(store, request)
    assert (decided.decision, decided.decided_by) == (want, by), "the reference evaluator"
    decided = engine.evaluate(request)
    assert (decided.decision, decided.decided_by) == (want, by), "one request, explained"
    assert engine.evaluate(request, explain=False).decision is want, "one request"
    assert engine.evaluate_batch([request] * 3)[1] is want, "rows"
    columns = {key: [None, value, None] for key, value in context.items()}
    decided = engine.evaluate_columns([ALICE, principal, "anonymous"], ["s3:PutObject", action, "s3:PutObject"],
                                      [PRIVATE_OBJECT, resource, PUBLIC_OBJECT], columns,
                                      resource_accounts=[A, account, A])
    assert list(decided) == [ALLOW, want, IMPLICIT], "columns, beside other principals"
    columns = {"principal": [ALICE, principal], "action": ["s3:PutObject", action],
               "resource": [PRIVATE_OBJECT, resource], "resource_account": [A, account]}
    if context:
        value_type = pa.list_(pa.string()) if isinstance(next(iter(context.values())), list) else pa.string()
        columns["context"] = pa.array([None, context], pa.struct([(k, value_type) for k in context]))
    arrow = evaluate_arrow(engine, pa.table(columns), explain=True).to_pydict()
    assert arrow["decision"] == ["Allow", str(want)] and arrow["decided_by"][1] == by, "Arrow"


def test_a_store_entry_for_an_endpoint_is_checked(store):
    for entry, problem in (({"id": "vpc-1234", "document": {}}, "VPC endpoint id"),
                           ({"id": ENDPOINT, "document": document({"Effect": "Allow", "Action": "*",
                                                                  "Resource": "*"})}, "Principal")):
        with pytest.raises(StoreError, match=problem):
            PolicyStore.from_json(json.dumps({**STORE, "vpc_endpoints": [entry]}))
    assert json.loads(store.to_json())["vpc_endpoints"] == STORE["vpc_endpoints"]


def test_an_endpoint_has_one_policy():
    doc = document({"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"})
    with pytest.raises(RequestError, match="exactly one"):
        PolicySet.from_json({"identity": [], "vpc_endpoint": [doc, doc]})
    with pytest.raises(RequestError, match="list"):
        PolicySet.from_json({"identity": [], "vpc_endpoint": doc})
    endpoint = parse_policy(doc, kind=PolicyKind.RESOURCE)
    for endpoints in ((endpoint, endpoint), ()):
        with pytest.raises(RequestError, match="exactly one"):
            PolicySet(vpc_endpoint=endpoints)


@pytest.mark.parametrize("principal", ["Anonymous", "anonymous ", "*", ""])
def test_only_the_exact_word_is_anonymous(principal):
    with pytest.raises(RequestError, match="not an IAM or STS ARN"):
        Request.create(principal, "s3:GetObject", PUBLIC_OBJECT)


def test_an_anonymous_caller_is_read_for_its_characters():
    """A str subclass whose methods lie is read for what it holds, on every path."""
    class Sneaky(str):
        def __eq__(self, other):
            return True

        __hash__ = str.__hash__

    public = PolicySet(resource=parse_policy(document(
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}), kind=PolicyKind.RESOURCE))
    compiled = CompiledPolicySet(public)
    for principal, want in ((Sneaky("anonymous"), ALLOW), (Sneaky(ALICE), ALLOW), (Sneaky("nobody"), IMPLICIT)):
        decided = compiled.evaluate_columns([principal], ["s3:GetObject"], [PUBLIC_OBJECT], resource_accounts=[A])
        assert decided[0] is want
    with pytest.raises(RequestError, match="session tags belong"):
        Request.create("anonymous", "s3:GetObject", PUBLIC_OBJECT, session_tags={"team": "x"})
    decided = compiled.evaluate_columns(["anonymous"], ["s3:GetObject"], [PUBLIC_OBJECT],
                                        session_tags=[{"team": "x"}])
    assert decided[0] is IMPLICIT and "session tags belong" in decided.errors[0]


def test_without_a_store_anonymous_callers_have_no_principal_keys():
    """The policy-set path (inline policies, ``check --policy``) takes the caller's keys as given, but an
    anonymous caller has none: a resource policy that tests one does not allow it."""
    policies = PolicySet(resource=parse_policy(document(
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*",
         "Condition": {"StringEquals": {"aws:PrincipalAccount": A}}}), kind=PolicyKind.RESOURCE))
    compiled = CompiledPolicySet(policies)
    for principal, want in (("anonymous", IMPLICIT), (ALICE, ALLOW)):
        request = Request.create(principal, "s3:GetObject", PUBLIC_OBJECT, {"aws:PrincipalAccount": A},
                                 resource_account=A)
        assert reference.evaluate(policies, request).decision is want
        assert compiled.evaluate(request).decision is want
        assert compiled.evaluate_columns([principal], ["s3:GetObject"], [PUBLIC_OBJECT],
                                         {"aws:PrincipalAccount": [A]}, resource_accounts=[A])[0] is want


@pytest.mark.parametrize("resource", [
    f"arn:aws:iam::{A}:role/Deployer", f"arn:aws:iam::{A}:role/", f"arn:aws:iam::{A}:rolex", f"arn:aws:iam::{A}:user/x",
    "arn:aws-cn:iam::1:role/path/R", "arn::iam::1:role/x", "arn:aws:iamx::1:role/x", KEY,
    f"arn:aws:kms:us-east-1:{A}:alias/k", "arn:aws:kms:r:1:key/", "arn:aws:kms:r:1:key", "arn:aws:KMS:r:1:key/k",
    "arn:aws:s3:::bucket/role/x", "arn:aws:iam::1::role/x", "*",
])
def test_the_engine_reads_resource_kinds_as_the_rule_defines_them(resource):
    from iam_evaluator.service_rules import resource_kind

    compiled = CompiledPolicySet(PolicySet())
    batch = compiled._convert([ALICE], ["sts:AssumeRole"], [resource], resource_accounts=[A])
    assert not batch.errors and batch.rules(0)[1] == resource_kind(resource)
