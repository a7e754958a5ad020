"""The Spark engine writes the in-process engine's decisions, row for row, from JSON Lines and Parquet logs."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iam_evaluator import PolicySet, Request, parse_policy
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.compile import CompiledPolicySet
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.store import PolicyStore

from .conftest import EXAMPLES, REPO

try:
    from pyspark.sql import SparkSession
except ImportError:
    pytest.skip("pyspark is not installed (pip install 'iam-evaluator[spark]'); CI installs it, so there these "
                "tests run", allow_module_level=True)

from iam_evaluator.batch.policies import PolicySource
from iam_evaluator.batch.readers import read_requests, write_requests_parquet
from iam_evaluator.batch.spark import run_spark  # noqa: E402
from iam_evaluator.cli import main

sys.path.insert(0, str(REPO / "benchmarks"))
from workloads import ACCOUNT, OTHER, seed_requests  # noqa: E402

POLICY_FILES = sorted(str(path) for path in EXAMPLES.glob("*.json"))
STORE = REPO / "examples" / "store"
STORE_PRINCIPALS = [f"arn:aws:iam::{ACCOUNT}:role/ImageBuilderRole",
                    f"arn:aws:sts::{ACCOUNT}:assumed-role/ImageBuilderInstanceRole/i-0abc",
                    f"arn:aws:iam::{ACCOUNT}:user/alice",
                    f"arn:aws:iam::{ACCOUNT}:role/NotInTheStore"]
SPELLINGS = {"aws:requestedregion": "aws:RequestedRegion", "aws:securetransport": "aws:SecureTransport",
             "aws:calledvia": "aws:CalledVia"}


@pytest.fixture(scope="module")
def spark():
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    session = (SparkSession.builder.master("local[2]").appName("test_spark")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.executorEnv.PYTHONPATH", path)  # executors import batch.spark from the checkout
               .getOrCreate())
    yield session
    session.stop()


def as_row(number: int, request: Request, resource_account: str | None = None) -> dict:
    context = {key: list(value) if isinstance(value, tuple) else value for key, value in request.context.items()}
    return {"row": number, "principal": request.principal, "action": request.action, "resource": request.resource,
            "resource_account": resource_account, "context": context}


def as_logged(row: dict) -> dict:
    """The row as a log may spell it: some keys in their documented case, booleans and numbers as JSON
    values, a single-item list as a bare string, a key Spark sees as a number in one row and text in another."""
    number, context = row["row"], {}
    for key, value in row["context"].items():
        if number % 3 == 0:
            key = SPELLINGS.get(key, key)
        if key.lower() == "aws:securetransport" and number % 2 == 0:
            value = value == "true"
        if isinstance(value, list) and len(value) == 1 and number % 4 == 1:
            value = value[0]
        context[key] = value
    if number % 5 < 2:
        context["aws:MultiFactorAuthAge"] = 300 if number % 5 == 0 else "300"
    return {**row, "context": context}


def request_table(rows: list[dict], context_as_text: bool = False) -> pa.Table:
    keys = sorted({key for row in rows for key in row["context"]})
    listed = {key for row in rows for key, value in row["context"].items() if isinstance(value, list)}
    if context_as_text:  # as batch.readers.write_requests_parquet stores it
        context = pa.array([json.dumps(row["context"]) for row in rows])
    else:
        context = pa.StructArray.from_arrays(
            [pa.array([row["context"].get(key) for row in rows], pa.list_(pa.string()) if key in listed else None)
             for key in keys], names=keys)
    columns = {name: [row[name] for row in rows] for name in ("row", "principal", "action", "resource")}
    return pa.table({**columns, "resource_account": pa.array([row["resource_account"] for row in rows], pa.string()),
                     "context": context})


def write_lines(path: Path, rows: list[dict], extra_lines: list[str] = ()) -> None:
    lines = [json.dumps(as_logged(row)) for row in rows] + list(extra_lines)
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def written(output: Path) -> dict[int | None, dict]:
    """Spark's output rows by their kept row number (rows without one under None)."""
    if output.suffix == ".parquet":
        records = pq.read_table(output).to_pylist()
    else:
        records = [json.loads(line) for part in sorted(output.glob("part-*")) for line in part.open()]
    by_row = {None if record.get("row") is None else int(record["row"]): record for record in records}
    assert len(by_row) == len(records)  # every row once
    return by_row


