"""Explanations where users read them: ``iam-eval check --explain`` (text and JSON), and the service's
``explain=true`` (Check and CheckBatch, the proto's CheckResult, and ``iam-eval client check --explain``).
Expected answers are written by hand, or are the reference evaluator's for the example store."""
from __future__ import annotations

import json

import pytest

from iam_evaluator import Request
from iam_evaluator.server import convert
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client
from iam_evaluator.store import PolicyStore, reference_decision

from .conftest import run_cli
from .service_helpers import (
    ALICE,
    EXAMPLE_STORE,
    IMAGE,
    ROLE,
    RPC_TIMEOUT,
    copy_store,
    document,
    running_service,
    sample_requests,
)

TEAM_MFA = {"Sid": "TeamMfa", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
            "Condition": {"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}"},
                          "Bool": {"aws:MultiFactorAuthPresent": "true"}}}
OTHER_BUCKET = {"Sid": "Other", "Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::other/*"}
USER = "arn:aws:iam::111122223333:user/bob"
OBJECT = "arn:aws:s3:::reports/q1.csv"


@pytest.fixture
def team_policy(tmp_path):
    path = tmp_path / "team.json"
    path.write_text(document(TEAM_MFA, OTHER_BUCKET))
    return str(path)


@pytest.mark.parametrize("engine", ["compiled", "reference"])
def test_check_explain_prints_every_missing_key_with_its_statement_and_the_near_misses(capsys, team_policy, engine):
    code, out, _ = run_cli(capsys, "check", "--policy", team_policy, "--principal", USER, "--action", "s3:GetObject",
                       "--resource", OBJECT, "--explain", "--engine", engine)
    assert code == 1
    assert out.splitlines() == [
        "ImplicitDeny  (decided by identity: no identity-based or resource-based policy allows the request)",
        "  missing context keys: aws:MultiFactorAuthPresent, aws:PrincipalTag/team, aws:ResourceTag/team",
        f"    aws:MultiFactorAuthPresent: needed by Allow {team_policy}#0 (TeamMfa)",
        f"    aws:PrincipalTag/team: needed by Allow {team_policy}#0 (TeamMfa)",
        f"    aws:ResourceTag/team: needed by Allow {team_policy}#0 (TeamMfa)",
        f"  nearly applied in identity: Allow {team_policy}#0 (TeamMfa): policy variable ${{aws:PrincipalTag/team}} "
        "is not in the request context",
        f"  nearly applied in identity: Allow {team_policy}#1 (Other): Resource does not match {OBJECT}; "
        "patterns arn:aws:s3:::other/*",
    ]


def test_check_explain_shows_what_a_false_condition_compared(capsys, team_policy):
    code, out, _ = run_cli(capsys, "check", "--policy", team_policy, "--principal", USER, "--action", "s3:GetObject",
                       "--resource", OBJECT, "--explain", "--context", "aws:PrincipalTag/team=red",
                       "--context", "aws:ResourceTag/team=blue", "--context", "aws:MultiFactorAuthPresent=true")
    assert code == 1
    assert f"  nearly applied in identity: Allow {team_policy}#0 (TeamMfa): condition StringEquals on " \
           'aws:ResourceTag/team is false; sent ["blue"], wanted ["red"]' in out.splitlines()


def test_check_without_explain_prints_what_it_printed(capsys, team_policy):
    _, out, _ = run_cli(capsys, "check", "--policy", team_policy, "--principal", USER, "--action", "s3:GetObject",
                    "--resource", OBJECT)
    assert "nearly applied" not in out and "needed by" not in out
    assert "  missing context keys: aws:MultiFactorAuthPresent, aws:PrincipalTag/team, aws:ResourceTag/team" in out


