"""Principal facts and session tags on every outside path: Check, CheckBatch (requests and columns),
CheckStream, inline policies, the Python client, the CLI client, and batch jobs over JSON Lines.

Every expected decision is written by hand from AWS's documentation, not computed by an evaluator:
aws:PrincipalTag/* and the other properties of the principal are set by AWS alone (a request can neither
add nor change them), and an assumed-role session's tags override its role's tags of the same key
("AWS global condition context keys"; "Passing session tags in AWS STS"). The store: role ``blocked``
is tagged team=blocked, role ``untagged`` has no tags; both have the Gate policy, which allows
s3:GetObject and denies everything to a principal tagged team=blocked.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from iam_evaluator.batch.readers import read_requests, write_requests_parquet
from iam_evaluator.cli import main
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client, request_columns

from .conftest import REPO
from .service_helpers import RPC_TIMEOUT, LockstepStream, cli_environment, rpc_error, running_service

ALLOW, EXPLICIT, IMPLICIT = pb.ALLOW, pb.EXPLICIT_DENY, pb.IMPLICIT_DENY
NAMES = {ALLOW: "Allow", EXPLICIT: "ExplicitDeny", IMPLICIT: "ImplicitDeny"}

UNTAGGED = "arn:aws:iam::111111111111:role/untagged"
BLOCKED = "arn:aws:iam::111111111111:role/blocked"
UNTAGGED_SESSION = "arn:aws:sts::111111111111:assumed-role/untagged/s1"
BLOCKED_SESSION = "arn:aws:sts::111111111111:assumed-role/blocked/s2"
STRANGER_SESSION = "arn:aws:sts::444455556666:assumed-role/stranger/s3"  # in no store: for inline policies
OBJECT = "arn:aws:s3:::data/report.csv"
TEAM = "aws:PrincipalTag/team"
NOT_A_SESSION = "session tags belong to an assumed-role session principal"

GATE = {"Version": "2012-10-17", "Statement": [
    {"Sid": "Read", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
    {"Sid": "Blocked", "Effect": "Deny", "Action": "*", "Resource": "*",
     "Condition": {"StringEquals": {TEAM: "blocked"}}},
]}
STORE = {
    "managed_policies": [{"arn": "arn:aws:iam::111111111111:policy/Gate", "document": GATE}],
    "principals": [
        {"arn": UNTAGGED, "managed_policies": ["arn:aws:iam::111111111111:policy/Gate"]},
        {"arn": BLOCKED, "managed_policies": ["arn:aws:iam::111111111111:policy/Gate"], "tags": {"team": "blocked"}},
    ],
}


def item(principal: str, context: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> dict:
    request: dict[str, Any] = {"principal": principal, "action": "s3:GetObject", "resource": OBJECT}
    if context:
        request["context"] = context
    if tags:
        request["session_tags"] = tags
    return request


# name -> (request, the decision AWS gives)
CASES = {
    "a forged tag is dropped": (item(UNTAGGED, {TEAM: "blocked"}), ALLOW),
    "the store's tag cannot be overwritten": (item(BLOCKED, {TEAM: "ok"}), EXPLICIT),
    "the store's tag": (item(BLOCKED), EXPLICIT),
    "no tag": (item(UNTAGGED), ALLOW),
    "a session's tag applies": (item(UNTAGGED_SESSION, tags={"team": "blocked"}), EXPLICIT),
    "a session's tag overrides its role's": (item(BLOCKED_SESSION, tags={"team": "ok"}), ALLOW),
    "a session inherits its role's tag": (item(BLOCKED_SESSION, {TEAM: "ok"}), EXPLICIT),
    "a session cannot forge a tag in the context": (item(UNTAGGED_SESSION, {TEAM: "blocked"}), ALLOW),
}
ROLE_WITH_TAGS = item(UNTAGGED, tags={"team": "ok"})  # denied with an error wherever it is decided


def check_request(request: dict, explain: bool = False) -> pb.CheckRequest:
    return pb.CheckRequest(principal=request["principal"], action=request["action"], resource=request["resource"],
                           context={key: pb.ContextValues(values=[value])
                                    for key, value in request.get("context", {}).items()},
                           session_tags=request.get("session_tags", {}), explain=explain)


@pytest.fixture(scope="module")
def store_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "store.json"
    path.write_text(json.dumps(STORE))
    return path


@pytest.fixture(scope="module")
def service(store_file):
    with running_service(store_file, store_file.parent / "state") as running:
        yield running


@pytest.fixture(scope="module")
def target(service) -> str:
    return f"127.0.0.1:{service.port}"


@pytest.fixture(scope="module")
def client(target):
    with Client(target, timeout=RPC_TIMEOUT) as connected:
        yield connected


# ---------------------------------------------------------------- Check


@pytest.mark.parametrize("explain", [False, True], ids=["bare", "explained"])
@pytest.mark.parametrize("name", CASES)
def test_check(client, name, explain):
    request, want = CASES[name]
    response = client.call(client.authorizer.Check, check_request(request, explain))
    assert (response.result.decision, response.result.error, response.store_version) == (want, "", 1)
    if explain and want == EXPLICIT:
        assert [s.sid for s in response.result.statements] == ["Blocked"]


def test_check_refuses_session_tags_on_a_principal_that_is_not_a_session(client):
    error = rpc_error(lambda: client.call(client.authorizer.Check, check_request(ROLE_WITH_TAGS)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and NOT_A_SESSION in error.details()


# ---------------------------------------------------------------- batches


def batch_forms(requests: list[dict], explain: bool) -> dict[str, pb.CheckBatchRequest]:
    return {"columns": pb.CheckBatchRequest(columns=request_columns(requests), explain=explain),
            "requests": pb.CheckBatchRequest(requests=[check_request(r) for r in requests], explain=explain)}


def decided(response: pb.CheckBatchResponse) -> list[tuple[int, str]]:
    """Each result's decision and error (the session-tags error as its gist)."""
    return [(result.decision, NOT_A_SESSION if NOT_A_SESSION in result.error else result.error)
            for result in response.results]


