"""End to end on the seed workload: six EC2 Image Builder policies plus guard rails."""
from __future__ import annotations

import pytest
from workloads import requests_table, seed_policy_set, seed_requests

from iam_evaluator import reference
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.compile import CompiledPolicySet

N = 50_000
REFERENCE_N = 2_000


@pytest.fixture(scope="module")
def workload():
    policies = seed_policy_set()
    requests = seed_requests(N)
    compiled = CompiledPolicySet(policies)
    expected = [reference.evaluate(policies, r).decision for r in requests[:REFERENCE_N]]
    assert list(compiled.evaluate_batch(requests[:REFERENCE_N])) == expected  # correct before timed
    columns = ([r.principal for r in requests], [r.action for r in requests], [r.resource for r in requests],
               [r.context for r in requests])
    keys = {key for r in requests for key in r.context}
    context_columns = {key: [r.context.get(key) for r in requests] for key in keys}
    assert list(compiled.evaluate_columns(*columns[:3], context_columns)) == list(compiled.evaluate_batch(requests))
    return policies, requests, compiled, columns, context_columns


@pytest.mark.benchmark(group="seed end to end")
def test_reference(benchmark, workload):
    policies, requests, *_ = workload
    benchmark.extra_info["checks"] = REFERENCE_N
    benchmark.pedantic(lambda: [reference.evaluate(policies, r) for r in requests[:REFERENCE_N]], rounds=3)


@pytest.mark.benchmark(group="seed end to end")
def test_compiled_single_requests(benchmark, workload):
    _, requests, compiled, *_ = workload
    benchmark.extra_info["checks"] = REFERENCE_N
    benchmark.pedantic(lambda: [compiled.evaluate(r, explain=False) for r in requests[:REFERENCE_N]], rounds=5)


@pytest.mark.benchmark(group="seed end to end")
def test_compiled_batch(benchmark, workload):
    _, requests, compiled, *_ = workload
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda: compiled.evaluate_batch(requests), rounds=5)


@pytest.mark.benchmark(group="seed end to end")
def test_compiled_batch_explained(benchmark, workload):
    _, requests, compiled, *_ = workload
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda: compiled.evaluate_batch(requests, explain=True), rounds=3)


@pytest.mark.benchmark(group="seed end to end")
def test_compiled_columns(benchmark, workload):
    _, _, compiled, columns, _ = workload
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda: compiled.evaluate_columns(*columns), rounds=5)


@pytest.mark.benchmark(group="seed end to end")
def test_compiled_columns_two_threads(benchmark, workload):
    _, _, compiled, columns, _ = workload
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda: compiled.evaluate_columns(*columns, threads=2), rounds=5)


@pytest.mark.benchmark(group="seed end to end")
def test_compiled_context_columns(benchmark, workload):
    _, _, compiled, columns, context_columns = workload
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda: compiled.evaluate_columns(*columns[:3], context_columns), rounds=5)


@pytest.mark.benchmark(group="seed end to end")
def test_compiled_context_columns_two_threads(benchmark, workload):
    _, _, compiled, columns, context_columns = workload
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda: compiled.evaluate_columns(*columns[:3], context_columns, threads=2), rounds=5)


@pytest.mark.benchmark(group="seed end to end")
def test_compiled_arrow(benchmark, workload):
    _, requests, compiled, *_ = workload
    table = requests_table(requests)
    assert evaluate_arrow(compiled, table).column("decision").to_pylist() == \
        [str(d) for d in compiled.evaluate_batch(requests)]
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda: evaluate_arrow(compiled, table), rounds=5)
