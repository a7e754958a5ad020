"""The gRPC service in this process, on loopback: every RPC answers as the reference evaluator decides, bad input
gets a precise status and changes nothing, credentials are enforced, a store update under load loses nothing,
shutdown drains, TLS and mutual TLS, deadlines. Expected decisions come from ``evaluator.reference``."""
from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from iam_evaluator import reference
from iam_evaluator.decision import DecisionKind
from iam_evaluator.parse import PolicyKind as DocumentKind
from iam_evaluator.parse import parse_policy
from iam_evaluator.request import PolicySet, Request
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.api import iam_evaluator_pb2_grpc as pb_grpc
from iam_evaluator.server.client import Client, request_columns
from iam_evaluator.store import PolicyStore

from .service_helpers import (
    ACCOUNT,
    ALICE,
    DECISIONS,
    EXAMPLE_STORE,
    FULL_ACCESS,
    IMAGE,
    INSTANCE_SESSION,
    LOG_OBJECT,
    ROLE,
    RPC_TIMEOUT,
    UNKNOWN,
    LockstepStream,
    copy_store,
    document,
    expected_decision,
    health_status,
    make_certificates,
    outcome,
    refuses_new_calls,
    result_outcome,
    result_refs,
    rpc_error,
    running_service,
    sample_requests,
    statement_refs,
    wait_until,
)

ADMIN_TOKEN = "admin-secret-for-tests"
CHECK_TOKEN = "check-secret-for-tests"
ADMIN_METADATA = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
SERVICES = ("iam_evaluator.v1.Authorizer", "iam_evaluator.v1.PolicyAdmin")
US_EAST = {"aws:RequestedRegion": "us-east-1"}
AD_HOC = "arn:aws:iam::444455556666:role/AdHoc"  # in no store: inline policies alone decide for it
BUCKET = "arn:aws:s3:::ad-hoc-bucket"
NO_DELETES = {"Sid": "NoDeletes", "Effect": "Deny", "Action": "imagebuilder:Delete*", "Resource": "*"}


