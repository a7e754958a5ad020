"""Batch jobs end to end: the local runner, statement usage and policy diffs, through the CLI."""
from __future__ import annotations

import gzip
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iam_evaluator import PolicySet, Request, RequestError, parse_policy
from iam_evaluator.batch import runner
from iam_evaluator.batch.policies import PolicySource
from iam_evaluator.batch.readers import MalformedRecord, read_requests, write_requests_parquet
from iam_evaluator.batch.runner import WorkerFailed, run_local
from iam_evaluator.batch.writers import JoinedOutput, RowsWriter, decision_schema
from iam_evaluator.cli import main
from iam_evaluator.compile import CompiledPolicySet

from .conftest import EXAMPLES, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from workloads import seed_requests  # noqa: E402

STORE = REPO / "examples" / "store"
POLICIES = sorted(str(p) for p in EXAMPLES.glob("*.json"))


def as_json(request) -> dict:
    return {"principal": request.principal, "action": request.action, "resource": request.resource,
            "resource_account": request.resource_account,
            "context": {k: list(v) if isinstance(v, tuple) else v for k, v in request.context.items()}}


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """A seed-workload log as JSON Lines (with two malformed lines), gzip JSON Lines and Parquet."""
    folder = tmp_path_factory.mktemp("logs")
    requests = seed_requests(3000, seed=9)
    lines = [json.dumps(as_json(r)) for r in requests]
    lines.insert(10, "{not json")
    lines.insert(2000, json.dumps({"principal": 5, "action": "s3:GetObject", "resource": "*"}))
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "log.jsonl.gz").write_bytes(gzip.compress(((folder / "log.jsonl").read_bytes())))
    write_requests_parquet(read_requests([str(folder / "log.jsonl")]), folder / "log.parquet", row_group_rows=256)
    return folder, requests


def expected(requests):
    identity = tuple(parse_policy(open(p).read(), name=p) for p in POLICIES)
    return [str(d) for d in CompiledPolicySet(PolicySet(identity=identity)).evaluate_batch(requests)]


@pytest.mark.parametrize(("name", "workers", "output"), [("log.jsonl", 1, "out.parquet"),
                                                         ("log.jsonl.gz", 2, "out.jsonl"),
                                                         ("log.parquet", 2, "out.parquet")])
def test_runner_decides_every_good_record_and_reports_the_bad(log, tmp_path, name, workers, output):
    folder, requests = log
    source = PolicySource.from_paths(policies=POLICIES)
    summary, problems = run_local(source, [str(folder / name)], str(tmp_path / output), workers=workers)
    rows = pq.read_table(tmp_path / output).to_pylist() if output.endswith(".parquet") else \
        [json.loads(line) for line in (tmp_path / output).read_text().splitlines()]
    assert [row["decision"] for row in rows] == expected(requests)
    assert summary.rows == len(requests) and sum(summary.decisions.values()) == len(requests)
    if name != "log.parquet":  # the Parquet copy was written from the good rows only
        assert problems.total == 2
        assert {location for location, _ in problems.first} == {f"{folder / name}:11", f"{folder / name}:2001"}
    assert rows[0]["source"].endswith(":1" if name != "log.parquet" else "#0")
    assert not list(tmp_path.glob("*.partial"))


def test_explain_and_stats_through_the_cli(log, tmp_path, capsys):
    folder, requests = log
    output = tmp_path / "explained.parquet"
    code = main(["batch", "--policy", *POLICIES, "--input", str(folder / "log.jsonl"), "--output", str(output),
                 "--workers", "2", "--explain", "--stats"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"{len(requests)} requests in" in out and "top denied actions:" in out
    first = pq.read_table(output).slice(0, 1).to_pylist()[0]
    assert {"decided_by", "statements", "missing_keys"} <= set(first)
    stats = json.loads((tmp_path / "explained.stats.json").read_text())
    full_access = [row for row in stats if row["policy"].endswith("AWSImageBuilderFullAccess.json")]
    assert full_access[0]["applied"] > 0  # imagebuilder:* is requested
    never = [row for row in stats if not row["applied"]]
    assert any("unused:" in line for line in out.splitlines()) == bool(never)


def test_store_mode_and_unknown_principals(tmp_path):
    requests = [{"principal": "arn:aws:iam::111122223333:role/ImageBuilderRole", "action": "imagebuilder:GetImage",
                 "resource": "*", "context": {"aws:RequestedRegion": "us-east-1"}},
                {"principal": "arn:aws:iam::111122223333:role/NotInTheStore", "action": "imagebuilder:GetImage",
                 "resource": "*", "context": {"aws:RequestedRegion": "us-east-1"}},
                {"principal": "arn:aws:iam::111122223333:role/ImageBuilderRole", "action": "imagebuilder:GetImage",
                 "resource": "*", "context": {"aws:RequestedRegion": "ap-south-1"}}]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(map(json.dumps, requests)) + "\n")
    summary, _ = run_local(PolicySource.from_paths(store=str(STORE)), [str(log)], str(tmp_path / "o.jsonl"),
                           workers=1, explain=True)
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(r["decision"], r["decided_by"]) for r in rows] == [
        ("Allow", "identity"), ("ImplicitDeny", "principal"), ("ExplicitDeny", "scp[0]")]


