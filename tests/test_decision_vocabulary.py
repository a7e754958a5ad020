"""One vocabulary of decisions: the same names and the same numbers in the library, the batch APIs,
Arrow, the proto, the metrics and the CLI's JSON."""
from __future__ import annotations

import json

import pyarrow as pa
from prometheus_client import generate_latest

from iam_evaluator import DecisionKind, PolicySet, Request, parse_policy
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.cli import main
from iam_evaluator.compile import CompiledPolicySet
from iam_evaluator.server import convert
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.metrics import ServiceMetrics

from .service_helpers import RPC_TIMEOUT, copy_store, running_service

ROLE = "arn:aws:iam::111122223333:role/Builder"
POLICY = {"Version": "2012-10-17", "Statement": [
    {"Sid": "Read", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
     "Condition": {"NumericLessThan": {"s3:max-keys": "10"}}},
    {"Sid": "NoSecrets", "Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::secrets/*"}]}
# Allow, ExplicitDeny, ImplicitDeny, and a request that cannot be evaluated (a number where one is wanted).
ROWS = [("arn:aws:s3:::logs/a", "5"), ("arn:aws:s3:::secrets/a", "5"), ("arn:aws:s3:::logs/a", "50"),
        ("arn:aws:s3:::logs/a", "ten")]
NAMES = ["Allow", "ExplicitDeny", "ImplicitDeny", "ImplicitDeny"]
CODES = bytes([1, 2, 3, 3])
ADMIN_TOKEN = "vocabulary-admin-token"  # the proto's numbers: ALLOW = 1, EXPLICIT_DENY = 2, IMPLICIT_DENY = 3


def compiled() -> CompiledPolicySet:
    return CompiledPolicySet(PolicySet(identity=(parse_policy(POLICY, name="p"),)))


def test_the_proto_numbers_are_the_library_codes():
    assert {kind.name: kind.code for kind in DecisionKind} == {"ALLOW": 1, "EXPLICIT_DENY": 2, "IMPLICIT_DENY": 3}
    assert {name: pb.Decision.Value(name) for name in ("ALLOW", "EXPLICIT_DENY", "IMPLICIT_DENY")} == {
        "ALLOW": 1, "EXPLICIT_DENY": 2, "IMPLICIT_DENY": 3}
    assert [str(kind) for kind in DecisionKind] == ["Allow", "ExplicitDeny", "ImplicitDeny"]


def test_batch_codes_and_arrow_names():
    decided = compiled().evaluate_columns([ROLE] * 4, ["s3:GetObject"] * 4, [r for r, _ in ROWS],
                                          [{"s3:max-keys": keys} for _, keys in ROWS])
    assert decided.codes == CODES
    assert list(decided.errors) == [3] and "s3:max-keys" in decided.errors[3]
    assert [str(kind) for kind in decided] == NAMES
    table = pa.table({"principal": [ROLE] * 4, "action": ["s3:GetObject"] * 4, "resource": [r for r, _ in ROWS],
                      "context": pa.StructArray.from_arrays([pa.array([keys for _, keys in ROWS])],
                                                            names=["s3:max-keys"])})
    for explain in (False, True):
        result = evaluate_arrow(compiled(), table, explain=explain)
        assert result.column("decision").to_pylist() == NAMES
        assert result.column("error").is_null().to_pylist() == [True, True, True, False]


def test_service_results_carry_the_codes_and_come_back_whole():
    engine = compiled()
    for (resource, keys), code in zip(ROWS, CODES, strict=True):
        decision = engine.evaluate(Request.create(ROLE, "s3:GetObject", resource, {"s3:max-keys": keys}))
        message = convert.result(decision, explain=True)
        assert message.decision == code
        assert convert.decision(message) == decision
    encoded = convert.encoded_response(engine.evaluate_columns(
        [ROLE] * 4, ["s3:GetObject"] * 4, [r for r, _ in ROWS], [{"s3:max-keys": k} for _, k in ROWS]), 7, 0)
    response = pb.CheckBatchResponse.FromString(encoded)
    assert bytes(r.decision for r in response.results) == CODES and response.store_version == 7
    assert [bool(r.error) for r in response.results] == [False, False, False, True]


