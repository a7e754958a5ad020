"""The context keys policies test, with their statements: the library, ``iam-eval context-keys`` and the
PolicyAdmin ``GetContextKeys`` call. Every expected answer is read off the policies by hand."""
from __future__ import annotations

import json

import grpc
import pytest

from iam_evaluator import RequestError, parse_policy
from iam_evaluator.context_keys import ContextKeyUse, context_keys, store_context_keys
from iam_evaluator.decision import StatementRef
from iam_evaluator.model import Effect
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client
from iam_evaluator.store import PolicyStore

from .conftest import run_cli
from .service_helpers import ALICE, EXAMPLE_STORE, ROLE, RPC_TIMEOUT, copy_store, rpc_error, running_service

ADMIN_TOKEN = "admin-secret-for-context-keys"
FULL_ACCESS = "arn:aws:iam::aws:policy/AWSImageBuilderFullAccess"
REGIONS = StatementRef("scp/DenyOutsideApprovedRegions", 0, "DenyOutsideApprovedRegions", Effect.DENY)
PASSED_TO = StatementRef(FULL_ACCESS, 7, None, Effect.ALLOW)
SERVICE_NAME = StatementRef(FULL_ACCESS, 10, None, Effect.ALLOW)

DOCUMENT = {"Version": "2012-10-17", "Statement": [
    {"Sid": "Home", "Effect": "Allow", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::home/${aws:username}/${*}/*",
     "Condition": {"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}"},
                   "Bool": {"aws:MultiFactorAuthPresent": "true"}}},
    {"Sid": "Tagged", "Effect": "Allow", "NotAction": "s3:GetObject", "Resource": "*",
     "Condition": {"Null": {"aws:RESOURCETAG/team": "false"},
                   "StringLike": {"s3:prefix": "${aws:userid, 'none'}/*"}}},
    {"Sid": "Plain", "Effect": "Deny", "Action": "*", "Resource": "*"},
]}
HOME = StatementRef("doc", 0, "Home", Effect.ALLOW)
TAGGED = StatementRef("doc", 1, "Tagged", Effect.ALLOW)


def test_keys_of_conditions_and_policy_variables_with_their_statements():
    keys = context_keys([parse_policy(DOCUMENT, name="doc")])
    assert keys == (
        ContextKeyUse("aws:MultiFactorAuthPresent", (HOME,)),
        ContextKeyUse("aws:PrincipalTag/team", (HOME,)),
        ContextKeyUse("aws:ResourceTag/team", (HOME, TAGGED)),  # spelled as first met; Null tests it too
        ContextKeyUse("aws:userid", (TAGGED,)),  # a variable with a default still reads its key
        ContextKeyUse("aws:username", (HOME,)),  # ${*} names no key
        ContextKeyUse("s3:prefix", (TAGGED,)),
    )


def test_only_the_statements_an_action_reaches():
    policy = parse_policy(DOCUMENT, name="doc")
    assert [k.key for k in context_keys([policy], "s3:GetObject")] == [
        "aws:MultiFactorAuthPresent", "aws:PrincipalTag/team", "aws:ResourceTag/team", "aws:username"]
    assert [k.key for k in context_keys([policy], "s3:ListBucket")] == [
        "aws:RESOURCETAG/team", "aws:userid", "s3:prefix"]  # NotAction lets it in; spelled as there


def test_variables_are_text_before_version_2012_10_17():
    old = parse_policy({**DOCUMENT, "Version": "2008-10-17"}, name="doc")
    assert [k.key for k in context_keys([old])] == ["aws:MultiFactorAuthPresent", "aws:ResourceTag/team",
                                                     "s3:prefix"]


def test_a_principal_of_the_store():
    store = PolicyStore.load(EXAMPLE_STORE)
    assert store_context_keys(store, ALICE) == (ContextKeyUse("aws:RequestedRegion", (REGIONS,)),
                                                ContextKeyUse("iam:AWSServiceName", (SERVICE_NAME,)),
                                                ContextKeyUse("iam:PassedToService", (PASSED_TO,)))
    assert store_context_keys(store, ALICE, "iam:PassRole") == (ContextKeyUse("iam:PassedToService", (PASSED_TO,)),)


@pytest.mark.parametrize("principal, action, error", [
    (42, None, RequestError), ("arn:aws:iam::111122223333:user/\ud800", None, RequestError),
    (ALICE, b"s3:GetObject", RequestError), (ALICE, "s3:Get\udfff", RequestError),
    ("arn:aws:iam::111122223333:user/nobody", None, LookupError), ("x" * (1 << 20), None, LookupError),
])
def test_bad_principals_and_actions_are_refused(principal, action, error):
    with pytest.raises(error):
        store_context_keys(PolicyStore.load(EXAMPLE_STORE), principal, action)


# ---------------------------------------------------------------- iam-eval context-keys


def test_cli_on_files(capsys, tmp_path):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(DOCUMENT))
    bucket = tmp_path / "bucket.json"
    bucket.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*",
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))
    code, out, _ = run_cli(capsys, "context-keys", str(path), str(bucket), "--action", "s3:ListBucket")
    assert code == 0
    assert out.splitlines() == [
        "aws:RESOURCETAG/team", f"  Allow {path}#1 (Tagged)",
        "aws:SecureTransport", f"  Deny {bucket}#0",
        "aws:userid", f"  Allow {path}#1 (Tagged)",
        "s3:prefix", f"  Allow {path}#1 (Tagged)",
    ]


def test_cli_on_a_store_as_json(capsys):
    code, out, _ = run_cli(capsys, "context-keys", "--store", str(EXAMPLE_STORE), "--principal", ALICE, "--json")
    assert code == 0
    assert json.loads(out) == [
        {"key": "aws:RequestedRegion", "statements": [{"policy": "scp/DenyOutsideApprovedRegions", "index": 0,
                                                       "sid": "DenyOutsideApprovedRegions", "effect": "Deny"}]},
        {"key": "iam:AWSServiceName", "statements": [{"policy": FULL_ACCESS, "index": 10, "sid": None,
                                                      "effect": "Allow"}]},
        {"key": "iam:PassedToService", "statements": [{"policy": FULL_ACCESS, "index": 7, "sid": None,
                                                       "effect": "Allow"}]}]


def test_cli_every_policy_of_a_store(capsys):
    code, out, _ = run_cli(capsys, "context-keys", "--store", str(EXAMPLE_STORE))
    keys = [line for line in out.splitlines() if not line.startswith(" ")]
    assert code == 0
    assert "aws:SecureTransport" in keys  # the bucket policy's, which no principal's set holds
    assert "  Deny arn:aws:s3:::example-imagebuilder-logs#1 (DenyInsecureTransport)" in out.splitlines()


@pytest.mark.parametrize("argv, message", [
    ([], "name policy files or folders, or a store"),
    (["x.json", "--store", "s"], "one or the other"),
    (["x.json", "--principal", ALICE], "--principal names a principal of the store"),
    (["--store", str(EXAMPLE_STORE), "--principal", "arn:aws:iam::111122223333:user/nobody"],
     "is not in the policy store"),
    (["--store", "/nonexistent/store"], "/nonexistent/store"),
    (["/nonexistent/policy.json"], "cannot read /nonexistent/policy.json"),
])
def test_cli_bad_input_exits_two(capsys, argv, message):
    code, _, err = run_cli(capsys, "context-keys", *argv)
    assert code == 2 and message in err


def test_cli_names_an_invalid_policy(capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Resource": "x"}]}')
    code, _, err = run_cli(capsys, "context-keys", str(path))
    assert code == 2 and "E002" in err


# ---------------------------------------------------------------- GetContextKeys


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    with running_service(copy_store(root), root / "state", admin_token=ADMIN_TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def client(service):
    with Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        yield connected


def test_get_context_keys_of_a_principal(client):
    response = client.call(client.admin.GetContextKeys, pb.GetContextKeysRequest(principal=ALICE,
                                                                                 action="iam:PassRole"))
    assert list(response.keys) == [pb.ContextKey(key="iam:PassedToService", statements=[
        pb.StatementRef(policy=FULL_ACCESS, index=7, effect="Allow")])]
    assert response.store_version == 1


def test_get_context_keys_of_the_whole_store(client):
    response = client.call(client.admin.GetContextKeys, pb.GetContextKeysRequest())
    expected = store_context_keys(PolicyStore.load(EXAMPLE_STORE))
    assert [(k.key, len(k.statements)) for k in response.keys] == [(k.key, len(k.statements)) for k in expected]
    assert "aws:SecureTransport" in [k.key for k in response.keys]


def test_get_context_keys_refuses_an_unknown_principal(client):
    error = rpc_error(lambda: client.call(client.admin.GetContextKeys,
                                          pb.GetContextKeysRequest(principal=ROLE + "-gone")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "not in the policy store" in error.details()


def test_client_context_keys_prints_the_response(capsys, service):
    code, out, _ = run_cli(capsys, "client", "--target", f"127.0.0.1:{service.port}", "--token", ADMIN_TOKEN,
                       "context-keys",
                       "--principal", ALICE, "--action", "iam:CreateServiceLinkedRole")
    assert code == 0
    assert json.loads(out)["keys"] == [{"key": "iam:AWSServiceName", "statements": [
        {"policy": FULL_ACCESS, "sid": "", "index": 10, "effect": "Allow"}]}]
