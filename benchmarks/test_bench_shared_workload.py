"""Issue 14's targets, measured on the shared workloads they are stated on (``../shared/bench/workload.py``).

Each contender runs beside the reference evaluator and a Python ``dict.get`` loop (the floor) in the same
session, checks its decisions against the reference before it is timed, and records the requests of one
round in ``extra_info["checks"]``. Requests, columns and Arrow batches are built outside the timed region,
except on the single-call path, where ``Request.create`` is part of what a caller pays.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any

import pytest
from shared_workload import (
    ACCOUNT,
    PRINCIPAL,
    RequestColumns,
    as_request,
    policy_set,
    record_batch,
    request_columns,
    workload,
)

from iam_evaluator import PolicySet, Request, reference
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.compile import CompiledPolicySet
from iam_evaluator.decision import DecisionKind

SEED_N = 50_000  # batch paths
SINGLE_N = 20_000  # Request.create + evaluate(explain=False), one request a call
EXPLAINED_N = 5_000  # evaluate() with explanations, pre-built requests
REFERENCE_N = 2_000  # the seed reference, timed; also the sample every seed contender is checked on
SCALE_N = 20_000
SCALE_CHECKED_N = 1_000  # checked against the reference at every size (about 6 minutes at 100,000 statements)
SCALE_REFERENCE_N = {10: 1_000, 100: 200, 1_000: 50}  # timed; the reference walks every statement
ARROW_THREADS = "threads" in inspect.signature(evaluate_arrow).parameters


@dataclass(frozen=True)
class Posed:
    """One workload posed to the engine, compiled, with the reference's decisions on its first requests."""

    policies: PolicySet
    shared_requests: list[Any]
    requests: list[Request]
    columns: RequestColumns
    batch: Any  # pyarrow.RecordBatch
    compiled: CompiledPolicySet
    expected: list[DecisionKind]
    timings: dict[str, float]

    @property
    def statements(self) -> int:
        return sum(len(policy.statements) for policy in self.policies.identity)

    def check_kinds(self, decisions) -> None:
        assert list(decisions)[:len(self.expected)] == self.expected

    def check_arrow(self, result) -> None:
        assert result.column("error").null_count == result.num_rows
        assert result.column("decision").to_pylist()[:len(self.expected)] == [str(d) for d in self.expected]


def pose(documents: dict[str, dict], shared_requests: list, checked: int) -> Posed:
    """Parse, compile (both timed, for ``extra_info``), build every input, and decide the first ``checked``
    requests with the reference."""
    started = time.perf_counter()
    policies = policy_set(documents)
    parsed = time.perf_counter()
    compiled = CompiledPolicySet(policies)
    compiled_at = time.perf_counter()
    requests = [as_request(r) for r in shared_requests]
    columns = request_columns(shared_requests)
    referred = time.perf_counter()
    expected = [reference.evaluate(policies, r).decision for r in requests[:checked]]
    return Posed(policies, shared_requests, requests, columns, record_batch(columns), compiled, expected,
                 {"parse_seconds": parsed - started, "compile_seconds": compiled_at - parsed,
                  "reference_check_seconds": time.perf_counter() - referred})


def record(benchmark, posed: Posed, checks: int) -> None:
    benchmark.extra_info.update(posed.timings, checks=checks, statements=posed.statements)


# --- seed: six managed policies, 51 statements --------------------------------------------------------------

@pytest.fixture(scope="module")
def seed() -> Posed:
    shared = workload()
    return pose(shared.seed_policies(), shared.make_requests(SEED_N, 0), REFERENCE_N)


@pytest.mark.benchmark(group="shared seed")
def test_seed_reference(benchmark, seed):
    requests = seed.requests[:REFERENCE_N]
    record(benchmark, seed, REFERENCE_N)
    benchmark.pedantic(lambda: [reference.evaluate(seed.policies, r) for r in requests], rounds=5)


@pytest.mark.benchmark(group="shared seed")
def test_seed_dict_get(benchmark, seed):
    """The floor: one dict lookup a request, keyed by (action, resource), holding the engine's decisions
    (checked here). It ignores the context, so it need not agree with the reference everywhere."""
    actions, resources = seed.columns.actions, seed.columns.resources
    decisions = list(seed.compiled.evaluate_columns(*seed.columns))
    seed.check_kinds(decisions)
    get = dict(zip(zip(actions, resources, strict=True), decisions, strict=True)).get

    def lookup():
        return [get((action, resource)) for action, resource in zip(actions, resources, strict=True)]

    answers = lookup()
    assert None not in answers
    record(benchmark, seed, SEED_N)
    benchmark.extra_info["agrees_with_engine"] = sum(map(DecisionKind.__eq__, answers, decisions)) / SEED_N
    benchmark.pedantic(lookup, rounds=20)


