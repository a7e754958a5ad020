"""Tests for the compiled wildcard trie (evaluator._globtrie).

Results are checked against an independent oracle: Python's ``re`` with escaped literals,
``.*`` for ``*`` and ``.`` for ``?``.
"""
import importlib.machinery
import random
import re
from concurrent.futures import ThreadPoolExecutor

import evaluator._globtrie as globtrie
import pytest
from evaluator._globtrie import QMARK, STAR, GlobTrie
from hypothesis import given, settings
from hypothesis import strategies as st

# ---------------------------------------------------------------------- helpers


def build(entries, ignore_case=False):
    trie = GlobTrie(ignore_case)
    for pattern, pattern_id in entries:
        trie.add(pattern, pattern_id)
    trie.freeze()
    return trie


def tokens_of(pattern):
    """A str pattern as the equivalent token list."""
    if isinstance(pattern, str):
        return [STAR if c == "*" else QMARK if c == "?" else c for c in pattern]
    return list(pattern)


def oracle(entries, text, ignore_case):
    flags = re.DOTALL | (re.IGNORECASE | re.ASCII if ignore_case else 0)
    found = set()
    for pattern, pattern_id in entries:
        regex = "".join(
            ".*" if t is STAR else "." if t is QMARK else re.escape(t) for t in tokens_of(pattern)
        )
        if re.fullmatch(regex, text, flags):
            found.add(pattern_id)
    return sorted(found)


# ---------------------------------------------------------------------- extension is compiled


def test_compiled_extension_is_loaded():
    assert globtrie.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert isinstance(globtrie.__loader__, importlib.machinery.ExtensionFileLoader)


# ---------------------------------------------------------------------- property test vs re

PATTERN_CHARS = "abA:/é*?"
LITERAL_CHARS = "ab:/*?Aé😀"  # inside literal tokens '*' and '?' are plain characters
INPUT_CHARS = "abAB:/*?é😀"

patterns = st.one_of(
    st.text(PATTERN_CHARS, max_size=8),
    st.lists(st.one_of(st.just(STAR), st.just(QMARK), st.text(LITERAL_CHARS, max_size=3)), max_size=6),
)
entries_strategy = st.lists(st.tuples(patterns, st.integers(0, 7)), max_size=12)


def instantiate(data, pattern):
    """An input the pattern matches: wildcards replaced by random characters."""
    parts = []
    for t in tokens_of(pattern):
        if t is STAR:
            parts.append(data.draw(st.text(INPUT_CHARS, max_size=3)))
        elif t is QMARK:
            parts.append(data.draw(st.text(INPUT_CHARS, min_size=1, max_size=1)))
        else:
            parts.append(t)
    return "".join(parts)


@settings(max_examples=300, deadline=None)
@given(entries=entries_strategy, ignore_case=st.booleans(), data=st.data())
def test_matches_regex_oracle(entries, ignore_case, data):
    trie = build(entries, ignore_case)
    inputs = data.draw(st.lists(st.text(INPUT_CHARS, max_size=10), max_size=5))
    inputs += [instantiate(data, pattern) for pattern, _ in entries]
    if ignore_case:
        inputs += [s.swapcase() for s in inputs]
    for text in inputs:
        expected = oracle(entries, text, ignore_case)
        assert trie.match(text) == expected, (entries, text)
        assert trie.matches(text) == bool(expected)


# ---------------------------------------------------------------------- focused cases


def test_star_alone_matches_everything():
    trie = build([("*", 1)])
    for text in ["", "a", "arn:aws:s3:::b/k", "é😀", "*"]:
        assert trie.match(text) == [1]


def test_qmark_is_exactly_one_character():
    trie = build([("?", 1), ("a?c", 2)])
    assert trie.match("") == []
    assert trie.match("x") == [1]
    assert trie.match("xy") == []
    assert trie.match("abc") == [2]
    assert trie.match("a/c") == [2]
    assert trie.match("ac") == []


def test_empty_pattern_matches_only_empty_input():
    trie = build([("", 1), ([], 2), (["", ""], 3)])
    assert trie.match("") == [1, 2, 3]
    assert trie.match("a") == []


def test_empty_input():
    trie = build([("a", 1), ("*", 2), ("**", 3), ("?", 4), ("a*", 5)])
    assert trie.match("") == [2, 3]


def test_shared_prefixes():
    trie = build([("s3:Get", 1), ("s3:GetObject", 2), ("s3:Get*", 3), ("s3:GetObjectAcl", 4), ("s3:*Object", 5)])
    assert trie.match("s3:Get") == [1, 3]
    assert trie.match("s3:GetObject") == [2, 3, 5]
    assert trie.match("s3:GetObjectAcl") == [3, 4]
    assert trie.match("s3:PutObject") == [5]
    assert trie.match("s3:Ge") == []


