"""Tests for the index of Resource patterns by ARN fields (evaluator._arntrie).

Every answer is checked against the regex oracle of ``test_globtrie`` and against one GlobTrie of the same
patterns (the NFA alone), on patterns and ARNs drawn so that they share fields: '*' fields that must span
several of an ARN's fields, heads with few patterns (kept with the head) and with many (in buckets by their
first bytes, or in the keyed trie), ARNs with more alignments than are probed (the spanning trie), and patterns
the index cannot hold.
"""
import importlib.machinery

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iam_evaluator._arntrie as arntrie
from iam_evaluator._arntrie import ArnTrie
from iam_evaluator._globtrie import GlobTrie

from .test_globtrie import GEOMETRIES, oracle

INLINE_PATTERNS = 8  # _arntrie.INLINE_PATTERNS
MAX_ALIGNMENTS = 32  # _arntrie.MAX_ALIGNMENTS


def build(patterns, index=True, **geometry):
    trie = ArnTrie()
    for pattern_id, pattern in enumerate(patterns):
        trie.add(pattern, pattern_id)
    trie.freeze(index=index, **geometry)
    return trie


def nfa(patterns):
    trie = GlobTrie(False)
    for pattern_id, pattern in enumerate(patterns):
        trie.add(pattern, pattern_id)
    trie.freeze(dfa_states=0)
    return trie


def assert_same(patterns, inputs, **geometry):
    tries = [build(patterns, **geometry), build(patterns, index=False, **geometry)]
    reference = nfa(patterns)
    entries = list(zip(patterns, range(len(patterns)), strict=True))
    for text in inputs:
        expected = oracle(entries, text, False)
        assert reference.match(text) == expected, (patterns, text)
        for trie in tries:
            for _ in range(2):  # cold, then warm
                assert trie.match(text) == expected, (patterns, text, trie.get_stats()["indexed"])


def test_compiled_extension_is_loaded():
    assert arntrie.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert isinstance(arntrie.__loader__, importlib.machinery.ExtensionFileLoader)


# ---------------------------------------------------------------------- generated

# Field values that repeat, so that patterns and ARNs share heads; '*' and '?' in an ARN are plain characters.
FIELDS = [["arn", "a*", "*", "ar?"], ["aws", "", "*", "a?s", "aw*"], ["s3", "ec2", "*", "e*", ""],
          ["", "us-1", "*", "u*", "?"], ["", "1", "12", "*", "1*"]]
ARN_FIELDS = [["arn", "ar", "*"], ["aws", "", "a?s"], ["s3", "ec2", "", "e"], ["", "us-1", "u", "1", "?"],
              ["", "1", "12", "us-1"]]
RESOURCE_CHARS = "ab1:/*?é"


@st.composite
def arn_patterns(draw):
    fields = [draw(st.sampled_from(values)) for values in FIELDS]
    fields = fields[:draw(st.integers(3, 5))] if draw(st.integers(0, 9)) == 0 else fields
    return ":".join([*fields, draw(st.text(RESOURCE_CHARS, max_size=6))])


@st.composite
def arns(draw):
    fields = [draw(st.sampled_from(values)) for values in ARN_FIELDS]
    extra = draw(st.lists(st.sampled_from(["1", "12", "us-1", "", "a"]), max_size=4))  # fields a '*' may span
    at = draw(st.integers(1, 5))
    fields[at:at] = extra
    return ":".join([*fields, draw(st.text(RESOURCE_CHARS, max_size=6))])


