"""``iam-eval diff`` as a policy-change gate: what each side read, the statements behind each change, the
output file, the exit codes, and hostile inputs. Every expected answer is written by hand from IAM's rule
(an applicable Deny wins; else an Allow allows; else the request is implicitly denied)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from iam_evaluator.cli import main

DEV = "arn:aws:iam::111122223333:role/dev"
OPS = "arn:aws:iam::111122223333:role/ops"  # in no store below
READ_ARN = "arn:aws:iam::111122223333:policy/Read"
READ = {"Sid": "Read", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
KEEP_OUT = {"Sid": "KeepOut", "Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::secret/*"}
WRITE_LOGS = {"Sid": "WriteLogs", "Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::logs/*"}


def document(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def write(path, content) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def request_log(tmp_path, *requests: tuple[str, str, str]) -> str:
    return write(tmp_path / "log.jsonl", "".join(
        json.dumps({"principal": p, "action": a, "resource": r}) + "\n" for p, a, r in requests))


def diff(tmp_path, before: list[str], after: list[str], log: str, output: str = "changes.jsonl",
         *more: str) -> int:
    return main(["diff", "--before", *before, "--after", *after, "--input", log, "--output",
                 str(tmp_path / output), *more])


def read_output(path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def table_lines(out: str) -> list[str]:
    """The grouped changes, whitespace collapsed."""
    return [" ".join(line.split()) for line in out.splitlines() if line.startswith(("newly ", "deny changed"))]


@pytest.mark.parametrize("output", ["changes.jsonl", "changes.parquet"])
def test_each_change_names_the_statements_before_and_after(tmp_path, capsys, output):
    """Before: one file allows s3:GetObject but denies it on secret/*. After: a folder whose files allow
    s3:GetObject everywhere and s3:PutObject on logs/*. Reading secret/a turns from the Deny to the Allow;
    writing logs/x from no statement at all to the new Allow; the other requests keep their decision."""
    before = write(tmp_path / "before.json", document(READ, KEEP_OUT))
    write(tmp_path / "after" / "team.json", document(READ))
    write(tmp_path / "after" / "logs" / "write.json", document(WRITE_LOGS))
    after = str(tmp_path / "after")
    log = request_log(tmp_path, (DEV, "s3:GetObject", "arn:aws:s3:::secret/a"),
                      (DEV, "s3:GetObject", "arn:aws:s3:::public/a"),
                      (DEV, "s3:PutObject", "arn:aws:s3:::logs/x"),
                      (DEV, "s3:PutObject", "arn:aws:s3:::secret/a"),
                      (DEV, "s3:GetObject", "arn:aws:s3:::secret/b"))

    assert diff(tmp_path, [before], [after], log, output) == 0

    denied_by = f"Deny {before}#1 (KeepOut)"
    read_by, write_by = f"Allow {after}/team.json#0 (Read)", f"Allow {after}/logs/write.json#0 (WriteLogs)"
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == ["3 of 5 requests change decision",
                                    f"before: 1 identity policy file from {before}",
                                    f"after: 2 identity policy files from {after}/"]
    assert table_lines(out) == [
        f"newly allowed 2 ExplicitDeny → Allow s3:GetObject {DEV} (before: {denied_by}; after: {read_by})",
        f"newly allowed 1 ImplicitDeny → Allow s3:PutObject {DEV} "
        f"(before: no statement allowed [identity]; after: {write_by})",
    ]
    rows = read_output(tmp_path / output)
    assert [(row["source"].rsplit(":", 1)[1], row["resource"]) for row in rows] == [
        ("1", "arn:aws:s3:::secret/a"), ("3", "arn:aws:s3:::logs/x"), ("5", "arn:aws:s3:::secret/b")]
    explained = [{key: value for key, value in row.items() if key not in ("source", "principal", "action",
                                                                           "resource")} for row in rows]
    secret = {"before": "ExplicitDeny", "after": "Allow", "before_decided_by": "identity",
              "before_statements": [denied_by], "before_error": None, "after_decided_by": "identity",
              "after_statements": [read_by], "after_error": None}
    logs = {"before": "ImplicitDeny", "after": "Allow", "before_decided_by": "identity", "before_statements": [],
            "before_error": None, "after_decided_by": "identity", "after_statements": [write_by], "after_error": None}
    assert explained == [secret, logs, secret]


def store_folder(tmp_path, *, keep_out: bool) -> str:
    """dev holds the managed policy Read and, with ``keep_out``, an inline Deny of secret/*."""
    role = {"arn": DEV, "managed_policies": [READ_ARN]}
    if keep_out:
        role["inline_policies"] = {"NoSecrets": document(KEEP_OUT)}
    write(tmp_path / "store" / "principals" / "dev.json", role)
    write(tmp_path / "store" / "managed_policies" / "read.json", {"arn": READ_ARN, "document": document(READ)})
    return str(tmp_path / "store")


def test_a_store_folder_against_a_store_snapshot(tmp_path, capsys):
    """Dropping dev's inline Deny newly allows dev to read secret/a: the Deny named by its inline policy, the
    Allow by the managed policy's ARN. A principal in neither store is implicitly denied in both."""
    before = store_folder(tmp_path, keep_out=True)
    after = write(tmp_path / "snapshot.json", {
        "principals": [{"arn": DEV, "managed_policies": [READ_ARN]}],
        "managed_policies": [{"arn": READ_ARN, "document": document(READ)}]})
    log = request_log(tmp_path, (DEV, "s3:GetObject", "arn:aws:s3:::secret/a"),
                      (DEV, "s3:GetObject", "arn:aws:s3:::public/a"),
                      (OPS, "s3:GetObject", "arn:aws:s3:::secret/a"))

    assert diff(tmp_path, [before], [after], log, "changes.jsonl", "--fail-on", "newly-allowed") == 1

    out = capsys.readouterr().out
    assert out.splitlines()[:3] == ["1 of 3 requests change decision",
                                    f"before: store {before} (1 principal, 1 managed policy)",
                                    f"after: store snapshot {after} (1 principal, 1 managed policy)"]
    denied_by, read_by = "Deny role/dev:inline/NoSecrets#0 (KeepOut)", f"Allow {READ_ARN}#0 (Read)"
    assert table_lines(out) == [
        f"newly allowed 1 ExplicitDeny → Allow s3:GetObject {DEV} (before: {denied_by}; after: {read_by})"]
    [row] = read_output(tmp_path / "changes.jsonl")
    assert (row["before_statements"], row["after_statements"]) == ([denied_by], [read_by])


def test_a_store_against_policy_files_decides_each_side_on_its_own(tmp_path, capsys):
    """Policy files are every principal's identity policies: ops, unknown to the store (denied there as an
    unknown principal), is allowed by the files; dev loses the store's inline Deny."""
    before = store_folder(tmp_path, keep_out=True)
    after = write(tmp_path / "files" / "read.json", document(READ))
    log = request_log(tmp_path, (DEV, "s3:GetObject", "arn:aws:s3:::secret/a"),
                      (OPS, "s3:GetObject", "arn:aws:s3:::public/a"))

    assert diff(tmp_path, [before], [str(tmp_path / "files")], log) == 0

    out = capsys.readouterr().out
    assert out.splitlines()[1:3] == [f"before: store {before} (1 principal, 1 managed policy)",
                                     f"after: 1 identity policy file from {tmp_path / 'files'}/"]
    rows = read_output(tmp_path / "changes.jsonl")
    assert [(row["principal"], row["before"], row["before_decided_by"], row["before_statements"], row["after"],
             row["after_statements"]) for row in rows] == [
        (DEV, "ExplicitDeny", "identity", ["Deny role/dev:inline/NoSecrets#0 (KeepOut)"], "Allow",
         [f"Allow {after}#0 (Read)"]),
        (OPS, "ImplicitDeny", "principal", [], "Allow", [f"Allow {after}#0 (Read)"])]
    assert f"(before: no statement allowed [principal]; after: Allow {after}#0 (Read))" in out


@pytest.mark.parametrize(("after", "fail_on", "code"), [
    ([READ], None, 0), ([READ], "newly-allowed", 1), ([READ], "any-change", 1),  # the Deny dropped
    ([READ, KEEP_OUT, {**WRITE_LOGS, "Effect": "Deny"}], "newly-allowed", 0),  # only a new Deny
    ([READ, KEEP_OUT, {**WRITE_LOGS, "Effect": "Deny"}], "any-change", 1),
    ([READ, KEEP_OUT], "any-change", 0),  # nothing changes
], ids=["allowed", "allowed newly-allowed", "allowed any-change", "denied newly-allowed", "denied any-change",
        "same any-change"])
def test_fail_on_exits_one_on_what_it_names(tmp_path, capsys, after, fail_on, code):
    """Before: reading allowed but secret/* denied. The log reads secret/a and writes logs/x (denied both ways
    unless after says otherwise: a Deny of writing logs/* turns an implicit deny into an explicit one)."""
    before = write(tmp_path / "before" / "p.json", document(READ, KEEP_OUT))
    after_file = write(tmp_path / "after" / "p.json", document(*after))
    log = request_log(tmp_path, (DEV, "s3:GetObject", "arn:aws:s3:::secret/a"),
                      (DEV, "s3:PutObject", "arn:aws:s3:::logs/x"))
    assert diff(tmp_path, [before], [after_file], log, "changes.jsonl",
                *(["--fail-on", fail_on] if fail_on else [])) == code


def test_a_deny_that_changes_kind_is_listed_after_what_is_newly_allowed(tmp_path, capsys):
    """The newly allowed read comes first, though the changed deny has more requests."""
    before = write(tmp_path / "before.json", document(READ, KEEP_OUT))
    after = write(tmp_path / "after.json", document(READ, {**WRITE_LOGS, "Effect": "Deny", "Sid": "NoLogs"}))
    log = request_log(tmp_path, (DEV, "s3:PutObject", "arn:aws:s3:::logs/x"),
                      (DEV, "s3:PutObject", "arn:aws:s3:::logs/y"),
                      (DEV, "s3:GetObject", "arn:aws:s3:::secret/a"))
    assert diff(tmp_path, [before], [after], log) == 0
    assert table_lines(capsys.readouterr().out) == [
        f"newly allowed 1 ExplicitDeny → Allow s3:GetObject {DEV} "
        f"(before: Deny {before}#1 (KeepOut); after: Allow {after}#0 (Read))",
        f"deny changed 2 ImplicitDeny → ExplicitDeny s3:PutObject {DEV} "
        f"(before: no statement allowed [identity]; after: Deny {after}#1 (NoLogs))"]


def _ambiguous(tmp_path) -> list[str]:
    write(tmp_path / "mixed" / "scps" / "all.json", {"name": "All", "document": document(READ)})
    write(tmp_path / "mixed" / "dev.json", document(READ))
    return [str(tmp_path / "mixed")]


def _no_json(tmp_path) -> list[str]:
    write(tmp_path / "notes" / "README.md", "no policies here")
    return [str(tmp_path / "notes")]


def _store_and_file(tmp_path) -> list[str]:
    return [store_folder(tmp_path, keep_out=False), write(tmp_path / "p.json", document(READ))]


def _duplicate_key(tmp_path) -> list[str]:
    return [write(tmp_path / "dup.json", '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
                                         '"Action": "s3:GetObject", "Action": "s3:*", "Resource": "*"}]}')]


def _duplicate_section(tmp_path) -> list[str]:
    return [write(tmp_path / "snapshot.json", '{"principals": [], "principals": [{"arn": "%s"}]}' % DEV)]


def _not_utf8(tmp_path) -> list[str]:
    write(tmp_path / "policies" / "a.json", document(READ))
    (tmp_path / "policies" / "b.json").write_bytes(
        b'{"Version": "2012-10-17", "Statement": [{"Sid": "\xff", "Effect": "Allow", "Action": "*", "Resource": "*"}]}')
    return [str(tmp_path / "policies")]


def _deeply_nested(tmp_path) -> list[str]:
    depth = 1_000_000  # 2 MB of brackets: deeper than any recursion limit
    return [write(tmp_path / "deep.json", '{"Version": "2012-10-17", "Statement": ' + "[" * depth + "]" * depth + "}")]


@pytest.mark.parametrize(("after", "message"), [
    (_ambiguous, "holds both a policy store (scps) and policy files (dev.json)"),
    (_no_json, "no *.json file below"),
    (_store_and_file, "is a policy store: give a store alone"),
    (_duplicate_key, "[E002] error at /Statement/0/Action"),
    (_duplicate_section, "the key 'principals' is given more than once"),
    (_not_utf8, "b.json: not UTF-8 text"),
    (_deeply_nested, "nested more than"),
], ids=["ambiguous folder", "folder without json", "store with a file", "duplicate key", "duplicate section",
        "not UTF-8", "deeply nested"])
def test_bad_policy_input_exits_two_and_says_why(tmp_path, capsys, after, message):
    before = write(tmp_path / "before.json", document(READ))
    log = request_log(tmp_path, (DEV, "s3:GetObject", "arn:aws:s3:::secret/a"))
    assert diff(tmp_path, [before], after(tmp_path), log) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err, captured.err
    assert "Traceback" not in captured.err and not captured.out
    assert not (tmp_path / "changes.jsonl").exists()


def test_a_lone_surrogate_in_the_log_is_refused_with_its_line(tmp_path, capsys):
    """A JSON escape may spell a lone surrogate, which is no text: that record is refused and reported with its
    line, the others are decided; with --strict the diff stops (exit 2)."""
    before = write(tmp_path / "before.json", document(READ, KEEP_OUT))
    after = write(tmp_path / "after.json", document(READ))
    log = write(tmp_path / "log.jsonl", json.dumps({"principal": DEV, "action": "s3:GetObject",
                                                    "resource": "arn:aws:s3:::secret/a"}) + "\n" +
                '{"principal": "arn:aws:iam::111122223333:role/d\\ud800v", "action": "s3:GetObject", '
                '"resource": "arn:aws:s3:::secret/b"}\n')
    assert diff(tmp_path, [before], [after], log) == 0
    captured = capsys.readouterr()
    assert "log.jsonl:2: bad JSON: a lone surrogate (\\ud800) is not text" in captured.out
    assert [row["resource"] for row in read_output(tmp_path / "changes.jsonl")] == ["arn:aws:s3:::secret/a"]
    assert diff(tmp_path, [before], [after], log, "strict.jsonl", "--strict") == 2
    captured = capsys.readouterr()
    assert "lone surrogate" in captured.err and "Traceback" not in captured.err
