"""Tests for the compiled wildcard trie (evaluator._globtrie).

Results are checked against an independent oracle: Python's ``re`` with escaped literals,
``.*`` for ``*`` and ``.`` for ``?``. Each scratch buffer caches DFA states; tries are built
with several cache geometries (``freeze(dfa_states=..., dfa_pool=...)``): the default, no DFA
at all (the NFA simulation), and caches too small for the inputs, so that the paths where the
cache is full (flush, NFA fallback, NFA-only periods after thrashing) run too.
"""
import importlib.machinery
import random
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iam_evaluator._globtrie as globtrie
from iam_evaluator._globtrie import QMARK, STAR, GlobTrie

# ---------------------------------------------------------------------- helpers


def build(entries, ignore_case=False, **geometry):
    trie = GlobTrie(ignore_case)
    for pattern, pattern_id in entries:
        trie.add(pattern, pattern_id)
    trie.freeze(**geometry)
    return trie


# Cache geometries: default, NFA only, and tiny caches (1 to 4 states, pools that hold few node
# ids or not even the start state's).
DEFAULT = {}
NFA_ONLY = {"dfa_states": 0}
TINY_CACHES = [{"dfa_states": 1, "dfa_pool": 64}, {"dfa_states": 4, "dfa_pool": 12},
               {"dfa_states": 3, "dfa_pool": 1}]
GEOMETRIES = [DEFAULT, NFA_ONLY, *TINY_CACHES]


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

PATTERN_CHARS = "abA:/é日*?"
LITERAL_CHARS = "ab:/*?Aé日😀"  # inside literal tokens '*' and '?' are plain characters
INPUT_CHARS = "abAB:/*?é日😀"  # 1- to 4-byte UTF-8 sequences

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
    tries = [build(entries, ignore_case, **geometry) for geometry in GEOMETRIES]
    inputs = data.draw(st.lists(st.text(INPUT_CHARS, max_size=10), max_size=5))
    inputs += [instantiate(data, pattern) for pattern, _ in entries]
    if ignore_case:
        inputs += [s.swapcase() for s in inputs]
    expected = [oracle(entries, text, ignore_case) for text in inputs]
    for trie in tries:
        for _ in range(2):  # cold, then with the states the first pass cached
            for text, ids in zip(inputs, expected, strict=True):
                assert trie.match(text) == ids, (entries, text, trie.get_stats())
                assert trie.matches(text) == bool(ids)


@settings(max_examples=200, deadline=None)
@given(entries=entries_strategy, ignore_case=st.booleans(),
       inputs=st.lists(st.binary(max_size=12), max_size=6), data=st.data())
def test_any_bytes_give_the_nfa_result(entries, ignore_case, inputs, data):
    """Invalid UTF-8 (truncated or stray sequences) included: the DFA, warm or cold, with any
    cache size, agrees with the NFA simulation; on valid UTF-8 both agree with the oracle."""
    inputs += [text.encode() for text in data.draw(st.lists(st.text(INPUT_CHARS, max_size=6), max_size=3))]
    inputs += [text[:cut] for text in list(inputs) for cut in range(1, len(text))]  # cut anywhere
    reference = build(entries, ignore_case, **NFA_ONLY)
    expected = [reference._match_utf8(text) for text in inputs]
    for text, ids in zip(inputs, expected, strict=True):
        try:
            assert ids == oracle(entries, text.decode(), ignore_case)
        except UnicodeDecodeError:
            pass
    for geometry in [DEFAULT, *TINY_CACHES]:
        trie = build(entries, ignore_case, **geometry)
        for _ in range(2):
            assert [trie._match_utf8(text) for text in inputs] == expected, (entries, geometry)


# ---------------------------------------------------------------------- literal runs
# A chain of nodes with one byte edge each (a "link": see GT_NO_LINK in _globtrie.pxd) is walked
# one byte per node from a byte array. These patterns make long runs, broken by '*' and '?',
# ending where another pattern ends or branches off, and spelling multi-byte characters.