def summary_of(decisions: list[tuple[str, str | None]], output: Path) -> dict:
    counts = Counter(decision for decision, _ in decisions)
    return {"rows": len(decisions), "decisions": {kind: counts[kind] for kind in ("Allow", "ExplicitDeny",
                                                                                  "ImplicitDeny")},
            "errors": sum(error is not None for _, error in decisions), "output": str(output)}


@pytest.fixture(scope="module")
def seed_rows():
    rows = [as_row(number, request) for number, request in enumerate(seed_requests(300, seed=4))]
    for row in rows[::7]:  # the resource's owner given, not read from the ARN
        row["resource_account"] = OTHER
    return rows


@pytest.fixture(scope="module")
def policy_files():
    policies = PolicySet(identity=tuple(parse_policy(Path(path).read_text(), name=path) for path in POLICY_FILES))
    return CompiledPolicySet(policies)


def test_json_lines_with_policy_files(spark, tmp_path, seed_rows, policy_files):
    log = tmp_path / "requests.jsonl"
    bad = [json.dumps({"row": 1000, "principal": "not-an-arn", "action": "s3:GetObject", "resource": "*"}),
           '{"row": 1001, "principal": "arn:aws:iam::111122223333:role/x", "action": "s3:GetObject"',
           json.dumps({"row": 1002, "principal": STORE_PRINCIPALS[0], "action": "s3:GetObject", "resource": "*",
                       "context": "aws:SecureTransport=true"}),
           json.dumps({"row": 1003, "principal": STORE_PRINCIPALS[0], "action": "s3:GetObject", "resource": "*",
                       "context": {"aws:SecureTransport": "true", "AWS:securetransport": "false"}})]
    write_lines(log, seed_rows, bad)
    output = tmp_path / "decisions.jsonl"
    summary = run_spark(PolicySource.from_paths(policies=POLICY_FILES), [str(log)], str(output), spark=spark,
                        keep=["row"])

    want = evaluate_arrow(policy_files, request_table(seed_rows)).to_pylist()
    got = written(output)
    for row, expected in zip(seed_rows, want, strict=True):
        record = got[row["row"]]
        assert (record["decision"], record.get("error")) == (expected["decision"], expected["error"]), row
        # Typed by the module's rule: JSON values as text, single values of list keys as lists, one key per case.
        context = row["context"] | ({"aws:multifactorauthage": "300"} if row["row"] % 5 < 2 else {})
        assert {key.lower(): value for key, value in record["context"].items()} == context
    assert "aws:securetransport" in got[0]["context"]  # the spelling of most rows, not SPELLINGS' (a third)
    assert {row for row in got if row is None or row >= 1000} == {1000, None, 1002, 1003}
    for row in (1000, None, 1002, 1003):  # the unreadable line has no row number
        assert got[row]["decision"] == "ImplicitDeny" and got[row]["error"], got[row]
    assert "not-an-arn" in got[1000]["error"]
    failures = [("ImplicitDeny", "bad")] * len(bad)
    assert summary == summary_of([(d["decision"], d["error"]) for d in want] + failures, output)


def test_parquet_explained_with_policy_files(spark, tmp_path, seed_rows, policy_files):
    log = tmp_path / "requests.parquet"
    table = request_table(seed_rows)
    pq.write_table(table, log)
    output = tmp_path / "decisions.parquet"
    summary = run_spark(PolicySource.from_paths(policies=POLICY_FILES), [str(log)], str(output), explain=True,
                        spark=spark, keep=["row"])

    want = evaluate_arrow(policy_files, table, explain=True).to_pylist()
    got = written(output)
    assert len(got) == len(seed_rows)
    for row, expected in zip(seed_rows, want, strict=True):
        record = got[row["row"]]
        assert {key: record[key] for key in expected} == expected, row
        assert record["context"] == {key: row["context"].get(key) for key in record["context"]}
    assert summary == summary_of([(d["decision"], d["error"]) for d in want], output)


