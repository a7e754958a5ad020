"""Memory bounded by configuration, whatever callers send: inline policies are refused by size and count
before anything is compiled, and compiled inline sets do not accumulate."""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import grpc
import pytest

from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.api import iam_evaluator_pb2_grpc as pb_grpc

from .service_helpers import copy_store, rpc_error, running_service

ROLE = "arn:aws:iam::111122223333:role/ImageBuilderRole"


def document(sid: str, padding: int = 0) -> str:
    statement = {"Sid": sid, "Effect": "Allow", "Action": "s3:GetObject",
                 "Resource": ["arn:aws:s3:::b/*", "arn:aws:s3:::padding/" + "x" * padding]}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def check(channel: grpc.Channel, *documents: str) -> pb.CheckResponse:
    return pb_grpc.AuthorizerStub(channel).Check(pb.CheckRequest(
        principal=ROLE, action="s3:GetObject", resource="arn:aws:s3:::b/key",
        policies=pb.InlinePolicies(identity=list(documents))), timeout=30)


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_inline_policies_over_the_limits_are_refused_naming_the_limit(tmp_path: Path):
    with running_service(copy_store(tmp_path), tmp_path / "state") as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        assert check(channel, document("Small")).result.decision == pb.ALLOW
        error = rpc_error(lambda: check(channel, document("Huge", padding=9 * 1024 * 1024)))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "max_inline_policy_bytes (10240)" in error.details()
        error = rpc_error(lambda: check(channel, document("Over", padding=10_240)))
        assert "max_inline_policy_bytes" in error.details()
        error = rpc_error(lambda: check(channel, *(document(f"S{i}") for i in range(21))))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "21 policies, more than max_inline_policies_per_request (20)" in error.details()
        batch = pb.CheckBatchRequest(requests=[pb.CheckRequest(principal=ROLE, action="s3:GetObject",
                                                               resource="arn:aws:s3:::b/key")],
                                     policies=pb.InlinePolicies(identity=[document("Huge", 20_000)]))
        error = rpc_error(lambda: pb_grpc.AuthorizerStub(channel).CheckBatch(batch, timeout=30))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "max_inline_policy_bytes" in error.details()
        assert check(channel, *(document(f"S{i}") for i in range(20))).result.decision == pb.ALLOW


@pytest.mark.parametrize("limit", [2_048])
def test_the_limits_are_settings(tmp_path: Path, limit: int):
    with running_service(copy_store(tmp_path), tmp_path / "state", max_inline_policy_bytes=limit) as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        error = rpc_error(lambda: check(channel, document("Over", padding=limit)))
        assert f"max_inline_policy_bytes ({limit})" in error.details()


def test_distinct_inline_policies_do_not_accumulate(tmp_path: Path):
    """300 Checks, each with policies no other sent: the compiled sets are evicted past the cache's 64, and
    nothing else keeps them (on the previous main an lru_cache on a method kept every one: +417 MB for 150)."""
    with running_service(copy_store(tmp_path), tmp_path / "state") as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        for i in range(20):  # warm up: imports, first compilations, channel buffers
            check(channel, document(f"Warm{i}", padding=4_000))
        before = resident_mb()
        for i in range(300):
            assert check(channel, document(f"Distinct{i}", padding=4_000), document(f"Other{i}", 4_000),
                         document(f"Third{i}", 4_000)).result.decision == pb.ALLOW
        grown = resident_mb() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert grown < 60, f"resident memory grew by {grown:.0f} MB over 300 distinct inline policy sets (peak {peak:.0f})"


