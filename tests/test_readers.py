"""Request-log readers: every format yields the same requests in the batch schema, and every record that
cannot become a request is accounted for with its location."""
from __future__ import annotations

import gzip
import itertools
import json
import pickle
import shutil
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iam_evaluator.batch import cloudtrail, readers
from iam_evaluator.batch.readers import (
    LogPart,
    MalformedRecord,
    PartReader,
    Problems,
    read_requests,
    split_requests,
    write_requests_parquet,
)

LOGS = Path(__file__).resolve().parent / "data" / "logs"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

REQUESTS = [
    {"principal": "arn:aws:iam::111122223333:role/app", "action": "s3:GetObject",
     "resource": "arn:aws:s3:::reports/2026/q1.csv",
     "context": {"aws:SourceIp": "10.0.0.1", "aws:PrincipalOrgPaths": ["o-a1b2c3/r-ab12/ou-ab12-11111111/"]}},
    {"principal": "arn:aws:iam::111122223333:user/alice", "action": "kms:Decrypt", "resource": "*",
     "resource_account": "444455556666",
     "context": {"aws:SourceIp": "10.0.0.2", "aws:MultiFactorAuthPresent": "true"}},
    {"principal": "arn:aws:iam::444455556666:root", "action": "sts:GetCallerIdentity", "resource": "*"},
    {"principal": "arn:aws:sts::111122223333:assumed-role/ci/build-1", "action": "ec2:RunInstances",
     "resource": "arn:aws:ec2:us-east-1:111122223333:instance/*",
     "context": {"aws:TagKeys": ["team", "env"], "aws:RequestTag/team": "web", "aws:PrincipalOrgPaths": []}},
]


def as_requests(batches) -> list[dict]:
    """Batches back to request objects: null columns and absent context keys left out."""
    requests = []
    for batch in batches:
        for row in batch.to_pylist():
            request = {name: row[name] for name in ("principal", "action", "resource")}
            if row["resource_account"] is not None:
                request["resource_account"] = row["resource_account"]
            context = {key: value for key, value in (row.get("context") or {}).items() if value is not None}
            if context:
                request["context"] = context
            tags = {key: value for key, value in (row.get("session_tags") or {}).items() if value is not None}
            if tags:
                request["session_tags"] = tags
            requests.append(request)
    return requests


def write_lines(path: Path, lines: list[str]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in lines)
    return path


def write_jsonl(path: Path, requests: list[dict]) -> Path:
    return write_lines(path, [json.dumps(request) for request in requests])


def write_struct_parquet(path: Path, requests: list[dict]) -> Path:
    """Parquet as another tool would write it: the context as a struct column."""
    rows = [{"resource_account": None, "context": None, **request} for request in requests]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# formats -----------------------------------------------------------------------------------------------------

def test_every_format_gives_the_same_requests(tmp_path):
    jsonl = write_jsonl(tmp_path / "requests.jsonl", REQUESTS)
    gzipped = write_jsonl(tmp_path / "requests.jsonl.gz", REQUESTS)
    json_context_parquet = tmp_path / "json-context.parquet"
    assert write_requests_parquet(read_requests(jsonl), json_context_parquet) == len(REQUESTS)
    struct_parquet = write_struct_parquet(tmp_path / "struct-context.parquet", REQUESTS)
    for path in (jsonl, gzipped, json_context_parquet, struct_parquet):
        problems = Problems()
        assert as_requests(read_requests(path, problems=problems)) == REQUESTS, path.name
        assert problems.total == 0 and not problems.notes


def test_gzip_is_recognised_by_its_content(tmp_path):
    disguised = write_jsonl(tmp_path / "requests.gz", REQUESTS)
    disguised.rename(tmp_path / "requests.jsonl")
    assert as_requests(read_requests(tmp_path / "requests.jsonl")) == REQUESTS


def test_sources_name_the_line_or_row(tmp_path):
    jsonl = write_lines(tmp_path / "r.jsonl", [json.dumps(REQUESTS[0]), "", json.dumps(REQUESTS[1])])
    parquet = write_struct_parquet(tmp_path / "r.parquet", REQUESTS[:2])
    table = pa.Table.from_batches(read_requests([jsonl, parquet]))
    assert table.column("source").to_pylist() == [f"{jsonl}:1", f"{jsonl}:3", f"{parquet}#0", f"{parquet}#1"]
    assert table.column("resource_fallback").to_pylist() == [False] * 4


def test_folders_are_walked_in_name_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", REQUESTS[1:2])
    (tmp_path / "a").mkdir()
    write_jsonl(tmp_path / "a" / "z.jsonl.gz", REQUESTS[0:1])
    write_jsonl(tmp_path / "c.ndjson", REQUESTS[2:3])
    (tmp_path / "notes.txt").write_text("not a log\n")
    problems = Problems()
    assert as_requests(read_requests(tmp_path, problems=problems)) == REQUESTS[:3]
    assert problems.notes == {readers.SKIPPED_FILE: 1}