@pytest.mark.parametrize("explain", [False, True], ids=["bare", "explained"])
@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_a_batch_decides_each_row_as_alone(client, order, explain):
    """Every case in one batch, beside a principal that must not have session tags: each row gets its own
    decision, whatever its neighbours say of their principals, in CheckBatch and CheckStream alike."""
    cases = [*CASES.values(), (ROLE_WITH_TAGS, IMPLICIT)]
    if order == "reversed":
        cases.reverse()
    requests = [request for request, _ in cases]
    want = [(decision, NOT_A_SESSION if request is ROLE_WITH_TAGS else "") for request, decision in cases]
    stream = LockstepStream(client.authorizer.CheckStream)
    for form, batch in batch_forms(requests, explain).items():
        answers = {"CheckBatch": client.call(client.authorizer.CheckBatch, batch), "CheckStream": stream.send(batch)}
        for method, response in answers.items():
            assert decided(response) == want, f"{method} with {form}"
    assert stream.close() == grpc.StatusCode.OK


@pytest.mark.parametrize("principals, want", [
    ([UNTAGGED, BLOCKED], [ALLOW, EXPLICIT]),
    ([BLOCKED, UNTAGGED], [EXPLICIT, ALLOW]),
], ids=["untagged-first", "blocked-first"])
def test_a_context_column_of_a_principal_tag_keeps_each_rows_meaning(client, principals, want):
    """The column [None, "blocked"] of aws:PrincipalTag/team: on the blocked role it restates the store, on
    the untagged one it is a forgery and is dropped."""
    columns = pb.RequestColumns(principals=principals, actions=["s3:GetObject"] * 2, resources=[OBJECT] * 2,
                                context=[pb.ContextColumn(key=TEAM, rows=[1], values=["blocked"])])
    for explain in (False, True):
        response = client.call(client.authorizer.CheckBatch, pb.CheckBatchRequest(columns=columns, explain=explain))
        assert decided(response) == [(decision, "") for decision in want]
    one_each = [check_request(item(principal, {TEAM: team} if team else None))
                for principal, team in zip(principals, [None, "blocked"], strict=True)]
    response = client.call(client.authorizer.CheckBatch, pb.CheckBatchRequest(requests=one_each))
    assert decided(response) == [(decision, "") for decision in want]


def test_session_tag_columns_dense_and_sparse(client):
    """One column per tag key: ``rows`` lists the requests that have it; empty means every request."""
    sessions = [UNTAGGED_SESSION, BLOCKED_SESSION, BLOCKED_SESSION, UNTAGGED_SESSION]
    base = {"principals": sessions, "actions": ["s3:GetObject"] * 4, "resources": [OBJECT] * 4}
    dense = pb.RequestColumns(**base, session_tags=[pb.SessionTagsColumn(key="team",
                                                                         values=["blocked", "ok", "blocked", "ok"])])
    response = client.call(client.authorizer.CheckBatch, pb.CheckBatchRequest(columns=dense))
    assert decided(response) == [(EXPLICIT, ""), (ALLOW, ""), (EXPLICIT, ""), (ALLOW, "")]
    sparse = pb.RequestColumns(**base, session_tags=[pb.SessionTagsColumn(key="team", rows=[1, 3],
                                                                          values=["ok", "blocked"])])
    response = client.call(client.authorizer.CheckBatch, pb.CheckBatchRequest(columns=sparse))
    assert decided(response) == [(ALLOW, ""), (ALLOW, ""), (EXPLICIT, ""), (EXPLICIT, "")]