def test_diff_reports_the_requests_that_change(log, tmp_path, capsys):
    folder, requests = log
    after = tmp_path / "deny-passrole.json"
    after.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "iam:PassRole", "Resource": "*"}]}))
    code = main(["diff", "--before", *POLICIES, "--after", *POLICIES, str(after), "--input",
                 str(folder / "log.jsonl"), "--output", str(tmp_path / "changes.jsonl")])
    out = capsys.readouterr().out
    changes = [json.loads(line) for line in (tmp_path / "changes.jsonl").read_text().splitlines()]
    before = expected(requests)
    want = [i for i, r in enumerate(requests) if r.action == "iam:PassRole" and before[i] != "ExplicitDeny"]
    assert code == 0
    assert len(changes) == len(want) and {c["action"] for c in changes} == {"iam:PassRole"}
    assert all(c["after"] == "ExplicitDeny" for c in changes)
    assert out.startswith(f"{len(want)} of {len(requests)} requests change decision")


def test_diff_as_a_gate_fails_on_what_it_is_told_to(log, tmp_path, capsys):
    """Moving a Deny from imagebuilder:Get* to iam:PassRole newly allows the one and newly denies the other:
    --fail-on newly-allowed and any-change exit 1, and the newly allowed requests are listed first; the move
    back the other way is the same; only adding a Deny (nothing newly allowed) passes --fail-on newly-allowed."""
    folder, _ = log

    def deny(name: str, action: str) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Deny", "Action": action, "Resource": "*"}]}))
        return str(path)

    deny_get, deny_pass = deny("deny-get.json", "imagebuilder:Get*"), deny("deny-pass.json", "iam:PassRole")
    common = ["--input", str(folder / "log.jsonl"), "--output", str(tmp_path / "changes.jsonl")]
    move = ["--before", *POLICIES, deny_get, "--after", *POLICIES, deny_pass, *common]
    for fail_on, code in ((None, 0), ("newly-allowed", 1), ("any-change", 1)):
        assert main(["diff", *move, *(["--fail-on", fail_on] if fail_on else [])]) == code
        out = capsys.readouterr().out
    order = ["newly allowed", "newly denied", "deny changed"]
    kinds = [kind for kind in (" ".join(line.split()[:2]) for line in out.splitlines()) if kind in order]
    assert {"newly allowed", "newly denied"} <= set(kinds), out
    assert kinds == sorted(kinds, key=order.index), "newly allowed requests come first"
    tighten = ["--before", *POLICIES, "--after", *POLICIES, deny_pass, *common]
    assert main(["diff", *tighten, "--fail-on", "newly-allowed"]) == 0
    assert main(["diff", *tighten, "--fail-on", "any-change"]) == 1
    assert main(["diff", "--before", *POLICIES, "--after", *POLICIES, *common, "--fail-on", "any-change"]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--policy", "/no/such.json", "--input", "x.jsonl", "--output", "o.jsonl"], "No such file"),
    (["--store", "/no/store", "--input", "x.jsonl", "--output", "o.jsonl"], "store"),
    (["--policy", POLICIES[0], "--input", "/no/log.jsonl", "--output", "o.jsonl"], "/no/log.jsonl"),
    (["--policy", POLICIES[0], "--input", POLICIES[0], "--output", "o.csv"], ".jsonl or .parquet"),
], ids=["missing policy", "missing store", "missing input", "bad output"])
def test_bad_job_input_exits_two(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["batch", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))


# parts: each worker reads, decides and writes its own shares; the output keeps the input's order -----------

@pytest.fixture
def small_parts(monkeypatch):
    """Parts of a few dozen lines or one row group, so that a small log makes many."""
    monkeypatch.setattr(runner, "PART_BYTES", 8192)
    monkeypatch.setattr(runner, "PART_ROWS", 1)


def read_output(path) -> list[dict]:
    path = str(path)
    if path.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.mark.parametrize("name", ["log.jsonl", "log.parquet"])