def test_check_json_carries_the_explanation(capsys, team_policy):
    code, out, _ = run_cli(capsys, "check", "--policy", team_policy, "--principal", USER, "--action", "s3:GetObject",
                       "--resource", OBJECT, "--json", "--context", "aws:PrincipalTag/team=red")
    decision = json.loads(out)
    team = {"policy": team_policy, "index": 0, "sid": "TeamMfa", "effect": "Allow"}
    assert code == 1
    assert decision["missing_key_statements"] == [{"key": "aws:MultiFactorAuthPresent", "statements": [team]},
                                                  {"key": "aws:ResourceTag/team", "statements": [team]}]
    assert decision["near_misses"][0] == {
        **team, "layer": "identity", "kind": "missing_key",
        "reason": "context key aws:ResourceTag/team is missing (StringEquals)", "patterns": [],
        "operator": "StringEquals", "key": "aws:ResourceTag/team", "sent": [], "wanted": [], "cut_by": ""}
    assert [m["kind"] for m in decision["near_misses"]] == ["missing_key", "resource"]
    assert decision["more_near_misses"] == 0


# ---------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    with running_service(copy_store(root), root / "state") as running:
        yield running


@pytest.fixture(scope="module")
def client(service):
    with Client(f"127.0.0.1:{service.port}", timeout=RPC_TIMEOUT) as connected:
        yield connected


def statement(policy: str, index: int, sid: str, effect: str = "Allow") -> pb.StatementRef:
    return pb.StatementRef(policy=policy, index=index, sid=sid, effect=effect)


def test_check_explain_fills_the_new_fields(client):
    request = pb.CheckRequest(principal=USER, action="s3:GetObject", resource=OBJECT, explain=True,
                              policies=pb.InlinePolicies(
                                  identity=[document(TEAM_MFA)],
                                  permissions_boundary=[document({"Sid": "Reads", "Effect": "Allow",
                                                                  "Action": "s3:Get*", "Resource": "*"})]),
                              context={"aws:PrincipalTag/team": pb.ContextValues(values=["red"]),
                                       "aws:ResourceTag/team": pb.ContextValues(values=["red"])})
    result = client.call(client.authorizer.Check, request).result
    team = statement("identity[0]", 0, "TeamMfa")
    assert list(result.missing_key_statements) == [pb.MissingKey(key="aws:MultiFactorAuthPresent",
                                                                 statements=[team])]
    assert list(result.near_misses) == [pb.NearMiss(
        statement=team, layer="identity", kind="missing_key",
        reason="context key aws:MultiFactorAuthPresent is missing (Bool)", operator="Bool",
        key="aws:MultiFactorAuthPresent")]  # the boundary's Allow applied, and only limits: no near miss
    assert result.more_near_misses == 0


def test_check_without_explain_sends_no_explanation(client):
    request = pb.CheckRequest(principal=USER, action="s3:GetObject", resource=OBJECT,
                              policies=pb.InlinePolicies(identity=[document(TEAM_MFA)]))
    result = client.call(client.authorizer.Check, request).result
    assert (list(result.missing_key_statements), list(result.near_misses)) == ([], [])


def test_an_allow_cut_by_the_stores_boundary(client):
    result = client.check(ALICE, "imagebuilder:CreateImage", IMAGE, {"aws:RequestedRegion": "us-east-1"},
                          explain=True).result
    assert result.decided_by == "permissions_boundary"
    cut = [m for m in result.near_misses if m.kind == "layer"]
    assert [(m.statement.policy, m.layer, m.cut_by, m.reason) for m in cut] == [
        ("arn:aws:iam::aws:policy/AWSImageBuilderFullAccess", "identity", "permissions_boundary",
         "the permissions boundary does not allow the request")]


def test_check_batch_explanations_are_the_references(client):
    store = PolicyStore.from_directory(EXAMPLE_STORE)
    items = sample_requests()
    got = [convert.decision(result) for result, _ in client.check_batch(items, batch_size=16, explain=True)]
    expected = [reference_decision(store, Request.create(item["principal"], item["action"], item["resource"],
                                                         item["context"])) for item in items]
    assert got == expected
    assert any(d.near_misses for d in got) and any(d.missing_key_statements for d in got)


def test_client_check_explain_prints_as_check_does(capsys, service):
    code, out, _ = run_cli(capsys, "client", "--target", f"127.0.0.1:{service.port}", "check", "--principal", ROLE,
                       "--action", "imagebuilder:CreateImage", "--resource", IMAGE, "--explain")
    assert code == 1
    assert "  missing context keys: aws:RequestedRegion" in out.splitlines()
    assert "    aws:RequestedRegion: needed by Deny scp/DenyOutsideApprovedRegions#0 (DenyOutsideApprovedRegions)" \
        in out.splitlines()
