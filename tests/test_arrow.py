"""The Arrow-native API gives the compiled engine's answers, from Arrow buffers."""
from __future__ import annotations

import random
import sys
from itertools import product
from pathlib import Path

import pyarrow as pa
import pytest

from iam_evaluator import DecisionKind, PolicySet, Request, RequestError, parse_policy, reference
from iam_evaluator.arrow import SchemaError, evaluate_arrow
from iam_evaluator.compile import CompiledPolicySet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from workloads import seed_policy_set, seed_requests  # noqa: E402

ROLE = "arn:aws:iam::111122223333:role/Builder"


def table_of(requests: list[Request], list_keys=frozenset({"kms:encryptioncontextkeys", "aws:calledvia"})):
    """Requests as an Arrow table with a context struct (list keys as lists in every row)."""
    keys = sorted({key for r in requests for key in r.context})
    context = pa.StructArray.from_arrays(
        [pa.array([r.context.get(key) if key not in list_keys or r.context.get(key) is None
                   else list(r.context[key]) for r in requests],
                  pa.list_(pa.string()) if key in list_keys else pa.string()) for key in keys],
        names=keys)
    return pa.table({
        "principal": [r.principal for r in requests], "action": [r.action for r in requests],
        "resource": [r.resource for r in requests], "resource_account": [r.resource_account for r in requests],
        "context": context,
    })


@pytest.fixture(scope="module")
def seed():
    policies = seed_policy_set()
    requests = seed_requests(3000, seed=5)
    return CompiledPolicySet(policies), requests, table_of(requests)


def test_decisions_equal_the_batch_api(seed):
    compiled, requests, table = seed
    result = evaluate_arrow(compiled, table)
    assert result.column("decision").to_pylist() == [str(d) for d in compiled.evaluate_batch(requests)]
    assert result.column("error").null_count == len(requests)


def test_threads_share_the_rows_and_change_nothing(seed):
    compiled, requests, table = seed
    want = [str(d) for d in compiled.evaluate_batch(requests)] * 3
    tripled = pa.concat_tables([table] * 3).combine_chunks()  # 9,000 rows: enough to split
    for threads in (1, 2, 3):
        assert evaluate_arrow(compiled, tripled, threads=threads).column("decision").to_pylist() == want


def test_record_batches_slices_and_chunks(seed):
    compiled, requests, table = seed
    want = [str(d) for d in compiled.evaluate_batch(requests)]
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=700))
    assert evaluate_arrow(compiled, chunked).column("decision").to_pylist() == want
    piece = table.slice(1234, 500).to_batches()[0]
    assert piece.column(0).offset == 1234
    assert evaluate_arrow(compiled, piece).column("decision").to_pylist() == want[1234:1734]


def test_explained_rows_equal_explained_decisions(seed):
    compiled, requests, table = seed
    result = evaluate_arrow(compiled, table.slice(0, 400), explain=True).to_pylist()
    for row, decision in zip(result, compiled.evaluate_batch(requests[:400], explain=True), strict=True):
        assert row["decision"] == str(decision.decision)
        assert row["decided_by"] == decision.decided_by
        assert [(s["policy"], s["index"], s["sid"]) for s in row["statements"]] == \
            [(s.policy, s.index, s.sid) for s in decision.statements]
        assert row["missing_keys"] == list(decision.missing_keys)


def compiled_with(*statements, **layers):
    policy = parse_policy({"Version": "2012-10-17", "Statement": list(statements)}, name="p")
    return CompiledPolicySet(PolicySet(identity=(policy,), **layers))