@pytest.mark.parametrize("output", ["out.parquet", "out.jsonl"])
def test_many_parts_are_joined_in_input_order(log, tmp_path, small_parts, name, output):
    folder, requests = log
    source = PolicySource.from_paths(policies=POLICIES)
    summary, problems = run_local(source, [str(folder / name)], str(tmp_path / output), workers=2)
    rows = read_output(tmp_path / output)
    assert [row["decision"] for row in rows] == expected(requests)
    assert [(row["principal"], row["action"], row["resource"]) for row in rows] == [
        (r.principal, r.action, r.resource) for r in requests]
    if name == "log.jsonl":  # line numbers count the malformed lines 11 and 2001 too
        lines = [n for n in range(1, len(requests) + 3) if n not in (11, 2001)]
        assert [row["source"] for row in rows] == [f"{folder / name}:{n}" for n in lines]
        assert [location for location, _ in problems.first] == [f"{folder / name}:11", f"{folder / name}:2001"]
    else:
        assert [row["source"] for row in rows] == [f"{folder / name}#{n}" for n in range(len(requests))]
    assert summary.rows == len(requests) and sum(summary.decisions.values()) == len(requests)
    assert set(summary.decisions) <= {"Allow", "ImplicitDeny", "ExplicitDeny"}
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*"))


def test_the_summary_counts_what_one_process_would(log, tmp_path, small_parts):
    folder, requests = log
    source = PolicySource.from_paths(policies=POLICIES)
    one, _ = run_local(source, [str(folder / "log.jsonl")], str(tmp_path / "a.parquet"), workers=1, stats=True)
    rows = read_output(tmp_path / "a.parquet")
    denied = [row for row in rows if row["decision"] != "Allow"]
    assert one.decisions == {decision: expected(requests).count(decision) for decision in set(expected(requests))}
    assert one.denied_actions == {a: sum(r["action"] == a for r in denied) for a in {r["action"] for r in denied}}
    assert one.denied_principals == {p: sum(r["principal"] == p for r in denied)
                                     for p in {r["principal"] for r in denied}}
    two, _ = run_local(source, [str(folder / "log.jsonl")], str(tmp_path / "b.parquet"), workers=2, stats=True)
    assert (two.decisions, two.denied_actions, two.denied_principals, two.usage) == (
        one.decisions, one.denied_actions, one.denied_principals, one.usage)
    assert sum(applied for applied, _, _ in one.usage.values()) > 0


def test_strict_stops_at_the_first_malformed_record_in_input_order(log, tmp_path, small_parts):
    folder, _ = log
    source = PolicySource.from_paths(policies=POLICIES)
    for workers in (1, 2):
        with pytest.raises(MalformedRecord) as raised:
            run_local(source, [str(folder / "log.jsonl")], str(tmp_path / "out.parquet"), workers=workers,
                      strict=True)
        assert raised.value.location == f"{folder / 'log.jsonl'}:11" and raised.value.kind == "bad JSON"
        assert not list(tmp_path.iterdir())


def test_explain_through_parts(log, tmp_path, small_parts):
    folder, requests = log
    source = PolicySource.from_paths(policies=POLICIES)
    run_local(source, [str(folder / "log.parquet")], str(tmp_path / "out.jsonl"), workers=2, explain=True)
    rows = read_output(tmp_path / "out.jsonl")
    assert [row["decision"] for row in rows] == expected(requests)
    allowed = next(row for row in rows if row["decision"] == "Allow")
    assert allowed["decided_by"] == "identity" and allowed["statements"][0]["effect"] == "Allow"


def test_store_mode_reads_parquet_as_json_lines(tmp_path, small_parts):
    requests = [{"principal": f"arn:aws:iam::111122223333:role/{role}", "action": "imagebuilder:GetImage",
                 "resource": "*", "context": {"aws:RequestedRegion": region}}
                for role in ("ImageBuilderRole", "NotInTheStore") for region in ("us-east-1", "ap-south-1")] * 50
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(map(json.dumps, requests)) + "\n")
    write_requests_parquet(read_requests(log), tmp_path / "log.parquet", row_group_rows=32)
    source = PolicySource.from_paths(store=str(STORE))
    outputs = []
    for name in ("log.jsonl", "log.parquet"):
        run_local(source, [str(tmp_path / name)], str(tmp_path / f"{name}.out.jsonl"), workers=2, explain=True)
        outputs.append([(r["principal"], r["decision"], r["decided_by"])
                        for r in read_output(tmp_path / f"{name}.out.jsonl")])
    assert outputs[0] == outputs[1]
    assert outputs[0][:4] == [
        ("arn:aws:iam::111122223333:role/ImageBuilderRole", "Allow", "identity"),
        ("arn:aws:iam::111122223333:role/ImageBuilderRole", "ExplicitDeny", "scp[0]"),
        ("arn:aws:iam::111122223333:role/NotInTheStore", "ImplicitDeny", "principal"),
        ("arn:aws:iam::111122223333:role/NotInTheStore", "ImplicitDeny", "principal")]