RUN_CHARS = "abAB:/-é日😀"
runs = st.text(RUN_CHARS, min_size=1, max_size=40)
run_patterns = st.lists(st.one_of(runs, st.just(STAR), st.just(QMARK)), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(patterns=st.lists(run_patterns, min_size=1, max_size=6), ignore_case=st.booleans(), data=st.data())
def test_long_literal_runs_match_the_oracle(patterns, ignore_case, data):
    entries = [(tokens, number) for number, tokens in enumerate(patterns)]
    for tokens in patterns:  # patterns that are prefixes of others: a run ends inside another
        text = "".join(t for t in tokens if isinstance(t, str))
        cut = data.draw(st.integers(0, len(text)))
        entries.append((text[:cut], len(entries)))
    inputs = [instantiate(data, tokens) for tokens, _ in entries]
    inputs += [text[:-1] for text in inputs if text] + [text + "a" for text in inputs]
    inputs += [text[:k] + "x" + text[k + 1:] for text in inputs if text for k in [len(text) // 2]]  # a run broken
    if ignore_case:
        inputs += [text.swapcase() for text in inputs]
    expected = [oracle(entries, text, ignore_case) for text in inputs]
    for geometry in GEOMETRIES:
        trie = build(entries, ignore_case, **geometry)
        for _ in range(2):
            assert [trie.match(text) for text in inputs] == expected, (entries, geometry)
    # Raw bytes: cut inside a multi-byte character of a run, or an invalid byte in place of one
    # (0xFF included, the byte that marks nodes that are not links): the DFA gives the NFA's result.
    raw = [text.encode() for text in inputs[:8]]
    raw += [data[:k] for data in raw for k in range(1, len(data), 3)]
    raw += [data[:k] + bytes([bad]) + data[k + 1:] for data in raw[:8] for k in [len(data) // 3]
            for bad in (0xFF, 0x80, 0xE6)]
    nfa = build(entries, ignore_case, **NFA_ONLY)
    expected_raw = [nfa._match_utf8(data) for data in raw]
    for geometry in [DEFAULT, *TINY_CACHES]:
        trie = build(entries, ignore_case, **geometry)
        for _ in range(2):
            assert [trie._match_utf8(data) for data in raw] == expected_raw, (entries, geometry)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["dfa", "nfa", "tiny-1", "tiny-4", "tiny-3"])
def test_literal_run_cases(geometry):
    run = "team-0123-" * 10 + "é日😀"
    shout = run[:-3].upper() + run[-3:]  # ignore_case folds ASCII letters only
    entries = [(run, 1), (run + "*", 2), (run[:50] + "?" + run[51:], 3), (run[:50], 4), (run[:30] + "*x", 5),
               ("arn:aws:s3:::" + run, 6), ("ARN:AWS:S3:::" + shout + "Z", 7)]
    cases = {run: [1, 2, 3], run + "z": [2], run[:50]: [4], run[:50] + "Q" + run[51:]: [3], run[:49]: [],
             run[:30] + "anything-x": [5], run[:30] + "x": [5], run[:-1]: [], run[:-1] + "😁": [],
             "arn:aws:s3:::" + run: [6], "ARN:AWS:S3:::" + shout + "Z": [7], "": []}
    trie = build(entries, **geometry)
    folded = build(entries, ignore_case=True, **geometry)
    for _ in range(2):
        assert {text: trie.match(text) for text in cases} == cases
        assert folded.match(shout) == [1, 2, 3] and folded.match(run.upper()) == []
        assert folded.match("arn:aws:s3:::" + run + "z") == [7]
        assert folded.match("arn:aws:s3:::" + run) == [6]
    data = run.encode()
    nfa = build(entries, **NFA_ONLY)
    for k in range(0, len(data), 7):  # the byte that marks non-links, anywhere in a run, never follows a link
        for bad in (0xFF, 0xC0, 0x80):
            broken = data[:k] + bytes([bad]) + data[k + 1:]
            assert trie._match_utf8(broken) == nfa._match_utf8(broken)
            assert 1 not in trie._match_utf8(broken)


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


def test_literal_runs_take_a_few_bytes_a_character():
    # Most nodes of a large trie are links of literal runs: 4 bytes each, with no node record or edge.
    rng = random.Random(3)
    entries = [("arn:aws:s3:::" + "".join(rng.choice("abcdef-/") for _ in range(200)) + "*", k) for k in range(100)]
    trie = build(entries)
    assert trie.nbytes < 5 * trie.get_stats()["nodes"]


def test_empty_trie():
    trie = build([])
    assert trie.match("") == []
    assert trie.match("abc") == []
    assert not trie.matches("abc")


# ---------------------------------------------------------------------- build from sorted patterns
# freeze() sorts the patterns and builds the trie in one pass over them: whatever the order of
# add(), the trie (its size and its matches) is the same, with one node per distinct token prefix.


def token_prefixes(entries, ignore_case):
    """The distinct token prefixes of the patterns ('**' read as '*'): one trie node each."""
    prefixes = {()}
    for pattern, _ in entries:
        tokens = []
        for t in tokens_of(pattern):
            if t is STAR or t is QMARK:
                if not (t is STAR and tokens and tokens[-1] is STAR):
                    tokens.append(t)
            else:
                data = t.encode("utf-8", "surrogatepass")
                tokens.extend(data.lower() if ignore_case else data)
        prefixes.update(tuple(tokens[:k]) for k in range(len(tokens) + 1))
    return prefixes


def assert_shape(trie, entries, ignore_case):
    nodes = len(token_prefixes(entries, ignore_case))
    stats = trie.get_stats()
    assert (stats["nodes"], stats["edges"], stats["patterns"], stats["ids"]) == (
        nodes, nodes - 1, len(entries), len({pattern_id for _, pattern_id in entries}))


@settings(max_examples=200, deadline=None)
@given(entries=entries_strategy, ignore_case=st.booleans(), data=st.data())
def test_any_order_builds_the_same_trie(entries, ignore_case, data):
    orders = [entries, data.draw(st.permutations(entries)), entries[::-1]]
    inputs = data.draw(st.lists(st.text(INPUT_CHARS, max_size=8), max_size=5))
    inputs += [instantiate(data, pattern) for pattern, _ in entries]
    tries = []
    for order in orders:
        trie = GlobTrie(ignore_case)
        for pattern, pattern_id in order:
            trie.add(pattern, pattern_id)
        assert_shape(trie, entries, ignore_case)  # unfrozen
        trie.freeze()
        assert_shape(trie, entries, ignore_case)
        tries.append(trie)
    assert len({trie.nbytes for trie in tries}) == 1
    for text in inputs:
        expected = oracle(entries, text, ignore_case)
        assert [trie.match(text) for trie in tries] == [expected] * len(tries), (entries, text)


def test_large_set_in_any_order():
    rng = random.Random(77)
    words = ["s3", "ec2", "Get", "Put", "Object", "List", "é", "日", "😀", ":", "/"]
    entries = [("".join(rng.choice(words + ["*", "?"]) for _ in range(rng.randrange(7))), rng.randrange(1_000))
               for _ in range(3_000)]
    entries += entries[:200]  # duplicates: the same pattern and id again
    inputs = arns(100) + ["".join(rng.choice(words) for _ in range(rng.randrange(6))) for _ in range(300)]
    shuffled = entries[:]
    rng.shuffle(shuffled)
    first, second = build(entries, ignore_case=True), build(shuffled, ignore_case=True)
    assert first.get_stats() == second.get_stats() and first.nbytes == second.nbytes
    assert_shape(first, entries, True)
    regexes = [(re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                           re.DOTALL | re.IGNORECASE | re.ASCII), pattern_id) for pattern, pattern_id in entries]
    for text in inputs:
        expected = sorted({pattern_id for regex, pattern_id in regexes if regex.fullmatch(text)})
        assert first.match(text) == second.match(text) == expected, text


@pytest.mark.parametrize("geometry", [DEFAULT, NFA_ONLY], ids=["dfa", "nfa"])
def test_patterns_that_are_prefixes_of_each_other(geometry):
    entries = [("abc", 1), ("", 2), ("ab", 3), ("a", 4), ("abc*", 5), ("ab?", 6), ("abcd", 7)]
    expected = {"": [2], "a": [4], "ab": [3], "abc": [1, 5, 6], "abcd": [5, 7], "abx": [6], "abcde": [5], "b": []}
    for order in (entries, entries[::-1]):
        trie = build(order, **geometry)
        assert_shape(trie, entries, False)
        assert {text: trie.match(text) for text in expected} == expected


@pytest.mark.parametrize("geometry", [DEFAULT, NFA_ONLY], ids=["dfa", "nfa"])
def test_wildcard_and_literal_siblings(geometry):
    # Below "a": a '?' edge, a '*' edge and byte edges, among them the smallest bytes and the
    # literal '*' and '?'; '**' is one '*'.
    entries = [("a?", 1), ("a*", 2), ("a\x00", 3), ("a\x01", 4), (["a", "*"], 5), (["a", "?"], 6), ("a\x7f", 7),
               ("aé", 8), ("a", 9), ("a**b", 10), ("a?b", 11), (["a", STAR, STAR, "*"], 12), ("a\x02", 13)]
    inputs = ["a", "a\x00", "a\x01", "a\x02", "a*", "a?", "a\x7f", "aé", "ax", "ab", "axb", "a*b", "a**", "a\x00\x00",
              "", "b"]
    for order in (entries, entries[::-1]):
        trie = build(order, **geometry)
        assert_shape(trie, entries, False)
        for text in inputs:
            assert trie.match(text) == oracle(entries, text, False), text


@pytest.mark.parametrize("ignore_case", [False, True])
def test_non_ascii_siblings(ignore_case):
    # é è ê share their first byte, 日 旦 their first two, 😀 😁 their first three; lone
    # surrogates are 3-byte sequences too.
    entries = [("é", 1), ("è*", 2), ("ê?", 3), ("日", 4), ("旦x", 5), ("😀", 6), ("😁*", 7), ("\ud800", 8),
               ("\udfff?", 9), ("E", 10), ("É?", 11)]
    inputs = ["é", "è", "èé", "êx", "ê", "日", "旦x", "旦", "😀", "😁", "😁😀", "\ud800", "\udfffa", "e", "E", "Éa",
              "éa", "\ud800\udfff"]
    for order in (entries, entries[::-1]):
        for geometry in (DEFAULT, NFA_ONLY):
            trie = build(order, ignore_case, **geometry)
            assert_shape(trie, entries, ignore_case)
            for text in inputs:
                assert trie.match(text) == oracle(entries, text, ignore_case), text


def test_empty_pattern_among_others():
    entries = [("*", 3), ("", 1), ("a", 4), ([], 2), ("", 1), ([""], 1)]
    trie = build(entries)
    assert trie.match("") == [1, 2, 3]
    assert trie.match("a") == [3, 4]
    assert_shape(trie, entries, False)


def test_duplicates_and_extreme_ids():
    lo, hi = -2**31, 2**31 - 1
    entries = [("a*", hi), ("a*", lo), ("a*", hi), ("a*", -1), ("a*", 0), ("", 5), ("", 5), ("b", lo), ("b", lo)]
    for order in (entries, entries[::-1]):
        trie = build(order)
        assert trie.match("ab") == [lo, -1, 0, hi]
        assert trie.match("b") == [lo]
        assert trie.match("") == [5]
        assert_shape(trie, entries, False)
    with pytest.raises(OverflowError):
        GlobTrie(False).add("a", 2**31)


def test_bad_tokens_leave_the_trie_unchanged():
    trie = GlobTrie(False)
    trie.add("ab", 1)
    before = trie.get_stats()
    for bad in (["a", 3], [STAR, None], b"ab", ["x", STAR, 1.5], None):
        with pytest.raises(TypeError):
            trie.add(bad, 2)
    assert trie.get_stats() == before
    trie.freeze()
    assert trie.match("ab") == [1]
    assert trie.match("x") == []


def test_unfrozen_stats_then_more_patterns():
    trie = GlobTrie(True)
    trie.add("S3:Get*", 1)
    assert trie.get_stats()["nodes"] == 8  # the root, then s 3 : g e t *
    trie.add("s3:GetObject", 2)
    trie.add("s3:*", 3)
    assert trie.get_stats()["nodes"] == 8 + 6 + 1
    trie.freeze()
    assert trie.match("s3:getobject") == [1, 2, 3]
    assert trie.match("S3:PutObject") == [3]


# ---------------------------------------------------------------------- lazy DFA


def seedlike_entries():
    """Resource patterns shaped like the seed workload's: '*' runs kept active along the ARN."""
    return [(p, i) for i, p in enumerate([
        "arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*::image/*", "arn:aws:ec2:*:*:volume/*",
        "arn:aws:sns:*:*:*imagebuilder*", "arn:aws:logs:*:*:log-group:/aws/imagebuilder/*",
        "arn:aws:iam::*:role/*imagebuilder*", "arn:aws:s3:::*", "arn:aws:s3::*:*imagebuilder*",
        "arn:aws:s3:::ec2imagebuilder*", "arn:aws:ssm:*:*:document/AWS-RunShellScript",
        "arn:aws:*:*:*:*/?-*", "arn:aws:kms:*:*:key/*?*",
    ])]


def arns(count, seed=5):
    rng = random.Random(seed)
    services = ["ec2", "sns", "logs", "iam", "s3", "ssm", "kms", "sqs"]
    kinds = ["instance", "image", "volume", "role", "key", "document", "log-group:/aws/imagebuilder"]
    names = ["my-imagebuilder-pipeline", "i-0abc", "ec2imagebuilder-logs", "AWS-RunShellScript", "x", "é日😀"]
    out = []
    for _ in range(count):
        region = rng.choice(["us-east-1", "", "eu-west-1"])
        account = rng.choice(["111122223333", ""])
        out.append(f"arn:aws:{rng.choice(services)}:{region}:{account}:{rng.choice(kinds)}/"
                   f"{rng.choice(names)}{rng.getrandbits(24):06x}")
    return out


def test_warm_cache_gives_the_cold_results():
    entries = seedlike_entries()
    inputs = arns(500)
    expected = [oracle(entries, text, False) for text in inputs]
    assert 0 < sum(map(bool, expected)) < len(inputs)
    trie = build(entries)
    for _ in range(3):  # one scratch (the Python API reuses its idle buffer): cold, then warm
        assert [trie.match(text) for text in inputs] == expected
        assert [trie.matches(text) for text in inputs] == [bool(ids) for ids in expected]
    stats = trie.get_stats()
    assert stats["dfa_built"] == stats["dfa_states"] > 0  # states were cached ...
    assert stats["dfa_flushes"] == stats["dfa_fallbacks"] == stats["dfa_nfa_matches"] == 0  # ... and all fit
    assert stats["dfa_matches"] == 6 * len(inputs)


@pytest.mark.parametrize("geometry", TINY_CACHES + [{"dfa_states": 40, "dfa_pool": 4000}],
                         ids=lambda g: f"{g['dfa_states']}-states-{g['dfa_pool']}-slots")
def test_cache_full_paths_give_the_nfa_results(geometry):
    entries = seedlike_entries()
    inputs = arns(300, seed=9)
    expected = [build(entries, **NFA_ONLY).match(text) for text in inputs]
    trie = build(entries, **geometry)
    for _ in range(2):
        assert [trie.match(text) for text in inputs] == expected
        assert [trie.matches(text) for text in inputs] == [bool(ids) for ids in expected]
    stats = trie.get_stats()
    assert stats["dfa_max_states"] == geometry["dfa_states"]
    assert stats["dfa_flushes"] > 0
    assert stats["dfa_fallbacks"] + stats["dfa_nfa_matches"] > 0


def test_thrashing_cache_hands_over_to_the_nfa_then_retries():
    entries = seedlike_entries()
    inputs = arns(400, seed=11)
    expected = [oracle(entries, text, False) for text in inputs]
    trie = build(entries, dfa_states=8, dfa_pool=1000)
    assert [trie.match(text) for text in inputs] == expected
    stats = trie.get_stats()
    assert stats["dfa_nfa_matches"] > 0  # NFA-only periods ...
    assert stats["dfa_built"] > 2 * 8  # ... after which the DFA was tried again
    assert stats["dfa_nfa_matches"] < stats["dfa_matches"]


def test_non_ascii_qmark_with_warm_cache():
    entries = [("a?b", 1), ("a??b", 2), ("*?", 3), ("日?", 4), ("?😀*", 5), ("é*日", 6)]
    trie = build(entries)
    cases = {"aéb": [1, 3], "a日b": [1, 3], "a😀b": [1, 3, 5], "a😀😀b": [2, 3, 5], "a\ud800b": [1, 3],
             "日本": [3, 4], "日😀": [3, 4, 5], "x😀yz": [3, 5], "é日": [3, 6], "": [], "ab": [3]}
    for _ in range(3):
        for text, ids in cases.items():
            assert trie.match(text) == ids == oracle(entries, text, False), text
    # The same code points cut short (invalid UTF-8) end where the bytes end.
    nfa = build(entries, **NFA_ONLY)
    for text in cases:
        data = text.encode("utf-8", "surrogatepass")
        for cut in range(len(data) + 1):
            assert trie._match_utf8(data[:cut]) == nfa._match_utf8(data[:cut])


def test_case_folding_with_byte_classes():
    entries = [("EC2:Describe*", 1), ("ec2:describeinstances", 2), ("S3:Get?bject", 3), ("*:List*", 4)]
    trie = build(entries, ignore_case=True)
    for _ in range(2):
        assert trie.match("ec2:DESCRIBEINSTANCES") == [1, 2]
        assert trie.match("Ec2:DescribeImages") == [1]
        assert trie.match("s3:getObject") == [3]
        assert trie.match("S3:GET_BJECT") == [3]
        assert trie.match("IAM:LISTROLES") == [4]
        assert trie.match("iam:listroles") == [4]
        assert trie.match("ec2:describe") == [1]
    assert trie.get_stats()["dfa_classes"] < 256


@pytest.mark.parametrize("geometry", [DEFAULT, NFA_ONLY], ids=["dfa", "nfa"])
def test_common_prefix_of_all_patterns(geometry):
    # Every pattern starts with "arn:aws:": compared at once, before the automaton runs.
    arn = build([("arn:aws:s3:::*", 1), ("arn:aws:ec2:*:*:instance/*", 2), ("arn:aws:s3:::b?", 3)], **geometry)
    for _ in range(2):
        assert arn.match("arn:aws:s3:::bx") == [1, 3]
        assert arn.match("arn:aws:ec2:r:1:instance/i") == [2]
        assert arn.match("arn:aws:") == []
        assert arn.match("arn:aw") == []
        assert arn.match("arn:aws-cn:s3:::b") == []
        assert arn.match("ARN:aws:s3:::b") == []
        assert arn.matches("arn:aws:s3:::") and not arn.matches("arn")
    # Folded like the input; one literal pattern is all prefix; a shared first byte of
    # different 2-byte characters is not a prefix of whole characters.
    folded = build([("EC2:Describe*", 1), ("ec2:list*", 2)], ignore_case=True, **geometry)
    assert folded.match("ec2:DESCRIBEx") == [1] and folded.match("EC2:ListRoles") == [2]
    assert folded.match("ec3:list") == []
    single = build([("abc", 1)], **geometry)
    assert [single.match(t) for t in ["abc", "ab", "abcd", "", "xbc"]] == [[1], [], [], [], []]
    split = build([("éa*", 1), ("êb", 2), ("日本?", 3)], **geometry)
    assert [split.match(t) for t in ["éa", "êb", "éb", "日本語", "日本"]] == [[1], [2], [], [3], []]
    kana = build([("日本?", 3), ("日本*x", 4)], **geometry)
    assert [kana.match(t) for t in ["日本語", "日本x", "日x", "日本"]] == [[3], [3, 4], [], []]
    for trie, entries in [(split, [("éa*", 1), ("êb", 2), ("日本?", 3)]), (kana, [("日本?", 3), ("日本*x", 4)])]:
        nfa = build(entries, **NFA_ONLY)
        for text in ["éa", "êb", "日本語", "日本x"]:
            data = text.encode()
            for cut in range(len(data) + 1):
                assert trie._match_utf8(data[:cut]) == nfa._match_utf8(data[:cut])


def test_geometry_arguments():
    assert build([("a*", 1)], **NFA_ONLY).get_stats()["dfa_max_states"] == 0
    stats = build([("a*", 1)]).get_stats()
    assert stats["dfa_max_states"] > 0 and stats["dfa_pool_slots"] > 0
    small = build([("a*", 1)], dfa_states=2, dfa_pool=0)
    assert small.match("abc") == [1] and small.match("b") == []
    for bad in [{"dfa_states": -1}, {"dfa_pool": -1}, {"dfa_states": 1 << 40}]:
        trie = GlobTrie(False)
        trie.add("a", 1)
        with pytest.raises(ValueError):
            trie.freeze(**bad)
        assert not trie.frozen
        trie.freeze()  # still usable
        assert trie.match("a") == [1]


# ---------------------------------------------------------------------- worst cases
# These must finish quickly (well under a second each); only results are asserted.


WORST_CASE_GEOMETRIES = [DEFAULT, NFA_ONLY, {"dfa_states": 16, "dfa_pool": 256}]
worst_case_geometry = pytest.mark.parametrize("geometry", WORST_CASE_GEOMETRIES, ids=["default", "nfa", "tiny"])


@worst_case_geometry
def test_many_stars_against_long_run(geometry):
    trie = build([("a*a*a*a*a*a*a*a*b", 1)], **geometry)
    for _ in range(2):
        assert trie.match("a" * 100_000) == []
        assert trie.match("a" * 100_000 + "b") == [1]
        assert not trie.matches("a" * 100_000)


@worst_case_geometry
def test_pattern_with_500_stars(geometry):
    trie = build([("*".join(["ab"] * 501), 1), ("?*" * 500, 2), ("*" * 500, 3)], **geometry)
    assert trie.match("ab" * 600) == [1, 2, 3]
    assert trie.match("ab" * 5_000) == [1, 2, 3]
    assert trie.match("ab" * 500) == [2, 3]  # needs 501 "ab"
    assert trie.match("ab" * 600 + "a") == [2, 3]
    assert trie.match("x" * 499) == [3]
    assert trie.match("ab" * 600) == [1, 2, 3]


@worst_case_geometry
def test_10000_patterns_against_10000_char_arn(geometry):
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

    trie = build(entries, **geometry)
    assert trie.get_stats()["patterns"] == 10_000
    assert trie.match(arn) == sorted(expected)
    assert len(expected) > 4_000
    assert trie.matches(arn)
    assert trie.match(arn) == sorted(expected)


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


@pytest.mark.parametrize("geometry", [DEFAULT, {"dfa_states": 64, "dfa_pool": 2048}], ids=["default", "small"])
def test_threads_share_a_frozen_trie_long_inputs(geometry):
    # Inputs of several hundred bytes: the Python API matches them without holding the GIL,
    # each thread in its own scratch buffer (and DFA cache).
    rng = random.Random(4321)

    def key():
        return "/".join(rng.choice(["logs", "data", "tmp", "x", "2024", "é"]) for _ in range(rng.randrange(80, 200)))

    entries = [(f"arn:aws:s3:::bucket-{i % 40}/{key()[:rng.randrange(30)]}*", i) for i in range(400)]
    entries += [(f"arn:aws:s3:::*/{d}/*/{d}/*{t}", 400 + k) for k, (d, t) in
                enumerate((d, t) for d in ["logs", "tmp", "x"] for t in ["a", "é", "?4"])]
    trie = build(entries, **geometry)
    inputs = [f"arn:aws:s3:::bucket-{rng.randrange(60)}/{key()}" for _ in range(1_000)]
    assert min(map(len, inputs)) > 256
    assert_threads_agree(trie, inputs)


def test_a_full_cache_grows_to_its_bound_and_keeps_the_results():
    """A cache that starts too small for its inputs doubles (its states dropped) instead of thrashing, up to
    dfa_max_states; the results are those of the NFA throughout."""
    entries = seedlike_entries()
    inputs = arns(500, seed=13)
    expected = [oracle(entries, text, False) for text in inputs]
    trie = build(entries, dfa_states=8, dfa_pool=64, dfa_max_states=4096)
    for _ in range(2):
        assert [trie.match(text) for text in inputs] == expected
    stats = trie.get_stats()
    assert (stats["dfa_first_states"], stats["dfa_max_states"]) == (8, 4096)
    assert stats["dfa_grows"] >= 4, "8 → 16 → 32 → 64 → 128 states at least"
    assert 128 < stats["dfa_states"] <= 4096
    assert stats["dfa_nfa_matches"] == 0, "no thrashing once it had room"
    assert stats["dfa_cache_bytes"] > 0
    fixed = build(entries, dfa_states=8, dfa_pool=64)
    assert [fixed.match(text) for text in inputs] == expected
    assert fixed.get_stats()["dfa_grows"] == 0 and fixed.get_stats()["dfa_max_states"] == 8


def test_cache_bounds_are_checked():
    with pytest.raises(ValueError, match="in that order"):
        build([("a*", 1)], dfa_states=64, dfa_max_states=8)
