"""``iam-eval validate --store``, the service's ValidatePolicy and ``client validate``: one set of rules everywhere.

A store is checked whole: each document with the rules of its place (managed and inline policies identity-based, a
managed policy used only as a boundary a boundary, SCPs, RCPs, resource and VPC endpoint policies), the catalog, and
every reference; every finding of every file is reported, located in its file. Expected findings are written by hand.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from iam_evaluator.catalog import CATALOG_ENV
from iam_evaluator.policy_types import PolicyType
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client
from iam_evaluator.store import PolicyStore, StoreError
from iam_evaluator.validate import validate_policy

from .conftest import run_cli
from .service_helpers import RPC_TIMEOUT, copy_store, rpc_error, running_service
from .test_validate_cli import assert_valid_sarif

ACCOUNT = "111122223333"
BUILDERS = f"arn:aws:iam::{ACCOUNT}:policy/Builders"
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/Boundary"
MISSING = f"arn:aws:iam::{ACCOUNT}:policy/Missing"
BUILDER = f"arn:aws:iam::{ACCOUNT}:role/Builder"
ADMIN_TOKEN = "validate-admin-token"


def document(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


# Each file of the store, and the findings expected in it: (code, severity, pointer).
PRINCIPAL_TEXT = f"""{{
  "arn": "{BUILDER}",
  "managed_policies": [
    "{BUILDERS}",
    "{MISSING}"
  ],
  "permissions_boundary": "{BOUNDARY}"
}}
"""
STORE = {
    "managed_policies/Builders.json": (  # a typo in an action: a warning, with a suggestion
        {"arn": BUILDERS, "document": document(
            {"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "arn:aws:s3:::builds/*"})},
        [("W003", "warning", "/document/Statement/0/Action")]),
    "managed_policies/Boundary.json": (  # only a boundary: allowing everything only sets the limit, no warning
        {"arn": BOUNDARY, "document": document({"Effect": "Allow", "Action": "*", "Resource": "*"})},
        []),
    "scps/NoPrincipal.json": (  # an SCP names no principal: E018
        {"name": "NoPrincipal", "document": document(
            {"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteBucket", "Resource": "*"})},
        [("E018", "error", "/document/Statement/0/Principal")]),
    "rcps/AllowReads.json": (  # an RCP may only deny: E027 (the loader alone accepts it)
        {"name": "AllowReads", "document": document(
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"})},
        [("E027", "error", "/document/Statement/0/Effect")]),
    "organization.json": (  # names the broken SCP and RCP: defined, so no reference finding here
        {"id": "o-exampleorg1", "root": {"id": "r-ex12", "scps": ["NoPrincipal"], "rcps": ["AllowReads"],
                                         "children": [{"id": ACCOUNT}]}},
        []),
    "principals/builder.json": (PRINCIPAL_TEXT, [("S002", "error", "/managed_policies/1")]),
    "resource_policies/builds.json": (  # a bucket policy without a TLS deny: a note
        {"resource": "arn:aws:s3:::builds", "document": document(
            {"Effect": "Allow", "Principal": {"AWS": BUILDER}, "Action": "s3:GetObject",
             "Resource": "arn:aws:s3:::builds/*"})},
        [("W018", "note", "/document/Statement/0/Resource")]),
}


@pytest.fixture(autouse=True)
def shipped_catalog(monkeypatch):
    monkeypatch.delenv(CATALOG_ENV, raising=False)


def write_store(root: Path, files: dict) -> Path:
    for relative, (content, _) in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2), encoding="utf-8")
    return root


def as_json(findings: list[dict]) -> list[tuple[str, str, str]]:
    return [(f["code"], f["severity"], f["pointer"]) for f in findings]


# ---------------------------------------------------------------- a store directory


def test_every_finding_of_a_store_is_reported_in_its_file(capsys, tmp_path):
    root = write_store(tmp_path / "store", STORE)
    code, out, err = run_cli(capsys, "validate", "--store", root, "--format", "json")
    assert (code, err) == (1, "")
    report = json.loads(out)
    assert {path: as_json(findings) for path, findings in report.items()} == {
        str(root / relative): expected for relative, (_, expected) in sorted(STORE.items())}
    [typo] = report[str(root / "managed_policies/Builders.json")]
    assert typo["message"].endswith("did you mean s3:GetObject?")
    [reference] = report[str(root / "principals/builder.json")]
    assert reference["message"] == f"no managed policy {MISSING} in the store"


def test_the_loader_refuses_the_same_store_at_its_first_error(tmp_path):
    """One checker: the loader reports the first broken entry in the order references need, with its findings."""
    root = write_store(tmp_path / "store", STORE)
    with pytest.raises(StoreError) as raised:
        PolicyStore.from_directory(root)
    assert raised.value.source == str(root / "scps/NoPrincipal.json")
    assert [(f.code, f.pointer) for f in raised.value.findings] == [("E018", "/document/Statement/0/Principal")]


def test_the_text_report_counts_notes_apart(capsys, tmp_path):
    root = write_store(tmp_path / "store", STORE)
    code, out, _ = run_cli(capsys, "validate", "--store", root)
    lines = out.splitlines()
    assert code == 1
    assert f"{root / 'principals/builder.json'}: 1 error(s), 0 warning(s)" in lines
    assert f"  [S002] error at /managed_policies/1: no managed policy {MISSING} in the store" in lines
    assert f"{root / 'managed_policies/Boundary.json'}: 0 error(s), 0 warning(s)" in lines
    assert f"{root / 'resource_policies/builds.json'}: 0 error(s), 0 warning(s), 1 note(s)" in lines
    assert any(line.startswith("  [W018] note at /document/Statement/0/Resource: ") for line in lines)


@pytest.mark.parametrize(("kept", "fail_on", "exit_code"), [
    (STORE, "error", 1),
    (STORE, "warning", 1),
    ({k: v for k, v in STORE.items() if k.startswith(("managed_", "resource_"))}, "error", 0),  # a warning
    ({k: v for k, v in STORE.items() if k.startswith(("managed_", "resource_"))}, "warning", 1),
    ({k: v for k, v in STORE.items() if k.startswith("resource_")}, "warning", 0),  # a note never fails
])
def test_exit_codes_follow_fail_on(capsys, tmp_path, kept, fail_on, exit_code):
    root = write_store(tmp_path / "store", kept)
    assert run_cli(capsys, "validate", "--store", root, "--fail-on", fail_on)[0] == exit_code


def test_a_clean_store_passes_and_a_missing_one_is_bad_input(capsys, tmp_path):
    clean = {"managed_policies/Reads.json": ({"arn": BUILDERS, "document": document(
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::builds/*"})}, [])}
    code, out, _ = run_cli(capsys, "validate", "--store", write_store(tmp_path / "store", clean),
                           "--fail-on", "warning")
    assert (code, out.splitlines()) == (0, [f"{tmp_path / 'store/managed_policies/Reads.json'}: 0 error(s), "
                                            "0 warning(s)"])
    code, _, err = run_cli(capsys, "validate", "--store", tmp_path / "missing.json")
    assert code == 2 and "cannot read the store" in err
    code, _, err = run_cli(capsys, "validate")
    assert code == 2 and "--store" in err


def test_policy_files_and_a_store_are_validated_together(capsys, tmp_path):
    root = write_store(tmp_path / "store", {k: v for k, v in STORE.items() if k.startswith("resource_")})
    scp = tmp_path / "scp.json"
    scp.write_text(json.dumps(document({"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"})))
    code, out, _ = run_cli(capsys, "validate", scp, "--type", "scp", "--store", root, "--json")
    assert code == 1
    assert {path: [f["code"] for f in findings] for path, findings in json.loads(out).items()} == {
        str(scp): ["E018"], str(root / "resource_policies/builds.json"): ["W018"]}


# ---------------------------------------------------------------- a snapshot


def test_a_snapshot_is_one_file_with_pointers_from_its_top(capsys, tmp_path):
    sections: dict = {}
    for relative, (content, _) in STORE.items():
        entry = json.loads(content) if isinstance(content, str) else content
        if relative == "organization.json":
            sections["organization"] = entry
        else:
            sections.setdefault(relative.split("/")[0], []).append(entry)
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(json.dumps(sections, indent=1))
    code, out, _ = run_cli(capsys, "validate", "--store", snapshot, "--json")
    assert code == 1
    assert {path: as_json(findings) for path, findings in json.loads(out).items()} == {str(snapshot): [
        # in the order references are checked: managed policies, SCPs, RCPs, organisation, groups, principals…
        ("W003", "warning", "/managed_policies/0/document/Statement/0/Action"),
        ("E018", "error", "/scps/0/document/Statement/0/Principal"),
        ("E027", "error", "/rcps/0/document/Statement/0/Effect"),
        ("S002", "error", "/principals/0/managed_policies/1"),
        ("W018", "note", "/resource_policies/0/document/Statement/0/Resource"),
    ]}


def test_a_snapshot_with_a_bad_section_still_reports_its_entries(capsys, tmp_path):
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(json.dumps({"groups": {}, "polices": [], "principals": [[], {"arn": BUILDER,
                                                                                   "groups": ["nobody"]}]}))
    code, out, _ = run_cli(capsys, "validate", "--store", snapshot, "--json")
    assert code == 1
    assert as_json(json.loads(out)[str(snapshot)]) == [
        ("S001", "error", "/polices"), ("S001", "error", "/groups"),  # the snapshot's shape
        ("S001", "error", "/principals/0"),  # a list where an entry is an object
        ("S001", "error", "/principals/1/groups"),  # a role belongs to no group…
        ("S002", "error", "/principals/1/groups/0"),  # …and this one does not exist
    ]


# ---------------------------------------------------------------- SARIF


def test_sarif_places_store_findings_on_their_lines_with_relative_uris(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_store(tmp_path / "my store", STORE)
    code, out, _ = run_cli(capsys, "validate", "--store", "my store", "--format", "sarif")
    log = json.loads(out)
    assert code == 1
    assert_valid_sarif(log)
    [sarif_run] = log["runs"]
    assert sarif_run["originalUriBaseIds"] == {"%SRCROOT%": {"uri": tmp_path.as_uri() + "/"}}
    placed = {(r["ruleId"], r["level"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
               r["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"], r["properties"]["pointer"])
              for r in sarif_run["results"]}
    assert placed == {(code, level, "my%20store/" + relative, "%SRCROOT%", pointer)
                      for relative, (_, expected) in STORE.items() for code, level, pointer in expected}
    [reference] = [r for r in sarif_run["results"] if r["ruleId"] == "S002"]
    # PRINCIPAL_TEXT's line 5, where the second managed policy's string starts.
    assert reference["locations"][0]["physicalLocation"]["region"] == {"startLine": 5, "startColumn": 5}
    assert PRINCIPAL_TEXT.splitlines()[4][4:] == f'"{MISSING}"'
    assert {rule["id"]: rule["defaultConfiguration"]["level"] for rule in sarif_run["tool"]["driver"]["rules"]} \
        == {"E018": "error", "E027": "error", "S002": "error", "W003": "warning", "W018": "note"}


def test_sarif_names_files_outside_the_current_directory_by_absolute_uri(capsys, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    policy = tmp_path / "ünder scope" / "p.json"
    policy.parent.mkdir()
    policy.write_text(json.dumps(document({"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "*"})))
    log = json.loads(run_cli(capsys, "validate", policy, "--format", "sarif")[1])
    assert_valid_sarif(log)
    [result] = log["runs"][0]["results"]
    location = result["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "file://" + (tmp_path / "%C3%BCnder%20scope/p.json").as_posix()}


def test_a_note_is_a_sarif_note_and_never_fails(capsys, tmp_path):
    bucket = tmp_path / "bucket.json"
    bucket.write_text(json.dumps(STORE["resource_policies/builds.json"][0]["document"]))
    code, out, _ = run_cli(capsys, "validate", bucket, "--type", "resource", "--format", "sarif",
                           "--fail-on", "warning")
    log = json.loads(out)
    assert_valid_sarif(log)
    assert code == 0
    assert [(r["ruleId"], r["level"]) for r in log["runs"][0]["results"]] == [("W018", "note")]


# ---------------------------------------------------------------- hostile stores


def hostile(root: Path, relative: str, content: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def deep_in_stack(depth: int, call):
    """``call`` run ``depth`` frames further down, so that recursion limits are met as in a deep caller."""
    return call() if depth == 0 else deep_in_stack(depth - 1, call)


@pytest.mark.parametrize("levels", [100, 800, 900, 950, 990, 1200, 100_000])
@pytest.mark.parametrize("shape", ["lists", "objects", "under a key"])
def test_a_deeply_nested_store_file_is_a_finding(capsys, tmp_path, levels, shape):
    nested = {"lists": "[" * levels + "]" * levels, "objects": '{"a":' * levels + "1" + "}" * levels,
              "under a key": '{"arn": ' + "[" * levels + "]" * levels + "}"}[shape]
    root = tmp_path / "store"
    path = hostile(root, "principals/deep.json", nested.encode())
    for stack in (0, sys.getrecursionlimit() // 4):
        code, out, err = deep_in_stack(stack, lambda: run_cli(capsys, "validate", "--store", root, "--json"))
        assert (code, err) == (1, "")
        findings = json.loads(out)[str(path)]
        assert findings and all(f["code"] in ("E001", "S001") and len(f["message"]) < 200 for f in findings)
        with pytest.raises(StoreError):
            deep_in_stack(stack, lambda: PolicyStore.from_directory(root))


def test_a_huge_store_file_is_reported_briefly(capsys, tmp_path):
    root = tmp_path / "store"
    arn = f"arn:aws:iam::{ACCOUNT}:instance-profile/" + "x" * 5_000_000
    path = hostile(root, "principals/huge.json", json.dumps({"arn": arn, "tags": [list(range(100_000))]}).encode())
    code, out, _ = run_cli(capsys, "validate", "--store", root, "--json")
    assert code == 1
    assert [(f["code"], f["pointer"], len(f["message"]) < 200) for f in json.loads(out)[str(path)]] == [
        ("S001", "/arn", True), ("S001", "/tags", True)]


def test_shapes_that_are_not_entries_are_findings_of_their_file(capsys, tmp_path):
    root = tmp_path / "store"
    as_list = hostile(root, "principals/list.json", json.dumps([{"arn": BUILDER}]).encode())
    latin1 = hostile(root, "managed_policies/latin1.json", b'{"arn": "caf\xe9", "document": {}}')
    stray = hostile(root, "policies/x.json", b"{}")
    code, out, _ = run_cli(capsys, "validate", "--store", root, "--json")
    report = {path: as_json(findings) for path, findings in json.loads(out).items()}
    assert code == 1
    assert report == {str(latin1): [("E001", "error", "")], str(stray.parent): [("S001", "error", "")],
                      str(as_list): [("S001", "error", "")]}
    code, out, _ = run_cli(capsys, "validate", "--store", root, "--format", "sarif")
    assert_valid_sarif(json.loads(out))


def test_lone_surrogates_in_names_are_findings_and_print(capsys, tmp_path):
    root = tmp_path / "store"
    principal = hostile(root, "principals/p.json", json.dumps({
        "arn": BUILDER, "inline_policies": {"\ud800": document({"Effect": "Allow", "Action": "s3:GetObject",
                                                                "Resource": "*"})},
        "tags": {"team\udfff": "x"}}).encode())
    bucket_policy = STORE["resource_policies/builds.json"][0]["document"]
    bucket = hostile(root, "resource_policies/b.json",
                     json.dumps({"resource": "arn:aws:s3:::b\udc80", "document": bucket_policy}).encode())
    odd_name = hostile(root, os.fsdecode(b"groups/\xff.json"),
                       json.dumps({"arn": f"arn:aws:iam::{ACCOUNT}:group/dev\ud83d"}).encode())
    code, out, _ = run_cli(capsys, "validate", "--store", root, "--json")
    report = {path: as_json(findings) for path, findings in json.loads(out).items()}
    assert code == 1
    assert report == {
        str(odd_name): [("S001", "error", "/arn")],
        str(principal): [("S001", "error", "/inline_policies/\ud800"), ("S001", "error", "/tags")],
        str(bucket): [("S001", "error", "/resource"), ("W018", "note", "/document/Statement/0/Resource")],
    }
    code, out, err = run_cli(capsys, "validate", "--store", root)
    assert (code, err) == (1, "")
    assert "  [S001] error at /inline_policies/\\ud800: a policy name must be printable text, not '\\ud800'" in out
    assert f"{root}/groups/\\udcff.json: 1 error(s), 0 warning(s)" in out
    code, out, _ = run_cli(capsys, "validate", "--store", root, "--format", "sarif")
    log = json.loads(out)
    assert_valid_sarif(log)
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]}
    assert "file://" + (root / "groups/%FF.json").as_posix() in uris
    with pytest.raises(StoreError):
        PolicyStore.from_directory(root)


# ---------------------------------------------------------------- the service, and the client


DOCUMENTS = [  # (name, kind, statements, the type validate uses for it, expected (code, severity, pointer))
    ("managed: PassRole on every role", pb.MANAGED, [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"}],
     PolicyType.IDENTITY, [("W013", "warning", "/Statement/0/Resource")]),
    ("unspecified is managed", pb.POLICY_KIND_UNSPECIFIED,
     [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"}],
     PolicyType.IDENTITY, [("W013", "warning", "/Statement/0/Resource")]),
    ("managed: a typo", pb.MANAGED, [{"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "*"}],
     PolicyType.IDENTITY, [("W003", "warning", "/Statement/0/Action")]),
    ("SCP: FullAWSAccess only sets a limit", pb.SCP, [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
     PolicyType.SCP, []),
    ("SCP: no Principal", pb.SCP, [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"}],
     PolicyType.SCP, [("E018", "error", "/Statement/0/Principal")]),
    ("RCP: only Deny", pb.RCP, [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}],
     PolicyType.RCP, [("E027", "error", "/Statement/0/Effect")]),
    ("RCP: no NotPrincipal", pb.RCP, [{"Effect": "Deny", "NotPrincipal": {"AWS": ACCOUNT}, "Action": "s3:*",
                                       "Resource": "*"}],
     PolicyType.RCP, [("E028", "error", "/Statement/0/NotPrincipal")]),
    ("resource: a bucket without a TLS deny", pb.RESOURCE,
     [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "s3:GetObject", "Resource": "arn:aws:s3:::r/*"}],
     PolicyType.RESOURCE, [("W018", "note", "/Statement/0/Resource")]),
    ("resource: a Principal is needed", pb.RESOURCE, [{"Effect": "Allow", "Action": "sqs:SendMessage",
                                                      "Resource": "*"}],
     PolicyType.RESOURCE, [("E019", "error", "/Statement/0")]),
    ("VPC endpoint: public without a condition", pb.VPC_ENDPOINT,
     [{"Effect": "Allow", "Principal": "*", "Action": "sqs:SendMessage", "Resource": "*"}],
     PolicyType.RESOURCE, [("W016", "warning", "/Statement/0/Principal")]),
]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    with running_service(copy_store(root), root / "state", admin_token=ADMIN_TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def client(service):
    with Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        yield connected


@pytest.mark.parametrize(("kind", "statements", "policy_type", "expected"),
                         [pytest.param(*row[1:], id=row[0]) for row in DOCUMENTS])
def test_the_service_validates_each_kind_by_its_type(client, kind, statements, policy_type, expected):
    text = json.dumps(document(*statements))
    response = client.call(client.admin.ValidatePolicy, pb.ValidatePolicyRequest(document=text, kind=kind))
    assert [(f.code, f.severity, f.pointer) for f in response.findings] == expected
    assert response.valid == all(severity != "error" for _, severity, _ in expected)
    local = validate_policy(text, kind=policy_type)
    assert [(f.code, str(f.severity), f.pointer, f.message) for f in local] == \
        [(f.code, f.severity, f.pointer, f.message) for f in response.findings]


def test_the_service_refuses_a_kind_it_does_not_know(client):
    error = rpc_error(lambda: client.call(client.admin.ValidatePolicy, pb.ValidatePolicyRequest(
        document=json.dumps(document({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"})), kind=99)))
    assert error.code().name == "INVALID_ARGUMENT" and "policy kind" in error.details()


CLIENT_CASES = [  # (name, --kind, --type, statements, --fail-on, exit code)
    ("errors fail", "rcp", "rcp", [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}],
     "error", 1),
    ("a warning passes by default", "managed", "identity",
     [{"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "*"}], "error", 0),
    ("a warning fails --fail-on warning", "managed", "identity",
     [{"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "*"}], "warning", 1),
    ("a note never fails", "resource", "resource",
     [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "s3:GetObject", "Resource": "arn:aws:s3:::r/*"}],
     "warning", 0),
    ("clean", "scp", "scp", [{"Effect": "Allow", "Action": "*", "Resource": "*"}], "warning", 0),
]


@pytest.mark.parametrize(("kind", "policy_type", "statements", "fail_on", "exit_code"),
                         [pytest.param(*row[1:], id=row[0]) for row in CLIENT_CASES])
def test_client_validate_exits_as_validate_does(capsys, tmp_path, service, kind, policy_type, statements, fail_on,
                                                exit_code):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document(*statements)))
    code, out, err = run_cli(capsys, "client", "--target", f"127.0.0.1:{service.port}", "--token", ADMIN_TOKEN,
                         "--timeout", RPC_TIMEOUT, "validate", path, "--kind", kind, "--fail-on", fail_on,
                         "--format", "json")
    assert (code, err) == (exit_code, ""), out
    local_code, local_out, _ = run_cli(capsys, "validate", path, "--type", policy_type, "--fail-on", fail_on,
                                   "--format", "json")
    assert local_code == exit_code
    assert json.loads(out) == json.loads(local_out), "the same findings, printed the same way"