def test_bad_rows_fail_alone_with_their_reason():
    compiled = compiled_with({"Effect": "Allow", "Action": "s3:*", "Resource": "*",
                              "Condition": {"NumericLessThan": {"s3:max-keys": "10"}}})
    table = pa.table({
        "principal": [ROLE, "nobody", None, ROLE, ROLE, ROLE],
        "action": ["s3:GetObject", "s3:GetObject", "s3:GetObject", None, "s3 Get", "s3:GetObject"],
        "resource": ["*", "*", "*", "*", "*", "not-an-arn"],
        "context": pa.array([{"s3:max-keys": "5"}, None, None, None, None, {"s3:max-keys": "many"}]),
    })
    result = evaluate_arrow(compiled, table).to_pydict()
    assert result["decision"] == ["Allow"] + ["ImplicitDeny"] * 5
    assert result["error"][0] is None
    assert "not an IAM or STS ARN" in result["error"][1]
    assert "must not be null" in result["error"][2] and "must not be null" in result["error"][3]
    assert "is not service:Action" in result["error"][4]
    assert "neither an ARN" in result["error"][5]
    table = table.slice(0, 1).set_column(3, "context", pa.array([{"s3:max-keys": "many"}]))
    assert "s3:max-keys" in evaluate_arrow(compiled, table).column("error")[0].as_py()


def test_a_row_with_several_faults_fails_for_the_same_reason_as_in_columns():
    """Every mix of faults in one row (a principal unknown or not a session, an action or resource malformed,
    session tags where none belong, one tag spelled twice) is reported as the converter of Python objects
    reports it: the first fault it meets decides the reason."""
    compiled = compiled_with({"Effect": "Allow", "Action": "s3:*", "Resource": "*",
                              "Condition": {"StringEquals": {"aws:PrincipalTag/team": "a"}}})
    session = "arn:aws:sts::111122223333:assumed-role/Builder/s"
    rows = list(product([ROLE, session, "arn:aws:iam::111122223333:user/nobody", "nobody"],
                        ["s3:GetObject", "s3 Get"], ["*", "not-an-arn"],
                        [None, {"team": "a"}, {"team": "a", "TEAM": "b"}, {"TEAM": "b", "team": "a"}]))
    principals, actions, resources, tags = (list(column) for column in zip(*rows, strict=True))
    names = ["team", "TEAM"]
    table = pa.table({"principal": principals, "action": actions, "resource": resources,
                      "session_tags": pa.StructArray.from_arrays(
                          [pa.array([(t or {}).get(name) for t in tags], pa.string()) for name in names], names)})
    ordered = [None if t is None else {name: t[name] for name in names if name in t} for t in tags]
    want = compiled.evaluate_columns(principals, actions, resources, session_tags=ordered)
    got = evaluate_arrow(compiled, table).to_pydict()
    assert got["decision"] == [str(d) for d in want]
    assert got["error"] == [want.errors.get(i) for i in range(len(rows))]
    assert len(set(want.errors.values())) >= 5  # the mix gives each fault somewhere


def test_column_types_and_schema_errors():
    compiled = compiled_with({"Effect": "Allow", "Action": "s3:*", "Resource": "*",
                              "Condition": {"ForAnyValue:StringEquals": {"aws:TagKeys": "team"}}})
    table = pa.table({
        "principal": pa.array([ROLE, ROLE, ROLE]).dictionary_encode(),
        "action": pa.array(["s3:GetObject"] * 3, pa.large_string()),
        "resource": ["*"] * 3,
        "context": pa.array([{"aws:TagKeys": ["team"], "other": "x"}, {"aws:TagKeys": []}, None]),
    })
    assert evaluate_arrow(compiled, table).column("decision").to_pylist() == ["Allow", "ImplicitDeny", "ImplicitDeny"]
    with pytest.raises(SchemaError, match="'resource' column"):
        evaluate_arrow(compiled, table.drop_columns(["resource"]))
    with pytest.raises(SchemaError, match="must hold strings"):
        evaluate_arrow(compiled, table.set_column(1, "action", pa.array([1, 2, 3])))
    duplicate = pa.StructArray.from_arrays([pa.array([["a"]] * 3), pa.array([["b"]] * 3)],
                                           ["aws:TagKeys", "AWS:tagkeys"])
    twice = evaluate_arrow(compiled, table.set_column(3, "context", duplicate)).column("error").to_pylist()
    assert all("given twice" in error for error in twice)
    spelled = pa.StructArray.from_arrays([pa.array([["team"], None, None]), pa.array([None, ["team"], None])],
                                         ["aws:TagKeys", "AWS:tagkeys"])
    assert evaluate_arrow(compiled, table.set_column(3, "context", spelled)).column("decision").to_pylist() == \
        ["Allow", "Allow", "ImplicitDeny"]
    empty = evaluate_arrow(compiled, table.slice(0, 0))
    assert empty.num_rows == 0 and empty.schema.names == ["decision", "error"]


