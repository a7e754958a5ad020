"""``iam-eval test`` on the files a repository keeps: cases naming policy files or a store, JUnit and JSON
reports, and failures that say which statements nearly applied. Every expected decision and reason is
worked out by hand from the AWS IAM User Guide's evaluation logic, not by running the code under test."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from iam_evaluator.cases import ENGINES, Engine, run_files

from .conftest import run_cli

ENGINE_NAMES = sorted(ENGINES)
ACCOUNT = "111122223333"
DEV = f"arn:aws:iam::{ACCOUNT}:role/Dev"
REPORT = "arn:aws:s3:::reports/q1.csv"

READ_REPORTS = {"Version": "2012-10-17", "Statement": [
    {"Sid": "ReadReports", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::reports/*"}]}
S3_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
NO_DELETES = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "*", "Resource": "*"},
    {"Sid": "NoDeletes", "Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"}]}


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def case(case_id: str, expect: str, action: str = "s3:GetObject", resource: str = REPORT, principal: str = DEV,
         context: dict | None = None, **where) -> dict:
    """A case; ``where`` is ``policies={…}`` or ``store="path"``."""
    request = {"principal": principal, "action": action, "resource": resource, "context": context or {}}
    return {"id": case_id, **where, "request": request, "expect": {"decision": expect}}


def write_cases(path: Path, *cases: dict) -> Path:
    return write(path, "".join(json.dumps(c) + "\n" for c in cases))


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A repository keeping policy files beside its cases, run from another folder: paths are relative to the
    case file, not to where iam-eval runs."""
    write(tmp_path / "repo" / "policies" / "dev.json", READ_REPORTS)
    write(tmp_path / "repo" / "boundary.json", S3_ONLY)
    write(tmp_path / "repo" / "scps" / "root.json", NO_DELETES)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "repo"


LAYERS = {"identity": ["policies/dev.json"], "permissions_boundary": ["boundary.json"], "scp": [["scps/root.json"]]}


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_cases_naming_policy_files(capsys, repo, engine):
    """The identity policy allows reading reports, the boundary allows S3, the SCP allows all but deletes."""
    cases = write_cases(
        repo / "cases.jsonl",
        case("reads", "Allow", policies=LAYERS),
        case("writes", "ImplicitDeny", action="s3:PutObject", policies=LAYERS),  # no identity Allow
        case("deletes", "ExplicitDeny", action="s3:DeleteObject", policies=LAYERS),  # the SCP's Deny
        case("ec2-outside-boundary", "ImplicitDeny", action="ec2:RunInstances", resource="*",
             policies={"identity": [{"Version": "2012-10-17", "Statement": [
                 {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}]}],
                 "permissions_boundary": ["boundary.json"]}),
        case("absolute", "Allow", policies={"identity": [str(repo / "policies" / "dev.json")]}),
    )
    assert run_cli(capsys, "test", str(cases), "--engine", engine) == (0, "5 passed, 0 failed\n", "")


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_decisions_name_the_policy_file(capsys, repo, engine):
    cases = write_cases(repo / "cases.jsonl", case("denied?", "ExplicitDeny", policies=LAYERS))
    code, out, _ = run_cli(capsys, "test", str(cases), "--engine", engine)
    assert code == 1
    assert "FAIL denied? [" in out and "expected ExplicitDeny, got Allow" in out
    assert "    statement: Allow policies/dev.json#0 (ReadReports)" in out.splitlines()


def test_a_missing_file_fails_its_case_and_the_others_still_run(capsys, repo):
    cases = write_cases(repo / "cases.jsonl",
                        case("missing", "Allow", policies={"identity": ["policies/nope.json"]}),
                        case("reads", "Allow", policies=LAYERS))
    code, out, _ = run_cli(capsys, "test", str(cases))
    assert code == 1
    assert out.splitlines() == [
        f"FAIL missing: {cases}:1: cannot read policy file 'policies/nope.json': No such file or directory",
        "1 passed, 1 failed"]