def test_a_missing_path_fails_before_reading(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        next(read_requests([tmp_path / "nowhere.jsonl"]))


# batches -----------------------------------------------------------------------------------------------------

def test_batches_hold_at_most_batch_rows(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", REQUESTS * 3)
    batches = list(read_requests(path, batch_rows=5))
    assert [batch.num_rows for batch in batches] == [5, 5, 2]
    assert as_requests(batches) == REQUESTS * 3
    schema = batches[0].schema
    assert [(field.name, field.type, field.nullable) for field in schema if field.name != "context"] == [
        ("principal", pa.string(), False), ("action", pa.string(), False), ("resource", pa.string(), False),
        ("resource_account", pa.string(), True), ("session_tags", pa.struct([]), True), ("source", pa.string(), False),
        ("resource_fallback", pa.bool_(), False),
    ]


def test_a_key_that_is_a_list_in_one_row_is_a_list_in_its_whole_batch(tmp_path):
    base = {"principal": "arn:aws:iam::111122223333:user/u", "action": "s3:ListBucket", "resource": "*"}
    path = write_jsonl(tmp_path / "r.jsonl", [
        {**base, "context": {"k": "a", "s": "x"}},
        {**base, "context": {"k": ["b", "c"]}},
        {**base, "context": {"k": "d", "n": 10, "f": 1.5, "b": True, "l": [1, False]}},
        {**base},
    ])
    problems = Problems()
    first, second = read_requests(path, batch_rows=2, problems=problems)
    context = first.schema.field("context").type
    assert {field.name: field.type for field in context} == {"k": pa.list_(pa.string()), "s": pa.string()}
    assert first.column("context").to_pylist() == [{"k": ["a"], "s": "x"}, {"k": ["b", "c"], "s": None}]
    assert problems.notes == {readers.WIDENED: 1}
    assert second.column("context").to_pylist() == [
        {"k": "d", "n": "10", "f": "1.5", "b": "true", "l": ["1", "false"]},
        {"k": None, "n": None, "f": None, "b": None, "l": None},
    ]
    assert second.schema.field("context").type.field("k").type == pa.string()


def test_a_batch_without_context_has_an_empty_struct(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [REQUESTS[2]] * 2)
    [batch] = read_requests(path)
    assert batch.schema.field("context").type == pa.struct([])
    assert batch.column("context").null_count == 0


# session tags ------------------------------------------------------------------------------------------------

SESSION_REQUESTS = [
    {**REQUESTS[3], "session_tags": {"team": "web", "cost-center": "42"}},
    REQUESTS[0],
    {"principal": "arn:aws:sts::111122223333:assumed-role/ci/build-2", "action": "s3:GetObject", "resource": "*",
     "context": {"aws:SourceIp": "10.0.0.3"}, "session_tags": {"team": "data"}},
]


def test_session_tags_are_a_struct_of_tag_keys_in_every_format(tmp_path):
    jsonl = write_jsonl(tmp_path / "requests.jsonl", SESSION_REQUESTS)
    gzipped = write_jsonl(tmp_path / "requests.jsonl.gz", SESSION_REQUESTS)
    written = tmp_path / "written.parquet"
    assert write_requests_parquet(read_requests(jsonl, batch_rows=2), written, row_group_rows=2) == 3
    assert pq.read_schema(written).field("session_tags").type == pa.struct([("cost-center", pa.string()),
                                                                            ("team", pa.string())])
    struct_parquet = write_struct_parquet(tmp_path / "struct.parquet", SESSION_REQUESTS)
    json_context = tmp_path / "json-context.parquet"  # the context as JSON text: decoded row by row
    pq.write_table(pa.Table.from_pylist([{**request, "context": json.dumps(request.get("context"))}
                                         for request in SESSION_REQUESTS]), json_context)
    source_ips_only = []  # what a reader keeps for policies that test aws:SourceIp alone: every session tag
    for request in SESSION_REQUESTS:
        kept = {key: value for key, value in request["context"].items() if key == "aws:SourceIp"}
        source_ips_only.append({**request, "context": kept} if kept else
                               {key: value for key, value in request.items() if key != "context"})
    for path in (jsonl, gzipped, written, struct_parquet, json_context):
        problems = Problems()
        assert as_requests(read_requests(path, problems=problems)) == SESSION_REQUESTS, path.name
        assert as_requests(read_requests(path, problems=problems, context_keys={"aws:sourceip"})) == source_ips_only
        assert problems.total == 0, path.name
    [batch] = read_requests(jsonl)
    assert batch.column("session_tags").to_pylist() == [{"team": "web", "cost-center": "42"},
                                                        {"team": None, "cost-center": None},
                                                        {"team": "data", "cost-center": None}]


MALFORMED_SESSION_TAGS = [
    json.dumps(SESSION_REQUESTS[0]),                                                     # 1 read
    json.dumps({**REQUESTS[2], "session_tags": ["team"]}),                               # 2 not an object
    json.dumps({**REQUESTS[2], "session_tags": {"team": 7}}),                            # 3 not a string
    json.dumps({**REQUESTS[2], "session_tags": {"team": "a", "env": None}}),             # 4 null
    json.dumps({**REQUESTS[2], "session_tags": {"team": ["a", "b"]}}),                   # 5 a list
    json.dumps(SESSION_REQUESTS[2]),                                                     # 6 read
]


def test_malformed_session_tags_are_reported_with_their_line(tmp_path):
    path = write_lines(tmp_path / "requests.jsonl", MALFORMED_SESSION_TAGS)
    problems = Problems()
    [batch] = read_requests(path, problems=problems)
    assert as_requests([batch]) == [SESSION_REQUESTS[0], SESSION_REQUESTS[2]]
    assert problems.counts == {"bad session tags": 4}
    assert problems.first == [
        (f"{path}:2", "bad session tags: session_tags must be an object, not ['team']"),
        (f"{path}:3", "bad session tags: session tag 'team': values are strings, not 7"),
        (f"{path}:4", "bad session tags: session tag 'env': values are strings, not None"),
        (f"{path}:5", "bad session tags: session tag 'team': values are strings, not ['a', 'b']"),
    ]
    with pytest.raises(MalformedRecord, match=r"requests\.jsonl:2: bad session tags") as raised:
        list(read_requests(path, strict=True))
    assert raised.value.kind == "bad session tags"


@pytest.mark.parametrize("session_tags, message", [
    (pa.array([{"team": 1}, {"team": 2}]), "session tag 'team' is int64, not string"),
    (pa.array(['{"team": "web"}'] * 2), "column 'session_tags' is string, not a struct"),
], ids=["a tag of numbers", "JSON text"])
def test_parquet_session_tags_of_a_wrong_type_are_one_problem(tmp_path, session_tags, message):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"principal": [REQUESTS[3]["principal"]] * 2, "action": ["s3:GetObject"] * 2,
                             "resource": ["*"] * 2, "session_tags": session_tags}), path)
    problems = Problems()
    assert list(read_requests(path, problems=problems)) == []
    assert problems.first == [(str(path), f"bad session tags: {message}: 2 rows not read")]