BAD_TAG_COLUMNS = {  # the SessionTagsColumns of a two-request batch, and what the refusal says
    "rows out of order": ([{"key": "team", "rows": [1, 0], "values": ["a", "b"]}], "ascending"),
    "a row out of range": ([{"key": "team", "rows": [0, 2], "values": ["a", "b"]}], "below 2"),
    "a row twice": ([{"key": "team", "rows": [1, 1], "values": ["a", "b"]}], "ascending"),
    "too few values": ([{"key": "team", "values": ["a"]}], "1 values for 2 requests"),
    "a key twice": ([{"key": "team", "rows": [0], "values": ["a"]}, {"key": "team", "rows": [1], "values": ["b"]}],
                    "given twice"),
}


@pytest.mark.parametrize("name", BAD_TAG_COLUMNS)
def test_malformed_session_tag_columns_are_refused(client, name):
    tag_columns, message = BAD_TAG_COLUMNS[name]
    columns = pb.RequestColumns(principals=[UNTAGGED_SESSION] * 2, actions=["s3:GetObject"] * 2,
                                resources=[OBJECT] * 2, session_tags=tag_columns)
    error = rpc_error(lambda: client.call(client.authorizer.CheckBatch, pb.CheckBatchRequest(columns=columns)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    stream = LockstepStream(client.authorizer.CheckStream)
    response = stream.send(pb.CheckBatchRequest(columns=columns, batch_id=9))
    assert response.batch_id == 9 and message in response.error and not response.results
    assert stream.close() == grpc.StatusCode.OK


def test_inline_policies_read_session_tags_over_the_requests_keys(client):
    """For a principal no store describes, the request says who it is; a session tag still overrides the
    request's aws:PrincipalTag of the same key."""
    policies = pb.InlinePolicies(identity=[json.dumps(GATE)])
    requests = [item(STRANGER_SESSION, tags={"team": "blocked"}), item(STRANGER_SESSION, {TEAM: "blocked"}),
                item(STRANGER_SESSION, {TEAM: "blocked"}, {"team": "ok"}), item(STRANGER_SESSION)]
    want = [EXPLICIT, EXPLICIT, ALLOW, ALLOW]
    for request, decision in zip(requests, want, strict=True):
        message = check_request(request)
        message.policies.CopyFrom(policies)
        response = client.call(client.authorizer.Check, message)
        assert (response.result.decision, response.store_version) == (decision, 0)
    for explain in (False, True):
        for form, batch in batch_forms(requests, explain).items():
            batch.policies.CopyFrom(policies)
            response = client.call(client.authorizer.CheckBatch, batch)
            assert [r.decision for r in response.results] == want, form
    role = pb.CheckBatchRequest(columns=request_columns([item(UNTAGGED, tags={"team": "ok"})]), policies=policies)
    [result] = client.call(client.authorizer.CheckBatch, role).results
    assert result.decision == IMPLICIT and NOT_A_SESSION in result.error


# ---------------------------------------------------------------- the clients


def test_the_python_client_sends_session_tags(client):
    assert client.check(UNTAGGED_SESSION, "s3:GetObject", OBJECT, session_tags={"team": "blocked"}
                        ).result.decision == EXPLICIT
    assert client.check(BLOCKED_SESSION, "s3:GetObject", OBJECT, session_tags={"team": "ok"}).result.decision == ALLOW
    assert client.check(UNTAGGED, "s3:GetObject", OBJECT, {TEAM: "blocked"}).result.decision == ALLOW
    cases = [*CASES.values(), (ROLE_WITH_TAGS, IMPLICIT)]
    results = list(client.check_batch([request for request, _ in cases] * 3, batch_size=4))
    assert [r.decision for r, _ in results] == [decision for _, decision in cases] * 3
    assert all(version == 1 for _, version in results)
    assert [NOT_A_SESSION in r.error for r, _ in results] == [request is ROLE_WITH_TAGS for request, _ in cases] * 3
    with pytest.raises(ValueError, match="values are strings"):
        client.check(UNTAGGED_SESSION, "s3:GetObject", OBJECT, session_tags={"team": 1})
    with pytest.raises(ValueError, match="must be an object"):
        list(client.check_batch([{**item(UNTAGGED_SESSION), "session_tags": ["team"]}]))


def client_check(target: str, principal: str, *options: str) -> list[str]:
    return ["client", "--target", target, "check", "--principal", principal, "--action", "s3:GetObject",
            "--resource", OBJECT, *options]


@pytest.mark.parametrize("principal, tag, untagged, tagged", [
    (UNTAGGED_SESSION, "team=blocked", ("Allow", 0), ("ExplicitDeny", 1)),
    (BLOCKED_SESSION, "team=ok", ("ExplicitDeny", 1), ("Allow", 0)),
], ids=["a session's tag applies", "a session's tag overrides its role's"])
def test_cli_client_check_with_session_tags(target, capsys, principal, tag, untagged, tagged):
    """The context's aws:PrincipalTag/team says the opposite each time, and never counts."""
    forged = ["--context", f"{TEAM}={'ok' if tag == 'team=blocked' else 'blocked'}"]
    for options, (printed, code) in (([], untagged), (["--session-tag", tag], tagged)):
        assert main(client_check(target, principal, *forged, *options)) == code
        assert capsys.readouterr().out.splitlines()[0] == printed


def test_cli_client_check_of_a_role(target, capsys):
    """A role's tags come from the store: a forged one is dropped, and session tags are refused."""
    assert main(client_check(target, UNTAGGED, "--context", f"{TEAM}=blocked")) == 0
    assert capsys.readouterr().out.splitlines()[0] == "Allow"
    assert main(client_check(target, UNTAGGED, "--session-tag", "team=ok")) == 2
    assert f"INVALID_ARGUMENT: {NOT_A_SESSION}" in capsys.readouterr().err
    assert main(client_check(target, UNTAGGED_SESSION, "--session-tag", "team")) == 2
    assert "write key=value" in capsys.readouterr().err


def test_cli_client_batch_reads_session_tags(target, tmp_path, capsys):
    cases = [*CASES.values(), (ROLE_WITH_TAGS, IMPLICIT)]
    log = tmp_path / "requests.jsonl"
    log.write_text("".join(json.dumps(request) + "\n" for request, _ in cases))
    out = tmp_path / "results.jsonl"
    assert main(["client", "--target", target, "batch", "--input", str(log), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["decision"] for row in rows] == [NAMES[decision] for _, decision in cases]
    assert {row["store_version"] for row in rows} == {1}
    assert [NOT_A_SESSION in (row["error"] or "") for row in rows] == [r is ROLE_WITH_TAGS for r, _ in cases]


# ---------------------------------------------------------------- batch jobs


def iam_eval(*argv: str) -> subprocess.CompletedProcess:
    """The real command, in its own process: the batch runner forks workers, which a process serving gRPC
    should not."""
    return subprocess.run([sys.executable, "-m", "iam_evaluator", *argv], cwd=REPO, env=cli_environment(),
                          capture_output=True, text=True, timeout=300)


def test_a_batch_job_decides_session_tags_and_reports_malformed_ones(store_file, tmp_path):
    """``iam-eval batch --store`` over JSON Lines: each record's session tags decide as in the service, and a
    record whose session_tags are not an object of strings is a malformed record, with its file:line. The
    same requests as Parquet, session tags as a struct column, decide the same."""
    cases = [*CASES.values(), (ROLE_WITH_TAGS, IMPLICIT)]
    lines = [json.dumps(request) for request, _ in cases]
    lines.insert(2, json.dumps({**item(UNTAGGED_SESSION), "session_tags": {"team": 7}}))
    lines.insert(5, json.dumps({**item(UNTAGGED_SESSION), "session_tags": "team=blocked"}))
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    parquet = tmp_path / "log.parquet"
    write_requests_parquet(read_requests(log), parquet)
    for source, workers in ((log, "1"), (parquet, "2")):
        output = tmp_path / f"{source.name}.decisions.jsonl"
        job = iam_eval("batch", "--store", str(store_file), "--input", str(source), "--output", str(output),
                       "--workers", workers)
        assert job.returncode == 0, job.stderr
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        assert [row["decision"] for row in rows] == [NAMES[decision] for _, decision in cases], source.name
        assert [NOT_A_SESSION in (row["error"] or "") for row in rows] == [r is ROLE_WITH_TAGS for r, _ in cases]
        if source == log:
            assert "2 bad session tags" in job.stdout
            assert f"{log}:3: bad session tags: session tag 'team': values are strings, not 7" in job.stdout
            assert f"{log}:6: bad session tags: session_tags must be an object" in job.stdout
