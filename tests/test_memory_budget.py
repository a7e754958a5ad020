"""The process-wide budget of spare scratch buffers, and the bytes an engine says it holds."""
from __future__ import annotations

import gc
import json
from collections.abc import Iterator

import pytest

from iam_evaluator.compile import CompiledPolicySet, set_spare_scratch_budget, spare_scratch_bytes
from iam_evaluator.parse import parse_policy
from iam_evaluator.request import PolicySet, Request

REQUEST = Request.create(principal="arn:aws:iam::111122223333:user/alice", action="s3:GetObject",
                         resource="arn:aws:s3:::bucket/key")
DEFAULT_BUDGET = 512 * 1024 * 1024


@pytest.fixture
def budget() -> Iterator[None]:
    """Every test starts with nothing kept and leaves the default budget behind."""
    gc.collect()
    yield
    set_spare_scratch_budget(DEFAULT_BUDGET)


def compiled(n_statements: int, tag: str = "") -> CompiledPolicySet:
    statements = [{"Effect": "Allow", "Action": f"s3:Get{tag}{i}*", "Resource": f"arn:aws:s3:::bucket{tag}{i}/*"}
                  for i in range(n_statements)]
    statements.append({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket/*"})
    policy = parse_policy(json.dumps({"Version": "2012-10-17", "Statement": statements}))
    return CompiledPolicySet(PolicySet(identity=(policy,)))


def test_an_engine_counts_its_tables_and_the_scratch_it_keeps(budget):
    policies = compiled(200)
    tables = policies.nbytes
    assert tables > 200 * 8, "at least a few bytes a statement"
    held = spare_scratch_bytes()
    assert policies.evaluate(REQUEST).decision == "Allow"
    kept = spare_scratch_bytes() - held
    assert kept > 0, "the scratch used for the call is kept for the next"
    assert policies.nbytes == tables + kept
    del policies
    gc.collect()
    assert spare_scratch_bytes() == held, "a freed engine gives its spares back to the budget"


def test_a_budget_of_zero_keeps_no_scratch(budget):
    set_spare_scratch_budget(0)
    held = spare_scratch_bytes()  # by engines of other tests, still alive
    policies = compiled(50)
    tables = policies.nbytes
    for _ in range(3):
        assert policies.evaluate(REQUEST).decision == "Allow"
        assert policies.evaluate_batch([REQUEST] * 3000, explain=False).codes.count(1) == 3000
    assert spare_scratch_bytes() == held
    assert policies.nbytes == tables


def test_spare_scratch_stays_within_the_budget_across_engines(budget):
    probe = compiled(100, "e0")
    probe.evaluate(REQUEST)
    one = probe.nbytes - compiled(100, "e0").nbytes  # one scratch of an engine of this size
    del probe
    gc.collect()
    held = spare_scratch_bytes()
    limit = held + 3 * one + one // 2
    set_spare_scratch_budget(limit)
    engines = [compiled(100, f"e{i}") for i in range(10)]
    for engine in engines:
        assert engine.evaluate(REQUEST).decision == "Allow"
        assert spare_scratch_bytes() <= limit
    kept = [engine.nbytes - compiled(100, f"e{i}").nbytes for i, engine in enumerate(engines)]
    assert sum(kept) == spare_scratch_bytes() - held
    assert kept.count(one) == 3, "three engines keep a used scratch, the others free theirs"
    # A scratch the call used without matching holds no DFA cache: it is smaller and may still fit.
    assert all(size == one or 0 <= size <= one // 2 for size in kept)


def test_a_negative_budget_is_refused(budget):
    with pytest.raises(ValueError, match="0 or more"):
        set_spare_scratch_budget(-1)


@pytest.mark.parametrize("setting", ["inline_cache_bytes", "spare_scratch_bytes"])
def test_the_service_budgets_are_settings_of_zero_or_more(setting):
    from iam_evaluator.server.config import ConfigError, load_config

    from .service_helpers import EXAMPLE_STORE

    with pytest.raises(ConfigError, match=f"^{setting}: must be 0 or more, not -1"):
        load_config(environ={}, store=str(EXAMPLE_STORE), **{setting: -1})
    assert getattr(load_config(environ={}, store=str(EXAMPLE_STORE), **{setting: 0}), setting) == 0


def test_a_grown_dfa_cache_is_counted_when_its_scratch_is_kept(budget):
    """Many distinct actions need more DFA states than a cache starts with: it grows, and the scratch kept
    afterwards is counted at its grown size, by the engine and by the process budget alike."""
    policies = compiled(300)
    tables = policies.nbytes
    held = spare_scratch_bytes()
    policies.evaluate_batch([REQUEST])
    small = policies.nbytes - tables
    actions = [f"s3:Get{i}{'xyzw'[i % 4] * (i % 7)}Object{i % 13}" for i in range(20_000)]
    decided = policies.evaluate_columns([REQUEST.principal] * len(actions), actions,
                                        [f"arn:aws:s3:::bucket{i % 300}/k" for i in range(len(actions))])
    assert len(decided) == len(actions)
    caches = policies.get_stats()["dfa_caches"]["action"]
    assert caches["grows"] > 0 and caches["nfa_matches"] == 0
    grown = policies.nbytes - tables
    assert grown > small, "the grown cache is counted"
    assert spare_scratch_bytes() - held == grown