# problems ----------------------------------------------------------------------------------------------------

MALFORMED_LINES = [
    json.dumps(REQUESTS[0]),                                                             # 1 read
    '{"principal": "arn:aws:iam::111122223333:user/u", "action": ',                      # 2 bad JSON
    '{"action": "s3:GetObject", "resource": "*"}',                                       # 3 missing field
    '{"principal": "arn:aws:iam::111122223333:user/u", "action": "s3:GetObject", "resource": 7}',  # 4 wrong type
    '{"principal": 42, "action": "s3:GetObject", "resource": "*"}',                      # 5 wrong type
    '{"principal": "p", "action": "a:B", "resource": "*", "context": ["aws:SourceIp"]}',  # 6 bad context
    "",                                                                                  # 7 blank, skipped
    "[1, 2]",                                                                            # 8 not an object
    '{"principal": "p", "action": "a:B", "resource": "*", "context": {"k": {"x": 1}}}',  # 9 bad context
    '{"principal": "p", "action": "a:B", "resource": "*", "resource_acount": "1"}',      # 10 unknown field
    json.dumps(REQUESTS[1]),                                                             # 11 read
]


def test_malformed_lines_are_counted_with_their_location(tmp_path):
    path = write_lines(tmp_path / "requests.jsonl", MALFORMED_LINES)
    problems = Problems()
    [batch] = read_requests(path, problems=problems)
    assert batch.column("source").to_pylist() == [f"{path}:1", f"{path}:11"]
    assert as_requests([batch]) == REQUESTS[:2]
    assert problems.counts == {"bad JSON": 1, "missing field": 1, "wrong type": 2, "bad context": 2,
                               "not an object": 1, "unknown field": 1}
    assert [location for location, _ in problems.first] == [f"{path}:{line}" for line in (2, 3, 4, 5, 6, 8, 9, 10)]
    assert problems.first[3] == (f"{path}:5", "wrong type: principal must be a non-empty string, not 42")
    assert problems.first[4][1] == "bad context: context must be an object, not ['aws:SourceIp']"
    assert problems.report().startswith("8 problem(s)\n  2 wrong type\n")