@pytest.mark.parametrize("output", ["out.parquet", "out.jsonl"])
def test_an_empty_log_gives_an_empty_output(tmp_path, output):
    (tmp_path / "empty.jsonl").write_text("")
    summary, _ = run_local(PolicySource.from_paths(policies=POLICIES), [str(tmp_path / "empty.jsonl")],
                           str(tmp_path / output), workers=2)
    assert summary.rows == 0
    if output.endswith(".parquet"):
        assert pq.read_table(tmp_path / output).schema.names == decision_schema(False).names
    else:
        assert (tmp_path / output).read_text() == ""


@pytest.mark.skipif(sys.platform == "darwin", reason="spawned workers do not see the patch")
def test_a_worker_that_dies_fails_the_job(log, tmp_path, monkeypatch):
    def die(*args):
        os._exit(3)

    monkeypatch.setattr(runner, "_decide_part", die)
    with pytest.raises(WorkerFailed, match="exit code 3"):
        run_local(PolicySource.from_paths(policies=POLICIES), [str(log[0] / "log.jsonl")],
                  str(tmp_path / "out.parquet"), workers=2)
    assert not list(tmp_path.iterdir())


def test_joined_parquet_parts_read_as_one_file(tmp_path):
    """Row groups with dictionary pages, nulls and nested lists, moved from several parts into one file."""
    schema = decision_schema(explain=True)
    statement = {"policy": "p", "index": 0, "sid": "s", "effect": "Allow"}
    tables = []
    for part in range(4):
        rows = [{"source": f"log:{part}-{row}", "principal": f"arn:aws:iam::1:user/u{row % 3}", "action": "s3:Get",
                 "resource": "*" if row % 2 else None, "resource_fallback": bool(row % 2), "decision": "Allow",
                 "error": None, "decided_by": "identity", "statements": [statement] * (row % 3),
                 "missing_keys": ["k"] if row % 5 == 0 else []} for row in range(part * 7)]
        tables.append(pa.Table.from_pylist(rows, schema))
    with JoinedOutput(str(tmp_path / "joined.parquet"), schema) as joined:
        for number, table in enumerate(tables):
            writer = RowsWriter(joined.part_path(number), ".parquet", schema)
            for start in range(0, table.num_rows, 4):  # several row groups per part
                writer.write(table.slice(start, 4))
            writer.close()
            joined.join(number)
    expected_rows = pa.concat_tables(tables).to_pylist()
    assert pq.read_table(tmp_path / "joined.parquet").to_pylist() == expected_rows
    metadata = pq.read_metadata(tmp_path / "joined.parquet")
    assert metadata.num_rows == len(expected_rows) and metadata.num_row_groups == 0 + 2 + 4 + 6  # 4 rows each
    assert [row.get("source") for row in pq.read_table(tmp_path / "joined.parquet", columns=["source"]).to_pylist()
            ] == [row["source"] for row in expected_rows]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joined.parquet"]


@pytest.mark.parametrize("log_format", ["jsonl", "parquet"])
def test_an_untested_key_spelled_twice_fails_its_request(tmp_path, log_format):
    """``Request.create`` refuses a context key given twice (key names ignore case), whether or not a policy tests
    it. A job's readers keep only the keys its policies test, and must still let the evaluator see both spellings."""
    principal, twice = "arn:aws:iam::111122223333:role/reader", {"svc:Untested": "a", "SVC:untested": "b"}
    with pytest.raises(RequestError, match="given twice"):
        Request.create(principal, "s3:GetObject", "*", twice)
    policy = tmp_path / "allow.json"
    policy.write_text(json.dumps({"Version": "2012-10-17",
                                  "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    requests = [{"principal": principal, "action": "s3:GetObject", "resource": "*", "context": context}
                for context in (twice, {"svc:Untested": "a"}, {**twice, "svc:Other": "c", "SVC:OTHER": "d"})]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(map(json.dumps, requests)) + "\n")
    if log_format == "parquet":
        write_requests_parquet(read_requests([str(log)]), tmp_path / "log.parquet")
        log = tmp_path / "log.parquet"
    summary, problems = run_local(PolicySource.from_paths(policies=[str(policy)]), [str(log)],
                                  str(tmp_path / "out.jsonl"), workers=1)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["decision"] for row in rows] == ["ImplicitDeny", "Allow", "ImplicitDeny"]
    assert [row["error"] is not None and "twice" in row["error"] for row in rows] == [True, False, True]
    assert problems.total == 0