@pytest.fixture(scope="module")
def example_store() -> PolicyStore:
    return PolicyStore.from_directory(EXAMPLE_STORE)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that only read."""
    root = tmp_path_factory.mktemp("shared")
    with running_service(copy_store(root), root / "state", admin_token=ADMIN_TOKEN, metrics=True) as service:
        yield service


@pytest.fixture(scope="module")
def client(shared):
    with Client(f"127.0.0.1:{shared.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        yield connected


def check_request(item: dict[str, Any], explain: bool = False) -> pb.CheckRequest:
    return pb.CheckRequest(principal=item["principal"], action=item["action"], resource=item["resource"],
                           context={key: pb.ContextValues(values=[value])
                                    for key, value in (item.get("context") or {}).items()},
                           explain=explain)


def assert_explained(result: pb.CheckResult, expected) -> None:
    """The result says what the reference decision says, with the same explanation."""
    assert result_outcome(result) == outcome(expected)
    assert result.decided_by == expected.decided_by
    assert result_refs(result) == statement_refs(expected)
    assert list(result.missing_keys) == list(expected.missing_keys)


# ---------------------------------------------------------------- Check


CHECK_CASES = {  # obvious from the example store's policies; the reference evaluator must agree
    "allow": ({"principal": ROLE, "action": "imagebuilder:CreateImage", "resource": IMAGE, "context": US_EAST},
              pb.ALLOW, "identity"),
    "scp-denies-region": ({"principal": ROLE, "action": "imagebuilder:CreateImage", "resource": IMAGE,
                           "context": {"aws:RequestedRegion": "ap-south-1"}}, pb.EXPLICIT_DENY, "scp[0]"),
    "boundary": ({"principal": ALICE, "action": "imagebuilder:CreateImage", "resource": IMAGE, "context": US_EAST},
                 pb.IMPLICIT_DENY, "permissions_boundary"),
    "within-boundary": ({"principal": ALICE, "action": "imagebuilder:GetImage", "resource": IMAGE,
                         "context": US_EAST}, pb.ALLOW, "identity"),
    "resource-denies-insecure": ({"principal": INSTANCE_SESSION, "action": "s3:PutObject", "resource": LOG_OBJECT,
                                  "context": {**US_EAST, "aws:SecureTransport": "false"}},
                                 pb.EXPLICIT_DENY, "resource"),
    "no-statement": ({"principal": ROLE, "action": "dynamodb:GetItem", "resource": "*", "context": US_EAST},
                     pb.IMPLICIT_DENY, "identity"),
    "unknown-principal": ({"principal": UNKNOWN, "action": "imagebuilder:GetImage", "resource": IMAGE,
                           "context": US_EAST}, pb.IMPLICIT_DENY, "principal"),
}


@pytest.mark.parametrize("case", CHECK_CASES.values(), ids=CHECK_CASES.keys())
def test_check_decides_as_the_reference_with_its_explanation(client, example_store, case):
    item, decision, decided_by = case
    expected = expected_decision(example_store, item)
    assert (DECISIONS[expected.decision], expected.decided_by) == (decision, decided_by), "the oracle disagrees"

    explained = client.call(client.authorizer.Check, check_request(item, explain=True))
    assert_explained(explained.result, expected)
    assert not explained.result.error
    if decision in (pb.ALLOW, pb.EXPLICIT_DENY):
        assert explained.result.statements, "an allow or an explicit deny names its statements"
    if decided_by == "principal":
        assert item["principal"] in explained.result.reason
    assert explained.store_version == client.call(client.admin.GetStoreVersion, pb.GetStoreVersionRequest()).version

    bare = client.call(client.authorizer.Check, check_request(item))
    assert bare.result == pb.CheckResult(decision=decision), "without explain, only the decision"
    assert bare.store_version == explained.store_version


def test_check_names_the_missing_key(client, example_store):
    item = {"principal": ROLE, "action": "imagebuilder:CreateImage", "resource": IMAGE}
    expected = expected_decision(example_store, item)
    assert expected.missing_keys == ("aws:RequestedRegion",)
    assert_explained(client.call(client.authorizer.Check, check_request(item, explain=True)).result, expected)


INLINE_CASES = {
    "identity-allows": (dict(identity=[document({"Effect": "Allow", "Action": "s3:GetObject",
                                                  "Resource": f"{BUCKET}/*"})]), pb.ALLOW),
    "nothing-applies": (dict(identity=[document({"Effect": "Allow", "Action": "s3:PutObject",
                                                  "Resource": f"{BUCKET}/*"})]), pb.IMPLICIT_DENY),
    "scp-level-denies": (dict(identity=[document({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})],
                              scp=[pb.PolicyLevel(documents=[document({"Effect": "Allow", "Action": "*",
                                                                       "Resource": "*"})]),
                                   pb.PolicyLevel(documents=[document({"Effect": "Deny", "Action": "s3:Get*",
                                                                       "Resource": "*"})])]), pb.EXPLICIT_DENY),
    "boundary-limits": (dict(identity=[document({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})],
                             permissions_boundary=[document({"Effect": "Allow", "Action": "s3:List*",
                                                             "Resource": "*"})]), pb.IMPLICIT_DENY),
    "resource-policy-allows": (dict(resource=document({"Effect": "Allow", "Principal": {"AWS": AD_HOC},
                                                       "Action": "s3:GetObject", "Resource": f"{BUCKET}/*"})),
                               pb.ALLOW),
}


def reference_policy_set(policies: pb.InlinePolicies) -> PolicySet:
    """The inline policies for the reference evaluator, named as explanations name them: layer[i]."""
    def parse(texts, layer: str):
        return tuple(parse_policy(text, name=f"{layer}[{i}]") for i, text in enumerate(texts))

    return PolicySet(identity=parse(policies.identity, "identity"),
                     resource=parse_policy(policies.resource, kind=DocumentKind.RESOURCE, name="resource")
                     if policies.resource else None,
                     permissions_boundary=parse(policies.permissions_boundary, "permissions_boundary") or None,
                     session=parse(policies.session, "session") or None,
                     scp=tuple(parse(level.documents, f"scp[{i}]") for i, level in enumerate(policies.scp)) or None)


@pytest.mark.parametrize("case", INLINE_CASES.values(), ids=INLINE_CASES.keys())
def test_check_with_inline_policies_simulates_without_the_store(client, case):
    layers, decision = case
    policies = pb.InlinePolicies(**layers)
    expected = reference.evaluate(reference_policy_set(policies), Request.create(AD_HOC, "s3:GetObject",
                                                                                 f"{BUCKET}/key"))
    assert DECISIONS[expected.decision] == decision, "the oracle disagrees"
    request = pb.CheckRequest(principal=AD_HOC, action="s3:GetObject", resource=f"{BUCKET}/key", explain=True,
                              policies=policies)
    response = client.call(client.authorizer.Check, request)
    assert response.store_version == 0, "inline policies decided, not a store version"
    assert_explained(response.result, expected)

    batch = client.call(client.authorizer.CheckBatch, pb.CheckBatchRequest(
        requests=[pb.CheckRequest(principal=AD_HOC, action="s3:GetObject", resource=f"{BUCKET}/key")] * 3,
        policies=policies))
    assert batch.store_version == 0
    assert [r.decision for r in batch.results] == [decision] * 3


# ---------------------------------------------------------------- CheckBatch and CheckStream


MALFORMED = [{"principal": "not-an-arn", "action": "s3:GetObject", "resource": "*"},
             {"principal": ROLE, "action": "no-colon", "resource": "*"},
             {"principal": ROLE, "action": "s3:GetObject", "resource": "bucket-without-arn"}]


def batch_items() -> list[dict[str, Any]]:
    """The sample requests, with malformed ones in between, in an order where neighbours differ."""
    items = sample_requests()
    for i, bad in enumerate(MALFORMED):
        items.insert(7 + 20 * i, bad)
    return items[::-1] + items[:5]


@pytest.mark.parametrize("form", ["requests", "columns"])
@pytest.mark.parametrize("explain", [False, True], ids=["bare", "explained"])
def test_check_batch_answers_every_request_in_order(client, example_store, form, explain):
    items = batch_items()
    expected = [expected_decision(example_store, item) for item in items]
    assert len({outcome(e) for e in expected}) == 4, "the batch covers allow, both denies and errors"
    if form == "requests":
        request = pb.CheckBatchRequest(requests=[check_request(item) for item in items], explain=explain, batch_id=7)
    else:
        request = pb.CheckBatchRequest(columns=request_columns(items), explain=explain, batch_id=7)
    response = client.call(client.authorizer.CheckBatch, request)
    assert response.batch_id == 7
    assert response.store_version == 1
    assert len(response.results) == len(items)
    for item, result, decision in zip(items, response.results, expected, strict=True):
        assert result_outcome(result) == outcome(decision), item
        if decision.error:
            assert result.decision == pb.IMPLICIT_DENY and result.error == decision.error
        if explain:
            assert_explained(result, decision)
        else:
            assert not result.decided_by and not result.statements


def test_check_batch_columns_carry_lists_and_absent_keys(client, example_store):
    tagged = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
              "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["team", "cost"]}}}
    items = [{"principal": AD_HOC, "action": "s3:GetObject", "resource": "*", "context": context}
             for context in ({"aws:TagKeys": ["team"]}, {"aws:TagKeys": ["team", "owner"]}, None,
                             {"aws:TagKeys": []}, {"aws:TagKeys": ["cost", "team"]})]
    policies = pb.InlinePolicies(identity=[document(tagged)])
    policy_set = reference_policy_set(policies)
    expected = [DECISIONS[reference.evaluate(policy_set, Request.create(AD_HOC, "s3:GetObject", "*",
                                                                         item["context"])).decision]
                for item in items]
    assert pb.ALLOW in expected and pb.IMPLICIT_DENY in expected
    response = client.call(client.authorizer.CheckBatch, pb.CheckBatchRequest(columns=request_columns(items),
                                                                              policies=policies))
    assert [r.decision for r in response.results] == expected


def test_check_stream_answers_each_batch_and_survives_a_bad_one(client, example_store):
    items = sample_requests()
    expected = [outcome(expected_decision(example_store, item)) for item in items]
    batches = {
        1: (pb.CheckBatchRequest(batch_id=1, columns=request_columns(items)), expected),
        2: (pb.CheckBatchRequest(batch_id=2), "the batch holds no requests"),
        3: (pb.CheckBatchRequest(batch_id=3, requests=[check_request(item) for item in items[:10]]), expected[:10]),
        4: (pb.CheckBatchRequest(batch_id=4, columns=pb.RequestColumns(principals=[ROLE, ALICE],
                                                                       actions=["s3:GetObject"], resources=["*", "*"])),
            "columns differ in length"),
        5: (pb.CheckBatchRequest(batch_id=5, columns=request_columns(items[:1]),
                                 requests=[check_request(items[0])]), "either as requests or as columns"),
        6: (pb.CheckBatchRequest(batch_id=6, columns=request_columns(items[::-1])), expected[::-1]),
    }
    stream = LockstepStream(client.authorizer.CheckStream, metadata=ADMIN_METADATA)
    for batch_id, (request, want) in batches.items():
        response = stream.send(request)
        assert response.batch_id == batch_id
        if isinstance(want, str):
            assert want in response.error and not response.results
        else:
            assert not response.error and response.store_version == 1
            assert [result_outcome(r) for r in response.results] == want
    assert stream.close() == grpc.StatusCode.OK


def test_check_stream_refuses_an_oversized_batch_and_goes_on(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state", max_batch=3) as service, \
            Client(f"127.0.0.1:{service.port}", timeout=RPC_TIMEOUT) as small:
        stream = LockstepStream(small.authorizer.CheckStream)
        items = sample_requests()
        refused = stream.send(pb.CheckBatchRequest(batch_id=1, columns=request_columns(items[:4])))
        assert refused.batch_id == 1 and "max_batch (3)" in refused.error and not refused.results
        answered = stream.send(pb.CheckBatchRequest(batch_id=2, columns=request_columns(items[:3])))
        assert answered.batch_id == 2 and not answered.error and len(answered.results) == 3
        assert stream.close() == grpc.StatusCode.OK


# ---------------------------------------------------------------- PolicyAdmin


def test_validate_policy_reports_findings_with_pointers(client):
    valid = client.call(client.admin.ValidatePolicy, pb.ValidatePolicyRequest(
        document=document({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}), kind=pb.MANAGED))
    assert valid.valid and not [f for f in valid.findings if f.severity == "error"]

    broken = client.call(client.admin.ValidatePolicy, pb.ValidatePolicyRequest(
        document=document({"Effect": 1, "Action": "s3:GetObject", "Resource": "*"},
                          {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}),
        kind=pb.MANAGED))
    assert not broken.valid
    found = {(f.code, f.pointer, f.severity) for f in broken.findings}
    assert ("E010", "/Statement/0/Effect", "error") in found
    assert ("E018", "/Statement/1/Principal", "error") in found
    assert all(f.message for f in broken.findings)

    resource_kind = client.call(client.admin.ValidatePolicy, pb.ValidatePolicyRequest(
        document=document({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}), kind=pb.RESOURCE))
    assert not resource_kind.valid, "a resource policy must name its principals"

    not_json = client.call(client.admin.ValidatePolicy, pb.ValidatePolicyRequest(document="{", kind=pb.SCP))
    assert not not_json.valid and not_json.findings[0].severity == "error"


def test_validate_policy_checks_names_against_the_shipped_catalog(client):
    typo = client.call(client.admin.ValidatePolicy, pb.ValidatePolicyRequest(
        document=document({"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "arn:aws:s3:::reports/*"}),
        kind=pb.MANAGED))
    assert typo.valid, "IAM accepts an action it does not know: a warning"
    assert [(f.code, f.pointer, f.severity) for f in typo.findings] == [("W003", "/Statement/0/Action", "warning")]
    assert typo.findings[0].message.endswith("did you mean s3:GetObject?")


def policy_names(listed: pb.ListPoliciesResponse) -> set[tuple[int, str]]:
    return {(name.kind, name.name) for name in listed.policies}


POLICY_NAMES = {
    pb.MANAGED: (f"arn:aws:iam::{ACCOUNT}:policy/TestManaged", False),
    pb.SCP: ("TestSCP", False),
    pb.RCP: ("TestRCP", True),
    pb.RESOURCE: ("arn:aws:s3:::test-bucket", True),
}


def test_policy_admin_puts_gets_lists_and_deletes_every_kind(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as admin_client:
        admin = admin_client.admin

        def call(method, request):
            return admin_client.call(method, request)

        initial = call(admin.ListPolicies, pb.ListPoliciesRequest())
        version = call(admin.GetStoreVersion, pb.GetStoreVersionRequest()).version
        assert version == 1 and initial.store_version == 1
        for kind, (name, names_principal) in POLICY_NAMES.items():
            statement = {"Sid": "Put", "Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "*"}
            if names_principal:
                statement["Principal"] = "*"
            text = document(statement)
            change = call(admin.PutPolicy, pb.PutPolicyRequest(policy=pb.StoredPolicy(kind=kind, name=name,
                                                                                      document=text),
                                                               expected_version=version))
            assert change.version == version + 1
            version = change.version
            stored = call(admin.GetPolicy, pb.PolicyName(kind=kind, name=name))
            assert (stored.kind, stored.name, json.loads(stored.document)) == (kind, name, json.loads(text))
            listed = call(admin.ListPolicies, pb.ListPoliciesRequest(kind=kind))
            assert pb.PolicyName(kind=kind, name=name) in listed.policies
            assert {p.kind for p in listed.policies} == {kind} and listed.store_version == version
            current = call(admin.GetStoreVersion, pb.GetStoreVersionRequest())
            assert current.version == version and pb.PolicyKind.Name(kind).lower() in current.description
            assert name in current.description
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", current.created)
        every = call(admin.ListPolicies, pb.ListPoliciesRequest())
        assert policy_names(every) == policy_names(initial) | {(k, n) for k, (n, _) in POLICY_NAMES.items()}
        for kind, (name, _) in POLICY_NAMES.items():
            change = call(admin.DeletePolicy, pb.DeletePolicyRequest(policy=pb.PolicyName(kind=kind, name=name)))
            assert change.version == version + 1
            version = change.version
            assert rpc_error(lambda kind=kind, name=name: call(admin.GetPolicy, pb.PolicyName(
                kind=kind, name=name))).code() == grpc.StatusCode.NOT_FOUND
        assert policy_names(call(admin.ListPolicies, pb.ListPoliciesRequest())) == policy_names(initial)

        history = call(admin.ListStoreVersions, pb.ListStoreVersionsRequest())
        assert [v.version for v in history.versions] == list(range(1, version + 1)) and history.current == version
        assert history.versions[-1].description == "delete resource policy arn:aws:s3:::test-bucket"


def test_principal_admin_and_rollback_change_what_check_decides(tmp_path, example_store):
    newcomer = f"arn:aws:iam::{ACCOUNT}:role/Newcomer"
    item = {"principal": newcomer, "action": "imagebuilder:GetImage", "resource": IMAGE, "context": US_EAST}
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as admin_client:
        admin, check = admin_client.admin, admin_client.authorizer

        def call(method, request):
            return admin_client.call(method, request)

        before = call(check.Check, check_request(item, explain=True))
        assert (before.result.decision, before.result.decided_by) == (pb.IMPLICIT_DENY, "principal")

        principal = pb.Principal(arn=newcomer, managed_policies=[FULL_ACCESS], tags={"team": "imaging"},
                                 inline_policies={"NoDeletes": document(NO_DELETES)})
        put = call(admin.PutPrincipal, pb.PutPrincipalRequest(principal=principal, expected_version=1))
        assert put.version == 2
        stored = call(admin.GetPrincipal, pb.PrincipalName(arn=newcomer))
        assert (stored.arn, list(stored.managed_policies), dict(stored.tags)) == (newcomer, [FULL_ACCESS],
                                                                                 {"team": "imaging"})
        assert json.loads(stored.inline_policies["NoDeletes"]) == json.loads(document(NO_DELETES))
        listed = call(admin.ListPrincipals, pb.ListPrincipalsRequest())
        assert newcomer in listed.arns and listed.store_version == 2
        assert set(listed.arns) == set(example_store.principals) | {newcomer}

        snapshot = json.loads(example_store.to_json())
        snapshot["principals"].append({"arn": newcomer, "managed_policies": [FULL_ACCESS], "tags": {"team": "imaging"},
                                       "inline_policies": {"NoDeletes": json.loads(document(NO_DELETES))}})
        with_newcomer = PolicyStore.from_json(json.dumps(snapshot))
        for action, decision in (("imagebuilder:GetImage", pb.ALLOW), ("imagebuilder:DeleteImage", pb.EXPLICIT_DENY)):
            asked = {**item, "action": action}
            expected = expected_decision(with_newcomer, asked)
            assert DECISIONS[expected.decision] == decision, "the oracle disagrees"
            response = call(check.Check, check_request(asked, explain=True))
            assert response.store_version == 2
            assert_explained(response.result, expected)

        deleted = call(admin.DeletePrincipal, pb.DeletePrincipalRequest(arn=newcomer, expected_version=2))
        assert deleted.version == 3
        assert rpc_error(lambda: call(admin.GetPrincipal, pb.PrincipalName(arn=newcomer))).code() == \
            grpc.StatusCode.NOT_FOUND
        after = call(check.Check, check_request(item, explain=True))
        assert (after.result.decision, after.result.decided_by, after.store_version) == (pb.IMPLICIT_DENY,
                                                                                         "principal", 3)

        rolled = call(admin.Rollback, pb.RollbackRequest(version=2, expected_version=3))
        assert rolled.version == 4
        assert call(admin.GetStoreVersion, pb.GetStoreVersionRequest()).description == "rollback to 2"
        assert call(admin.GetPrincipal, pb.PrincipalName(arn=newcomer)) == stored
        again = call(check.Check, check_request(item))
        assert (again.result.decision, again.store_version) == (pb.ALLOW, 4)
        history = call(admin.ListStoreVersions, pb.ListStoreVersionsRequest())
        assert [v.version for v in history.versions] == [1, 2, 3, 4] and history.current == 4


# ---------------------------------------------------------------- bad input changes nothing


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server for bad input: small limits, so that exceeding them is cheap."""
    root = tmp_path_factory.mktemp("guarded")
    with running_service(copy_store(root), root / "state", admin_token=ADMIN_TOKEN, max_batch=50,
                         max_message_bytes=1024 * 1024) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        yield service, connected