def test_store_from_gzip_lines_and_parquet(spark, tmp_path, seed_rows):
    store = PolicyStore.from_directory(STORE)
    rows = [{**row, "principal": STORE_PRINCIPALS[row["row"] % len(STORE_PRINCIPALS)]} for row in seed_rows]
    for number, principal in enumerate(STORE_PRINCIPALS, start=len(rows)):  # the bucket with a resource policy
        secure = "true" if number % 2 else "false"
        rows.append(as_row(number, Request.create(principal, "s3:PutObject", "arn:aws:s3:::example-imagebuilder-logs/b",
                                                  {"aws:SecureTransport": secure, "aws:RequestedRegion": "us-east-1"})))
    half = len(rows) // 2
    write_lines(tmp_path / "requests.jsonl.gz", rows[:half],
                [json.dumps({"row": 2000, "principal": "arn:aws:iam::bad", "action": "s3:GetObject", "resource": "*"})])
    pq.write_table(request_table(rows[half:], context_as_text=True), tmp_path / "requests.parquet")
    output = tmp_path / "decisions.parquet"
    summary = run_spark(PolicySource.from_paths(store=STORE), [str(tmp_path / "requests.jsonl.gz"),
                                                         str(tmp_path / "requests.parquet")],
                        str(output), explain=True, spark=spark, keep=["row"])

    requests = [Request.create(row["principal"], row["action"], row["resource"], row["context"],
                               row["resource_account"]) for row in rows]
    want = CompiledStore(store).evaluate_batch(requests, explain=True)
    got = written(output)
    for row, decision in zip(rows, want, strict=True):
        record = got[row["row"]]
        statements = [{"policy": s.policy, "index": s.index, "sid": s.sid, "effect": str(s.effect)}
                      for s in decision.statements]
        assert (record["decision"], record["error"], record["decided_by"], record["statements"],
                record["missing_keys"]) == (str(decision.decision), decision.error, decision.decided_by, statements,
                                            list(decision.missing_keys)), row
    assert {d.decided_by for d in want} >= {"principal", "identity", "scp[0]", "resource"}
    assert got[2000]["decision"] == "ImplicitDeny" and "arn:aws:iam::bad" in got[2000]["error"]
    assert summary == summary_of([(str(d.decision), d.error) for d in want] + [("ImplicitDeny", "bad")], output)


def test_spec_pickles_and_compiles_once_per_process():
    for spec in (PolicySource.from_paths(policies=POLICY_FILES), PolicySource.from_paths(store=STORE)):
        copy = pickle.loads(pickle.dumps(spec))
        assert copy == spec and copy is not spec
        assert copy.evaluator() is spec.evaluator()
    snapshot = PolicyStore.from_json(PolicySource.from_paths(store=STORE).store_snapshot)
    assert snapshot.principals.keys() == PolicyStore.from_directory(STORE).principals.keys()
    with pytest.raises(ValueError, match="either"):
        PolicySource()


def test_inputs_named_by_format(spark, tmp_path):
    spec = PolicySource.from_paths(policies=POLICY_FILES)
    with pytest.raises(ValueError, match="cannot tell the format"):
        run_spark(spec, [str(tmp_path / "logs/")], str(tmp_path / "out.parquet"), spark=spark)
    with pytest.raises(ValueError, match="cannot keep"):
        run_spark(spec, [str(tmp_path / "logs.jsonl")], str(tmp_path / "out.parquet"), spark=spark, keep=["decision"])


# ---------------------------------------------------------------- session tags

