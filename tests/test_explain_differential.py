"""The compiled engine's explanations against the reference's, on generated policy sets and stores.

``test_differential`` checks the decision, the deciding layer, the statements and the missing keys on
every path. This checks the rest of an explained decision, which the compiled engine builds by asking
the reference's rules (``reference.needed_keys``, ``why_not_applies``, ``near_misses``) about the
statements it found: the missing keys with the statements that needed each, and the near misses of a
deny with the count of the rest. A decision without an error must equal the reference's field for field
(an error's wording differs between the engines; ``test_differential`` checks that both fail).
IAM_EVAL_DIFFERENTIAL_EXAMPLES sets the number of examples, as there.
"""
from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, event, given, settings

from iam_evaluator import PolicySet, reference
from iam_evaluator.compile import CompiledPolicies, CompiledPolicySet
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.decision import Decision
from iam_evaluator.store import PolicyStore, reference_decision

from .store_strategies import store_cases
from .strategies import policy_cases
from .test_differential import reference_answers

EXAMPLES = int(os.environ.get("IAM_EVAL_DIFFERENTIAL_EXAMPLES", "1500")) // 3


def assert_explained_alike(compiled: CompiledPolicies, requests_json: list[dict], built, expected: list[Decision]):
    valid = [i for i, request in enumerate(built) if request is not None]
    rows = compiled.evaluate_batch([built[i] for i in valid], explain=True)
    for at, i in enumerate(valid):
        for path, got in (("rows", rows[at]), ("one request", compiled.evaluate(built[i]))):
            where = path, requests_json[i], expected[i]
            if expected[i].error is not None:
                assert got.error is not None, where
                continue
            assert got == expected[i], where
            if got.near_misses:
                event(f"near misses: {', '.join(sorted({str(m.miss.kind) for m in got.near_misses}))}")
            if got.missing_key_statements:
                event("missing keys")


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(policy_cases())
def test_compiled_explains_as_the_reference(case):
    policies_json, requests_json = case
    policies = PolicySet.from_json(policies_json)
    built, expected = reference_answers(requests_json, lambda request: reference.evaluate(policies, request))
    assert_explained_alike(CompiledPolicySet(policies), requests_json, built, expected)


@settings(max_examples=EXAMPLES // 3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(store_cases())
def test_compiled_store_explains_as_the_reference(case):
    snapshot, requests_json = case
    store = PolicyStore.from_json(json.dumps(snapshot))
    built, expected = reference_answers(requests_json, lambda request: reference_decision(store, request))
    assert_explained_alike(CompiledStore(store), requests_json, built, expected)