def store_state(connected: Client, state_dir: Path) -> dict[str, Any]:
    """Everything the admin API and the state directory show of the store."""
    admin = connected.admin
    history = connected.call(admin.ListStoreVersions, pb.ListStoreVersionsRequest())
    names = connected.call(admin.ListPolicies, pb.ListPoliciesRequest()).policies
    arns = connected.call(admin.ListPrincipals, pb.ListPrincipalsRequest()).arns
    return {
        "version": connected.call(admin.GetStoreVersion, pb.GetStoreVersionRequest()),
        "history": list(history.versions), "current": history.current,
        "policies": {(n.kind, n.name): connected.call(admin.GetPolicy, n).document for n in names},
        "principals": {arn: connected.call(admin.GetPrincipal, pb.PrincipalName(arn=arn)) for arn in arns},
        "files": {path.name: path.read_bytes() for path in sorted(state_dir.iterdir())},
    }


def put_policy(kind: int, name: str, text: str, expected_version: int = 0) -> pb.PutPolicyRequest:
    return pb.PutPolicyRequest(policy=pb.StoredPolicy(kind=kind, name=name, document=text),
                               expected_version=expected_version)


MANAGED_NAME = f"arn:aws:iam::{ACCOUNT}:policy/New"
GOOD_DOCUMENT = document({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"})


def raw_call(connected: Client, method: str, payload: bytes, metadata: tuple = ADMIN_METADATA):
    """Send bytes as they are, with no serialiser, to a method."""
    return connected.channel.unary_unary(method)(payload, timeout=RPC_TIMEOUT, metadata=metadata)


def _admin(method: str, request) -> Callable[[Client], Any]:
    return lambda connected: connected.call(getattr(connected.admin, method), request)


def _check(method: str, request) -> Callable[[Client], Any]:
    return lambda connected: connected.call(getattr(connected.authorizer, method), request)


BAD_INPUT = {
    "policy-malformed": (_admin("PutPolicy", put_policy(pb.MANAGED, MANAGED_NAME, document(
        {"Effect": 1, "Action": "s3:GetObject", "Resource": "*"}))), grpc.StatusCode.INVALID_ARGUMENT, "E010"),
    "policy-not-json": (_admin("PutPolicy", put_policy(pb.MANAGED, MANAGED_NAME, "{'Version': ")),
                        grpc.StatusCode.INVALID_ARGUMENT, "E001"),
    "policy-principal-in-identity-policy": (_admin("PutPolicy", put_policy(pb.SCP, "NewSCP", document(
        {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"}))),
        grpc.StatusCode.INVALID_ARGUMENT, "E018"),
    "policy-name-not-an-arn": (_admin("PutPolicy", put_policy(pb.MANAGED, "New", GOOD_DOCUMENT)),
                               grpc.StatusCode.INVALID_ARGUMENT, "managed policy ARN"),
    "policy-without-name": (_admin("PutPolicy", put_policy(pb.SCP, "", GOOD_DOCUMENT)),
                            grpc.StatusCode.INVALID_ARGUMENT, "needs a name"),
    "policy-kind-unspecified": (_admin("PutPolicy", put_policy(pb.POLICY_KIND_UNSPECIFIED, "X", GOOD_DOCUMENT)),
                                grpc.StatusCode.INVALID_ARGUMENT, "POLICY_KIND_UNSPECIFIED"),
    "get-kind-unspecified": (_admin("GetPolicy", pb.PolicyName(name=FULL_ACCESS)),
                             grpc.StatusCode.INVALID_ARGUMENT, "policy kind"),
    "delete-kind-unspecified": (_admin("DeletePolicy", pb.DeletePolicyRequest(policy=pb.PolicyName(
        name=FULL_ACCESS))), grpc.StatusCode.INVALID_ARGUMENT, "policy kind"),
    "list-kind-unknown": (_admin("ListPolicies", pb.ListPoliciesRequest(kind=42)),
                          grpc.StatusCode.INVALID_ARGUMENT, "policy kind"),
    "policy-stale-version": (_admin("PutPolicy", put_policy(pb.MANAGED, MANAGED_NAME, GOOD_DOCUMENT, 99)),
                             grpc.StatusCode.ABORTED, "expected version 99"),
    "delete-attached-managed": (_admin("DeletePolicy", pb.DeletePolicyRequest(policy=pb.PolicyName(
        kind=pb.MANAGED, name=FULL_ACCESS))), grpc.StatusCode.FAILED_PRECONDITION, "S002"),
    "delete-attached-scp": (_admin("DeletePolicy", pb.DeletePolicyRequest(policy=pb.PolicyName(
        kind=pb.SCP, name="FullAWSAccess"))), grpc.StatusCode.FAILED_PRECONDITION, "S002"),
    "delete-unknown-policy": (_admin("DeletePolicy", pb.DeletePolicyRequest(policy=pb.PolicyName(
        kind=pb.SCP, name="NoSuchSCP"))), grpc.StatusCode.NOT_FOUND, "NoSuchSCP"),
    "get-unknown-policy": (_admin("GetPolicy", pb.PolicyName(kind=pb.RESOURCE, name="arn:aws:s3:::nothing")),
                           grpc.StatusCode.NOT_FOUND, "arn:aws:s3:::nothing"),
    "principal-unknown-managed-policy": (_admin("PutPrincipal", pb.PutPrincipalRequest(principal=pb.Principal(
        arn=f"arn:aws:iam::{ACCOUNT}:role/New", managed_policies=[f"arn:aws:iam::{ACCOUNT}:policy/Missing"]))),
        grpc.StatusCode.FAILED_PRECONDITION, "S002"),
    "principal-unknown-boundary": (_admin("PutPrincipal", pb.PutPrincipalRequest(principal=pb.Principal(
        arn=f"arn:aws:iam::{ACCOUNT}:role/New", permissions_boundary=f"arn:aws:iam::{ACCOUNT}:policy/Missing"))),
        grpc.StatusCode.FAILED_PRECONDITION, "S002"),
    "principal-inline-effect-number": (_admin("PutPrincipal", pb.PutPrincipalRequest(principal=pb.Principal(
        arn=f"arn:aws:iam::{ACCOUNT}:role/New", inline_policies={"Bad": document(
            {"Effect": 0, "Action": "s3:*", "Resource": "*"})}))), grpc.StatusCode.INVALID_ARGUMENT, "E010"),
    "principal-inline-not-json": (_admin("PutPrincipal", pb.PutPrincipalRequest(principal=pb.Principal(
        arn=f"arn:aws:iam::{ACCOUNT}:role/New", inline_policies={"Bad": "nope"}))),
        grpc.StatusCode.INVALID_ARGUMENT, "E001"),
    "principal-not-an-arn": (_admin("PutPrincipal", pb.PutPrincipalRequest(principal=pb.Principal(arn="bob"))),
                             grpc.StatusCode.INVALID_ARGUMENT, "bob"),
    "principal-stale-version": (_admin("DeletePrincipal", pb.DeletePrincipalRequest(arn=ALICE,
                                                                                     expected_version=7)),
                                grpc.StatusCode.ABORTED, "expected version 7"),
    "delete-unknown-principal": (_admin("DeletePrincipal", pb.DeletePrincipalRequest(arn=UNKNOWN)),
                                 grpc.StatusCode.NOT_FOUND, UNKNOWN),
    "get-unknown-principal": (_admin("GetPrincipal", pb.PrincipalName(arn=UNKNOWN)),
                              grpc.StatusCode.NOT_FOUND, UNKNOWN),
    "rollback-unknown-version": (_admin("Rollback", pb.RollbackRequest(version=42)),
                                 grpc.StatusCode.NOT_FOUND, "no version 42"),
    "rollback-stale-version": (_admin("Rollback", pb.RollbackRequest(version=1, expected_version=5)),
                               grpc.StatusCode.ABORTED, "expected version 5"),
    "admin-garbage-bytes": (lambda c: raw_call(c, "/iam_evaluator.v1.PolicyAdmin/PutPolicy", b"\xff\xff\xff\xff"),
                            grpc.StatusCode.INVALID_ARGUMENT, "not a valid PutPolicyRequest"),
    "check-principal-not-an-arn": (_check("Check", pb.CheckRequest(principal="alice", action="s3:GetObject",
                                                                   resource="*")),
                                   grpc.StatusCode.INVALID_ARGUMENT, "'alice'"),
    "check-action-malformed": (_check("Check", pb.CheckRequest(principal=ROLE, action="GetObject", resource="*")),
                               grpc.StatusCode.INVALID_ARGUMENT, "service:Action"),
    "check-resource-malformed": (_check("Check", pb.CheckRequest(principal=ROLE, action="s3:GetObject",
                                                                 resource="bucket")),
                                 grpc.StatusCode.INVALID_ARGUMENT, "neither an ARN"),
    "check-inline-policy-malformed": (_check("Check", pb.CheckRequest(
        principal=ROLE, action="s3:GetObject", resource="*",
        policies=pb.InlinePolicies(identity=[document({"Effect": "Maybe", "Action": "s3:*", "Resource": "*"})]))),
        grpc.StatusCode.INVALID_ARGUMENT, "E010"),
    "check-garbage-bytes": (lambda c: raw_call(c, "/iam_evaluator.v1.Authorizer/Check", b"\x0a\xff\xff"),
                            grpc.StatusCode.INVALID_ARGUMENT, "not a valid CheckRequest"),
    "batch-garbage-bytes": (lambda c: raw_call(c, "/iam_evaluator.v1.Authorizer/CheckBatch", b"\xff" * 16),
                            grpc.StatusCode.INVALID_ARGUMENT, "not a valid CheckBatchRequest"),
    "batch-empty": (_check("CheckBatch", pb.CheckBatchRequest()), grpc.StatusCode.INVALID_ARGUMENT, "no requests"),
    "batch-empty-columns": (_check("CheckBatch", pb.CheckBatchRequest(columns=pb.RequestColumns())),
                            grpc.StatusCode.INVALID_ARGUMENT, "no requests"),
    "batch-over-max-batch": (_check("CheckBatch", pb.CheckBatchRequest(columns=request_columns(
        sample_requests()[:51]))), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_batch (50)"),
    "batch-over-max-message-bytes": (_check("CheckBatch", pb.CheckBatchRequest(requests=[pb.CheckRequest(
        principal=ROLE + "x" * (1024 * 1024 + 1), action="s3:GetObject", resource="*")])),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    "batch-columns-differ": (_check("CheckBatch", pb.CheckBatchRequest(columns=pb.RequestColumns(
        principals=[ROLE, ALICE], actions=["s3:GetObject", "s3:GetObject"], resources=["*"]))),
        grpc.StatusCode.INVALID_ARGUMENT, "columns differ in length"),
    "batch-context-column-short": (_check("CheckBatch", pb.CheckBatchRequest(columns=pb.RequestColumns(
        principals=[ROLE, ALICE], actions=["s3:GetObject"] * 2, resources=["*"] * 2,
        context=[pb.ContextColumn(key="aws:RequestedRegion", values=["us-east-1"])]))),
        grpc.StatusCode.INVALID_ARGUMENT, "aws:RequestedRegion"),
    "batch-both-forms": (_check("CheckBatch", pb.CheckBatchRequest(
        requests=[pb.CheckRequest(principal=ROLE, action="s3:GetObject", resource="*")],
        columns=pb.RequestColumns(principals=[ROLE], actions=["s3:GetObject"], resources=["*"]))),
        grpc.StatusCode.INVALID_ARGUMENT, "not both"),
    "batch-item-with-policies": (_check("CheckBatch", pb.CheckBatchRequest(requests=[pb.CheckRequest(
        principal=ROLE, action="s3:GetObject", resource="*", policies=pb.InlinePolicies(identity=[GOOD_DOCUMENT]))])),
        grpc.StatusCode.INVALID_ARGUMENT, "inline policies go on the batch"),
}


@pytest.mark.parametrize("case", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_gets_a_precise_status_and_changes_nothing(guarded, example_store, case):
    service, connected = guarded
    make_call, code, fragment = case
    before = store_state(connected, service.config.versions_dir)
    error = rpc_error(lambda: make_call(connected))
    assert error.code() == code, error.details()
    assert fragment in error.details()
    assert store_state(connected, service.config.versions_dir) == before
    item = CHECK_CASES["allow"][0]
    still = connected.call(connected.authorizer.Check, check_request(item))
    assert (still.result.decision, still.store_version) == (pb.ALLOW, before["version"].version)


# ---------------------------------------------------------------- credentials


def test_tokens_guard_each_api(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN,
                         check_token=CHECK_TOKEN) as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        admin, authorizer = pb_grpc.PolicyAdminStub(channel), pb_grpc.AuthorizerStub(channel)
        check = check_request(CHECK_CASES["allow"][0])
        put = put_policy(pb.SCP, "NewSCP", GOOD_DOCUMENT)

        def bearer(token):
            return (("authorization", f"Bearer {token}"),)

        def version():
            return admin.GetStoreVersion(pb.GetStoreVersionRequest(), timeout=RPC_TIMEOUT,
                                         metadata=bearer(ADMIN_TOKEN)).version

        for metadata, wanted in (((), "needs a credential"), (bearer("wrong"), "not valid"),
                                 (bearer(CHECK_TOKEN), "not valid"), ((("authorization", ADMIN_TOKEN),),
                                                                      "needs a credential")):
            for call in (lambda m=metadata: admin.PutPolicy(put, timeout=RPC_TIMEOUT, metadata=m),
                         lambda m=metadata: admin.ListPrincipals(pb.ListPrincipalsRequest(), timeout=RPC_TIMEOUT,
                                                                 metadata=m)):
                error = rpc_error(call)
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED and wanted in error.details()
        assert version() == 1, "a refused change changed nothing"

        for metadata in ((), bearer("wrong"), bearer(ADMIN_TOKEN)):
            error = rpc_error(lambda m=metadata: authorizer.Check(check, timeout=RPC_TIMEOUT, metadata=m))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        stream_error = rpc_error(lambda: list(authorizer.CheckStream(iter([pb.CheckBatchRequest(
            requests=[check])]), timeout=RPC_TIMEOUT)))
        assert stream_error.code() == grpc.StatusCode.UNAUTHENTICATED
        allowed = authorizer.Check(check, timeout=RPC_TIMEOUT, metadata=bearer(CHECK_TOKEN))
        assert allowed.result.decision == pb.ALLOW
        assert admin.PutPolicy(put, timeout=RPC_TIMEOUT, metadata=bearer(ADMIN_TOKEN)).version == 2
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING, "health needs no credential"


def test_without_an_admin_token_the_admin_api_is_disabled(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state") as service, \
            Client(f"127.0.0.1:{service.port}", token="anything", timeout=RPC_TIMEOUT) as connected:
        for method, request in (("GetStoreVersion", pb.GetStoreVersionRequest()),
                                ("PutPolicy", put_policy(pb.SCP, "NewSCP", GOOD_DOCUMENT))):
            error = rpc_error(lambda m=method, r=request: connected.call(getattr(connected.admin, m), r))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "admin_token" in error.details()
        assert service.live.current.version.number == 1
        response = connected.call(connected.authorizer.Check, check_request(CHECK_CASES["allow"][0]))
        assert response.result.decision == pb.ALLOW, "with no check_token, any caller may check"


# ---------------------------------------------------------------- health, reflection, metrics


def test_health_says_serving_only_once_the_store_is_loaded(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN, load=False) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        for name in ("", *SERVICES):
            assert health_status(connected.channel, name) == health_pb2.HealthCheckResponse.NOT_SERVING
        for call in (lambda: connected.call(connected.authorizer.Check, check_request(CHECK_CASES["allow"][0])),
                     lambda: connected.call(connected.admin.GetStoreVersion, pb.GetStoreVersionRequest())):
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE and "loading" in error.details()
        service.load()
        for name in ("", *SERVICES):
            assert health_status(connected.channel, name) == health_pb2.HealthCheckResponse.SERVING
        response = connected.call(connected.authorizer.Check, check_request(CHECK_CASES["allow"][0]))
        assert (response.result.decision, response.store_version) == (pb.ALLOW, 1)


def test_reflection_lists_the_services(client):
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="iam_evaluator.v1.Authorizer")]
    listed, described = stub.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT)
    names = {service.name for service in listed.list_services_response.service}
    assert names == {*SERVICES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert described.file_descriptor_response.file_descriptor_proto, "the contract itself is served"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=RPC_TIMEOUT) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_decisions_latency_batches_and_the_store(tmp_path, example_store):
    items = batch_items()
    counts = {"Allow": 0, "ExplicitDeny": 0, "ImplicitDeny": 0}
    errors = 0
    for item in items + items[:3]:  # the two batches sent below
        decision = expected_decision(example_store, item)
        counts[str(decision.decision)] += 1
        errors += decision.error is not None
    single = [CHECK_CASES[name][0] for name in ("allow", "allow", "scp-denies-region", "unknown-principal")]
    counts["Allow"] += 2
    counts["ExplicitDeny"] += 1
    counts["ImplicitDeny"] += 1
    check = "/iam_evaluator.v1.Authorizer/Check"
    batch = "/iam_evaluator.v1.Authorizer/CheckBatch"
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN,
                         metrics=True) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        for item in single:
            connected.call(connected.authorizer.Check, check_request(item))
        rpc_error(lambda: connected.call(connected.authorizer.Check, check_request(MALFORMED[0])))
        connected.call(connected.authorizer.CheckBatch, pb.CheckBatchRequest(columns=request_columns(items)))
        connected.call(connected.authorizer.CheckBatch, pb.CheckBatchRequest(columns=request_columns(items[:3])))
        metrics = scrape(service.metrics_port)
        for decision, count in counts.items():
            assert metrics["iam_eval_checks_total", (("decision", decision),)] == count, decision
        assert errors and metrics["iam_eval_check_errors_total", ()] == errors
        assert metrics["iam_eval_rpc_duration_seconds_count", (("method", check),)] == len(single) + 1
        assert metrics["iam_eval_rpc_duration_seconds_bucket", (("le", "+Inf"), ("method", check))] == len(single) + 1
        assert metrics["iam_eval_rpc_duration_seconds_count", (("method", batch),)] == 2
        assert metrics["iam_eval_rpc_errors_total", (("code", "INVALID_ARGUMENT"), ("method", check))] == 1
        assert metrics["iam_eval_batch_size_count", ()] == 2
        assert metrics["iam_eval_batch_size_sum", ()] == len(items) + 3
        assert metrics["iam_eval_batch_size_bucket", (("le", "10.0"),)] == 1
        assert metrics["iam_eval_store_version", ()] == 1
        assert metrics["iam_eval_store_compile_seconds", ()] > 0

        connected.call(connected.admin.PutPolicy, put_policy(pb.SCP, "NewSCP", GOOD_DOCUMENT))
        assert scrape(service.metrics_port)["iam_eval_store_version", ()] == 2


# ---------------------------------------------------------------- a store update under load


def test_a_store_update_under_batch_load_gives_each_batch_one_whole_version(tmp_path):
    store_dir = copy_store(tmp_path)
    old_store = PolicyStore.from_directory(store_dir)
    snapshot = json.loads(old_store.to_json())
    entry = next(e for e in snapshot["managed_policies"] if e["arn"] == FULL_ACCESS)
    entry["document"]["Statement"].append(NO_DELETES)
    new_document = json.dumps(entry["document"])
    new_store = PolicyStore.from_json(json.dumps(snapshot))
    items = sample_requests()
    expected = {content: [outcome(expected_decision(store, item)) for item in items]
                for content, store in (("old", old_store), ("new", new_store))}
    assert expected["old"] != expected["new"], "the update must change some decisions"

    by_columns = pb.CheckBatchRequest(columns=request_columns(items))
    by_requests = pb.CheckBatchRequest(requests=[check_request(item) for item in items])
    content_of = {1: "old"}  # version -> which store it serves
    responses: list[pb.CheckBatchResponse] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    with running_service(store_dir, tmp_path / "state", admin_token=ADMIN_TOKEN) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        def reporting(work):
            def run():
                try:
                    work()
                except BaseException as exc:  # noqa: B036 - the test thread reports it
                    failures.append(exc)
                    stop.set()
            return threading.Thread(target=run)

        def send(request):
            def work():
                while not stop.is_set():
                    responses.append(connected.call(connected.authorizer.CheckBatch, request))
            return work

        def stream():
            lockstep = LockstepStream(connected.authorizer.CheckStream, timeout=60, metadata=ADMIN_METADATA)
            for batch_id in itertools.count(1):
                if stop.is_set():
                    break
                response = lockstep.send(pb.CheckBatchRequest(batch_id=batch_id, columns=by_columns.columns))
                assert response.batch_id == batch_id and not response.error
                responses.append(response)
            assert lockstep.close() == grpc.StatusCode.OK

        def update():
            for turn in itertools.count():
                if stop.is_set():
                    return
                if turn % 2 == 0:
                    change = connected.call(connected.admin.PutPolicy, put_policy(pb.MANAGED, FULL_ACCESS,
                                                                                  new_document))
                    content_of[change.version] = "new"
                else:
                    change = connected.call(connected.admin.Rollback, pb.RollbackRequest(version=1))
                    content_of[change.version] = "old"
                time.sleep(0.01)

        threads = [reporting(send(by_columns)), reporting(send(by_requests)), reporting(stream), reporting(update)]
        for thread in threads:
            thread.start()
        stop.wait(3.0)
        stop.set()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
    assert not failures, failures
    assert len(content_of) > 4, "the store changed several times during the load"
    seen = set()
    for response in responses:
        content = content_of[response.store_version]
        seen.add(content)
        assert [result_outcome(r) for r in response.results] == expected[content], response.store_version
    assert seen == {"old", "new"}, "batches ran on both versions"


# ---------------------------------------------------------------- shutdown, deadlines


def test_stop_lets_an_in_flight_stream_finish_and_refuses_new_calls(tmp_path, example_store):
    items = sample_requests()
    expected = [outcome(expected_decision(example_store, item)) for item in items]
    with running_service(copy_store(tmp_path), tmp_path / "state") as service:
        target = f"127.0.0.1:{service.port}"
        with Client(target, timeout=RPC_TIMEOUT) as connected:
            stream = LockstepStream(connected.authorizer.CheckStream)
            first = stream.send(pb.CheckBatchRequest(batch_id=1, columns=request_columns(items)))
            assert [result_outcome(r) for r in first.results] == expected
            stopping = threading.Thread(target=service.stop, kwargs={"grace": 5})
            stopping.start()

            wait_until(lambda: refuses_new_calls(target), 10, "the stopping server to refuse new calls")
            assert stopping.is_alive(), "stop waits for the in-flight stream"
            second = stream.send(pb.CheckBatchRequest(batch_id=2, columns=request_columns(items[::-1])))
            assert second.batch_id == 2 and [result_outcome(r) for r in second.results] == expected[::-1]
            assert stream.close() == grpc.StatusCode.OK
            stopping.join(10)
            assert not stopping.is_alive()
            error = rpc_error(lambda: connected.check(ROLE, "s3:GetObject", "*"))
            assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_stop_lets_in_flight_batches_finish(tmp_path, example_store):
    items = sample_requests() * 70  # explained: a few hundred milliseconds of work each
    expected = [outcome(expected_decision(example_store, item)) for item in sample_requests()] * 70
    request = pb.CheckBatchRequest(columns=request_columns(items), explain=True)
    with running_service(copy_store(tmp_path), tmp_path / "state") as service:
        with Client(f"127.0.0.1:{service.port}", timeout=RPC_TIMEOUT) as connected:
            calls = [connected.authorizer.CheckBatch.future(request, timeout=60) for _ in range(3)]
            registry = service.metrics.registry
            wait_until(lambda: registry.get_sample_value("iam_eval_batch_size_count") == 3, 30,
                       "the server to start deciding the three batches")
            assert not all(call.done() for call in calls), "the batches must still run when stop is called"
            stopping = threading.Thread(target=service.stop, kwargs={"grace": 5})
            stopping.start()
            for call in calls:
                response = call.result(timeout=60)
                assert [result_outcome(r) for r in response.results] == expected
            stopping.join(10)
            assert not stopping.is_alive()
            assert rpc_error(lambda: connected.check(ROLE, "s3:GetObject", "*")).code() == \
                grpc.StatusCode.UNAVAILABLE


def test_a_passed_deadline_ends_the_call_and_the_server_goes_on(shared, client, caplog):
    caplog.set_level(logging.WARNING, logger="iam_eval")
    registry = shared.metrics.registry
    stream_method = {"method": "/iam_evaluator.v1.Authorizer/CheckStream"}
    streams_before = registry.get_sample_value("iam_eval_rpc_duration_seconds_count", stream_method) or 0
    big = pb.CheckBatchRequest(columns=request_columns(sample_requests() * 130), explain=True)
    for _ in range(3):
        error = rpc_error(lambda: client.authorizer.CheckBatch(big, timeout=1e-6, metadata=ADMIN_METADATA))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    release = threading.Event()

    def idle():  # a client that opens a stream and sends nothing until its deadline has passed
        release.wait(RPC_TIMEOUT)
        yield from ()

    error = rpc_error(lambda: list(client.authorizer.CheckStream(idle(), timeout=0.2, metadata=ADMIN_METADATA)))
    release.set()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: (registry.get_sample_value("iam_eval_rpc_duration_seconds_count", stream_method) or 0)
               > streams_before, 10, "the server to end the stream")

    response = client.call(client.authorizer.Check, check_request(CHECK_CASES["allow"][0]))
    assert response.result.decision == pb.ALLOW
    internal = [s for s in registry.collect() for s in s.samples
                if s.name == "iam_eval_rpc_errors_total" and s.labels.get("code") == "INTERNAL"]
    assert not internal, "a client's deadline is not a server error"
    assert not [r for r in caplog.records if r.name.startswith("iam_eval") and r.levelno >= logging.ERROR]


# ---------------------------------------------------------------- TLS


def test_tls_serves_tls_clients_only(tmp_path):
    certificates = make_certificates(tmp_path / "certs")
    with running_service(copy_store(tmp_path), tmp_path / "state", tls_cert=str(certificates.server_cert),
                         tls_key=str(certificates.server_key)) as service:
        target = f"127.0.0.1:{service.port}"
        with Client(target, tls_ca=str(certificates.ca), timeout=RPC_TIMEOUT) as secure:
            assert secure.check(ROLE, "imagebuilder:CreateImage", IMAGE, US_EAST).result.decision == pb.ALLOW
            assert health_status(secure.channel) == health_pb2.HealthCheckResponse.SERVING
        with Client(target, timeout=RPC_TIMEOUT) as plaintext:
            assert rpc_error(lambda: plaintext.check(ROLE, "s3:GetObject", "*")).code() == \
                grpc.StatusCode.UNAVAILABLE
        with Client(target, tls_ca=str(certificates.other_ca), timeout=RPC_TIMEOUT) as distrustful:
            assert rpc_error(lambda: distrustful.check(ROLE, "s3:GetObject", "*")).code() == \
                grpc.StatusCode.UNAVAILABLE, "a server certificate from an unknown CA is refused"


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path):
    certificates = make_certificates(tmp_path / "certs")
    with running_service(copy_store(tmp_path), tmp_path / "state", tls_cert=str(certificates.server_cert),
                         tls_key=str(certificates.server_key), tls_client_ca=str(certificates.ca)) as service:
        target = f"127.0.0.1:{service.port}"
        ca = str(certificates.ca)
        with Client(target, tls_ca=ca, tls_cert=str(certificates.client_cert), tls_key=str(certificates.client_key),
                    timeout=RPC_TIMEOUT) as trusted:
            assert trusted.check(ROLE, "imagebuilder:CreateImage", IMAGE, US_EAST).result.decision == pb.ALLOW
        for settings in ({"tls_ca": ca}, {"tls_ca": ca, "tls_cert": str(certificates.other_client_cert),
                                          "tls_key": str(certificates.other_client_key)}, {}):
            with Client(target, timeout=RPC_TIMEOUT, **settings) as refused:
                error = rpc_error(lambda c=refused: c.check(ROLE, "s3:GetObject", "*"))
                assert error.code() == grpc.StatusCode.UNAVAILABLE, sorted(settings)


def test_decision_names_match_the_wire():
    """The tests' mapping of reference decisions to the wire enum is the contract's."""
    assert {str(kind): pb.Decision.Name(code) for kind, code in DECISIONS.items()} == {
        str(DecisionKind.ALLOW): "ALLOW", str(DecisionKind.EXPLICIT_DENY): "EXPLICIT_DENY",
        str(DecisionKind.IMPLICIT_DENY): "IMPLICIT_DENY"}