def test_one_pattern_several_ids_and_shared_ids():
    trie = build([("a*", 7), ("a*", 3), ("a*", 3), ("*b", 3), ("c", 9)])
    assert trie.match("ab") == [3, 7]
    assert trie.match("a") == [3, 7]
    assert trie.match("b") == [3]
    assert trie.get_stats()["patterns"] == 5
    assert trie.get_stats()["ids"] == 3


def test_case_folding():
    entries = [("iam:PassRole", 1), ("EC2:Describe*", 2), ("s3:get?bject", 3)]
    folded = build(entries, ignore_case=True)
    exact = build(entries, ignore_case=False)
    assert folded.match("IAM:passrole") == [1]
    assert folded.match("ec2:describeinstances") == [2]
    assert folded.match("S3:GETOBJECT") == [3]
    assert exact.match("IAM:passrole") == []
    assert exact.match("iam:PassRole") == [1]
    assert exact.match("ec2:DescribeInstances") == []
    assert exact.match("EC2:DescribeInstances") == [2]
    # Only ASCII letters fold (the documented behaviour), even with ignore_case.
    assert build([("É", 1)], ignore_case=True).match("é") == []


def test_log_group_arn():
    trie = build([("arn:aws:logs:*:*:log-group:/aws/imagebuilder/*", 1), ("log-group:/aws/imagebuilder/*", 2)])
    arn = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/imagebuilder/x:log-stream:1"
    assert trie.match(arn) == [1]
    assert trie.match("log-group:/aws/imagebuilder/x:log-stream:1") == [2]
    assert trie.match("arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/x") == []


def test_non_ascii_qmark_matches_one_code_point():
    trie = build([("a?b", 1), ("a??b", 2), ("é*", 3), ("*😀", 4), ("日本?", 5)])
    assert trie.match("aéb") == [1]  # 2 UTF-8 bytes
    assert trie.match("a日b") == [1]  # 3 bytes
    assert trie.match("a😀b") == [1]  # 4 bytes
    assert trie.match("a😀😀b") == [2]
    assert trie.match("éclair") == [3]
    assert trie.match("x😀") == [4]
    assert trie.match("日本語") == [5]
    assert trie.match("日本") == []
    assert trie.match("a\ud800b") == [1]  # a lone surrogate is one character too


def test_literal_star_tokens():
    # e.g. the policy variable ${*} yields a literal '*' between real wildcards
    trie = build([(["a", "*", STAR], 1), (["?"], 2), ([STAR, "*?", STAR], 3), ("a*", 4)])
    assert trie.match("a*xyz") == [1, 4]
    assert trie.match("axyz") == [4]
    assert trie.match("?") == [2]
    assert trie.match("x") == []
    assert trie.match("x*?y") == [3]


def test_bad_tokens_are_rejected():
    trie = GlobTrie(False)
    with pytest.raises(TypeError):
        trie.add(["a", 3], 1)
    with pytest.raises(TypeError):
        trie.add(b"abc", 1)
    assert trie.get_stats()["nodes"] == 1  # nothing half-inserted


def test_lifecycle():
    trie = GlobTrie(ignore_case=False)
    trie.add("a*", 1)
    with pytest.raises(ValueError):
        trie.match("a")
    trie.freeze()
    trie.freeze()  # idempotent
    assert trie.frozen
    with pytest.raises(ValueError):
        trie.add("b", 2)
    with pytest.raises(TypeError):
        trie.match(None)
    assert trie.match("ab") == [1]


def test_stats():
    trie = GlobTrie(False)
    trie.add("ab*", 1)
    trie.add("a?", 2)
    before = trie.get_stats()
    trie.freeze()
    after = trie.get_stats()
    # root -a-> n1 -b-> n2 -*-> n3 ; n1 -?-> n4
    for stats in (before, after):
        assert (stats["nodes"], stats["edges"], stats["patterns"], stats["ids"]) == (5, 4, 2, 2)
    assert before["memory_bytes"] == 0
    assert after["memory_bytes"] > 0
    assert after["scratch_bytes"] > 0


def test_empty_trie():
    trie = build([])
    assert trie.match("") == []
    assert trie.match("abc") == []
    assert not trie.matches("abc")


# ---------------------------------------------------------------------- worst cases
# These must finish quickly (well under a second each); only results are asserted.