def instantiate(data, pattern):
    """An ARN the pattern matches: each wildcard replaced by text that may hold ':'."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(data.draw(st.sampled_from(["", "1", "us-1:1", "a:12:", "é"])))
        elif char == "?":
            parts.append(data.draw(st.sampled_from(["1", ":", "é", "a"])))
        else:
            parts.append(char)
    return "".join(parts)


@settings(max_examples=400, deadline=None)
@given(patterns=st.lists(arn_patterns(), max_size=14), inputs=st.lists(arns(), max_size=6), data=st.data())
def test_matches_the_oracle(patterns, inputs, data):
    inputs += [instantiate(data, pattern) for pattern in patterns]
    assert_same(patterns, inputs, **data.draw(st.sampled_from(GEOMETRIES)))


@settings(max_examples=150, deadline=None)
@given(resources=st.lists(st.text("ab/*?", max_size=5), min_size=1, max_size=3 * INLINE_PATTERNS),
       head=st.sampled_from(["arn:aws:s3:::", "arn:aws:ec2:*:1:", "arn:aws:ec2:*:*:"]), data=st.data())
def test_heads_of_many_patterns(resources, head, data):
    """Heads with more patterns than are kept with the head go to the keyed trie; both answer alike."""
    patterns = [head + resource for resource in resources]
    inputs = [instantiate(data, pattern) for pattern in patterns]
    inputs += [head.replace("*", "us-1") + text for text in data.draw(st.lists(st.text("ab/", max_size=5)))]
    assert_same(patterns, inputs)


# ---------------------------------------------------------------------- by hand

def test_buckets_of_a_head():
    """A head of many parts keeps the INLINE_PATTERNS with the shortest literal starts and puts the others in
    buckets by as many first bytes as the next one spells: a bucket of few keeps its parts, one of many sends them
    to the keyed trie; a part cut inside a code point stays with the head (then too many: the keyed trie too)."""
    head = "arn:aws:s3:::"
    kept = ["*", "?", "a", "t*", "te*", "te?m-1-a", "team-*", "team-1*"]  # literal starts shorter than 7 bytes
    many = [f"team-1-{tail}" for tail in ("*", "a*", "a", "a?c", "ab/*", "é*", "b", "b*", "c:*", "d", "e", "f")]
    few = ["team-2-a*", "team-2-b", "team-2-"]
    split = ["team-xé*"]  # its 7th byte is inside 'é'
    patterns = [head + part for part in kept + many + few + split]
    trie = build(patterns)
    stats = trie.get_stats()
    assert (stats["buckets"], stats["keyed"]["patterns"]) == (2, len(many) + len(kept) + len(split)), stats
    inputs = [head + text for text in ("team-1-a", "team-1-abc", "team-1-ab/x", "team-1-", "team-1-é", "team-1-c:x",
                                       "team-2-", "team-2-a", "team-2-b", "team-2-bb", "team-xé", "team-xéz",
                                       "team-yé", "team-1", "team-", "team-é1", "te", "", "team-3-a", "a", "tx")]
    assert_same(patterns, inputs)


def test_a_star_field_spans_several_fields():
    patterns = ["arn:aws:logs:*:123:log-group:x*", "arn:aws:logs:*:*:log-group:*:log-stream:*",
                "arn:aws:ec2:*:123:instance/*", "arn:*:s3:::b"]
    assert_same(patterns, ["arn:aws:logs:us-1:123:log-group:x:log-stream:y",
                           "arn:aws:logs:r:1:2:123:log-group:x",  # the region '*' spans "r:1:2"
                           "arn:aws:logs:r:123:123:log-group:x",  # two alignments match: one answer
                           "arn:aws:ec2:r:9:123:instance/i", "arn:a:b:s3:::b", "arn:aws:s3:::b"])


def test_alignments_past_the_bound_use_the_spanning_trie():
    patterns = ["arn:aws:logs:*:123:x*", "arn:aws:logs:*:*:*", "arn:aws:logs:us-1:123:*", "arn:aws:*"]
    for extra in (MAX_ALIGNMENTS - 2, MAX_ALIGNMENTS - 1, MAX_ALIGNMENTS, 500):
        assert_same(patterns, ["arn:aws:logs:" + "r:" * extra + "123:x", "arn:aws:logs:us-1:123:" + ":" * extra,
                               "arn:aws:logs:" + "123:" * extra + "x"])


def test_patterns_the_index_cannot_hold():
    """Five of them, beside two it holds: a '?' in the resource part, and a resource part too long to keep
    with its head."""
    patterns = ["arn:aws:ec2:us-*:1:*", "arn:aws:*", "*:aws:s3:::b", "arn:aws:s3::b", "arn:aws:s3:::b?", "arn:?:s3:::b",
                "arn:aws:s3:::" + "a" * 300 + "*"]
    trie = build(patterns)
    assert trie.get_stats()["rest"]["patterns"] == 5
    assert_same(patterns, ["arn:aws:ec2:us-1:1:x", "arn:aws:s3:::b", "arn:aws:s3:::bc", "x:aws:s3:::b",
                           "arn:aws:s3:::" + "a" * 301, "arn:a:s3:::b"])


def test_duplicate_patterns_and_ids():
    trie = ArnTrie()
    for pattern, pattern_id in [("arn:aws:s3:::b*", 3), ("arn:aws:s3:::b*", 1), ("arn:aws:s3:::*", 3),
                                ("arn:aws:s3:*:*:b", 2), ("arn:aws:s3:::b", 2)]:
        trie.add(pattern, pattern_id)
    trie.freeze(index=True)
    assert trie.match("arn:aws:s3:::b") == [1, 2, 3]
    assert trie.match("arn:aws:s3:::c") == [3]
    assert trie.get_stats()["ids"] == 3


def test_hostile_inputs_are_bounded():
    """Long ARNs of colons and repeats, against '*' fields and globs of many stars kept with their head."""
    patterns = ["arn:aws:s3:*:*:" + "*a" * 20 + "*b", "arn:aws:s3:::" + "*a" * 20, "arn:*:*:*:*:*", "arn:*:s3:*:1:x"]
    long_inputs = ["arn:aws:s3:::" + "a" * 200_000, "arn:" + ":" * 200_000, "arn:aws:s3:" + "1:" * 50_000 + "x"]
    trie, reference = build(patterns), nfa(patterns)
    for text in long_inputs:
        assert trie.match(text) == reference.match(text)


def test_lone_surrogates_and_non_ascii():
    patterns = ["arn:aws:s3:::\ud800*", "arn:aws:s3:::?é", "arn:aws:é:*:1:日*"]
    assert_same(patterns, ["arn:aws:s3:::\ud800x", "arn:aws:s3:::日é", "arn:aws:é:r:x:1:日本"])


def test_keyed_only_when_many():
    small = build(["arn:aws:s3:::b"] * 3, index=None)
    assert small.get_stats()["indexed"] is False
    many = [f"arn:aws:s3:::b{i}" for i in range(arntrie.INDEX_MIN_PATTERNS)]
    assert build(many, index=None).get_stats()["indexed"] is True
    irregular = ["arn:aws:s3:us-*:1:b", "arn:aws:*"]  # they do not count
    assert build(many[:-1] + irregular, index=None).get_stats()["indexed"] is False


def test_lifecycle():
    trie = ArnTrie()
    trie.add("arn:aws:s3:::b", 0)
    with pytest.raises(ValueError):
        trie.match("arn:aws:s3:::b")
    assert trie.get_stats() == {"patterns": 1, "frozen": False}
    trie.freeze(index=True)
    trie.freeze()  # nothing
    with pytest.raises(ValueError):
        trie.add("arn:aws:s3:::c", 1)
    stats = trie.get_stats()
    assert (stats["indexed"], stats["heads"], stats["patterns"], stats["ids"]) == (True, 1, 1, 1)
    assert stats["memory_bytes"] > 0 and stats["scratch_bytes"] > 0
    assert build([]).match("arn:aws:s3:::b") == []
