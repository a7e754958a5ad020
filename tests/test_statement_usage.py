"""Per-statement hit counters of a long-running process: ``usage.ServedUsage`` under ``evaluate_columns``, and
in the service (every way into the Authorizer counts, GetStatementUsage reports, the Prometheus metric
follows, a store update keeps the counts of the statements it keeps). Expected counts are worked out by hand
from the policies and the requests."""
from __future__ import annotations

import gc
import json
import threading
import urllib.request
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from iam_evaluator import PolicySet, parse_policy
from iam_evaluator.compile import CHUNK, CompiledPolicySet
from iam_evaluator.decision import StatementRef
from iam_evaluator.model import Effect
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client, request_columns
from iam_evaluator.usage import ServedUsage

from .service_helpers import (
    ALICE,
    IMAGE,
    LOG_OBJECT,
    ROLE,
    RPC_TIMEOUT,
    UNKNOWN,
    copy_store,
    document,
    running_service,
)

USER = "arn:aws:iam::111122223333:user/bob"
OBJECT = "arn:aws:s3:::reports/q1.csv"
READS = {"Sid": "Reads", "Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}
NO_SECRETS = {"Sid": "NoSecrets", "Effect": "Deny", "Action": "s3:*", "Resource": "arn:aws:s3:::secrets/*"}
WRITES = {"Sid": "Writes", "Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def compiled(*statements: dict) -> CompiledPolicySet:
    return CompiledPolicySet(PolicySet(identity=(parse_policy(json.loads(document(*statements)), name="p"),)))


def ask(engine, usage: ServedUsage, requests: list[tuple[str, str]], explain: bool = False):
    return engine.evaluate_columns([USER] * len(requests), [a for a, _ in requests], [r for _, r in requests],
                                   explain=explain, usage=usage.counter(engine))


def counts(usage: ServedUsage, engine) -> dict[str | None, tuple[int, int, float]]:
    return {c.statement.sid: (c.applied, c.decided, c.since) for c in usage.report(engine)}


def test_counts_applied_and_decided_per_statement():
    clock = Clock()
    usage = ServedUsage(clock)
    engine = compiled(READS, NO_SECRETS, WRITES)
    usage.serve(engine)
    ask(engine, usage, [("s3:GetObject", OBJECT), ("s3:GetObject", "arn:aws:s3:::secrets/k"),
                        ("s3:ListBucket", "arn:aws:s3:::reports")])
    ask(engine, usage, [("s3:GetObject", OBJECT)], explain=True)  # the explained path counts too
    # Reads applied to 3 (both GetObject on reports, the one on secrets), decided the 2 allowed; NoSecrets
    # applied to and decided the denied one; Writes applied to none.
    assert counts(usage, engine) == {"Reads": (3, 2, 1_000.0), "NoSecrets": (1, 1, 1_000.0),
                                     "Writes": (0, 0, 1_000.0)}


def test_a_new_version_keeps_the_counts_of_the_statements_it_keeps():
    clock = Clock()
    usage = ServedUsage(clock)
    first = compiled(READS, NO_SECRETS)
    usage.serve(first)
    ask(first, usage, [("s3:GetObject", OBJECT)] * 4 + [("s3:PutObject", "arn:aws:s3:::secrets/k")])
    clock.now = 2_000.0
    second = compiled({**READS, "Action": ["s3:Get*", "s3:List*"]}, WRITES)  # Reads edited in place
    usage.serve(second)
    ask(second, usage, [("s3:ListBucket", OBJECT), ("s3:PutObject", OBJECT)])
    expected = {"Reads": (5, 5, 1_000.0), "Writes": (1, 1, 2_000.0)}  # NoSecrets is no longer served
    assert counts(usage, second) == expected
    del first  # its last user is gone: its counters join the totals, which say the same
    gc.collect()
    assert counts(usage, second) == expected
    # NoSecrets' count is kept, for a later version holding it again (as statement 1 of policy p).
    assert counts(usage, compiled(READS, NO_SECRETS)) == {"Reads": (5, 5, 1_000.0), "NoSecrets": (1, 1, 1_000.0)}


def test_threads_counting_at_once_lose_nothing():
    usage = ServedUsage()
    engine = compiled(READS, NO_SECRETS)
    n = 3 * CHUNK + 5

    def work() -> None:
        for _ in range(4):
            ask(engine, usage, [("s3:GetObject", OBJECT)] * n)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts(usage, engine)["Reads"][:2] == (16 * n, 16 * n)


# ---------------------------------------------------------------- the service

ADMIN_TOKEN = "admin-secret-for-usage"
FULL_AWS_ACCESS = StatementRef("scp/FullAWSAccess", 0, None, Effect.ALLOW)
OUTSIDE_REGIONS = StatementRef("scp/DenyOutsideApprovedRegions", 0, "DenyOutsideApprovedRegions", Effect.DENY)
INSECURE = StatementRef("arn:aws:s3:::example-imagebuilder-logs", 1, "DenyInsecureTransport", Effect.DENY)


def region(name: str) -> dict:
    return {"aws:RequestedRegion": name}


def usage_of(connected: Client, **request) -> tuple[dict[StatementRef, pb.StatementUse], pb.GetStatementUsageResponse]:
    response = connected.call(connected.admin.GetStatementUsage, pb.GetStatementUsageRequest(**request))
    return {StatementRef(u.statement.policy, u.statement.index, u.statement.sid or None,
                         Effect(u.statement.effect)): u for u in response.statements}, response


def scrape(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=RPC_TIMEOUT) as response:
        text = response.read().decode()
    return {tuple(sorted(sample.labels.items())): sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "iam_eval_statement_applied_total"}


def test_the_service_counts_every_way_in_and_reports_per_statement(tmp_path):
    started = datetime.now(UTC).replace(microsecond=0)
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN, metrics=True) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        connected.check(ROLE, "imagebuilder:GetImage", IMAGE, region("us-east-1"))  # allowed
        batch = [{"principal": ROLE, "action": "imagebuilder:GetImage", "resource": IMAGE, "context": region(r)}
                 for r in ("us-east-1", "ap-south-1", "eu-west-1")]  # allowed, denied by the SCP, allowed
        batch.append({"principal": UNKNOWN, "action": "imagebuilder:GetImage", "resource": IMAGE,
                      "context": region("us-east-1")})  # no statement of the store applies to a stranger
        connected.call(connected.authorizer.CheckBatch, pb.CheckBatchRequest(columns=request_columns(batch)))
        streamed = [{"principal": ALICE, "action": "s3:GetObject", "resource": LOG_OBJECT,
                     "context": {**region("us-east-1"), "aws:SecureTransport": "false"}}]  # the bucket denies
        list(connected.authorizer.CheckStream(iter([pb.CheckBatchRequest(columns=request_columns(streamed))]),
                                              timeout=RPC_TIMEOUT))
        connected.call(connected.authorizer.Check, pb.CheckRequest(  # inline policies: not the store's
            principal=ROLE, action="imagebuilder:GetImage", resource=IMAGE,
            policies=pb.InlinePolicies(identity=[document(READS)])))

        used, response = usage_of(connected)
        # FullAWSAccess applies to the 5 requests of the store's principals, and decides the 3 allowed.
        assert (used[FULL_AWS_ACCESS].applied, used[FULL_AWS_ACCESS].decided) == (5, 3)
        assert (used[OUTSIDE_REGIONS].applied, used[OUTSIDE_REGIONS].decided) == (1, 1)
        assert (used[INSECURE].applied, used[INSECURE].decided) == (1, 1)
        assert response.store_version == 1
        since = datetime.strptime(response.since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert started <= since <= datetime.now(UTC)
        assert {u.since for u in response.statements} == {response.since}  # every statement served from the start

        never, _ = usage_of(connected, never_applied=True)
        assert never and all(u.applied == 0 for u in never.values())
        assert FULL_AWS_ACCESS not in never and OUTSIDE_REGIONS not in never
        assert set(never) == {ref for ref, u in used.items() if u.applied == 0}

        metric = scrape(service.metrics_port)
        assert metric[(("effect", "Allow"), ("policy", "scp/FullAWSAccess"), ("sid", ""), ("statement", "0"))] == 5
        assert metric[(("effect", "Deny"), ("policy", "scp/DenyOutsideApprovedRegions"),
                       ("sid", "DenyOutsideApprovedRegions"), ("statement", "0"))] == 1
        assert len(metric) == sum(1 for u in used.values() if u.applied)  # no series for what never applied


def test_a_store_update_keeps_the_counts_of_the_statements_it_keeps(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        connected.check(ROLE, "imagebuilder:GetImage", IMAGE, region("ap-south-1"))
        guard = {"Sid": "DenyOutsideApprovedRegions", "Effect": "Deny", "NotAction": ["iam:*", "sts:*"],
                 "Resource": "*", "Condition": {"StringNotEquals": {"aws:RequestedRegion": ["us-east-1"]}}}
        connected.call(connected.admin.PutPolicy, pb.PutPolicyRequest(policy=pb.StoredPolicy(
            kind=pb.SCP, name="DenyOutsideApprovedRegions",
            document=document(guard, {"Sid": "AlsoNoDeletes", "Effect": "Deny", "Action": "*:Delete*",
                                      "Resource": "*"}))))
        connected.check(ROLE, "imagebuilder:GetImage", IMAGE, region("eu-west-1"))  # denied by the new version
        used, response = usage_of(connected)
        assert response.store_version == 2
        assert (used[OUTSIDE_REGIONS].applied, used[OUTSIDE_REGIONS].decided) == (2, 2)  # one on each version
        added = StatementRef("scp/DenyOutsideApprovedRegions", 1, "AlsoNoDeletes", Effect.DENY)
        assert used[added].applied == 0 and used[added].since >= used[OUTSIDE_REGIONS].since
        assert used[FULL_AWS_ACCESS].applied == 2
