"""``iam-eval`` as users run it: exit codes, output, and bad input."""
from __future__ import annotations

import json

import pytest

from .conftest import CONFORMANCE, EXAMPLES, require, run_cli

FULL = str(EXAMPLES / "AWSImageBuilderFullAccess.json")
READ_ONLY = str(EXAMPLES / "AWSImageBuilderReadOnlyAccess.json")
ROLE = "arn:aws:iam::111122223333:role/Builder"
IMAGE = "arn:aws:imagebuilder:us-east-1:111122223333:image/my-recipe/1.0.0/1"


def test_check_allow_exits_zero_and_names_the_statement(capsys):
    code, out, _ = run_cli(capsys, "check", "--policy", FULL, "--principal", ROLE,
                       "--action", "imagebuilder:GetImage", "--resource", IMAGE)
    assert code == 0
    assert out.startswith("Allow")
    assert f"Allow {FULL}#0" in out


def test_check_implicit_deny_exits_one(capsys):
    code, out, _ = run_cli(capsys, "check", "--policy", READ_ONLY, "--principal", ROLE,
                       "--action", "imagebuilder:DeleteImage", "--resource", IMAGE)
    assert (code, out.split()[0]) == (1, "ImplicitDeny")


def test_check_json_reports_missing_keys(capsys):
    code, out, _ = run_cli(capsys, "check", "--policy", FULL, "--principal", ROLE, "--action", "iam:PassRole",
                       "--resource", "arn:aws:iam::111122223333:role/my-imagebuilder-role", "--json")
    decision = json.loads(out)
    assert code == 1
    assert decision["decision"] == "ImplicitDeny"
    assert decision["missing_keys"] == ["iam:PassedToService"]


def test_check_context_satisfies_the_condition(capsys):
    code, out, _ = run_cli(capsys, "check", "--policy", FULL, "--principal", ROLE, "--action", "iam:PassRole",
                       "--resource", "arn:aws:iam::111122223333:role/my-imagebuilder-role",
                       "--context", "iam:PassedToService=ec2.amazonaws.com", "--json")
    assert (code, json.loads(out)["decision"]) == (0, "Allow")


def test_check_with_scp_levels_and_deny(capsys, tmp_path):
    deny_all = tmp_path / "deny.json"
    deny_all.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "NoImages", "Effect": "Deny", "Action": "imagebuilder:*", "Resource": "*"}]}))
    code, out, _ = run_cli(capsys, "check", "--policy", FULL, "--scp", FULL, "--scp", str(deny_all),
                       "--principal", ROLE, "--action", "imagebuilder:GetImage", "--resource", IMAGE)
    assert code == 1
    assert out.startswith("ExplicitDeny  (decided by scp[1]")
    assert "(NoImages)" in out


def test_repeated_context_key_becomes_a_list(capsys, tmp_path):
    policy = tmp_path / "tags.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*",
        "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["a", "b"]}}}]}))
    args = ["check", "--policy", str(policy), "--principal", ROLE, "--action", "ec2:CreateTags", "--resource", "*"]
    assert run_cli(capsys, *args, "--context", "aws:TagKeys=a", "--context", "aws:TagKeys=b")[0] == 0
    assert run_cli(capsys, *args, "--context", 'aws:TagKeys=["a", "c"]')[0] == 1


@pytest.mark.parametrize("argv, message", [
    (["--policy", "/no/such/file.json"], "cannot read /no/such/file.json"),
    (["--policy", FULL, "--context", "novalue"], "write key=value"),
], ids=["missing file", "bad context"])
def test_check_bad_input_exits_two(capsys, argv, message):
    code, _, err = run_cli(capsys, "check", *argv, "--principal", ROLE, "--action", "imagebuilder:GetImage",
                       "--resource", IMAGE)
    assert code == 2 and message in err


@pytest.mark.parametrize("engine", ["compiled", "reference"])
def test_check_session_tags_are_the_sessions_principal_tags(capsys, tmp_path, engine):
    """Without a store the request says who the principal is, but a session tag overrides the context's
    aws:PrincipalTag of the same key (as AWS sets it from the session)."""
    policy = tmp_path / "gate.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
        {"Sid": "Blocked", "Effect": "Deny", "Action": "*", "Resource": "*",
         "Condition": {"StringEquals": {"aws:PrincipalTag/team": "blocked"}}}]}))
    session = "arn:aws:sts::111122223333:assumed-role/Builder/s1"
    args = ["check", "--policy", str(policy), "--action", "s3:GetObject", "--resource", "*", "--engine", engine]
    code, out, _ = run_cli(capsys, *args, "--principal", session)
    assert (code, out.split()[0]) == (0, "Allow")
    code, out, _ = run_cli(capsys, *args, "--principal", session, "--session-tag", "team=blocked")
    assert (code, out.split()[0]) == (1, "ExplicitDeny") and "(Blocked)" in out
    code, out, _ = run_cli(capsys, *args, "--principal", session, "--session-tag", "team=ok",
                       "--context", "aws:PrincipalTag/team=blocked")
    assert (code, out.split()[0]) == (0, "Allow")
    code, _, err = run_cli(capsys, *args, "--principal", ROLE, "--session-tag", "team=ok")
    assert code == 2 and "session tags belong to an assumed-role session principal" in err
    for pairs, message in ((["team"], "write key=value"), (["team=a", "team=b"], "given twice")):
        code, _, err = run_cli(capsys, *args, "--principal", session, *(f"--session-tag={pair}" for pair in pairs))
        assert code == 2 and message in err