TAG_ACCOUNT = "111111111111"
GATE = f"arn:aws:iam::{TAG_ACCOUNT}:policy/Gate"
TAGGED_STORE = {  # role "blocked" is tagged team=blocked, role "untagged" has no tags; both have Gate
    "managed_policies": [{"arn": GATE, "document": {
        "Version": "2012-10-17", "Statement": [
            {"Sid": "Read", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
            {"Sid": "Blocked", "Effect": "Deny", "Action": "*", "Resource": "*",
             "Condition": {"StringEquals": {"aws:PrincipalTag/team": "blocked"}}}]}}],
    "principals": [
        {"arn": f"arn:aws:iam::{TAG_ACCOUNT}:role/untagged", "managed_policies": [GATE]},
        {"arn": f"arn:aws:iam::{TAG_ACCOUNT}:role/blocked", "managed_policies": [GATE], "tags": {"team": "blocked"}},
    ],
}
NOT_A_SESSION = "session tags belong to an assumed-role session principal"


def session(role: str, name: str) -> str:
    return f"arn:aws:sts::{TAG_ACCOUNT}:assumed-role/{role}/{name}"


# principal (one per line, so that rows are matched by it) -> (session_tags, the decision AWS gives, what its
# error says): written by hand from AWS's documentation. A session's tags are its aws:PrincipalTag/*, over its
# role's tags of the same key; tag key names ignore case; only an assumed-role session has session tags.
TAGGED_CASES = {
    session("untagged", "tagged-blocked"): ({"team": "blocked"}, "ExplicitDeny", None),
    session("blocked", "tagged-ok"): ({"team": "ok"}, "Allow", None),
    session("blocked", "no-tags"): (None, "ExplicitDeny", None),
    session("untagged", "no-tags"): (None, "Allow", None),
    session("untagged", "key-in-capitals"): ({"TEAM": "blocked"}, "ExplicitDeny", None),  # JSON Lines only
    f"arn:aws:iam::{TAG_ACCOUNT}:role/untagged": ({"team": "ok"}, "ImplicitDeny", NOT_A_SESSION),
}
MALFORMED_TAGS = {  # principal -> (session_tags, the problem batch.readers reports)
    session("untagged", "number"): ({"team": 7}, "bad session tags: session tag 'team': values are strings, not 7"),
    session("untagged", "text"): ("team=blocked",
                                  "bad session tags: session_tags must be an object, not 'team=blocked'"),
}


def tagged_line(principal: str, tags: object) -> str:
    record = {"principal": principal, "action": "s3:GetObject", "resource": "arn:aws:s3:::data/report.csv"}
    if tags is not None:
        record["session_tags"] = tags
    return json.dumps(record)


def local_batch(store: Path, log: Path, output: Path) -> tuple[dict[str, tuple[str, str | None]], dict[int, str]]:
    """``iam-eval batch`` (the local engine) in its own process: each principal's decision and error, and the
    problem reported for each line of ``log`` that is not a request."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("IAM_EVAL_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    job = subprocess.run([sys.executable, "-m", "iam_evaluator", "batch", "--store", str(store), "--input", str(log),
                          "--output", str(output), "--workers", "1"], cwd=REPO, env=environment,
                         capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    problems = {int(number): message for number, message
                in re.findall(rf"^  {re.escape(str(log))}:(\d+): (.*)$", job.stdout, re.MULTILINE)}
    return {row["principal"]: (row["decision"], row["error"]) for row in rows}, problems


def test_session_tags_decide_as_in_the_local_engine(spark, tmp_path, capsys):
    """``iam-eval batch --engine spark`` over JSON Lines and Parquet: each row's session tags decide it as
    AWS does and as the local engine does; a malformed session_tags is the row's error, worded as the local
    engine reports the record."""
    store = tmp_path / "store.json"
    store.write_text(json.dumps(TAGGED_STORE))
    lines = [tagged_line(principal, tags) for principal, (tags, _, _) in TAGGED_CASES.items()]
    malformed = {principal: len(lines) + number for number, principal in enumerate(MALFORMED_TAGS, start=1)}
    lines += [tagged_line(principal, tags) for principal, (tags, _) in MALFORMED_TAGS.items()]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    # The same requests as Parquet, session tags as a struct column as the local readers write them, less
    # the tag key in capitals: Spark cannot read a struct whose fields differ only in case (team and TEAM).
    capitals = session("untagged", "key-in-capitals")
    struct_log = tmp_path / "struct.jsonl"
    struct_log.write_text("".join(line + "\n" for line in lines if capitals not in line))
    parquet = tmp_path / "log.parquet"
    write_requests_parquet(read_requests(struct_log), parquet)

    for source in (log, parquet):
        output = tmp_path / f"{source.name}.spark.jsonl"
        assert main(["batch", "--engine", "spark", "--store", str(store), "--input", str(source),
                     "--output", str(output)]) == 0
        summary = json.loads(capsys.readouterr().out)
        got = {record["principal"]: record for part in sorted(output.glob("part-*")) for line in part.open()
               for record in [json.loads(line)]}
        local, problems = local_batch(store, source, tmp_path / f"{source.name}.local.jsonl")

        want = {principal: (decision, error) for principal, (_, decision, error) in TAGGED_CASES.items()
                if source == log or principal != capitals}
        for principal, (decision, error) in want.items():
            record = got[principal]
            assert record["decision"] == decision, (source.name, principal, record)
            assert (error is None) == (record.get("error") is None) and (error or "") in record.get("error", ""), \
                (source.name, principal, record)
            assert (record["decision"], record.get("error")) == local[principal], (source.name, principal)
        assert got[session("blocked", "tagged-ok")]["session_tags"] == {"team": "ok"}
        assert "session_tags" not in got[session("blocked", "no-tags")]
        if source == log:
            assert problems == {malformed[principal]: problem for principal, (_, problem) in MALFORMED_TAGS.items()}
            for principal, (_, problem) in MALFORMED_TAGS.items():
                assert (got[principal]["decision"], got[principal]["error"]) == ("ImplicitDeny", problem)
            assert got.keys() == want.keys() | MALFORMED_TAGS.keys()
        else:  # the local reader left the malformed records out of the Parquet log
            assert got.keys() == local.keys() == want.keys()
        assert summary["rows"] == len(got) and summary["errors"] == sum(
            record.get("error") is not None for record in got.values())
    assert SparkSession.getActiveSession() is spark  # the command used the tests' session and left it running


def test_session_tags_in_parquet_maps_and_json_text(spark, tmp_path):
    """Parquet session tags as a map or as JSON text are read as a struct is; a map's null value is an absent
    tag."""
    store = tmp_path / "store.json"
    store.write_text(json.dumps(TAGGED_STORE))
    rows = [(session("untagged", "s1"), {"team": "blocked"}, "ExplicitDeny"),
            (session("blocked", "s2"), {"team": "ok", "other": None}, "Allow"),
            (session("blocked", "s3"), None, "ExplicitDeny"),
            (session("untagged", "s4"), {"Team": "blocked"}, "ExplicitDeny")]
    base = {"principal": [row[0] for row in rows], "action": ["s3:GetObject"] * len(rows),
            "resource": ["arn:aws:s3:::data/report.csv"] * len(rows)}
    forms = {
        "map": pa.array([None if tags is None else list(tags.items()) for _, tags, _ in rows],
                        pa.map_(pa.string(), pa.string())),
        "text": pa.array([None if tags is None else json.dumps({key: value for key, value in tags.items() if value})
                          for _, tags, _ in rows], pa.string()),
    }
    for form, tags in forms.items():
        log = tmp_path / f"{form}.parquet"
        pq.write_table(pa.table({**base, "session_tags": tags}), log)
        output = tmp_path / f"{form}.decisions.parquet"
        run_spark(PolicySource.from_paths(store=str(store)), [str(log)], str(output), spark=spark)
        got = {record["principal"]: record for record in pq.read_table(output).to_pylist()}
        for principal, _, decision in rows:
            assert (got[principal]["decision"], got[principal]["error"]) == (decision, None), (form, principal)
        assert got[session("blocked", "s2")]["session_tags"] == {"team": "ok"}  # one field for team and Team