def test_idle_streams_cannot_starve_the_server(tmp_path: Path):
    """Twice as many idle CheckStreams as worker threads: the ones past max_streams are refused, and Check,
    health and admin calls still answer within a second."""
    import queue
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with running_service(copy_store(tmp_path), tmp_path / "state", workers=4) as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stop = threading.Event()

        def idle():  # a client that opens a stream and never sends
            stop.wait(30)
            return
            yield

        streams = [pb_grpc.AuthorizerStub(channel).CheckStream(idle()) for _ in range(8)]
        refused: queue.Queue = queue.Queue()

        def watch(stream):
            try:
                for _ in stream:
                    pass
            except grpc.RpcError as exc:
                refused.put(exc.code())

        watchers = [threading.Thread(target=watch, args=(s,), daemon=True) for s in streams]
        for watcher in watchers:
            watcher.start()
        codes = [refused.get(timeout=10) for _ in range(6)]
        assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, "streams past max_streams (2 of 4 workers)"
        # Both answer within their deadlines while the streams idle (a worker held by them would not).
        assert check(channel, document("Busy")).result.decision == pb.ALLOW
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stop.set()
        for stream in streams:
            stream.cancel()


def test_a_stream_that_sends_nothing_is_cancelled_and_one_that_sends_goes_on(tmp_path: Path):
    import threading

    with running_service(copy_store(tmp_path), tmp_path / "state", stream_idle_seconds=0.5) as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stop = threading.Event()

        def idle():
            stop.wait(30)
            return
            yield

        def busy():
            for i in range(12):  # every 0.2 s for 2.4 s: never idle for 0.5 s
                yield pb.CheckBatchRequest(batch_id=i, requests=[pb.CheckRequest(
                    principal=ROLE, action="s3:GetObject", resource="arn:aws:s3:::b/key")])
                time.sleep(0.2)

        with pytest.raises(grpc.RpcError) as raised:  # the idle sender would otherwise end the stream in 30 s
            list(pb_grpc.AuthorizerStub(channel).CheckStream(idle()))
        assert raised.value.code() is grpc.StatusCode.CANCELLED
        stop.set()
        answers = list(pb_grpc.AuthorizerStub(channel).CheckStream(busy()))
        assert [a.batch_id for a in answers] == list(range(12))


def full_document(name: str) -> str:
    """A policy of nearly max_inline_policy_bytes, of many small statements (each its own trie paths)."""
    statements, size = [], 0
    while size < 9_000:
        i = len(statements)
        statements.append({"Sid": f"{name}x{i}", "Effect": "Allow", "Action": [f"s3:Get{name}{i}*"],
                           "Resource": [f"arn:aws:s3:::{name}-{i}/*"],
                           "Condition": {"StringEquals": {"aws:PrincipalTag/team": f"{name}{i}"}}})
        size = len(json.dumps(statements))
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def test_inline_sets_kept_compiled_stay_within_their_byte_budget(tmp_path: Path):
    """40 requests, each with 20 policies of 9 KB that no other sent (about 2.4 MB resident a compiled set):
    with a budget of 4 MB the cache keeps one or two, where a count of 64 alone would keep all 40 (+96 MB)."""
    with running_service(copy_store(tmp_path), tmp_path / "state", inline_cache_bytes=4 * 1024 * 1024) as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        for i in range(3):  # warm up
            check(channel, *(full_document(f"w{i}n{k}") for k in range(20)))
        before = resident_mb()
        for i in range(40):
            documents = [full_document(f"d{i}n{k}") for k in range(19)]
            assert check(channel, document(f"Grant{i}"), *documents).result.decision == pb.ALLOW
        grown = resident_mb() - before
    assert grown < 40, f"resident memory grew by {grown:.0f} MB over 40 distinct inline sets of 200 KB"


def test_the_server_applies_its_spare_scratch_budget(tmp_path: Path):
    from iam_evaluator.compile import spare_scratch_bytes

    held = spare_scratch_bytes()  # by engines of other tests, still alive
    with running_service(copy_store(tmp_path), tmp_path / "state", spare_scratch_bytes=0) as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        for i in range(5):
            assert check(channel, document(f"Inline{i}")).result.decision == pb.ALLOW
            assert pb_grpc.AuthorizerStub(channel).Check(pb.CheckRequest(
                principal=ROLE, action="s3:GetObject", resource="arn:aws:s3:::b/key"), timeout=30).store_version
        assert spare_scratch_bytes() == held
    with running_service(tmp_path / "store", tmp_path / "state2") as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        check(channel, document("Kept"))
        assert spare_scratch_bytes() > held, "the default budget keeps scratch for reuse"
