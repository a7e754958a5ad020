"""``iam-eval validate`` as users run it: the shipped catalog, --fail-on, --type, folders, and the formats."""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from iam_evaluator.catalog import CATALOG_ENV
from iam_evaluator.locate import locate

from .conftest import run_cli
from .sarif_schema import SARIF_SCHEMA, SCHEMA_URI

V = "2012-10-17"

_PCHAR = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-F]{2})"
URI_REFERENCE = re.compile(  # RFC 3986: a file URI, or a relative path whose first segment has no colon
    rf"file://(?:/{_PCHAR}*)+|(?:[A-Za-z0-9._~!$&'()*+,;=@-]|%[0-9A-F]{{2}})+(?:/{_PCHAR}*)*")


def assert_valid_sarif(log: dict) -> None:
    """``log`` follows the SARIF 2.1.0 schema, and its URIs are RFC 3986 references (jsonschema does not check
    the schema's uri formats)."""
    jsonschema.validate(log, SARIF_SCHEMA, cls=jsonschema.Draft7Validator)
    for sarif_run in log["runs"]:
        bases = [base["uri"] for base in sarif_run.get("originalUriBaseIds", {}).values()]
        uris = [result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                for result in sarif_run["results"]]
        assert all(URI_REFERENCE.fullmatch(uri) for uri in bases + uris), bases + uris
        assert all(base.startswith("file:///") and base.endswith("/") for base in bases)


@pytest.fixture(autouse=True)
def shipped_catalog(monkeypatch):
    """Every test here runs as after a plain pip install: no catalog but the one in the package."""
    monkeypatch.delenv(CATALOG_ENV, raising=False)


def policy(tmp_path, name, *statements, **top):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"Version": V, "Statement": list(statements), **top}, indent=2))
    return path


def allow(action="s3:GetObject", resource="arn:aws:s3:::reports/*", **fields):
    return {"Effect": "Allow", "Action": action, "Resource": resource, **fields}


def test_an_action_typo_is_a_warning_with_a_suggestion(capsys, tmp_path):
    path = policy(tmp_path, "typo.json", allow(action="s3:GetObjekt"))
    code, out, err = run_cli(capsys, "validate", path)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{path}: 0 error(s), 1 warning(s)",
        "  [W003] warning at /Statement/0/Action: 's3:GetObjekt': the IAM catalog has no such s3 action; "
        "did you mean s3:GetObject?",
    ]
    assert run_cli(capsys, "validate", path, "--fail-on", "warning")[0] == 1
    assert run_cli(capsys, "validate", path, "--fail-on", "error")[0] == 0


def test_a_condition_key_typo_is_a_warning_with_a_suggestion(capsys, tmp_path):
    path = policy(tmp_path, "key.json", allow(Condition={"IpAddress": {"aws:SourceIpp": "10.0.0.0/8"}}))
    code, out, _ = run_cli(capsys, "validate", path, "--json")
    [finding] = json.loads(out)[str(path)]
    assert code == 0
    assert (finding["code"], finding["severity"], finding["pointer"]) == \
        ("W004", "warning", "/Statement/0/Condition/IpAddress/aws:SourceIpp")
    assert "did you mean aws:SourceIp," in finding["message"]


def test_errors_fail_by_default_and_warnings_do_not(capsys, tmp_path):
    broken = policy(tmp_path, "broken.json", {**allow(), "Effect": "allow"})
    clean = policy(tmp_path, "clean.json", allow())
    assert run_cli(capsys, "validate", broken)[0] == 1
    assert run_cli(capsys, "validate", clean, "--fail-on", "warning")[0] == 0
    assert run_cli(capsys, "validate", tmp_path / "missing.json")[0] == 2


def test_folders_are_walked_for_json_files(capsys, tmp_path):
    top = policy(tmp_path, "policies/top.json", allow())
    nested = policy(tmp_path, "policies/team/deep/nested.json", allow(action="s3:GetObjekt"))
    (tmp_path / "policies" / "team" / "notes.txt").write_text("not a policy")
    other = policy(tmp_path, "other.json", allow(action="iam:PasRole", resource="*"))
    code, out, _ = run_cli(capsys, "validate", tmp_path / "policies", other, "--format", "json")
    report = json.loads(out)
    assert code == 0
    assert list(report) == [str(nested), str(top), str(other)]
    assert [f["code"] for f in report[str(nested)]] == ["W003"] and report[str(top)] == []
    assert [f["code"] for f in report[str(other)]] == ["W003"]  # iam:PasRole is no action: W013 needs iam:PassRole

    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "validate", tmp_path / "empty")
    assert code == 2 and "no *.json file below" in err


TYPES = [  # (name, --type, statements, exit code, codes)
    ("SCP with Principal", "scp", [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"}], 1,
     ["E018"]),
    ("FullAWSAccess SCP", "scp", [allow(action="*", resource="*")], 0, []),
    ("boundary with Principal", "boundary", [allow(Principal={"AWS": "111122223333"})], 1, ["E018"]),
    ("session policy with NotPrincipal", "session", [allow(NotPrincipal={"AWS": "111122223333"})], 1, ["E018"]),
    ("RCP with an Allow", "rcp", [allow(Principal="*")], 1, ["E027"]),
    ("RCPFullAWSAccess", "rcp", [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}], 0, []),
    ("RCP that denies", "rcp", [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*",
                                 "Condition": {"Bool": {"aws:SecureTransport": "false"}}}], 0, []),
    ("resource policy", "resource", [allow(Principal={"AWS": "111122223333"}, resource="arn:aws:sqs:*:*:q")], 0,
     []),
]


