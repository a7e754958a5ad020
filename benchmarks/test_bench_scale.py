"""Cost per check as the policy set grows, where any one request matches only a few statements."""
from __future__ import annotations

import pytest
from workloads import corpus_policy_set, corpus_requests, synthetic_policy_set, synthetic_requests

from iam_evaluator import reference
from iam_evaluator.compile import CompiledPolicySet

SIZES = [10, 100, 1_000, 10_000, 100_000]
N = 20_000
# The reference walks every statement: fewer requests as sets grow keep its rounds short.
REFERENCE_N = {10: 2_000, 100: 500, 1_000: 50, 10_000: 5, 100_000: 1}


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}-statements")
def synthetic(request):
    size = request.param
    policies = synthetic_policy_set(size)
    requests = synthetic_requests(size, N)
    compiled = CompiledPolicySet(policies)
    few = requests[:REFERENCE_N[size]]
    assert list(compiled.evaluate_batch(few)) == [reference.evaluate(policies, r).decision for r in few]
    return size, policies, requests, compiled


def test_compiled_batch(benchmark, synthetic):
    size, _, requests, compiled = synthetic
    benchmark.group = f"scale {size:>6} statements"
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda: compiled.evaluate_batch(requests), rounds=5)


def test_reference(benchmark, synthetic):
    size, policies, requests, _ = synthetic
    benchmark.group = f"scale {size:>6} statements"
    few = requests[:REFERENCE_N[size]]
    benchmark.extra_info["checks"] = len(few)
    benchmark.pedantic(lambda: [reference.evaluate(policies, r) for r in few], rounds=1 if size >= 10_000 else 3)


@pytest.fixture(scope="module")
def corpus():
    policies = corpus_policy_set()
    requests = corpus_requests(10_000)
    return policies, requests, CompiledPolicySet(policies)


@pytest.mark.benchmark(group="scale all managed policies as one set")
def test_corpus_compiled_batch(benchmark, corpus):
    _, requests, compiled = corpus
    benchmark.extra_info["checks"] = len(requests)
    benchmark.pedantic(lambda: compiled.evaluate_batch(requests), rounds=5)


@pytest.mark.benchmark(group="scale all managed policies as one set")
def test_corpus_reference(benchmark, corpus):
    policies, requests, _ = corpus
    few = requests[:5]
    benchmark.extra_info["checks"] = len(few)
    benchmark.pedantic(lambda: [reference.evaluate(policies, r) for r in few], rounds=1)
