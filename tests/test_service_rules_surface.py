"""The per-service IAM rules on every outside surface: inline VPC endpoint policies, anonymous callers and
always-allowed actions over a real server on loopback; the store's VPC endpoint policies through the admin
API; and the ``iam-eval check`` and ``iam-eval client`` commands.

Every expected decision is written by hand from AWS's documentation, not computed by an evaluator:
* a VPC endpoint policy "does not override or replace identity-based policies or resource-based policies":
  it must allow the request as well, an explicit deny in it denies, and its Principal limits whom it allows
  (AWS PrivateLink Guide, "Control access to VPC endpoints using endpoint policies");
* an anonymous (unsigned) request is allowed only by a resource-based policy that allows everyone, Principal
  "*" or {"AWS": "*"}; identity-based policies do not apply to it (Amazon S3 User Guide, bucket policies);
* sts:GetCallerIdentity needs no permission, and an explicit Deny of it has no effect (AWS STS API reference).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from iam_evaluator.cli import main
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client, request_columns

from .conftest import run_cli
from .service_helpers import (
    ACCOUNT,
    IMAGE,
    ROLE,
    RPC_TIMEOUT,
    copy_store,
    document,
    result_refs,
    rpc_error,
    running_service,
)

ADMIN_TOKEN = "admin-secret-for-tests"
ALLOW, EXPLICIT, IMPLICIT = pb.ALLOW, pb.EXPLICIT_DENY, pb.IMPLICIT_DENY
INVALID = grpc.StatusCode.INVALID_ARGUMENT
MAX_INLINE_POLICIES = 3
MAX_INLINE_BYTES = 1000

CALLER = "arn:aws:iam::444455556666:role/Caller"  # in no store: inline policies alone decide for it
OBJECT = "arn:aws:s3:::shared-bucket/report.csv"
PUBLIC_BUCKET = "arn:aws:s3:::public-bucket"
PUBLIC_OBJECT = f"{PUBLIC_BUCKET}/index.html"
ENDPOINT = "vpce-0123456789abcdef0"
US_EAST = {"aws:RequestedRegion": "us-east-1"}

ALLOW_S3 = document({"Sid": "S3", "Effect": "Allow", "Action": "s3:*", "Resource": "*"})
ENDPOINT_DENIES = document({"Sid": "Everything", "Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"},
                           {"Sid": "NoReads", "Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                            "Resource": "*"})
ENDPOINT_WRITES_ONLY = document({"Sid": "Writes", "Effect": "Allow", "Principal": "*", "Action": "s3:PutObject",
                                 "Resource": "*"})
ENDPOINT_READS = document({"Sid": "Reads", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                           "Resource": "*"})
ENDPOINT_OTHER_ACCOUNT = document({"Sid": "Theirs", "Effect": "Allow", "Principal": {"AWS": "999988887777"},
                                   "Action": "s3:*", "Resource": "*"})


def public_read(principal: Any, resource: str = "arn:aws:s3:::shared-bucket/*") -> str:
    return document({"Sid": "Read", "Effect": "Allow", "Principal": principal, "Action": "s3:GetObject",
                     "Resource": resource})


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A server on the example store, to which the module adds a public bucket (its policy allows everyone
    to read objects) and a VPC endpoint whose policy allows S3 only."""
    root = tmp_path_factory.mktemp("service-rules")
    with running_service(copy_store(root), root / "state", admin_token=ADMIN_TOKEN,
                         max_inline_policies_per_request=MAX_INLINE_POLICIES,
                         max_inline_policy_bytes=MAX_INLINE_BYTES) as running, \
            Client(f"127.0.0.1:{running.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as admin:
        for kind, name, text in ((pb.RESOURCE, PUBLIC_BUCKET, public_read("*", f"{PUBLIC_BUCKET}/*")),
                                 (pb.VPC_ENDPOINT, ENDPOINT, document({"Sid": "S3Only", "Effect": "Allow",
                                                                      "Principal": "*", "Action": "s3:*",
                                                                      "Resource": "*"}))):
            admin.call(admin.admin.PutPolicy, pb.PutPolicyRequest(policy=pb.StoredPolicy(kind=kind, name=name,
                                                                                         document=text)))
        yield running


@pytest.fixture(scope="module")
def client(service):
    with Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        yield connected


def check(client: Client, principal: str, action: str, resource: str, policies: pb.InlinePolicies | None = None,
          context: dict[str, str] | None = None) -> pb.CheckResponse:
    request = pb.CheckRequest(principal=principal, action=action, resource=resource, explain=True,
                              context={k: pb.ContextValues(values=[v]) for k, v in (context or {}).items()})
    if policies is not None:
        request.policies.CopyFrom(policies)
    return client.call(client.authorizer.Check, request)


# ---------------------------------------------------------------- inline VPC endpoint policies


ENDPOINT_CASES = {  # name -> (identity policies, endpoint policy, decision, decided_by, deciding statements)
    "an explicit deny in the endpoint's policy denies": (
        [ALLOW_S3], ENDPOINT_DENIES, EXPLICIT, "vpc_endpoint", [("vpc_endpoint[0]", "NoReads", 1)]),
    "the endpoint's policy does not allow": ([ALLOW_S3], ENDPOINT_WRITES_ONLY, IMPLICIT, "vpc_endpoint", None),
    "the endpoint's policy allows another account only": (
        [ALLOW_S3], ENDPOINT_OTHER_ACCOUNT, IMPLICIT, "vpc_endpoint", None),
    "both allow": ([ALLOW_S3], ENDPOINT_READS, ALLOW, "identity",
                   [("identity[0]", "S3", 0), ("vpc_endpoint[0]", "Reads", 0)]),
    "the endpoint's policy grants nothing by itself": ([], ENDPOINT_READS, IMPLICIT, "identity", None),
}


@pytest.mark.parametrize("case", ENDPOINT_CASES.values(), ids=ENDPOINT_CASES.keys())
def test_an_inline_vpc_endpoint_policy_must_allow_too(client, case):
    identity, endpoint, decision, decided_by, statements = case
    policies = pb.InlinePolicies(identity=identity, vpc_endpoint=[endpoint])
    response = check(client, CALLER, "s3:GetObject", OBJECT, policies)
    assert (response.result.decision, response.result.decided_by) == (decision, decided_by)
    assert not response.result.error and response.store_version == 0
    if statements is not None:
        assert result_refs(response.result) == sorted(statements)
    if decided_by == "vpc_endpoint" and decision == IMPLICIT:
        assert "VPC endpoint" in response.result.reason

    bare = pb.CheckRequest(principal=CALLER, action="s3:GetObject", resource=OBJECT)
    batches = (pb.CheckBatchRequest(requests=[bare] * 2, policies=policies),
               pb.CheckBatchRequest(columns=request_columns([{"principal": CALLER, "action": "s3:GetObject",
                                                              "resource": OBJECT}] * 2), policies=policies))
    for batch in batches:
        assert [r.decision for r in client.call(client.authorizer.CheckBatch, batch).results] == [decision] * 2


def test_an_endpoint_has_one_policy(client):
    policies = pb.InlinePolicies(identity=[ALLOW_S3], vpc_endpoint=[ENDPOINT_READS, ENDPOINT_READS])
    error = rpc_error(lambda: check(client, CALLER, "s3:GetObject", OBJECT, policies))
    assert error.code() == INVALID and "vpc_endpoint must be a list of exactly one policy" in error.details()
    batch = pb.CheckBatchRequest(requests=[pb.CheckRequest(principal=CALLER, action="s3:GetObject",
                                                           resource=OBJECT)], policies=policies)
    error = rpc_error(lambda: client.call(client.authorizer.CheckBatch, batch))
    assert error.code() == INVALID and "exactly one policy" in error.details()


def test_inline_limits_count_the_endpoint_policy(client):
    at_limit = [ALLOW_S3] * MAX_INLINE_POLICIES
    assert check(client, CALLER, "s3:GetObject", OBJECT, pb.InlinePolicies(identity=at_limit)).result.decision == ALLOW
    over = pb.InlinePolicies(identity=at_limit, vpc_endpoint=[ENDPOINT_READS])
    error = rpc_error(lambda: check(client, CALLER, "s3:GetObject", OBJECT, over))
    assert error.code() == INVALID
    assert f"sends {MAX_INLINE_POLICIES + 1} policies, more than max_inline_policies_per_request" in error.details()
    padded = json.loads(ENDPOINT_READS)
    padded["Statement"][0]["Sid"] = "x" * MAX_INLINE_BYTES
    large = pb.InlinePolicies(identity=[ALLOW_S3], vpc_endpoint=[json.dumps(padded)])
    error = rpc_error(lambda: check(client, CALLER, "s3:GetObject", OBJECT, large))
    assert error.code() == INVALID and "more than max_inline_policy_bytes" in error.details()


HOSTILE_ENDPOINT_POLICIES = {  # name -> (the document's text, what the status must name)
    "a lone surrogate": ('{"Version": "2012-10-17", "Statement": [{"Sid": "\\ud800", "Effect": "Allow", '
                         '"Principal": "*", "Action": "s3:*", "Resource": "*"}]}',
                         ["E001", "/Statement/0/Sid", "lone surrogate"]),
    "a key given twice": ('{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Effect": "Allow", '
                          '"Principal": "*", "Action": "s3:*", "Resource": "*"}]}',
                          ["E002", "/Statement/0/Effect", "more than once"]),
    "no Principal": (ENDPOINT_READS.replace('"Principal": "*", ', ""), ["E019", "/Statement/0", "Principal"]),
    "not JSON": ('{"Statement": [', ["E001", "not valid JSON"]),
}


@pytest.mark.parametrize("case", HOSTILE_ENDPOINT_POLICIES.values(), ids=HOSTILE_ENDPOINT_POLICIES.keys())
def test_a_malformed_inline_endpoint_policy_is_refused_by_name(client, case):
    text, fragments = case
    error = rpc_error(lambda: check(client, CALLER, "s3:GetObject", OBJECT,
                                    pb.InlinePolicies(identity=[ALLOW_S3], vpc_endpoint=[text])))
    assert error.code() == INVALID
    for fragment in ["vpc_endpoint[0]", *fragments]:
        assert fragment in error.details()


def test_an_endpoint_policy_that_is_not_utf8_on_the_wire_is_refused(client):
    """Protobuf strings are UTF-8: a surrogate's bytes in the field make the message undecodable."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    policies = field(7, b'{"Sid": "\xed\xa0\x80"}')
    request = (field(1, CALLER.encode()) + field(2, b"s3:GetObject") + field(3, OBJECT.encode())
               + field(7, policies))
    method = client.channel.unary_unary("/iam_evaluator.v1.Authorizer/Check")
    error = rpc_error(lambda: method(request, timeout=RPC_TIMEOUT))
    assert error.code() == INVALID and "not a valid CheckRequest" in error.details()


# ---------------------------------------------------------------- anonymous callers


ANONYMOUS_CASES = {  # name -> (inline policies, decision, decided_by)
    "a resource policy allowing everyone": (pb.InlinePolicies(resource=public_read("*")), ALLOW, "resource"),
    'a resource policy allowing {"AWS": "*"}': (pb.InlinePolicies(resource=public_read({"AWS": "*"})),
                                                ALLOW, "resource"),
    "a resource policy naming an account": (pb.InlinePolicies(resource=public_read({"AWS": ACCOUNT})),
                                            IMPLICIT, "resource"),
    "identity policies do not apply": (pb.InlinePolicies(identity=[ALLOW_S3]), IMPLICIT, "resource"),
    "the endpoint's policy must allow too": (pb.InlinePolicies(resource=public_read("*"),
                                                               vpc_endpoint=[ENDPOINT_WRITES_ONLY]),
                                             IMPLICIT, "vpc_endpoint"),
    "an endpoint allowing everyone": (pb.InlinePolicies(resource=public_read("*"), vpc_endpoint=[ENDPOINT_READS]),
                                      ALLOW, "resource"),
}


@pytest.mark.parametrize("case", ANONYMOUS_CASES.values(), ids=ANONYMOUS_CASES.keys())
def test_an_anonymous_caller_is_allowed_by_a_public_resource_policy_only(client, case):
    policies, decision, decided_by = case
    result = check(client, "anonymous", "s3:GetObject", OBJECT, policies).result
    assert (result.decision, result.decided_by, result.error) == (decision, decided_by, "")


def test_an_anonymous_caller_has_no_session_tags(client):
    request = pb.CheckRequest(principal="anonymous", action="s3:GetObject", resource=OBJECT,
                              session_tags={"team": "ops"}, policies=pb.InlinePolicies(resource=public_read("*")))
    error = rpc_error(lambda: client.call(client.authorizer.Check, request))
    assert error.code() == INVALID and "session tags belong to an assumed-role session principal" in error.details()


def test_an_anonymous_caller_against_the_store(client):
    """The store's public bucket allows everyone to read; its log bucket allows one role only."""
    assert check(client, "anonymous", "s3:GetObject", PUBLIC_OBJECT).result.decision == ALLOW
    assert check(client, "anonymous", "s3:PutObject", PUBLIC_OBJECT).result.decision == IMPLICIT
    result = check(client, "anonymous", "s3:PutObject", "arn:aws:s3:::example-imagebuilder-logs/build/1.log",
                   context={"aws:SecureTransport": "true"}).result
    assert result.decision == IMPLICIT
    assert client.check("anonymous", "s3:GetObject", PUBLIC_OBJECT).result.decision == ALLOW


# ---------------------------------------------------------------- always allowed


def test_get_caller_identity_is_allowed_whatever_denies_it(client):
    deny_all = pb.InlinePolicies(identity=[document({"Sid": "NoSTS", "Effect": "Deny", "Action": "sts:*",
                                                     "Resource": "*"})])
    result = check(client, CALLER, "sts:GetCallerIdentity", "*", deny_all).result
    assert (result.decision, result.decided_by, result.error) == (ALLOW, "always_allowed", "")
    assert check(client, CALLER, "sts:GetCallerIdentity", "*", pb.InlinePolicies()).result.decision == ALLOW
    result = check(client, ROLE, "sts:GetCallerIdentity", "*", context={"aws:RequestedRegion": "ap-south-1"}).result
    assert (result.decision, result.decided_by) == (ALLOW, "always_allowed"), "the store's SCP denies the region"
    assert check(client, CALLER, "sts:GetSessionToken", "*", deny_all).result.decision == EXPLICIT


# ---------------------------------------------------------------- the store's VPC endpoint policies


def test_a_stored_endpoint_policy_applies_to_requests_through_it(client):
    """The store's endpoint allows S3 only: an Image Builder call through it is denied, the same call
    not through it is allowed."""
    assert check(client, ROLE, "imagebuilder:GetImage", IMAGE, context=US_EAST).result.decision == ALLOW
    result = check(client, ROLE, "imagebuilder:GetImage", IMAGE, context={**US_EAST, "aws:SourceVpce": ENDPOINT}
                   ).result
    assert (result.decision, result.decided_by) == (IMPLICIT, "vpc_endpoint")
    result = check(client, "anonymous", "s3:GetObject", PUBLIC_OBJECT, context={"aws:SourceVpce": ENDPOINT}).result
    assert result.decision == ALLOW


def test_vpc_endpoint_policies_put_get_list_and_delete(tmp_path):
    text = document({"Sid": "NoDeletes", "Effect": "Deny", "Principal": "*", "Action": "imagebuilder:Delete*",
                     "Resource": "*"},
                    {"Sid": "Everything", "Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"})
    name = pb.PolicyName(kind=pb.VPC_ENDPOINT, name=ENDPOINT)
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN) as running, \
            Client(f"127.0.0.1:{running.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        admin = connected.admin
        assert not connected.call(admin.ListPolicies, pb.ListPoliciesRequest(kind=pb.VPC_ENDPOINT)).policies
        change = connected.call(admin.PutPolicy, pb.PutPolicyRequest(policy=pb.StoredPolicy(
            kind=pb.VPC_ENDPOINT, name=ENDPOINT, document=text), expected_version=1))
        assert change.version == 2
        stored = connected.call(admin.GetPolicy, name)
        assert (stored.kind, stored.name, json.loads(stored.document)) == (pb.VPC_ENDPOINT, ENDPOINT, json.loads(text))
        listed = connected.call(admin.ListPolicies, pb.ListPoliciesRequest(kind=pb.VPC_ENDPOINT))
        assert list(listed.policies) == [name] and listed.store_version == 2
        assert name in connected.call(admin.ListPolicies, pb.ListPoliciesRequest()).policies
        version = connected.call(admin.GetStoreVersion, pb.GetStoreVersionRequest())
        assert version.description == f"put vpc_endpoint policy {ENDPOINT}"

        through = {**US_EAST, "aws:SourceVpce": ENDPOINT}
        result = check(connected, ROLE, "imagebuilder:DeleteImage", IMAGE, context=through).result
        assert (result.decision, result.decided_by) == (EXPLICIT, "vpc_endpoint")
        assert [(s.policy, s.sid) for s in result.statements] == [(ENDPOINT, "NoDeletes")]
        assert check(connected, ROLE, "imagebuilder:DeleteImage", IMAGE, context=US_EAST).result.decision == ALLOW

        assert connected.call(admin.DeletePolicy, pb.DeletePolicyRequest(policy=name)).version == 3
        assert rpc_error(lambda: connected.call(admin.GetPolicy, name)).code() == grpc.StatusCode.NOT_FOUND
        assert not connected.call(admin.ListPolicies, pb.ListPoliciesRequest(kind=pb.VPC_ENDPOINT)).policies


def test_validate_policy_of_a_vpc_endpoint_needs_a_principal(client):
    assert client.call(client.admin.ValidatePolicy, pb.ValidatePolicyRequest(
        document=ENDPOINT_READS, kind=pb.VPC_ENDPOINT)).valid
    response = client.call(client.admin.ValidatePolicy, pb.ValidatePolicyRequest(
        document=ALLOW_S3, kind=pb.VPC_ENDPOINT))
    assert not response.valid and [(f.code, f.pointer) for f in response.findings] == [("E019", "/Statement/0")]


BAD_ENDPOINT_PUTS = {  # name -> (endpoint id, document, status, what the message must name)
    "no Principal": (ENDPOINT, ALLOW_S3, INVALID, "E019"),
    "a key given twice": (ENDPOINT, HOSTILE_ENDPOINT_POLICIES["a key given twice"][0], INVALID, "E002"),
    "a lone surrogate": (ENDPOINT, HOSTILE_ENDPOINT_POLICIES["a lone surrogate"][0], INVALID, "lone surrogate"),
    "not an endpoint id": ("endpoint-1", ENDPOINT_READS, INVALID, "vpce-"),
    "no name": ("", ENDPOINT_READS, INVALID, "needs a name"),
}


@pytest.mark.parametrize("case", BAD_ENDPOINT_PUTS.values(), ids=BAD_ENDPOINT_PUTS.keys())
def test_a_bad_vpc_endpoint_policy_is_refused_and_changes_nothing(client, case):
    endpoint_id, text, code, fragment = case
    before = client.call(client.admin.GetStoreVersion, pb.GetStoreVersionRequest()).version
    error = rpc_error(lambda: client.call(client.admin.PutPolicy, pb.PutPolicyRequest(policy=pb.StoredPolicy(
        kind=pb.VPC_ENDPOINT, name=endpoint_id, document=text))))
    assert error.code() == code and fragment in error.details(), error.details()
    assert client.call(client.admin.GetStoreVersion, pb.GetStoreVersionRequest()).version == before


# ---------------------------------------------------------------- iam-eval check


def policy_file(directory: Path, name: str, text: str) -> str:
    path = directory / f"{name}.json"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("engine", ["compiled", "reference"])
def test_cli_check_anonymous(capsys, tmp_path, engine):
    args = ["check", "--anonymous", "--action", "s3:GetObject", "--resource", OBJECT, "--engine", engine]
    public = policy_file(tmp_path, "public", public_read("*"))
    code, out, _ = run_cli(capsys, *args, "--resource-policy", public)
    assert (code, out.split()[0]) == (0, "Allow") and "decided by resource" in out
    account_only = policy_file(tmp_path, "account", public_read({"AWS": ACCOUNT}))
    code, out, _ = run_cli(capsys, *args, "--resource-policy", account_only)
    assert (code, out.split()[0]) == (1, "ImplicitDeny")
    code, out, _ = run_cli(capsys, *args, "--policy", policy_file(tmp_path, "identity", ALLOW_S3))
    assert (code, out.split()[0]) == (1, "ImplicitDeny")
    code, _, err = run_cli(capsys, *args, "--resource-policy", public, "--session-tag", "team=ops")
    assert code == 2 and "session tags belong to an assumed-role session principal" in err


@pytest.mark.parametrize("engine", ["compiled", "reference"])
def test_cli_check_vpc_endpoint_policy(capsys, tmp_path, engine):
    args = ["check", "--policy", policy_file(tmp_path, "identity", ALLOW_S3), "--principal", CALLER,
            "--action", "s3:GetObject", "--resource", OBJECT, "--engine", engine, "--vpc-endpoint-policy"]
    denies = policy_file(tmp_path, "denies", ENDPOINT_DENIES)
    code, out, _ = run_cli(capsys, *args, denies)
    assert (code, out.split()[0]) == (1, "ExplicitDeny") and "decided by vpc_endpoint" in out
    assert f"{denies}#1 (NoReads)" in out
    code, out, _ = run_cli(capsys, *args, policy_file(tmp_path, "writes", ENDPOINT_WRITES_ONLY))
    assert (code, out.split()[0]) == (1, "ImplicitDeny") and "decided by vpc_endpoint" in out
    code, out, _ = run_cli(capsys, *args, policy_file(tmp_path, "reads", ENDPOINT_READS), "--json")
    assert code == 0 and json.loads(out)["decision"] == "Allow"
    code, _, err = run_cli(capsys, *args, policy_file(tmp_path, "identity-shaped", ALLOW_S3))
    assert code == 2 and "[E019]" in err and "needs Principal" in err


@pytest.mark.parametrize("argv, message", [
    (["--principal", CALLER, "--anonymous"], "argument --anonymous: not allowed with argument --principal"),
    ([], "one of the arguments --principal --anonymous is required"),
], ids=["both", "neither"])
def test_cli_check_needs_exactly_one_caller(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        main(["check", "--policy", "unused.json", *argv, "--action", "s3:GetObject", "--resource", OBJECT])
    assert exited.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------- iam-eval client


def test_cli_client_check_anonymous(service, capsys):
    target = ["client", "--target", f"127.0.0.1:{service.port}", "--token", ADMIN_TOKEN]
    code, out, _ = run_cli(capsys, *target, "check", "--anonymous", "--action", "s3:GetObject", "--resource",
                       PUBLIC_OBJECT, "--explain")
    assert (code, out.split()[0]) == (0, "Allow")
    code, out, _ = run_cli(capsys, *target, "check", "--anonymous", "--action", "s3:PutObject", "--resource",
                       PUBLIC_OBJECT)
    assert (code, out.split()[0]) == (1, "ImplicitDeny")
    code, out, _ = run_cli(capsys, *target, "check", "--principal", ROLE, "--action", "imagebuilder:GetImage",
                       "--resource", IMAGE, "--context", "aws:RequestedRegion=us-east-1",
                       "--context", f"aws:SourceVpce={ENDPOINT}")
    assert (code, out.split()[0]) == (1, "ImplicitDeny")
    with pytest.raises(SystemExit) as exited:
        main([*target, "check", "--anonymous", "--principal", ROLE, "--action", "s3:GetObject", "--resource", "*"])
    assert exited.value.code == 2
    assert "argument --principal: not allowed with argument --anonymous" in capsys.readouterr().err


def test_cli_client_puts_and_gets_a_vpc_endpoint_policy(tmp_path, capsys):
    text = document({"Sid": "S3Only", "Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": "*"})
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN) as running:
        target = ["client", "--target", f"127.0.0.1:{running.port}", "--token", ADMIN_TOKEN]
        endpoint = policy_file(tmp_path, "endpoint", text)
        code, out, _ = run_cli(capsys, *target, "put-policy", endpoint, "--kind", "vpc-endpoint", "--name", ENDPOINT)
        assert (code, json.loads(out)) == (0, {"version": 2})
        code, out, _ = run_cli(capsys, *target, "get-policy", "--kind", "vpc-endpoint", "--name", ENDPOINT)
        stored = json.loads(out)
        assert code == 0 and (stored["kind"], stored["name"]) == ("VPC_ENDPOINT", ENDPOINT)
        assert json.loads(stored["document"]) == json.loads(text)
        code, out, _ = run_cli(capsys, *target, "list-policies", "--kind", "vpc-endpoint")
        assert code == 0 and json.loads(out)["policies"] == [{"kind": "VPC_ENDPOINT", "name": ENDPOINT}]
        code, out, _ = run_cli(capsys, *target, "validate", policy_file(tmp_path, "no-principal", ALLOW_S3),
                           "--kind", "vpc-endpoint")
        assert code == 1 and "E019" in out
