"""The compiled store against the reference evaluator, on generated stores and mixed batches.

Hypothesis draws whole stores (accounts in an organisation with SCPs and RCPs at every level,
roles and users sharing managed policies, inline and group policies, permissions boundaries,
principal tags, resource, trust and key policies, VPC endpoints) and batches of requests to them:
the store's principals, sessions of its roles (sometimes with session tags), principals it does not
hold, anonymous callers, malformed ones; same- and cross-account resources, "*", an explicit resource
account; actions that per-service rules concern (GetCallerIdentity, AssumeRole and TagSession on
roles, KMS on keys, lambda and ec2, which RCPs do not cover); contexts that try to say who the
principal is, and ``aws:SourceVpce`` naming an endpoint the store holds or not. Every row must get
``reference_decision``'s answer on every path into ``CompiledStore``
(``test_differential.check_every_path``). IAM_EVAL_DIFFERENTIAL_EXAMPLES sets the number of stores,
IAM_EVAL_DIFFERENTIAL_REFUSED=1 adds requests that ``Request.create`` refuses (see ``test_differential``).
"""
from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings

from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.store import PolicyStore, reference_decision

from .store_strategies import store_cases
from .test_differential import REFUSED, check_every_path, count_outcomes, reference_answers

EXAMPLES = int(os.environ.get("IAM_EVAL_DIFFERENTIAL_EXAMPLES", "400"))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(store_cases(REFUSED))
def test_compiled_store_equals_reference(case):
    snapshot, requests_json = case
    store = PolicyStore.from_json(json.dumps(snapshot))
    built, expected = reference_answers(requests_json, lambda request: reference_decision(store, request))
    count_outcomes(expected, requests_json)
    check_every_path(CompiledStore(store), requests_json, built, expected)
