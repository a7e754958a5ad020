"""Compile time and memory of the full AWS managed policy corpus as one policy set.

Memory is the growth of the process's resident set while compiling, measured
in a fresh interpreter so that nothing else is counted. The build of each of
the two glob tries (add() and freeze()) is also timed alone.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from workloads import corpus_policy_set

from iam_evaluator._globtrie import GlobTrie
from iam_evaluator.compile import CompiledPolicySet

MEASURE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from workloads import corpus_policy_set
from iam_evaluator.compile import CompiledPolicySet

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

before_parse = rss()
start = time.perf_counter()
policies = corpus_policy_set()
parsed = time.perf_counter()
before = rss()
compiled = CompiledPolicySet(policies)
done = time.perf_counter()
print(json.dumps({"parse_s": parsed - start, "compile_s": done - parsed, "compile_rss_mb": (rss() - before) / 2**20,
                  "parse_rss_mb": (before - before_parse) / 2**20, "stats": compiled.get_stats()}))
"""


@pytest.fixture(scope="module")
def corpus():
    return corpus_policy_set()


@pytest.mark.benchmark(group="compile all managed policies")
def test_compile_corpus(benchmark, corpus):
    benchmark.extra_info["statements"] = sum(len(p.statements) for p in corpus.identity)
    benchmark.pedantic(lambda: CompiledPolicySet(corpus), rounds=3)


def trie_patterns(corpus, kind: str) -> dict[str, int]:
    """The distinct patterns CompiledPolicySet puts in the action or the resource trie, numbered."""
    patterns: dict[str, int] = {}
    for policy in corpus.identity:
        for statement in policy.statements:
            if kind == "action":
                texts = [text.lower() for text in statement.actions or statement.not_actions or ()]
            else:
                texts = [text for text in statement.resources or statement.not_resources or ()
                         if text != "*" and not (policy.has_policy_variables and "${" in text)]
            for text in texts:
                patterns.setdefault(text, len(patterns))
    return patterns


@pytest.mark.benchmark(group="build a trie of the corpus's patterns")
@pytest.mark.parametrize("kind", ["action", "resource"])
def test_build_trie(benchmark, corpus, kind):
    patterns = trie_patterns(corpus, kind)

    def build():
        trie = GlobTrie(kind == "action")
        for text, pattern_id in patterns.items():
            trie.add(text, pattern_id)
        trie.freeze()
        return trie

    trie = benchmark.pedantic(build, rounds=5)
    benchmark.extra_info.update(patterns=len(patterns), nodes=trie.get_stats()["nodes"])


def test_compile_memory(record_property):
    here = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", MEASURE, str(here)], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    record_property("compile", figures)
    print(f"\ncorpus: parse {figures['parse_s']:.2f} s (+{figures['parse_rss_mb']:.0f} MB), compile "
          f"{figures['compile_s']:.2f} s (+{figures['compile_rss_mb']:.0f} MB resident); {figures['stats']}")
    assert figures["stats"]["statements"] > 8000