def test_strict_stops_at_the_first_problem(tmp_path):
    path = write_lines(tmp_path / "requests.jsonl", MALFORMED_LINES)
    with pytest.raises(MalformedRecord, match=r"requests\.jsonl:2: bad JSON") as raised:
        list(read_requests(path, strict=True))
    assert raised.value.location == f"{path}:2" and raised.value.kind == "bad JSON"


def test_problems_keep_the_first_few_and_count_all(tmp_path):
    path = write_lines(tmp_path / "requests.jsonl", ["{"] * 5)
    problems = Problems(keep=2)
    assert list(read_requests(path, problems=problems)) == []
    assert problems.counts == {"bad JSON": 5} and problems.total == 5
    assert [location for location, _ in problems.first] == [f"{path}:1", f"{path}:2"]
    assert "... and 3 more" in problems.report()


def test_parquet_rows_without_a_principal_are_reported(tmp_path):
    requests = [REQUESTS[0], {**REQUESTS[1], "principal": None}, REQUESTS[2]]
    path = write_struct_parquet(tmp_path / "r.parquet", requests)
    problems = Problems()
    assert as_requests(read_requests(path, problems=problems)) == [REQUESTS[0], REQUESTS[2]]
    assert problems.first == [(f"{path}#1", "missing field: principal null or empty")]


def test_parquet_as_other_writers_type_it(tmp_path):
    """Dictionary-encoded and large strings, an always-null context key, an all-null context column."""
    for context in ({"aws:SourceIp": None}, None):
        table = pa.Table.from_pylist([{**REQUESTS[2], "context": context}] * 3)
        table = table.set_column(table.schema.get_field_index("principal"), "principal",
                                 table.column("principal").dictionary_encode())
        table = table.set_column(table.schema.get_field_index("action"), "action",
                                 table.column("action").cast(pa.large_string()))
        path = tmp_path / "r.parquet"
        pq.write_table(table, path)
        problems = Problems()
        assert as_requests(read_requests(path, problems=problems)) == REQUESTS[2:3] * 3
        assert problems.total == 0


def test_parquet_with_a_wrong_column_type_is_one_problem(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"principal": [1, 2], "action": ["s3:GetObject"] * 2, "resource": ["*"] * 2}), path)
    problems = Problems()
    assert list(read_requests(path, problems=problems)) == []
    assert problems.first == [(str(path), "wrong type: column 'principal' is int64, not string: 2 rows not read")]