def test_check_bad_request_exits_two(capsys):
    code, _, err = run_cli(capsys, "check", "--policy", FULL, "--principal", "alice",
                           "--action", "imagebuilder:GetImage", "--resource", IMAGE)
    assert code == 2 and "not an IAM or STS ARN" in err


def test_check_invalid_policy_exits_two_with_findings(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "Permit", "Action": "s3:*", "Resource": "*"}]}')
    code, _, err = run_cli(capsys, "check", "--policy", str(bad), "--principal", ROLE, "--action", "s3:GetObject",
                       "--resource", "*")
    assert code == 2
    assert "[E010] error at /Statement/0/Effect" in err


def test_validate_exit_codes(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3", "Resource": "*"}]}')
    code, out, _ = run_cli(capsys, "validate", FULL, str(bad))
    assert code == 1
    assert f"{bad}: 1 error(s), 0 warning(s)" in out and "[E015]" in out
    assert run_cli(capsys, "validate", FULL)[0] == 0


def test_validate_json_with_catalog(capsys, tmp_path):
    policy = tmp_path / "typo.json"
    policy.write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObjekt", '
                      '"Resource": "*"}]}')
    corpus = str(require(CONFORMANCE.parent / "corpus"))
    code, out, _ = run_cli(capsys, "validate", str(policy), "--json", "--catalog", corpus)
    findings = json.loads(out)[str(policy)]
    assert code == 0
    assert [(f["code"], f["pointer"]) for f in findings] == [("W003", "/Statement/0/Action")]


def test_test_runner_reports_failures_and_counts(capsys, tmp_path):
    cases = tmp_path / "cases.jsonl"
    good = {"id": "good", "policies": {"identity": [json.loads(open(FULL).read())]},
            "request": {"principal": ROLE, "action": "imagebuilder:GetImage", "resource": IMAGE},
            "expect": {"decision": "Allow"}}
    wrong = {**good, "id": "wrong", "expect": {"decision": "ExplicitDeny"}}
    cases.write_text("\n".join([json.dumps(good), json.dumps(wrong), "{not json"]) + "\n")
    code, out, _ = run_cli(capsys, "test", str(cases))
    lines = out.strip().splitlines()
    assert code == 1
    assert lines[-1] == "1 passed, 2 failed"
    assert any(line.startswith("FAIL wrong [") and "expected ExplicitDeny, got Allow" in line for line in lines)
    assert any(f"{cases}:3" in line and "not valid JSON" in line for line in lines)


@pytest.mark.parametrize("engine", ["compiled", "reference"])
def test_test_runner_fails_a_case_decided_by_an_evaluation_error(capsys, tmp_path, engine):
    """IAM denies a request it cannot evaluate, so an error "matches" every ImplicitDeny expectation; the case
    must still fail, saying why, since no AWS decision was reproduced."""
    listing = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::logs",
        "Condition": {"NumericLessThanEquals": {"s3:max-keys": "10"}}}]}
    request = {"principal": ROLE, "action": "s3:ListBucket", "resource": "arn:aws:s3:::logs",
               "resource_account": "111122223333"}
    readable = {"id": "readable", "policies": {"identity": [listing]},
                "request": {**request, "context": {"s3:max-keys": "5"}}, "expect": {"decision": "Allow"}}
    unreadable = {"id": "unreadable", "policies": {"identity": [listing]},
                  "request": {**request, "context": {"s3:max-keys": "abc"}}, "expect": {"decision": "ImplicitDeny"}}
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps(readable) + "\n" + json.dumps(unreadable) + "\n")
    code, out, _ = run_cli(capsys, "test", str(cases), "--engine", engine)
    lines = out.strip().splitlines()
    assert code == 1
    assert lines[-1] == "1 passed, 1 failed"
    failures = [line for line in lines if line.startswith("FAIL")]
    assert len(failures) == 1 and failures[0].startswith("FAIL unreadable [")
    assert "evaluation failed" in failures[0] and "s3:max-keys" in failures[0]


def test_test_runner_on_the_sanity_cases(capsys):
    code, out, _ = run_cli(capsys, "test", str(require(CONFORMANCE / "sanity_cases.jsonl")), "--engine", "reference")
    assert code == 0
    assert out.strip().splitlines()[-1] == "42 passed, 0 failed"


def test_test_runner_missing_file_exits_two(capsys):
    code, _, err = run_cli(capsys, "test", "/no/cases.jsonl")
    assert code == 2 and "no such case file" in err