@pytest.mark.parametrize(("policy_type", "statements", "exit_code", "codes"),
                         [pytest.param(*row[1:], id=row[0]) for row in TYPES])
def test_each_type_applies_its_rules(capsys, tmp_path, policy_type, statements, exit_code, codes):
    path = policy(tmp_path, "p.json", *statements)
    code, out, _ = run_cli(capsys, "validate", path, "--type", policy_type, "--json")
    assert (code, [f["code"] for f in json.loads(out)[str(path)]]) == (exit_code, codes)


def test_json_is_an_alias_of_format_json(capsys, tmp_path):
    path = policy(tmp_path, "p.json", allow(action="s3:GetObjekt"))
    assert run_cli(capsys, "validate", path, "--json")[1] == run_cli(capsys, "validate", path, "--format", "json")[1]


SARIF_POLICY = """\
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "Reads",
      "Effect": "Allow",
      "Action": "s3:GetObject",
      "Resource": "arn:aws:s3:::reports/*"
    },
    {
      "Sid": "Typo",
      "Effect": "Allow",
      "Action": ["s3:ListBucket", "s3:GetObjekt"],
      "Resource": "arn:aws:s3:::reports"
    },
    {
      "Effect": "Deny",
      "NotAction": "s3:*",
      "Resource": "*",
      "Condition": {"StringEquals": {"aws:RequestedRegionn": "eu-west-1"}}
    }
  ]
}
"""
BROKEN_POLICY = '{"Statement": [{"Effect": "allow", "Action": "s3:GetObject", "Resource": "*"}]}'


def test_sarif_log(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files under the current directory are named relative to it
    typo, broken = Path("typo.json"), tmp_path / "broken.json"
    typo.write_text(SARIF_POLICY)
    broken.write_text(BROKEN_POLICY)
    code, out, _ = run_cli(capsys, "validate", typo, broken, "--format", "sarif")
    log = json.loads(out)
    assert code == 1

    assert_valid_sarif(log)
    assert log["version"] == "2.1.0" and log["$schema"] == SCHEMA_URI
    [sarif_run] = log["runs"]
    driver = sarif_run["tool"]["driver"]
    assert driver["name"] == "iam-eval"
    assert [rule["id"] for rule in driver["rules"]] == ["E010", "W001", "W003", "W004"]
    assert all(rule["shortDescription"]["text"] for rule in driver["rules"])
    for result in sarif_run["results"]:
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in ("error", "warning", "note") and result["message"]["text"]
        assert set(result["locations"][0]["physicalLocation"]) == {"artifactLocation", "region"}

    # Relative to the current directory, with the base id that says so (an absolute path under it too).
    assert sarif_run["originalUriBaseIds"] == {"%SRCROOT%": {"uri": tmp_path.as_uri() + "/"}}
    file = {"uri": "typo.json", "uriBaseId": "%SRCROOT%"}
    other = {"uri": "broken.json", "uriBaseId": "%SRCROOT%"}
    placed = [(r["ruleId"], r["level"], r["locations"][0]["physicalLocation"]["artifactLocation"],
               r["locations"][0]["physicalLocation"]["region"]) for r in sarif_run["results"]]
    assert placed == [
        # The typo in statement 1 (lines 10-15) is on line 13, where "s3:GetObjekt" starts in column 35.
        ("W003", "warning", file, {"startLine": 13, "startColumn": 35}),
        # The key typo in statement 2 (lines 16-21), at its key.
        ("W004", "warning", file, {"startLine": 20, "startColumn": 38}),
        ("W001", "warning", other, {"startLine": 1, "startColumn": 1}),  # no pointer: the document
        ("E010", "error", other, {"startLine": 1, "startColumn": 17}),  # at the key "Effect"
    ]
    assert SARIF_POLICY.splitlines()[12][34:].startswith('"s3:GetObjekt"')
    assert SARIF_POLICY.splitlines()[19][37:].startswith('"aws:RequestedRegionn"')
    assert BROKEN_POLICY[16:].startswith('"Effect": "allow"')


def test_sarif_log_of_text_that_is_not_json_points_at_line_one(capsys, tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{\n  "Statement": [\n')
    code, out, _ = run_cli(capsys, "validate", path, "--format", "sarif")
    [result] = json.loads(out)["runs"][0]["results"]
    assert code == 1 and result["ruleId"] == "E001"
    assert result["locations"][0]["physicalLocation"]["region"] == {"startLine": 1, "startColumn": 1}


@pytest.mark.parametrize(("pointer", "place"), [
    ("", (2, 1)),
    ("/a", (3, 3)),
    ("/a/1", (3, 12)),
    ("/a/1/k~1x", (3, 13)),
    ("/a/1/t~0y", (3, 23)),
    ("/dup", (5, 3)),  # a key given twice: the one JSON readers keep, the last
    ("/b", None), ("/a/2", None), ("/a/x", None), ("/a/0/z", None),
])
def test_a_pointer_is_located_in_the_text(pointer, place):
    text = '\n{\n  "a": [1, {"k/x": 2, "t~y": [3]}],\n  "dup": 1,\n  "dup": {"é": 2}\n}'
    assert locate(text, pointer) == place


def test_locating_in_text_that_is_not_json_finds_nothing():
    assert locate('{"a": [1, 2', "/a/1") is None
    assert locate('{"a" 1}', "/a") is None