def test_a_truncated_gzip_keeps_the_rows_before_the_break(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl.gz", REQUESTS * 500)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    problems = Problems()
    rows = sum(batch.num_rows for batch in read_requests(path, problems=problems))
    assert 0 < rows < 2000
    assert problems.counts == {readers.UNREADABLE_FILE: 1}


# CloudTrail --------------------------------------------------------------------------------------------------

def cloudtrail_folder(root: Path) -> Path:
    """The fixture delivered as AWS lays a trail out, with a digest file that must not be read as events."""
    day = root / "AWSLogs" / "111122223333" / "CloudTrail" / "us-east-1" / "2026" / "03" / "02"
    day.mkdir(parents=True)
    with open(LOGS / "cloudtrail_records.json", "rb") as source, \
            gzip.open(day / "111122223333_CloudTrail_us-east-1_20260302T1005Z_a1b2c3.json.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    digest = root / "AWSLogs" / "111122223333" / "CloudTrail-Digest" / "us-east-1" / "2026" / "03" / "02"
    digest.mkdir(parents=True)
    write_lines(digest / "111122223333_CloudTrail-Digest_us-east-1_20260302T1100Z.json.gz",
                ['{"awsAccountId": "111122223333", "logFiles": []}'])
    return root / "AWSLogs"


def test_a_cloudtrail_trail_becomes_requests(tmp_path):
    problems = Problems()
    [batch] = read_requests(cloudtrail_folder(tmp_path), problems=problems)
    rows = batch.to_pylist()
    log = next((tmp_path / "AWSLogs").rglob("*_CloudTrail_*.json.gz"))
    assert [row["source"] for row in rows] == [f"{log}#Records[{index}]" for index in (0, 1, 2, 3, 6)]
    assert [(row["principal"], row["action"], row["resource"], row["resource_account"], row["resource_fallback"])
            for row in rows] == [
        ("arn:aws:iam::111122223333:user/alice", "s3:PutObject", "arn:aws:s3:::reports-bucket/2026/03/q1.csv",
         "111122223333", False),
        ("arn:aws:sts::111122223333:assumed-role/ci-deployer/build-4711", "kms:Decrypt",
         "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", None, False),
        ("arn:aws:sts::111122223333:assumed-role/analyst/carol@example.com", "s3:GetObject",
         "arn:aws:s3:::shared-lake/events/part-0001.parquet", "444455556666", False),
        ("arn:aws:iam::111122223333:root", "ec2:DescribeInstances", "*", None, True),
        ("arn:aws:iam::111122223333:user/ops/bob", "ec2:RunInstances", "*", None, True),
    ]
    assert problems.counts == {cloudtrail.NO_IAM_PRINCIPAL: 1, cloudtrail.NOT_AN_API_CALL: 1}
    assert problems.first == [
        (f"{log}#Records[4]", "cannot be evaluated as an IAM principal: userIdentity type 'AWSService' "
                              "(config.amazonaws.com)"),
        (f"{log}#Records[5]", "not an API call: eventType 'AwsServiceEvent'"),
    ]
    alice, deployer, analyst, root, bob = (row["context"] for row in rows)
    assert {key: alice[key] for key in ("aws:SourceIp", "aws:username", "aws:userid", "aws:PrincipalType",
                                        "aws:SecureTransport", "aws:ViaAWSService", "aws:EpochTime")} == {
        "aws:SourceIp": "203.0.113.7", "aws:username": "alice", "aws:userid": "AIDAEXAMPLEALICE00001",
        "aws:PrincipalType": "User", "aws:SecureTransport": "true", "aws:ViaAWSService": "false",
        "aws:EpochTime": "1772445600"}
    assert alice["aws:MultiFactorAuthPresent"] is None and alice["aws:CalledVia"] is None
    assert {key: deployer[key] for key in ("aws:PrincipalArn", "aws:MultiFactorAuthPresent", "aws:TokenIssueTime",
                                           "aws:SourceIp", "aws:VpcSourceIp", "aws:SourceVpce")} == {
        "aws:PrincipalArn": "arn:aws:iam::111122223333:role/service-role/ci-deployer",
        "aws:MultiFactorAuthPresent": "false", "aws:TokenIssueTime": "2026-03-02T09:55:12Z",
        "aws:SourceIp": None, "aws:VpcSourceIp": "10.1.2.3", "aws:SourceVpce": "vpce-0a1b2c3d4e5f60718"}
    assert (analyst["aws:ViaAWSService"], analyst["aws:CalledVia"], analyst["aws:SourceIp"]) == (
        "true", ["athena.amazonaws.com"], None)
    assert (root["aws:PrincipalType"], root["aws:PrincipalArn"], root["aws:RequestedRegion"]) == (
        "Account", "arn:aws:iam::111122223333:root", "eu-west-1")
    assert (bob["aws:RequestTag/team"], bob["aws:RequestTag/env"]) == ("web", "dev")
    assert bob["aws:TagKeys"] == ["team", "env"]
    assert alice["aws:TagKeys"] is None


def test_cloudtrail_records_split_across_reads(tmp_path, monkeypatch):
    folder = cloudtrail_folder(tmp_path)
    expected = as_requests(read_requests(folder))
    monkeypatch.setattr(readers, "_CHUNK_CHARS", 37)
    assert as_requests(read_requests(folder)) == expected


def test_a_cut_cloudtrail_file_keeps_the_records_before_the_cut(tmp_path):
    text = (LOGS / "cloudtrail_records.json").read_text()
    path = tmp_path / "trail.json"
    path.write_text(text[: text.index('"eventTime": "2026-03-02T10:02:00Z"')])
    problems = Problems()
    assert len(as_requests(read_requests(path, problems=problems))) == 3
    assert problems.counts == {readers.UNREADABLE_FILE: 1}


def record(**fields) -> dict:
    """A minimal API call by an IAM user; keyword arguments replace its fields."""
    return {"eventType": "AwsApiCall", "eventTime": "2026-03-02T00:00:00Z", "awsRegion": "us-east-1",
            "eventSource": "s3.amazonaws.com", "eventName": "GetObject", "recipientAccountId": "111122223333",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/u", "accountId": "111122223333",
                             "principalId": "AIDAEXAMPLE", "userName": "u"},
            **fields}


@pytest.mark.parametrize(("source", "name", "action"), [
    ("monitoring.amazonaws.com", "PutMetricData", "cloudwatch:PutMetricData"),
    ("email.amazonaws.com", "SendEmail", "ses:SendEmail"),
    ("tagging.amazonaws.com", "GetResources", "tag:GetResources"),
    ("lambda.amazonaws.com", "UpdateFunctionCode20150331v2", "lambda:UpdateFunctionCode"),
    ("lambda.amazonaws.com", "Invoke", "lambda:InvokeFunction"),
    ("cloudfront.amazonaws.com", "GetDistribution2020_05_31", "cloudfront:GetDistribution"),
    ("s3.amazonaws.com", "ListObjects", "s3:ListBucket"),
    ("s3.amazonaws.com", "HeadObject", "s3:GetObject"),
    ("dynamodb.amazonaws.com", "GetItem", "dynamodb:GetItem"),
])
def test_event_source_and_name_become_the_iam_action(source, name, action):
    assert cloudtrail.request_from_record(record(eventSource=source, eventName=name)).action == action


def test_the_mapping_tables_name_real_prefixes_and_actions():
    services = {json.loads(line)["service_prefix"] for line in open(CORPUS / "services.jsonl")}
    actions = {f"{entry['service_prefix']}:{entry['action']}"
               for entry in map(json.loads, open(CORPUS / "iam_actions.jsonl"))}
    assert set(cloudtrail.SERVICE_PREFIXES.values()) <= services
    assert not set(cloudtrail.SERVICE_PREFIXES) & services, "a host that is also a prefix needs no entry"
    assert set(cloudtrail.ACTION_NAMES.values()) <= actions


@pytest.mark.parametrize(("fields", "resource", "account"), [
    ({"requestParameters": {"bucketName": "logs"}}, "arn:aws:s3:::logs", "111122223333"),
    ({"eventSource": "sqs.amazonaws.com", "eventName": "SendMessage",
      "requestParameters": {"queueUrl": "https://sqs.us-east-1.amazonaws.com/444455556666/jobs"}},
     "arn:aws:sqs:us-east-1:444455556666:jobs", None),
    ({"eventSource": "sns.amazonaws.com", "eventName": "Publish",
      "requestParameters": {"topicArn": "arn:aws:sns:us-east-1:111122223333:alerts", "message": "hi"}},
     "arn:aws:sns:us-east-1:111122223333:alerts", None),
])
def test_the_resource_comes_from_well_known_parameters(fields, resource, account):
    request = cloudtrail.request_from_record(record(**fields))
    assert (request.resource, request.resource_account, request.resource_fallback) == (resource, account, False)


def test_principals_iam_knows():
    federated = cloudtrail.request_from_record(record(userIdentity={
        "type": "FederatedUser", "arn": "arn:aws:sts::111122223333:federated-user/dana",
        "accountId": "111122223333", "principalId": "111122223333:dana"}))
    assert federated.principal == "arn:aws:sts::111122223333:federated-user/dana"
    assert federated.context["aws:PrincipalType"] == "FederatedUser"
    session = cloudtrail.request_from_record(record(userIdentity={
        "type": "AssumedRole", "arn": "arn:aws:sts::111122223333:assumed-role/reader/s-1"}))
    assert session.context["aws:PrincipalArn"] == "arn:aws:iam::111122223333:role/reader"
    assert session.context["aws:PrincipalAccount"] == "111122223333"
    legacy = record()
    del legacy["eventType"]
    assert cloudtrail.request_from_record(legacy).action == "s3:GetObject"


@pytest.mark.parametrize(("fields", "kind"), [
    ({"userIdentity": {"type": "AWSAccount", "accountId": "ANONYMOUS_PRINCIPAL", "principalId": ""}},
     cloudtrail.NO_IAM_PRINCIPAL),
    ({"userIdentity": {"type": "WebIdentityUser", "userName": "sub-1"}}, cloudtrail.NO_IAM_PRINCIPAL),
    ({"eventType": "AwsCloudTrailInsight"}, cloudtrail.NOT_AN_API_CALL),
    ({"eventTime": "yesterday"}, cloudtrail.MALFORMED),
    ({"eventName": None}, cloudtrail.MALFORMED),
])
def test_records_that_are_not_requests_say_why(fields, kind):
    with pytest.raises(cloudtrail.UnmappableRecord) as raised:
        cloudtrail.request_from_record(record(**fields))
    assert raised.value.kind == kind


def test_request_tags_as_services_spell_them():
    as_map = cloudtrail.request_from_record(record(requestParameters={"tags": {"team": "web"}}))
    as_list = cloudtrail.request_from_record(record(requestParameters={"tags": [{"Key": "team", "Value": "web"}]}))
    for request in (as_map, as_list):
        assert (request.context["aws:RequestTag/team"], request.context["aws:TagKeys"]) == ("web", ["team"])


# scale and the shared corpus ---------------------------------------------------------------------------------

def test_memory_stays_bounded_on_a_large_log(tmp_path):
    """Python's heap (traced) and Arrow's pool both stay a small fraction of a 200,000-line log."""
    path = tmp_path / "large.jsonl"
    with open(path, "w") as out:
        for index in range(200_000):
            out.write(f'{{"principal": "arn:aws:iam::111122223333:role/r{index % 50}", "action": "s3:GetObject", '
                      f'"resource": "arn:aws:s3:::bucket/key-{index}", "context": {{'
                      f'"aws:SourceIp": "10.0.{index % 250}.1", "svc:Key{index % 100}": "v", '
                      f'"aws:CurrentTime": "2026-03-02T00:00:00Z"}}}}\n')
    size = path.stat().st_size
    rows, arrow_peak = 0, 0
    tracemalloc.start()
    try:
        for batch in read_requests(path, batch_rows=2048):
            rows += batch.num_rows
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 200_000
    assert python_peak < size / 10, (python_peak, size)
    assert arrow_peak < size / 10, (arrow_peak, size)


def test_the_first_2000_corpus_requests_read_unchanged():
    sample = CORPUS / "requests_sample.jsonl"
    with open(sample) as lines:
        expected = [json.loads(line) for line in itertools.islice(lines, 2000)]
    problems = Problems()
    batches = list(itertools.islice(read_requests(sample, batch_rows=500, problems=problems), 4))
    assert sum(batch.num_rows for batch in batches) == 2000
    assert as_requests(batches) == expected
    assert batches[-1].column("source")[-1].as_py() == f"{sample}:2000"
    assert problems.total == 0 and not problems.notes


# the keys a reader wants, and parts that workers read on their own ------------------------------------------

def test_only_the_context_keys_asked_for_are_kept_but_every_record_is_checked(tmp_path):
    lines = [json.dumps(REQUESTS[0]), json.dumps({**REQUESTS[1], "context": {"AWS:SourceIP": "10.0.0.9"}}),
             json.dumps({**REQUESTS[2], "context": {"svc:Unused": {"nested": 1}}}), json.dumps(REQUESTS[3])]
    jsonl = write_lines(tmp_path / "r.jsonl", lines)
    struct_parquet = write_struct_parquet(tmp_path / "r.parquet", [REQUESTS[0], REQUESTS[3]])
    problems = Problems()
    [batch] = read_requests(jsonl, problems=problems, context_keys={"aws:sourceip", "aws:tagkeys"})
    assert batch.column("context").to_pylist() == [
        {"aws:SourceIp": "10.0.0.1", "AWS:SourceIP": None, "aws:TagKeys": None},
        {"aws:SourceIp": None, "AWS:SourceIP": "10.0.0.9", "aws:TagKeys": None},
        {"aws:SourceIp": None, "AWS:SourceIP": None, "aws:TagKeys": ["team", "env"]}]
    assert problems.first == [(f"{jsonl}:3", "bad context: context key 'svc:Unused': values are strings, numbers, "
                                             "booleans or lists of them, not {'nested': 1}")]
    [batch] = read_requests(struct_parquet, context_keys={"aws:sourceip", "aws:tagkeys"})
    assert batch.column("context").type.names == ["aws:SourceIp", "aws:TagKeys"]
    assert as_requests([batch])[1]["context"] == {"aws:TagKeys": ["team", "env"]}


def test_json_lines_parts_cover_every_line_once_with_its_number(tmp_path):
    lines = [json.dumps(request) for request in REQUESTS * 40]
    lines[7] = "{not json"
    lines[50] = ""
    lines[60] = json.dumps({**REQUESTS[0], "context": {"aws:UserAgent": "x" * 600}})  # longer than a part
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines))  # no line break at the end
    parts = list(split_requests(path, Problems(), part_bytes=500))
    assert len(parts) > 10 and parts[0].start == 0 and parts[-1].stop == path.stat().st_size
    assert all(before.stop == after.start for before, after in itertools.pairwise(parts))
    reader, problems = PartReader(batch_rows=7), Problems()
    batches = [batch for part in parts for batch in reader.read(part, problems)]
    expected_problems = Problems()
    assert as_requests(batches) == as_requests(read_requests(path, problems=expected_problems))
    sources = [source for batch in batches for source in batch.column("source").to_pylist()]
    assert sources == [f"{path}:{n}" for n in range(1, len(lines) + 1) if n not in (8, 51)]
    assert problems.first == expected_problems.first == [(f"{path}:8", problems.first[0][1])]