@pytest.mark.parametrize("duplicate", [
    '{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": []}',
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Effect": "Deny", "Action": "*", "Resource": "*"}]}',
])
def test_a_key_given_twice_in_a_named_file_fails_the_case(capsys, repo, duplicate):
    """JSON keeps the last of two equal keys; a policy file is read strictly, as everywhere, so it fails."""
    write(repo / "policies" / "twice.json", duplicate)
    cases = write_cases(repo / "cases.jsonl",
                        case("twice", "ImplicitDeny", policies={"identity": ["policies/twice.json"]}))
    code, out, _ = run_cli(capsys, "test", str(cases))
    assert code == 1
    assert "FAIL twice:" in out and "policy file 'policies/twice.json'" in out
    assert "[E002]" in out and "is given more than once" in out
    assert out.splitlines()[-1] == "0 passed, 1 failed"


def test_an_invalid_policy_file_is_named_by_its_path(capsys, repo):
    write(repo / "policies" / "bad.json", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Permit", "Action": "s3:GetObject", "Resource": "*"}]})
    cases = write_cases(repo / "cases.jsonl", case("bad", "Allow", policies={"identity": ["policies/bad.json"]}))
    code, out, _ = run_cli(capsys, "test", str(cases))
    assert code == 1
    assert f"FAIL bad: {cases}:1: policies/bad.json: invalid policy" in out


def tiny_store(root: Path) -> Path:
    """Role Dev reads reports while its tag says team=data; the organisation's only SCP denies deletes."""
    write(root / "principals" / "dev.json", {"arn": DEV, "managed_policies": [f"arn:aws:iam::{ACCOUNT}:policy/Reports"],
                                             "tags": {"team": "data"}})
    write(root / "managed_policies" / "reports.json", {"arn": f"arn:aws:iam::{ACCOUNT}:policy/Reports", "document": {
        "Version": "2012-10-17", "Statement": [
            {"Sid": "ReadReports", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::reports/*",
             "Condition": {"StringEquals": {"aws:PrincipalTag/team": "data"}}},
            {"Sid": "DeleteReports", "Effect": "Allow", "Action": "s3:DeleteObject",
             "Resource": "arn:aws:s3:::reports/*"}]}})
    write(root / "scps" / "guard.json", {"name": "Guard", "document": NO_DELETES})
    write(root / "organization.json", {"id": "o-abcdefghij", "root": {"id": "r-ab12", "scps": ["Guard"],
                                                                      "children": [{"id": ACCOUNT}]}})
    return root


STORE_CASES = [
    # The store's tag for Dev, not the request's, is what aws:PrincipalTag/team says.
    case("reads", "Allow", context={"aws:PrincipalTag/team": "other"}, store="store"),
    case("deletes", "ExplicitDeny", action="s3:DeleteObject", store="store"),  # the SCP's Deny
    case("writes", "ImplicitDeny", action="s3:PutObject", store="store"),
    case("stranger", "ImplicitDeny", principal=f"arn:aws:iam::{ACCOUNT}:role/Stranger", store="store"),
]


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_cases_naming_a_store_directory(capsys, tmp_path, engine):
    tiny_store(tmp_path / "store")
    cases = write_cases(tmp_path / "cases.jsonl", *STORE_CASES)
    assert run_cli(capsys, "test", str(cases), "--engine", engine) == (0, "4 passed, 0 failed\n", "")


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_cases_naming_a_store_snapshot(capsys, tmp_path, engine):
    """The same store as one snapshot file (``PolicyStore.to_json``'s format, written by hand)."""
    write(tmp_path / "snapshot.json", {
        "principals": [{"arn": DEV, "managed_policies": [f"arn:aws:iam::{ACCOUNT}:policy/Reports"],
                        "tags": {"team": "data"}}],
        "managed_policies": [{"arn": f"arn:aws:iam::{ACCOUNT}:policy/Reports", "document": READ_REPORTS}]})
    cases = write_cases(tmp_path / "cases.jsonl", case("reads", "Allow", store="snapshot.json"),
                        case("writes", "ImplicitDeny", action="s3:PutObject", store="snapshot.json"))
    assert run_cli(capsys, "test", str(cases), "--engine", engine) == (0, "2 passed, 0 failed\n", "")


def test_a_store_is_prepared_once_per_run(tmp_path):
    """Two case files in different folders naming one store by different paths, and a second store."""
    tiny_store(tmp_path / "store")
    tiny_store(tmp_path / "other-store")
    first = write_cases(tmp_path / "cases.jsonl", *STORE_CASES)
    second = write_cases(tmp_path / "more" / "cases.jsonl", case("reads", "Allow", store="../store"),
                         case("again", "Allow", store=str(tmp_path / "store")),
                         case("other", "Allow", store="../other-store"))
    prepared = []
    compiled = ENGINES["compiled"]

    def counting(store):
        prepared.append(store)
        return compiled.for_store(store)

    results = run_files([first, second], Engine(compiled.evaluate, counting))
    assert all(result.passed for _, outcomes in results for _, result in outcomes)
    assert len(prepared) == 2


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_an_unreadable_store_fails_its_cases(capsys, tmp_path, engine):
    write(tmp_path / "broken" / "principals" / "dev.json", '{"arn": "x", "arn": "y"}')
    cases = write_cases(tmp_path / "cases.jsonl", case("no-store", "Allow", store="nowhere"),
                        case("broken", "Allow", store="broken"))
    code, out, _ = run_cli(capsys, "test", str(cases), "--engine", engine)
    assert code == 1
    assert f"FAIL no-store: {cases}:1: cannot read store 'nowhere': No such file or directory" in out
    assert "FAIL broken:" in out and "[E002]" in out
    assert out.splitlines()[-1] == "0 passed, 2 failed"


NEAR_MISSES = {"Version": "2012-10-17", "Statement": [
    {"Sid": "OtherBucket", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::other/*"},
    {"Sid": "InEurope", "Effect": "Allow", "Action": "s3:Get*", "Resource": "*",
     "Condition": {"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}},
    {"Sid": "FromOffice", "Effect": "Allow", "Action": "s3:*", "Resource": "*",
     "Condition": {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}},
    {"Sid": "Writes", "Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"},  # another action
    {"Sid": "NotHere", "Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::other/*"},  # a Deny
]}
PARTNER_BUCKET = {"Version": "2012-10-17", "Statement": [
    {"Sid": "Partner", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::444455556666:role/Partner"},
     "Action": "s3:GetObject", "Resource": "arn:aws:s3:::reports/*"}]}


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_an_unexpected_deny_lists_the_statements_that_nearly_applied(capsys, repo, engine):
    write(repo / "policies" / "near.json", NEAR_MISSES)
    cases = write_cases(repo / "cases.jsonl", case(
        "reads", "Allow", context={"aws:RequestedRegion": "us-east-1"},
        policies={"identity": ["policies/near.json"], "resource": PARTNER_BUCKET}))
    code, out, _ = run_cli(capsys, "test", str(cases), "--engine", engine)
    assert code == 1
    assert out.splitlines()[1:] == [
        "    missing context keys: aws:SourceIp",
        f"    nearly applied: Allow policies/near.json#0 (OtherBucket): Resource does not match {REPORT}",
        "    nearly applied: Allow policies/near.json#1 (InEurope): condition StringEquals on aws:RequestedRegion "
        "is false",
        "    nearly applied: Allow policies/near.json#2 (FromOffice): context key aws:SourceIp is missing (IpAddress)",
        "    nearly applied: Allow resource#0 (Partner): its Principal does not name the caller",
        "0 passed, 1 failed",
    ]
    assert out.startswith("FAIL reads [")
    assert "expected Allow, got ImplicitDeny" in out.splitlines()[0]


def test_near_misses_are_bounded(capsys, tmp_path):
    """Seven Allows for the action, none for the resource: five are shown, then the count of the rest."""
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": f"Bucket{n}", "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::bucket{n}/*"}
        for n in range(7)]}
    cases = write_cases(tmp_path / "cases.jsonl", case("reads", "Allow", policies={"identity": [policy]}))
    code, out, _ = run_cli(capsys, "test", str(cases))
    lines = out.splitlines()
    assert code == 1
    assert [line for line in lines if "nearly applied: " in line] == [
        f"    nearly applied: Allow identity[0]#{n} (Bucket{n}): Resource does not match {REPORT}" for n in range(5)]
    assert "    … and 2 more statement(s) that nearly applied" in lines


def test_an_expected_deny_lists_no_near_misses(capsys, repo):
    cases = write_cases(repo / "cases.jsonl", case("wrongly-denied", "ExplicitDeny", context={},
                                                   policies={"identity": ["policies/dev.json"]},
                                                   resource="arn:aws:s3:::other/x"))
    code, out, _ = run_cli(capsys, "test", str(cases))
    assert code == 1 and "nearly applied" not in out


def two_case_files(repo: Path) -> tuple[Path, Path]:
    """One file with a pass, a wrong decision and a case naming a missing file; one with a pass."""
    first = write_cases(repo / "cases.jsonl", case("reads", "Allow", policies=LAYERS),
                        case("wrong", "ExplicitDeny", policies=LAYERS),
                        case("missing", "Allow", policies={"identity": ["nope.json"]}))
    second = write_cases(repo / "more.jsonl", case("writes", "ImplicitDeny", action="s3:PutObject", policies=LAYERS))
    return first, second


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_junit_report(capsys, repo, tmp_path, engine):
    first, second = two_case_files(repo)
    junit = tmp_path / "junit.xml"
    code, out, _ = run_cli(capsys, "test", str(first), str(second), "--junit", str(junit), "--engine", engine)
    assert code == 1
    assert out.splitlines()[-1] == "2 passed, 2 failed"  # the text report is still printed
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    suites = root.findall("testsuite")
    assert [(s.get("name"), s.get("tests"), s.get("failures"), s.get("errors")) for s in suites] == [
        (str(first), "3", "1", "1"), (str(second), "1", "0", "0")]
    testcases = [(t.get("classname"), t.get("name")) for t in root.iter("testcase")]
    assert testcases == [(str(first), "reads"), (str(first), "wrong"), (str(first), "missing"),
                         (str(second), "writes")]
    wrong, missing = suites[0].findall("testcase")[1:]
    failure = wrong.find("failure")
    assert failure.get("message").startswith("FAIL wrong [") and "expected ExplicitDeny, got Allow" in failure.get(
        "message")
    assert "statement: Allow policies/dev.json#0 (ReadReports)" in failure.text
    assert wrong.find("error") is None and missing.find("failure") is None
    assert "cannot read policy file 'nope.json'" in missing.find("error").get("message")
    assert suites[1].find("testcase").find("failure") is None


def test_json_report(capsys, repo):
    first, second = two_case_files(repo)
    code, out, _ = run_cli(capsys, "test", str(first), str(second), "--format", "json")
    report = json.loads(out)
    assert code == 1
    assert report["totals"] == {"cases": 4, "passed": 2, "failed": 2}
    cases = report["cases"]
    assert len({tuple(c) for c in cases}) == 1, "every case has the same fields"
    assert [(c["file"], c["line"], c["id"], c["passed"]) for c in cases] == [
        (str(first), 1, "reads", True), (str(first), 2, "wrong", False), (str(first), 3, "missing", False),
        (str(second), 1, "writes", True)]
    reads, wrong, missing, _ = cases
    assert (reads["decision"], reads["decided_by"], reads["error"], reads["problem"]) == ("Allow", "identity", None,
                                                                                          None)
    # Every layer allows: the identity policy, the boundary and the SCP level, each naming its file.
    assert sorted(reads["statements"], key=lambda s: s["policy"]) == [
        {"policy": "boundary.json", "index": 0, "sid": None, "effect": "Allow"},
        {"policy": "policies/dev.json", "index": 0, "sid": "ReadReports", "effect": "Allow"},
        {"policy": "scps/root.json", "index": 0, "sid": None, "effect": "Allow"}]
    assert wrong["expected"] == {"decision": "ExplicitDeny", "decided_by": None}
    assert (missing["decision"], missing["statements"]) == (None, [])
    assert "cannot read policy file 'nope.json'" in missing["problem"]
    assert run_cli(capsys, "test", str(first), "--json")[1] == \
        run_cli(capsys, "test", str(first), "--format", "json")[1]


def test_json_report_near_misses(capsys, repo):
    write(repo / "policies" / "near.json", NEAR_MISSES)
    cases = write_cases(repo / "cases.jsonl", case("reads", "Allow", context={"aws:RequestedRegion": "us-east-1"},
                                                   policies={"identity": ["policies/near.json"]}))
    [reads] = json.loads(run_cli(capsys, "test", str(cases), "--json")[1])["cases"]
    unset = {"patterns": [], "operator": "", "key": "", "sent": [], "wanted": [], "cut_by": ""}
    assert reads["near_misses"] == [
        {"policy": "policies/near.json", "index": 0, "sid": "OtherBucket", "effect": "Allow", "layer": "identity",
         **unset, "kind": "resource", "reason": f"Resource does not match {REPORT}",
         "patterns": ["arn:aws:s3:::other/*"]},
        {"policy": "policies/near.json", "index": 1, "sid": "InEurope", "effect": "Allow", "layer": "identity",
         **unset, "kind": "condition", "reason": "condition StringEquals on aws:RequestedRegion is false",
         "operator": "StringEquals", "key": "aws:RequestedRegion", "sent": ["us-east-1"], "wanted": ["eu-west-1"]},
        {"policy": "policies/near.json", "index": 2, "sid": "FromOffice", "effect": "Allow", "layer": "identity",
         **unset, "kind": "missing_key", "reason": "context key aws:SourceIp is missing (IpAddress)",
         "operator": "IpAddress", "key": "aws:SourceIp"}]
    assert reads["more_near_misses"] == 0


def test_exit_codes(capsys, repo, tmp_path):
    passing = write_cases(repo / "pass.jsonl", case("reads", "Allow", policies=LAYERS))
    failing = write_cases(repo / "fail.jsonl", case("reads", "ImplicitDeny", policies=LAYERS))
    assert run_cli(capsys, "test", str(passing))[0] == 0
    assert run_cli(capsys, "test", str(passing), str(failing))[0] == 1
    code, _, err = run_cli(capsys, "test", str(passing), str(tmp_path / "absent.jsonl"))
    assert code == 2 and "no such case file" in err
    code, _, err = run_cli(capsys, "test", str(passing), "--junit", str(tmp_path / "no-such-folder" / "junit.xml"))
    assert code == 2 and "no-such-folder" in err


DEEP: object = 0
for _ in range(500):
    DEEP = [DEEP]

HOSTILE = {
    "a number": {"policies": {"identity": 5}},
    "numbers": {"policies": {"identity": [1, 2, 3]}},
    "a list of numbers as a policy": {"policies": {"identity": [[1, 2, 3]]}},
    "levels of numbers": {"policies": {"scp": [[7]], "rcp": [7]}},
    "a long list": {"policies": {"identity": [list(range(100_000))]}},
    "deeply nested lists": {"policies": {"identity": [DEEP], "scp": DEEP}},
    "a lone surrogate": {"policies": {"identity": ["\ud800"]}},
    "a lone surrogate in a level": {"policies": {"scp": [["\ud800.json"]]}},
    "a NUL": {"policies": {"identity": ["a\x00b.json"]}},
    "a very long path": {"policies": {"identity": ["x" * 100_000]}},
    "an empty path": {"policies": {"resource": ""}},
    "a folder": {"policies": {"identity": ["."]}},
    "policies as a path": {"policies": "policies/dev.json"},
    "JSON text": {"policies": {"identity": [json.dumps(READ_REPORTS)]}},
    "a store number": {"store": 5},
    "a store with a lone surrogate": {"store": "\ud800"},
    "a very long store path": {"store": "s" * 100_000},
    "policies and a store": {"policies": LAYERS, "store": "."},
    "no policies nor store": {},
}


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_hostile_shapes_fail_their_case(capsys, repo, tmp_path, engine, hostile):
    """Every one of these fails its case (exit 1), in every report, and never passes or raises."""
    request = {"principal": DEV, "action": "s3:GetObject", "resource": REPORT}
    cases = write_cases(repo / "cases.jsonl", {"id": f"\ud800{hostile}\x01", **HOSTILE[hostile], "request": request,
                                               "expect": {"decision": "ImplicitDeny"}})
    junit = tmp_path / "junit.xml"
    code, out, _ = run_cli(capsys, "test", str(cases), "--engine", engine, "--junit", str(junit))
    assert (code, out.splitlines()[-1]) == (1, "0 passed, 1 failed")
    assert out.startswith("FAIL ")
    assert ET.parse(junit).getroot().get("errors") == "1"
    code, out, _ = run_cli(capsys, "test", str(cases), "--engine", engine, "--json")
    assert (code, json.loads(out)["totals"]) == (1, {"cases": 1, "passed": 0, "failed": 1})
