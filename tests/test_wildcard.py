"""The reference glob matcher against a regex oracle, and its worst cases."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iam_evaluator.variables import Unresolvable, expand_pattern, expand_text
from iam_evaluator.wildcard import STAR, compile_glob, glob_match, matcher


def oracle(pattern: str, text: str, ignore_case: bool) -> bool:
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, text, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None


@settings(max_examples=400)
@given(st.text("aAb:/*?", max_size=10), st.text("aAb:/", max_size=12), st.booleans())
def test_matches_the_regex_oracle(pattern, text, ignore_case):
    assert glob_match(compile_glob(pattern), text, ignore_case) == oracle(pattern, text, ignore_case)


@settings(max_examples=400)
@given(st.text("aAb:/*?", max_size=10), st.text("aAb:/", max_size=12), st.booleans())
def test_the_reusable_matcher_matches_the_regex_oracle(pattern, text, ignore_case):
    """``matcher``'s shortcuts (plain comparisons, ``star_match``) answer as the oracle does."""
    assert matcher(pattern, ignore_case)(text) == oracle(pattern, text, ignore_case)


def test_star_match_is_not_exponential():
    assert not matcher("a*" * 300 + "b")("a" * 100_000)
    assert matcher("*a" * 300)("a" * 5_000)
    assert not matcher("*ab*ab*ab*")("abab")


@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("arn:aws:logs:*:*:log-group:/aws/imagebuilder/*",
     "arn:aws:logs:us-east-1:1:log-group:/aws/imagebuilder/x:log-stream:1", True),
    ("arn:aws:s3:::bucket/?", "arn:aws:s3:::bucket/ab", False),
    ("*", "", True),
    ("", "", True),
    ("a", "", False),
])
def test_examples(pattern, text, expected):
    assert glob_match(compile_glob(pattern), text) is expected


def test_adversarial_pattern_is_not_exponential():
    # a*a*...*b against a long run of a's: a backtracking matcher takes forever here.
    assert not glob_match(compile_glob("a*" * 8 + "b"), "a" * 20_000)
    assert glob_match(compile_glob("*a" * 300), "a" * 5_000)


def test_variables_insert_literal_text():
    context = {"aws:username": "al*ce", "aws:tagkeys": ("a", "b")}
    pattern = expand_pattern("arn:aws:s3:::home/${aws:username}/${*}", context, substitute=True)
    assert pattern[-1] == "*" and STAR not in pattern
    assert glob_match(pattern, "arn:aws:s3:::home/al*ce/*")
    assert not glob_match(pattern, "arn:aws:s3:::home/alice/x")
    assert expand_text("${aws:missing, 'dflt'}-${$}", context, substitute=True) == "dflt-$"
    assert expand_text("${aws:username}", context, substitute=False) == "${aws:username}"
    with pytest.raises(Unresolvable):
        expand_text("${aws:TagKeys}", context, substitute=True)
    with pytest.raises(Unresolvable):
        expand_text("${aws:missing}", context, substitute=True)