def test_same_and_cross_account_from_columns():
    resource_policy = parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": "sqs:*", "Resource": "*"}]},
        name="queue", kind="resource")
    compiled = compiled_with({"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"},
                             resource=resource_policy)
    queue = "arn:aws:sqs:us-east-1:444455556666:q"
    table = pa.table({"principal": [ROLE] * 3, "action": ["sqs:SendMessage"] * 3,
                      "resource": [queue, "arn:aws:sqs:us-east-1:111122223333:q", queue],
                      "resource_account": [None, None, "111122223333"]})
    got = evaluate_arrow(compiled, table).column("decision").to_pylist()
    want = [str(compiled.evaluate(Request.create(ROLE, "sqs:SendMessage", r, resource_account=a)).decision)
            for r, a in zip(table.column("resource").to_pylist(), table.column("resource_account").to_pylist(),
                            strict=True)]
    assert got == want == [str(DecisionKind.ALLOW)] * 3


def test_statement_usage_counts_what_the_log_used():
    from iam_evaluator.usage import StatementUsage

    compiled = compiled_with(
        {"Sid": "Read", "Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucket*"],
         "Resource": "*"},
        {"Sid": "NoDelete", "Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"},
        {"Sid": "Unused", "Effect": "Allow", "Action": "ec2:*", "Resource": "*"},
        {"Sid": "Everything", "Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
    )
    actions = ["s3:GetObject", "s3:GetObject", "s3:DeleteObject", "sqs:SendMessage", "iam:PassRole"]
    table = pa.table({"principal": [ROLE] * 5, "action": actions, "resource": ["*"] * 5})
    usage = StatementUsage(compiled)
    first = evaluate_arrow(compiled, table, usage=usage)
    assert first.column("decision").to_pylist() == ["Allow", "Allow", "ExplicitDeny", "Allow", "ImplicitDeny"]
    other = StatementUsage(compiled)
    evaluate_arrow(compiled, table.slice(0, 1), usage=other)
    usage.add_counts(other.counts())
    by_sid = {use.statement.sid: use for use in usage.report()}
    assert (by_sid["Read"].applied, by_sid["Read"].decided) == (3, 3)
    assert by_sid["Read"].unused_actions == ("s3:ListBucket", "s3:GetBucket*")
    assert (by_sid["NoDelete"].applied, by_sid["NoDelete"].decided, by_sid["NoDelete"].unused_actions) == (1, 1, ())
    assert (by_sid["Unused"].applied, by_sid["Unused"].unused_actions) == (0, ("ec2:*",))
    assert (by_sid["Everything"].applied, by_sid["Everything"].decided) == (5, 4)
    assert by_sid["Everything"].unused_actions == ()