def test_metrics_count_by_name_and_errors_apart():
    metrics = ServiceMetrics()
    metrics.count(CODES, errors=1)
    text = generate_latest(metrics.registry).decode()
    for line in ('iam_eval_checks_total{decision="Allow"} 1.0', 'iam_eval_checks_total{decision="ExplicitDeny"} 1.0',
                 'iam_eval_checks_total{decision="ImplicitDeny"} 2.0', "iam_eval_check_errors_total 1.0"):
        assert line in text


def test_check_json_prints_every_field_with_its_type(tmp_path, capsys):
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps(POLICY))
    fields = {"decision": str, "decided_by": str, "statements": list, "missing_keys": list, "reason": str,
              "missing_key_statements": list, "near_misses": list, "more_near_misses": int}
    for (resource, keys), name in zip(ROWS, NAMES, strict=True):
        code = main(["check", "--policy", str(policy), "--principal", ROLE, "--action", "s3:GetObject",
                     "--resource", resource, "--context", f"s3:max-keys={keys}", "--json"])
        printed = json.loads(capsys.readouterr().out)
        assert code == (0 if name == "Allow" else 1)
        assert printed["decision"] == name
        assert set(printed) == {*fields, "error"}
        assert all(isinstance(printed[key], kind) for key, kind in fields.items())
        assert (printed["error"] is None) == (keys != "ten")
        for statement in printed["statements"]:
            assert {key: type(value) for key, value in statement.items()} == {
                "policy": str, "index": int, "sid": str, "effect": str}


def test_client_json_matches_check_json_and_store_versions_are_numbers(tmp_path, capsys):
    """The client prints the fields ``iam-eval check --json`` prints, plus the store version; every JSON
    output gives store versions as numbers (protobuf's JSON mapping would quote them)."""
    role = "arn:aws:iam::111122223333:role/ImageBuilderRole"
    image = "arn:aws:imagebuilder:us-east-1:111122223333:image/my-recipe/1.0.0/1"
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN) as service:
        target = ["client", "--target", f"127.0.0.1:{service.port}", "--timeout", str(RPC_TIMEOUT), "--token",
                  ADMIN_TOKEN]
        assert main([*target, "check", "--principal", role, "--action", "imagebuilder:GetImage", "--resource", image,
                     "--context", "aws:RequestedRegion=us-east-1", "--explain", "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert set(printed) == {"decision", "decided_by", "statements", "missing_keys", "reason", "error",
                                "missing_key_statements", "near_misses", "more_near_misses", "store_version"}
        assert (printed["decision"], printed["decided_by"], printed["store_version"]) == ("Allow", "identity", 1)
        assert all(statement["effect"] == "Allow" for statement in printed["statements"]) and printed["statements"]
        requests = tmp_path / "requests.jsonl"
        requests.write_text(json.dumps({"principal": role, "action": "imagebuilder:GetImage", "resource": image,
                                        "context": {"aws:RequestedRegion": "ap-south-1"}}) + "\n")
        assert main([*target, "batch", "--input", str(requests)]) == 0
        row = json.loads(capsys.readouterr().out)
        assert (row["decision"], row["store_version"]) == ("ExplicitDeny", 1)
        assert main([*target, "version"]) == 0
        version = json.loads(capsys.readouterr().out)
        assert version["version"] == 1


def test_a_row_left_without_a_code_reads_as_a_deny():
    """Code 0 is no decision: were the engine ever to leave a row undecided, the batch APIs and Arrow read it
    as ImplicitDeny, never as the decision at index 0 of some table."""
    from iam_evaluator import arrow
    from iam_evaluator.compile import FAILED_DENIES

    engine_codes = bytes([0, 1, 2, 3, 4])  # none, Allow, ExplicitDeny, ImplicitDeny, could not be evaluated
    assert engine_codes.translate(FAILED_DENIES) == bytes([3, 1, 2, 3, 3])
    names = [arrow.DECISIONS[index].as_py() for index in engine_codes.translate(arrow._INDICES)]
    assert names == ["ImplicitDeny", "Allow", "ExplicitDeny", "ImplicitDeny", "ImplicitDeny"]