def test_parquet_parts_are_runs_of_row_groups(tmp_path):
    path = tmp_path / "r.parquet"
    write_requests_parquet(read_requests(write_jsonl(tmp_path / "r.jsonl", REQUESTS * 10)), path, row_group_rows=3)
    footers = {}
    parts = list(split_requests(path, Problems(), part_rows=5, footers=footers))
    # 13 row groups of 3 rows and one of 1; a part takes row groups until it has 5 rows
    assert [(part.start, part.stop, part.first, part.rows) for part in parts] == [
        (group, group + 2, 3 * group, 6) for group in range(0, 12, 2)] + [(12, 14, 36, 4)]
    assert set(footers) == {str(path)}
    reader = PartReader(batch_rows=4, context_keys={"aws:sourceip"}, footers=footers)
    batches = [batch for part in parts for batch in reader.read(part, Problems())]
    sources = [source for batch in batches for source in batch.column("source").to_pylist()]
    assert sources == [f"{path}#{n}" for n in range(40)]
    assert pa.types.is_dictionary(batches[0].schema.field("principal").type)  # as Parquet stores it
    assert [row["principal"] for batch in batches for row in batch.to_pylist()] == \
        [request["principal"] for request in REQUESTS * 10]


def test_files_that_cannot_be_split_are_one_part(tmp_path):
    gzipped = write_jsonl(tmp_path / "r.jsonl.gz", REQUESTS)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    problems = Problems()
    parts = list(split_requests([gzipped, broken], problems))
    assert parts == [LogPart(str(gzipped)), LogPart(str(broken))]
    reader = PartReader()
    assert as_requests(reader.read(parts[0], problems)) == REQUESTS
    assert list(reader.read(parts[1], problems)) == [] and problems.counts == {readers.UNREADABLE_FILE: 1}


