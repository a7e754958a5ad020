"""The wildcard-matching hot path alone: all patterns matching one action or one ARN.

Compiled: one ``GlobTrie`` over every distinct pattern. Reference: the reference
evaluator's matcher applied to each pattern in turn.
"""
from __future__ import annotations

import random

import pytest
from workloads import corpus_documents, corpus_requests, seed_policy_set, seed_requests

from iam_evaluator import parse_policy
from iam_evaluator._globtrie import GlobTrie
from iam_evaluator.wildcard import matcher

N = 2_000


def _patterns(policies, element: str) -> list[str]:
    found = set()
    for policy in policies:
        for statement in policy.statements:
            for text in getattr(statement, element) or ():
                if text != "*" and "${" not in text:
                    found.add(text.lower() if "action" in element else text)
    return sorted(found)


def _sets():
    seed = seed_policy_set().identity
    corpus = [parse_policy(doc, name=name) for name, doc in corpus_documents()]
    rng = random.Random(3)
    seed_inputs = seed_requests(N)
    corpus_inputs = corpus_requests(N)
    return {
        "seed": (seed, [r.action for r in seed_inputs], [r.resource for r in seed_inputs if r.resource != "*"]),
        "corpus": (corpus, [r.action for r in corpus_inputs], [r.resource for r in corpus_inputs if r.resource != "*"]),
        "_rng": rng,
    }


@pytest.fixture(scope="module")
def pattern_sets():
    return _sets()


CASES = [(name, kind) for name in ("seed", "corpus") for kind in ("actions", "resources")]


def _build(pattern_sets, name, kind):
    policies, actions, resources = pattern_sets[name]
    patterns = _patterns(policies, kind)
    ignore_case = kind == "actions"
    trie = GlobTrie(ignore_case)
    for i, text in enumerate(patterns):
        trie.add(text, i)
    trie.freeze()
    inputs = actions if kind == "actions" else resources
    tests = [matcher(text, ignore_case) for text in patterns]
    for text in inputs[:200]:  # correct before timed
        assert trie.match(text) == [i for i, test in enumerate(tests) if test(text)]
    return trie, tests, inputs


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_compiled_index(benchmark, pattern_sets, name, kind):
    trie, _, inputs = _build(pattern_sets, name, kind)
    benchmark.group = f"match {name} {kind} ({trie.get_stats()['patterns']} patterns)"
    benchmark.extra_info["checks"] = len(inputs)
    benchmark.pedantic(lambda: [trie.match(text) for text in inputs], rounds=5)


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_reference_matcher(benchmark, pattern_sets, name, kind):
    trie, tests, inputs = _build(pattern_sets, name, kind)
    few = inputs[:50] if name == "corpus" else inputs
    benchmark.group = f"match {name} {kind} ({trie.get_stats()['patterns']} patterns)"
    benchmark.extra_info["checks"] = len(few)
    benchmark.pedantic(lambda: [[i for i, test in enumerate(tests) if test(text)] for text in few], rounds=3)