def test_many_stars_against_long_run():
    trie = build([("a*a*a*a*a*a*a*a*b", 1)])
    assert trie.match("a" * 100_000) == []
    assert trie.match("a" * 100_000 + "b") == [1]
    assert not trie.matches("a" * 100_000)


def test_pattern_with_500_stars():
    trie = build([("*".join(["ab"] * 501), 1), ("?*" * 500, 2), ("*" * 500, 3)])
    assert trie.match("ab" * 600) == [1, 2, 3]
    assert trie.match("ab" * 5_000) == [1, 2, 3]
    assert trie.match("ab" * 500) == [2, 3]  # needs 501 "ab"
    assert trie.match("ab" * 600 + "a") == [2, 3]
    assert trie.match("x" * 499) == [3]


def test_10000_patterns_against_10000_char_arn():
    prefix = "arn:aws:s3:::"
    segments, length = [], 0
    k = 0
    while length < 10_000 or k % 10 != 8:  # stop just after a segment ending in 7
        segments.append(str(k))
        length += len(segments[-1]) + 1
        k += 1
    arn = prefix + "bucket-42/" + "/".join(segments)
    tail = arn[len(prefix):]
    assert len(arn) >= 10_000 and arn.endswith("7")

    entries, expected = [], set()
    for i in range(3_000):  # plain bucket prefixes
        entries.append((f"{prefix}bucket-{i}/*", i))
        if f"bucket-{i}/" in arn:
            expected.add(i)
    for i in range(2_500):  # sinks reached mid-input
        entries.append((f"{prefix}*/{i}/*", 3_000 + i))
        if f"/{i}/" in tail:
            expected.add(3_000 + i)
    for i in range(2_500):  # one star node, active throughout, scanning for the end
        entries.append((f"{prefix}bucket-42/*/{i}", 5_500 + i))
        if arn.endswith(f"/{i}"):
            expected.add(5_500 + i)
    for i in range(2_000):  # thousands of star nodes left active until the end
        entries.append((f"{prefix}*/{i}/*7", 8_000 + i))
        if f"/{i}/" in tail:
            expected.add(8_000 + i)

    trie = build(entries)
    assert trie.get_stats()["patterns"] == 10_000
    assert trie.match(arn) == sorted(expected)
    assert len(expected) > 4_000
    assert trie.matches(arn)


# ---------------------------------------------------------------------- threads


def assert_threads_agree(trie, inputs):
    sequential = [trie.match(text) for text in inputs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(trie.match, inputs, chunksize=50))
        any_threaded = list(pool.map(trie.matches, inputs, chunksize=50))
    assert threaded == sequential
    assert any_threaded == [bool(ids) for ids in sequential]
    assert 0 < sum(map(bool, sequential)) < len(inputs)


def test_threads_share_a_frozen_trie_short_inputs():
    rng = random.Random(1234)
    services = ["s3", "ec2", "iam", "logs", "kms", "sts", "lambda", "dynamodb"]
    verbs = ["Get", "Put", "List", "Describe", "Delete", "Create"]
    nouns = ["Object", "Bucket", "Role", "Key", "Table", "Instances", "Policy"]

    def action():
        return f"{rng.choice(services)}:{rng.choice(verbs)}{rng.choice(nouns)}"

    entries = []
    for i in range(300):
        a = action()
        cut = rng.randrange(a.index(":") + 2, len(a) - 3)
        entries.append((rng.choice([a, a[:cut] + "*", "*" + a[cut:], a.replace("e", "?")]), i % 100))
    trie = build(entries, ignore_case=True)
    inputs = [action().upper() if rng.random() < 0.3 else action() for _ in range(4_000)]
    assert_threads_agree(trie, inputs)


def test_threads_share_a_frozen_trie_long_inputs():
    # Inputs of several hundred bytes: the Python API matches them without holding the GIL.
    rng = random.Random(4321)

    def key():
        return "/".join(rng.choice(["logs", "data", "tmp", "x", "2024", "é"]) for _ in range(rng.randrange(80, 200)))

    entries = [(f"arn:aws:s3:::bucket-{i % 40}/{key()[:rng.randrange(30)]}*", i) for i in range(400)]
    entries += [(f"arn:aws:s3:::*/{d}/*/{d}/*{t}", 400 + k) for k, (d, t) in
                enumerate((d, t) for d in ["logs", "tmp", "x"] for t in ["a", "é", "?4"])]
    trie = build(entries)
    inputs = [f"arn:aws:s3:::bucket-{rng.randrange(60)}/{key()}" for _ in range(1_000)]
    assert min(map(len, inputs)) > 256
    assert_threads_agree(trie, inputs)
