"""Batch jobs end to end: the local runner, statement usage and policy diffs, through the CLI."""
from __future__ import annotations

import gzip
import json
import sys

import pyarrow.parquet as pq
import pytest

from batch.policies import PolicySource
from batch.readers import read_requests, write_requests_parquet
from batch.runner import run_local
from evaluator import PolicySet, parse_policy
from evaluator.cli import main
from evaluator.compile import CompiledPolicySet

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
    write_requests_parquet(read_requests([str(folder / "log.jsonl")]), folder / "log.parquet")
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
