"""WhoCan and WhatCan through the service, on loopback, and ``iam-eval client who-can``/``what-can``.

The expected answers are written by hand from ``access_store`` (its docstring says who is what), as
in ``test_who_can`` and ``test_what_can``. Bad and hostile input gets INVALID_ARGUMENT with a bounded
message, and the server goes on answering.
"""
from __future__ import annotations

import json

import grpc
import pytest

from iam_evaluator.cli import main
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client

from .access_store import (
    ADMIN,
    ADMIN_POLICY,
    AUDITOR,
    BREAKGLASS,
    DEV,
    INTERN,
    LEGACY,
    ONCALL,
    PAYROLL,
    PAYROLL_OBJECT,
    READER,
    SNAPSHOT,
    A,
)
from .service_helpers import RPC_TIMEOUT, rpc_error, running_service

CHECK_TOKEN = "check-secret-for-access-query-tests"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("access-queries")
    store = root / "store.json"
    store.write_text(json.dumps(SNAPSHOT))
    with running_service(store, root / "state", check_token=CHECK_TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def client(service):
    with Client(f"127.0.0.1:{service.port}", token=CHECK_TOKEN, timeout=RPC_TIMEOUT) as connected:
        yield connected


def refs(result: pb.CheckResult) -> list[tuple[str, int]]:
    return [(s.policy, s.index) for s in result.statements]


def test_who_can_names_principals_statements_and_chains(client):
    response = client.who_can("s3:GetObject", PAYROLL_OBJECT, resource_account=A)
    assert response.store_version == 1
    assert {p.principal: (p.result.decision, p.result.decided_by, refs(p.result)) for p in response.principals} == {
        ADMIN: (pb.ALLOW, "identity", [(ADMIN_POLICY, 0)]),
        AUDITOR: (pb.ALLOW, "resource", [(PAYROLL, 1)]),
        BREAKGLASS: (pb.ALLOW, "identity", [("role/breakglass:inline/S3", 0)]),
        LEGACY: (pb.ALLOW, "identity", [("role/legacy:inline/ReadPayroll", 0)]),
        READER: (pb.ALLOW, "identity", [("role/payroll-reader:inline/ReadPayroll", 0)]),
    }
    assert [(c.principal, c.role, refs(c.assume_role)) for c in response.through_roles] == [
        (DEV, READER, [("user/dev:inline/AssumeReader", 0), (READER, 0)]),
        (ONCALL, BREAKGLASS, [("user/oncall:inline/AssumeAny", 0), (BREAKGLASS, 0)]),
        (ONCALL, LEGACY, [("user/oncall:inline/AssumeAny", 0)]),
    ]
    assert list(response.failures) == []


def test_who_can_reads_the_context(client):
    insecure = client.who_can("s3:GetObject", PAYROLL_OBJECT, {"aws:SecureTransport": "false"}, A)
    assert (list(insecure.principals), list(insecure.through_roles)) == ([], [])
    failing = client.who_can("s3:GetObject", PAYROLL_OBJECT, {"aws:CurrentTime": "not a date"}, A)
    assert [(f.principal, f.action) for f in failing.failures] == [(f"arn:aws:iam::{A}:role/timed", "s3:GetObject")]


def test_what_can_groups_by_service_and_access_level(client):
    response = client.what_can(INTERN, "*")
    assert response.store_version == 1
    assert [(r.resource, [(g.service, g.access_level, list(g.actions)) for g in r.groups])
            for r in response.resources] == [
        ("*", [("s3", "List", ["s3:ListBucket"]), ("sts", "Read", ["sts:GetCallerIdentity"])])]


def test_what_can_without_a_resource_and_for_one_service(client):
    response = client.what_can(DEV, service="s3")
    assert [(r.resource, [(g.service, g.access_level, list(g.actions)) for g in r.groups])
            for r in response.resources] == [("*", []), ("arn:aws:s3:::home/dev/*", [("s3", "Read", ["s3:GetObject"])])]


def test_the_check_token_is_needed(service):
    with Client(f"127.0.0.1:{service.port}", timeout=RPC_TIMEOUT) as anonymous:
        error = rpc_error(lambda: anonymous.who_can("s3:GetObject", "*"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def client_command(capsys, service, *args: str) -> tuple[int, str, str]:
    code = main(["client", "--target", f"127.0.0.1:{service.port}", "--token", CHECK_TOKEN, "--timeout",
                 str(RPC_TIMEOUT), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_client_commands_print_what_the_local_commands_print(capsys, service):
    code, out, err = client_command(capsys, service, "who-can", "--action", "s3:GetObject", "--resource",
                                    PAYROLL_OBJECT, "--resource-account", A)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"5 principal(s) may s3:GetObject on {PAYROLL_OBJECT}"
    assert f"  {ONCALL} -> {LEGACY}" in lines and lines[-1] == "store version 1"
    code, out, _ = client_command(capsys, service, "what-can", "--principal", INTERN, "--format", "json")
    assert code == 0
    assert json.loads(out) == {"principal": INTERN, "failures": [], "store_version": 1, "resources": [
        {"resource": "*", "services": {"s3": {"List": ["s3:ListBucket"]}, "sts": {"Read": ["sts:GetCallerIdentity"]}}}]}


# ---------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize(("call", "message"), [
    pytest.param(lambda c: c.who_can("GetObject", "*"), "is not service:Action", id="who-can-bad-action"),
    pytest.param(lambda c: c.who_can("s3:GetObject", "bucket"), "neither an ARN", id="who-can-bad-resource"),
    pytest.param(lambda c: c.who_can("x" * 1_000_000, "*"), "is not service:Action", id="who-can-huge-action"),
    pytest.param(lambda c: c.what_can(f"arn:aws:iam::{A}:user/nobody"), "is not in the policy store",
                 id="what-can-unknown-principal"),
    pytest.param(lambda c: c.what_can("arn:aws:iam::" + "9" * 1_000_000 + ":user/x"), "no 12-digit account id",
                 id="what-can-huge-principal"),
    pytest.param(lambda c: c.what_can("bob"), "is not an IAM or STS ARN", id="what-can-bad-arn"),
    pytest.param(lambda c: c.what_can(""), "is not an IAM or STS ARN", id="what-can-no-principal"),
    pytest.param(lambda c: c.what_can(INTERN, service="nosuch"), "no service 'nosuch'", id="what-can-bad-service"),
    pytest.param(lambda c: c.what_can(INTERN, "arn:aws:s3"), "neither an ARN", id="what-can-bad-resource"),
])
def test_hostile_query_is_invalid_argument(client, call, message):
    error = rpc_error(lambda: call(client))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in error.details() and len(error.details()) <= 2000
    assert client.who_can("s3:ListBucket", PAYROLL).store_version == 1, "the server goes on"


@pytest.mark.parametrize("method", ["WhoCan", "WhatCan"])
@pytest.mark.parametrize("text", [b"s3:Get\xffObject", b"s3:Get\xed\xa0\x80Object"], ids=["not-utf8", "surrogate"])
def test_hostile_bytes_that_are_not_utf8_are_invalid_argument(client, method, text):
    """Field 1 (action, principal) holding bytes no UTF-8 decoder accepts, a lone surrogate's among them."""
    payload = b"\x0a" + bytes([len(text)]) + text
    call = client.channel.unary_unary(f"/iam_evaluator.v1.Authorizer/{method}")
    error = rpc_error(lambda: call(payload, timeout=RPC_TIMEOUT,
                                   metadata=(("authorization", f"Bearer {CHECK_TOKEN}"),)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert client.what_can(INTERN, "*").store_version == 1, "the server goes on"