def test_written_parquet_has_a_context_struct_of_every_key(tmp_path):
    base = {"principal": "arn:aws:iam::111122223333:user/u", "action": "s3:ListBucket", "resource": "*"}
    requests = [{**base, "context": {"k": "a"}}, {**base, "context": {"k": ["b", "c"], "j": "x"}}, base, base]
    path = tmp_path / "r.parquet"
    assert write_requests_parquet(read_requests(write_jsonl(tmp_path / "r.jsonl", requests), batch_rows=2),
                                  path, row_group_rows=3) == 4
    context = pq.read_schema(path).field("context").type
    assert {field.name: pa.types.is_list(field.type) for field in context} == {"j": False, "k": True}
    assert pq.read_metadata(path).num_row_groups == 2
    assert [request.get("context") for request in as_requests(read_requests(path))] == [
        {"k": ["a"]}, {"k": ["b", "c"], "j": "x"}, None, None]
    no_context = tmp_path / "none.parquet"
    write_requests_parquet(read_requests(write_jsonl(tmp_path / "n.jsonl", [base] * 3)), no_context)
    assert "context" not in pq.read_schema(no_context).names
    assert as_requests(read_requests(no_context)) == [base] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.jsonl", "none.parquet", "r.jsonl", "r.parquet"]


def test_problems_of_later_parts_merge_in_order():
    first, later = Problems(keep=3), Problems()
    first.add("bad JSON", "a:1", "x")
    first.add("bad JSON", "a:2", "x")
    for line in range(3, 6):
        later.add("missing field", f"a:{line}", "y")
    later.note(readers.WIDENED, 2)
    first.merge(later)
    assert [location for location, _ in first.first] == ["a:1", "a:2", "a:3"]
    assert first.counts == {"bad JSON": 2, "missing field": 3} and first.notes == {readers.WIDENED: 2}


