"""The compiled engine against the reference evaluator, on generated policy sets and requests.

Decisions, deciding layers and matched statements must be identical, and the
batch hot path (no explanations) must give the same decisions. Set
IAM_EVAL_DIFFERENTIAL_EXAMPLES to run more examples than CI's default.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluator import PolicySet, Request, reference
from evaluator.compile import CompiledPolicySet

from .strategies import policy_sets, requests

EXAMPLES = int(os.environ.get("IAM_EVAL_DIFFERENTIAL_EXAMPLES", "1500"))


def assert_same(expected, got, where):
    assert got.decision == expected.decision, where
    assert got.decided_by == expected.decided_by, where
    assert got.statements == expected.statements, where
    assert (got.error is None) == (expected.error is None), where
    assert {k.lower() for k in got.missing_keys} == {k.lower() for k in expected.missing_keys}, where


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(policy_sets(), st.lists(requests(), min_size=1, max_size=6))
def test_compiled_equals_reference(policies_json, requests_json):
    policies = PolicySet.from_json(policies_json)
    batch = [Request.from_json(r) for r in requests_json]
    compiled = CompiledPolicySet(policies)
    expected = [reference.evaluate(policies, request) for request in batch]
    explained = compiled.evaluate_batch(batch, explain=True)
    fast = compiled.evaluate_batch(batch)
    for i, (want, got) in enumerate(zip(expected, explained, strict=True)):
        where = (policies_json, requests_json[i], want)
        assert_same(want, got, where)
        assert fast[i] == want.decision, where
        assert_same(want, compiled.evaluate(batch[i]), where)
