"""The gRPC service on the seed workload: CheckBatch (1,000 requests as columns) and Check round trips
through a real loopback channel, next to the in-process compiled store deciding the same requests.

The server runs in this process (``create_server`` on port 0), so its CPU and the client's share one GIL:
the figures are a floor for what the transport adds, not a throughput target (``loadgen.py`` measures that).
"""
from __future__ import annotations

import grpc
import pytest
from loadgen import (
    CHANNEL_OPTIONS,
    METHOD,
    answered,
    expected_code,
    expected_codes_of,
    prepare,
    request_dicts,
    seed_snapshot,
    write_store,
)
from workloads import seed_requests

from iam_evaluator import Request
from iam_evaluator.catalog import Catalog
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.app import create_server
from iam_evaluator.server.authorizer import AuthorizerServicer
from iam_evaluator.server.client import Client
from iam_evaluator.server.config import load_config

N = 1_000
SINGLE_N = 200


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    requests = request_dicts(seed_requests(N))
    prepared = prepare(requests, N)  # expected decisions: the compiled store, checked against the reference
    root = tmp_path_factory.mktemp("service")
    config = load_config(environ={}, store=str(write_store(root / "store", seed_snapshot(requests))),
                         state_dir=str(root / "versions"), listen="127.0.0.1:0", metrics_listen="")
    service = create_server(config)
    service.load()
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}", CHANNEL_OPTIONS)
    yield requests, prepared, service, channel
    channel.close()
    service.stop(0)


def _decisions(codes: bytes) -> list[int]:
    return [answered(code) for code in codes]


@pytest.mark.benchmark(group="service seed CheckBatch 1000")
def test_in_process_compiled_store(benchmark, service):
    requests, prepared, service_, _ = service
    compiled = service_.serving().compiled
    columns = ([r["principal"] for r in requests], [r["action"] for r in requests],
               [r["resource"] for r in requests], [r["context"] for r in requests])
    assert expected_codes_of(compiled.evaluate_columns(*columns)) == prepared.batch_codes[0][0]
    benchmark.extra_info.update(checks=N, correct=True)
    benchmark.pedantic(lambda: compiled.evaluate_columns(*columns), rounds=20, warmup_rounds=2)


@pytest.mark.benchmark(group="service seed CheckBatch 1000")
def test_grpc_check_batch_prepared(benchmark, service):
    """Request serialized once, response parsed: the wire, the server and the parse."""
    _, prepared, _, channel = service
    check_batch = channel.unary_unary(METHOD + "CheckBatch", response_deserializer=pb.CheckBatchResponse.FromString)
    payload = prepared.batch_payloads[0]
    response = check_batch(payload)
    assert [r.decision for r in response.results] == _decisions(prepared.batch_codes[0][0])
    assert not any(r.error for r in response.results)
    benchmark.extra_info.update(checks=N, correct=True, store_version=response.store_version)
    benchmark.pedantic(lambda: check_batch(payload), rounds=20, warmup_rounds=2)


class _NoDeadline:
    """The one part of a gRPC context the Authorizer reads for a batch."""

    def time_remaining(self) -> None:
        return None


@pytest.mark.benchmark(group="service seed CheckBatch 1000")
def test_server_handler_check_batch(benchmark, service):
    """The server's own work on a batch, without the transport: parse the payload, decode the columns,
    decide, encode the response (compare with ``test_in_process_compiled_store``)."""
    _, prepared, service_, _ = service
    authorizer = AuthorizerServicer(service_.serving, service_.config, service_.metrics, Catalog.shipped(),
                                    service_.usage)
    payload = prepared.batch_payloads[0]

    def handle() -> bytes:
        return authorizer.CheckBatch(pb.CheckBatchRequest.FromString(payload), _NoDeadline())

    assert handle().startswith(prepared.batch_prefixes[0][0])
    benchmark.extra_info.update(checks=N, correct=True)
    benchmark.pedantic(handle, rounds=20, warmup_rounds=2)


@pytest.mark.benchmark(group="service seed CheckBatch 1000")
def test_grpc_check_batch_client(benchmark, service):
    """``Client.check_batch``: columns built from the JSON requests on every call, results read back."""
    requests, prepared, service_, _ = service
    with Client(f"127.0.0.1:{service_.port}") as client:
        decide = lambda: [result.decision for result, _ in client.check_batch(requests, batch_size=N)]  # noqa: E731
        assert decide() == _decisions(prepared.batch_codes[0][0])
        benchmark.extra_info.update(checks=N, correct=True)
        benchmark.pedantic(decide, rounds=10, warmup_rounds=1)


@pytest.mark.benchmark(group="service seed Check")
def test_in_process_compiled_store_single(benchmark, service):
    requests, prepared, service_, _ = service
    compiled = service_.serving().compiled
    singles = [Request.from_json(r) for r in requests[:SINGLE_N]]
    decided = [compiled.evaluate(r) for r in singles]
    assert bytes(expected_code(d) for d in decided) == prepared.check_codes[0][:SINGLE_N]
    benchmark.extra_info.update(checks=SINGLE_N, correct=True)
    benchmark.pedantic(lambda: [compiled.evaluate(r) for r in singles], rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="service seed Check")
def test_grpc_check_prepared(benchmark, service):
    """One Check a request, one after another (request serialized once, response parsed)."""
    _, prepared, _, channel = service
    check = channel.unary_unary(METHOD + "Check", response_deserializer=pb.CheckResponse.FromString)
    payloads = prepared.check_payloads[:SINGLE_N]
    assert [check(p).result.decision for p in payloads] == _decisions(prepared.check_codes[0][:SINGLE_N])
    benchmark.extra_info.update(checks=SINGLE_N, correct=True)
    benchmark.pedantic(lambda: [check(p) for p in payloads], rounds=5, warmup_rounds=1)


@pytest.fixture(scope="module")
def empty_server():
    """A grpcio server whose Check answers at once with a fixed response, served as the service serves (same
    process, same kind of channel): the floor that issue 14 compares Check's latency with."""
    from concurrent import futures

    answer = pb.CheckResponse(result=pb.CheckResult(decision=pb.ALLOW)).SerializeToString()
    handler = grpc.method_handlers_generic_handler("iam_evaluator.v1.Authorizer", {
        "Check": grpc.unary_unary_rpc_method_handler(lambda request, context: answer)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", CHANNEL_OPTIONS)
    yield channel
    channel.close()
    server.stop(0)


@pytest.mark.benchmark(group="service seed Check")
def test_grpc_check_empty_handler(benchmark, service, empty_server):
    """The same calls as ``test_grpc_check_prepared`` against the empty handler: Check's own cost is the
    difference of the two medians (per call: divide by the calls of a round)."""
    _, prepared, _, _ = service
    check = empty_server.unary_unary(METHOD + "Check", response_deserializer=pb.CheckResponse.FromString)
    payloads = prepared.check_payloads[:SINGLE_N]
    assert {check(p).result.decision for p in payloads} == {pb.ALLOW}
    benchmark.extra_info.update(checks=SINGLE_N)
    benchmark.pedantic(lambda: [check(p) for p in payloads], rounds=5, warmup_rounds=1)