def test_a_malformed_record_error_crosses_processes():
    error = pickle.loads(pickle.dumps(MalformedRecord("bad JSON", "log.jsonl:3", "Expecting value")))
    assert (error.kind, error.location) == ("bad JSON", "log.jsonl:3")
    assert str(error) == "log.jsonl:3: bad JSON: Expecting value"


def test_lone_surrogates_are_refused_with_their_line_and_pairs_are_text(tmp_path):
    """An escape may spell a lone surrogate, which no text holds: wherever it sits (a field, a context key or
    value, a list item, a session tag) that record is refused with its line and the others are read; an
    escaped pair is one character, and fine."""
    role = "arn:aws:sts::111122223333:assumed-role/app/s"
    base = '{"principal": "%s", "action": "s3:GetObject", "resource": "arn:aws:s3:::b/%s"%s}'
    lines = [base % (role, "\\ud800", ""), base % (role, "ok", ', "context": {"k\\udc00": "v"}'),
             base % (role, "ok", ', "context": {"aws:TagKeys": ["a", "\\uDBFF"]}'),
             base % (role, "ok", ', "session_tags": {"team": "x\\udfff"}'),
             base % (role, "\\ud83d\\ude00", ""), base % (role + "\\ud800", "ok", "")]
    path = write_lines(tmp_path / "requests.jsonl", lines)
    problems = Problems()
    [batch] = read_requests(path, problems=problems)
    assert batch.column("resource").to_pylist() == ["arn:aws:s3:::b/\U0001F600"]
    assert problems.counts == {"bad JSON": 5}
    assert [location for location, _ in problems.first] == [f"{path}:{line}" for line in (1, 2, 3, 4, 6)]
    assert all("lone surrogate" in detail for _, detail in problems.first)