def test_statement_usage_with_threads_counts_every_slice():
    """Threads tally their slices apart; the counts added up are those of the whole log (by hand)."""
    from iam_evaluator.usage import StatementUsage

    compiled = compiled_with(
        {"Sid": "Read", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
        {"Sid": "NoDelete", "Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"},
    )
    actions = ["s3:GetObject", "s3:DeleteObject", "sqs:SendMessage"] * 3000  # 9,000 rows: three slices
    table = pa.table({"principal": [ROLE] * 9000, "action": actions, "resource": ["*"] * 9000})
    usage = StatementUsage(compiled)
    result = evaluate_arrow(compiled, table, usage=usage, threads=3)
    assert result.column("decision").to_pylist() == ["Allow", "ExplicitDeny", "ImplicitDeny"] * 3000
    by_sid = {use.statement.sid: use for use in usage.report()}
    assert (by_sid["Read"].applied, by_sid["Read"].decided) == (3000, 3000)
    assert (by_sid["NoDelete"].applied, by_sid["NoDelete"].decided) == (3000, 3000)


def test_explained_failures_with_no_statements():
    empty = CompiledPolicySet(PolicySet())
    table = pa.table({"principal": ["nobody", None], "action": ["s3:GetObject"] * 2, "resource": ["*"] * 2})
    rows = evaluate_arrow(empty, table, explain=True).to_pylist()
    assert [(r["decision"], r["decided_by"]) for r in rows] == [("ImplicitDeny", "error")] * 2
    assert "not an IAM or STS ARN" in rows[0]["error"] and "must not be null" in rows[1]["error"]


def test_text_that_is_not_utf8_fails_its_row_alone():
    """Arrow does not check the bytes it is handed: a row whose principal, action, resource or context value
    is not UTF-8 is denied with an error, and every other row is answered."""
    compiled = compiled_with({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})

    def strings(values):
        raw = pa.array(values, pa.binary())
        return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())

    principal = ROLE.encode()
    context = pa.StructArray.from_arrays([strings([b"a", b"b", b"c\xff", b"d"])], ["aws:SourceVpc"])
    table = pa.table({
        "principal": strings([principal, principal + b"\xfe", principal, principal]),
        "action": strings([b"s3:GetObject", b"s3:GetObject", b"s3:GetObject", b"s3:Get\xc3"]),
        "resource": strings([b"*"] * 4),
        "context": context,
    })
    for explain in (False, True):
        result = evaluate_arrow(compiled, table, explain=explain).to_pydict()
        assert result["decision"] == ["Allow", "ImplicitDeny", "ImplicitDeny", "ImplicitDeny"]
        assert result["error"][0] is None and all("not valid UTF-8" in e for e in result["error"][1:])


def test_a_wide_sparse_batch_decides_each_row_by_the_keys_it_has(seed):
    """A log's batch has a field for every key any of its rows has (hundreds); each row has a few. Over several
    blocks of rows and a slice at an odd bit offset, each row is decided as the reference decides its request, and
    a row with a key spelled twice (tested or not) or a null list item fails as ``Request.create`` refuses it."""
    compiled, requests, _ = seed
    policies = seed_policy_set()
    rng = random.Random(7)
    contexts: list[dict] = []
    for i, request in enumerate(requests[:700]):
        context = {key: list(value) if isinstance(value, tuple) else value for key, value in request.context.items()}
        for k in rng.sample(range(150), 3):
            context[f"svc{k}:Key"] = f"v{k}"
        if i % 37 == 5:  # an untested key spelled twice
            context[f"SVC{k}:KEY"] = "w"
        if i % 41 == 7 and context:  # a tested key spelled twice
            key = next(iter(context))
            context[key.upper()] = "x"
        if i % 53 == 11:
            context["svc:List"] = ["a", None]
        elif i % 5 == 0:
            context["svc:List"] = ["a", "b"]
        contexts.append(context)
    names = sorted({key for context in contexts for key in context})
    lists = {name for context in contexts for name, value in context.items() if isinstance(value, list)}
    struct = pa.StructArray.from_arrays(
        [pa.array([context.get(name) for context in contexts], pa.list_(pa.string()) if name in lists
                  else pa.string()) for name in names], names=names)
    table = pa.table({"principal": [r.principal for r in requests[:700]], "action": [r.action for r in requests[:700]],
                      "resource": [r.resource for r in requests[:700]], "context": struct})
    want = []
    for request, context in zip(requests[:700], contexts, strict=True):
        try:
            posed = Request.create(request.principal, request.action, request.resource, context)
        except RequestError:
            want.append(None)
            continue
        want.append(str(reference.evaluate(policies, posed).decision))
    assert want.count(None) >= 30 and len(set(want)) == 4
    for start, stop in ((0, 700), (3, 700), (131, 600)):
        result = evaluate_arrow(compiled, table.slice(start, stop - start)).to_pydict()
        got = [None if error is not None else decision
               for decision, error in zip(result["decision"], result["error"], strict=True)]
        assert got == want[start:stop]
    columns = {name: [context.get(name) for context in contexts] for name in names}  # read in place, alike
    decided = compiled.evaluate_columns(table.column("principal").to_pylist(), table.column("action").to_pylist(),
                                        table.column("resource").to_pylist(), columns)
    assert [None if i in decided.errors else str(d) for i, d in enumerate(decided)] == want