@pytest.mark.benchmark(group="shared seed")
def test_seed_arrow(benchmark, seed):
    seed.check_arrow(evaluate_arrow(seed.compiled, seed.batch))
    record(benchmark, seed, SEED_N)
    benchmark.pedantic(lambda: evaluate_arrow(seed.compiled, seed.batch), rounds=20)


@pytest.mark.skipif(not ARROW_THREADS, reason="evaluate_arrow has no threads option")
@pytest.mark.benchmark(group="shared seed")
def test_seed_arrow_two_threads(benchmark, seed):
    seed.check_arrow(evaluate_arrow(seed.compiled, seed.batch, threads=2))
    record(benchmark, seed, SEED_N)
    benchmark.pedantic(lambda: evaluate_arrow(seed.compiled, seed.batch, threads=2), rounds=20)


@pytest.mark.benchmark(group="shared seed")
def test_seed_columns(benchmark, seed):
    seed.check_kinds(seed.compiled.evaluate_columns(*seed.columns))
    record(benchmark, seed, SEED_N)
    benchmark.pedantic(lambda: seed.compiled.evaluate_columns(*seed.columns), rounds=20)


@pytest.mark.benchmark(group="shared seed")
def test_seed_columns_two_threads(benchmark, seed):
    seed.check_kinds(seed.compiled.evaluate_columns(*seed.columns, threads=2))
    record(benchmark, seed, SEED_N)
    benchmark.pedantic(lambda: seed.compiled.evaluate_columns(*seed.columns, threads=2), rounds=20)


@pytest.mark.benchmark(group="shared seed")
def test_seed_single_create_and_evaluate(benchmark, seed):
    """What the service's Check and most library users pay: a request built and decided per call."""
    compiled, shared_requests = seed.compiled, seed.shared_requests[:SINGLE_N]

    def decide():
        return [compiled.evaluate(Request.create(PRINCIPAL, action, resource, context, ACCOUNT), explain=False)
                for action, resource, context in shared_requests]

    seed.check_kinds(d.decision for d in decide())
    record(benchmark, seed, SINGLE_N)
    benchmark.pedantic(decide, rounds=10)


@pytest.mark.benchmark(group="shared seed")
def test_seed_single_explained(benchmark, seed):
    compiled, requests = seed.compiled, seed.requests[:EXPLAINED_N]
    checked = seed.requests[:REFERENCE_N]
    assert [compiled.evaluate(r) for r in checked] == [reference.evaluate(seed.policies, r) for r in checked]
    record(benchmark, seed, EXPLAINED_N)
    benchmark.pedantic(lambda: [compiled.evaluate(r) for r in requests], rounds=10)


# --- scale: synthetic sets of 10 to 100,000 statements ------------------------------------------------------

@pytest.fixture(scope="module", params=workload().SCALE_SIZES, ids=lambda size: f"{size}-statements")
def scale(request) -> Posed:
    shared, size = workload(), request.param
    documents = shared.scale_policies(size, 0)
    return pose(documents, shared.make_scale_requests(size, SCALE_N, 0, policies=documents), SCALE_CHECKED_N)


def test_scale_arrow(benchmark, scale):
    benchmark.group = f"shared scale {scale.statements}"
    scale.check_arrow(evaluate_arrow(scale.compiled, scale.batch))
    record(benchmark, scale, SCALE_N)
    benchmark.pedantic(lambda: evaluate_arrow(scale.compiled, scale.batch), rounds=10)


def test_scale_columns(benchmark, scale):
    benchmark.group = f"shared scale {scale.statements}"
    scale.check_kinds(scale.compiled.evaluate_columns(*scale.columns))
    record(benchmark, scale, SCALE_N)
    benchmark.pedantic(lambda: scale.compiled.evaluate_columns(*scale.columns), rounds=10)


def test_scale_reference(benchmark, scale):
    benchmark.group = f"shared scale {scale.statements}"
    if scale.statements not in SCALE_REFERENCE_N:
        pytest.skip("the reference is timed up to 1,000 statements (it takes 0.06-0.45 s a request beyond)")
    requests = scale.requests[:SCALE_REFERENCE_N[scale.statements]]
    record(benchmark, scale, len(requests))
    benchmark.pedantic(lambda: [reference.evaluate(scale.policies, r) for r in requests], rounds=3)
