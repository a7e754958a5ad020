"""The compiled patterns and conditions (evaluator._pattern, evaluator._conditions) against the reference.

The reference is ``evaluator.conditions.condition_holds`` evaluated as ``reference.statement_applies``
does it: every condition in order, an unresolvable policy variable making the statement not apply
(code 2: no missing keys, the engine asks ``reference.needed_keys`` then) and an unreadable value failing
the request (code -1).
Conditions are built by parsing generated policy JSON, so they are what the parser lets through.
"""
from __future__ import annotations

import importlib.machinery
import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iam_evaluator._conditions as compiled_conditions
import iam_evaluator._pattern as compiled_pattern
from iam_evaluator._conditions import ConditionSet
from iam_evaluator._pattern import PatternSet
from iam_evaluator.conditions import comparator, condition_holds
from iam_evaluator.model import Effect, Policy, Statement
from iam_evaluator.operators import OPERATORS, Family, read_address, read_date, read_number
from iam_evaluator.parse import parse_policy
from iam_evaluator.reference import needed_keys, statement_applies
from iam_evaluator.request import Request
from iam_evaluator.variables import Unresolvable, expand_pattern
from iam_evaluator.wildcard import glob_match

CURRENT = "2012-10-17"
ACCOUNT = "111122223333"

# ---------------------------------------------------------------------- helpers


def conditions_of(condition_block: dict, version: str | None = CURRENT):
    doc = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": condition_block}]}
    if version is not None:
        doc["Version"] = version
    policy = parse_policy(json.dumps(doc))
    return policy.statements[0].conditions, policy.has_policy_variables


def reference(conditions, context: dict, substitute: bool) -> tuple[int, set[str]]:
    """statement_applies's view of a statement's conditions, as a result code: every comparator
    first (Unresolvable: the statement does not apply), then every condition."""
    needed: set[str] = set()
    try:
        try:
            comparators = [comparator(c, context, substitute) for c in conditions]
        except Unresolvable:
            return 2, set()
        pairs = zip(conditions, comparators, strict=True)
        holds = [condition_holds(c, context, compare, needed) for c, compare in pairs]
    except ValueError:  # EvaluationError, or a policy value holding ${...} that a typed family reads
        return -1, set()
    return int(all(holds)), needed


def statement_result(conditions, context: dict, substitute: bool) -> tuple[bool | None, set[str]]:
    """reference.statement_applies itself on a statement that only its conditions can stop
    (None: it raised, so the request fails), and the keys ``reference.needed_keys`` says it needed."""
    policy = Policy("p", CURRENT if substitute else None, (Statement(0, None, Effect.ALLOW, ("*",), None, ("*",),
                                                                     conditions=tuple(conditions)),))
    request = Request.create(f"arn:aws:iam::{ACCOUNT}:user/u", "s3:GetObject", "arn:aws:s3:::b/o", context, ACCOUNT)
    needed = set(needed_keys(policy.statements[0], policy, request.resource, request.context))
    try:
        return statement_applies(policy.statements[0], policy, request), needed
    except ValueError:
        return None, needed


def compiled(conditions, context: dict, substitute: bool) -> tuple[int, list[str]]:
    condition_set = ConditionSet({})
    group = condition_set.add_group(tuple(conditions), substitute)
    condition_set.freeze()
    return condition_set.evaluate(group, context)


def assert_same(condition_block: dict, context: dict, version: str | None = CURRENT) -> int:
    conditions, substitute = conditions_of(condition_block, version)
    expected, needed = reference(conditions, context, substitute)
    applies, applies_missing = statement_result(conditions, context, substitute)
    assert (applies is None, applies is True) == (expected == -1, expected == 1), "reference() is out of date"
    # Where every variable resolves, the keys the statement needed are the absent keys its conditions read (the
    # engine reports those; where one does not, it reports the statement, and needed_keys names them).
    assert expected in (-1, 2) or applies_missing == needed, "reference() is out of date"
    result, missing = compiled(conditions, context, substitute)
    assert result == expected, (condition_block, context, version)
    assert len(missing) == len(set(missing)), missing
    if result in (0, 1):
        assert set(missing) == needed, (condition_block, context)
    else:
        assert missing == []
    return result


def check(condition_block: dict, context: dict, version: str | None = CURRENT) -> int:
    """The compiled result, after checking it against the reference."""
    return assert_same(condition_block, context, version)


# ---------------------------------------------------------------------- the extensions are compiled


def test_extensions_are_compiled():
    for module in (compiled_pattern, compiled_conditions):
        assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), module.__file__
        assert module.__file__.endswith(".so") or module.__file__.endswith(".pyd")
        assert isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)


# ---------------------------------------------------------------------- generated differential tests

KEYS = ["test:a", "Test:A", "test:B", "aws:SourceIp"]  # two spellings of test:a: two missing names
VARIABLE_VALUES = ["vv", "a*", "ab", "é", "a:b", "1.5", "true", "10.0.0.0/8", "QUJD", ""]

POLICY_VALUES = {
    Family.STRING: [
        "abc", "a*", "*c", "a?c", "*", "", "ABC", "é*", "straße", "İ", "ǅ?", "${test:v}", "x${test:v}*",
        "${test:v, 'd?'}", "${*}", "${?}a", "${$}{", "${test:list}", "${test:gone}", "${TEST:V}a", "${ test:v }",
        "${test:gone, ''}", "a${test:v}${test:v}",
    ],
    Family.NUMERIC: ["1", "1.5", "-2", "0", "-0", ".5", "10.", "+3", "1.50", "100", "0.1", "${test:v}"],
    Family.DATE: [
        "2020-01-01", "2020-01-01T10:00:00Z", "2020-01-01T12:00:00+02:00", "1577872800", "1577872800.5",
        "2020-01-01T10:00:00.500000Z", "1969-12-31T23:59:59.5Z", "2020-01-01T10:00", "${test:v}",
    ],
    Family.BOOL: ["true", "false", "True", " FALSE ", "${test:v}"],
    Family.BINARY: ["QUJD", "YWJj", "QQ==", "", "${test:v}"],
    Family.IP: [
        "10.0.0.0/8", "10.1.2.3", "192.168.0.0/16", "2001:db8::/32", "::ffff:0:0/96", "0.0.0.0/0", "::/0",
        " 172.16.0.0/12 ", "fe80::/10", "${test:v}",
    ],
    Family.ARN: [
        "arn:aws:s3:::bucket/*", "arn:aws:iam::*:role/${test:v}", "arn:*:*:*:*:*", "arn:aws:*",
        "arn:aws:s3:::bucket", "arn:aws:iam::123456789012:role/a?c", "arn:aws:iam::*:role/*/x",
        "${test:v}:*:*:*:*", "arn:aws:s3:::${test:gone, 'b*'}", "arn:aws:iam::${test:list}:*", "*",
    ],
    Family.NULL: ["true", "false", " TRUE ", "${test:v}"],
}

REQUEST_VALUES = {
    Family.STRING: [
        "abc", "ABC", "aXc", "ac", "a", "", "c", "é", "éé", "STRASSE", "strasse", "straße", "i̇", "ǆx", "Ǆx", "*",
        "?a", "${test:v}", "vv", "xvv", "x", "dq", "$", "${", "vva", "ǅ", "aéc",
    ],
    Family.NUMERIC: [
        "1", "1.5", "-2", "0", "-0", ".5", "10.", "+3", "1.50", "100", " 1.5 ", "1.500", "abc", "1e3", "", "٣",
        "0.0", "-.5", "1.", ".", "+-1", "99.99999999999999999999", "0.10000000000000001", "\u20031\u2003",
    ],
    Family.DATE: [
        "2020-01-01", "2020-01-01T10:00:00Z", "2020-01-01T12:00:00+02:00", "1577872800", "1577872800.5",
        "2020-01-01T10:00Z", "2020-01-01T10:00:00.5z", "2020-01-01t10:00", "2020-01-01 10:00:00",
        "2020-01-01T10:00:00.500000+00:00", "20200101", "2020-W01-3", "1577836800", " 1577836800 ", "-1", "0.5",
        "garbage", "2020-13-01", "2020-02-30", "2020-01-01T25:00", "2020-01-01T10:00+24:00", "1969-12-31T23:59:59.5Z",
        "2020-01-01T09:00:00-01:00", "1577872800.", "",
    ],
    Family.BOOL: ["true", "false", "TRUE", " false\n", "yes", "1", "", "truE", "t rue"],
    Family.BINARY: ["QUJD", "YWJj", "qujd", "QUJD ", "QQ==", ""],
    Family.IP: [
        "10.1.2.3", "10.255.0.1", "11.0.0.1", "192.168.1.1", "2001:db8::1", "2001:db9::1", "::ffff:10.1.2.3",
        "::ffff:a01:203", "fe80::1%eth0", "10.0.0.01", "garbage", " 10.1.2.3 ", "::1", "1.2.3", "172.16.5.4", "",
        "1.2.3.4/32",
    ],
    Family.ARN: [
        "arn:aws:s3:::bucket/key", "arn:aws:s3:::bucket", "arn:aws:iam::123456789012:role/abc",
        "arn:aws:iam::123456789012:role/vv", "arn:aws:iam::123456789012:role/a:b", "arn:aws:s3::",
        "arn:aws:s3:::bucket/a:b:c", "arn:aws:iam::123456789012:role/p/x", "vv:b:c:d:e:f", "a:b:c:d:e:f",
        "arn:aws:iam::123456789012:role/x/y/x", "arn:aws:s3:::bx", "", "*",
    ],
    Family.NULL: ["x", ""],
}

OPERATORS_BY_FAMILY = {
    family: sorted(name for name, spec in OPERATORS.items() if spec.family is family) for family in Family
}


QUALIFIERS = st.sampled_from([None, None, "ForAllValues", "ForAnyValue"])
KEY_NAMES = st.sampled_from(KEYS)
OPERATOR_NAMES = {family: st.sampled_from(names) for family, names in OPERATORS_BY_FAMILY.items()}
# Values holding ${...} are unreadable for typed families (the request fails): draw them less often.
VALUE_LISTS = {
    family: st.lists(st.sampled_from([v for v in values for _ in range(1 if "${" in v else 3)]), min_size=1, max_size=3)
    for family, values in POLICY_VALUES.items()
}


@st.composite
def condition_entry(draw, family: Family):
    """(operator as written, key, values) of one family."""
    operator = draw(OPERATOR_NAMES[family])
    if family is not Family.NULL:
        if draw(st.booleans()):
            operator += "IfExists"
        qualifier = draw(QUALIFIERS)
        if qualifier:
            operator = f"{qualifier}:{operator}"
    values = draw(VALUE_LISTS[family])
    return operator, draw(KEY_NAMES), values if len(values) > 1 or draw(st.booleans()) else values[0]


def context_value(pool):
    listed = st.sampled_from(pool)
    single = st.one_of(listed, listed, listed, st.text(alphabet="a1.:-*?é ", max_size=5))
    return st.one_of(single, single, st.lists(single, max_size=3).map(tuple))


VARIABLE_VALUE = st.one_of(st.sampled_from(VARIABLE_VALUES), st.just(("vv",)))
LIST_VALUE = st.sampled_from([("a", "b"), "123456789012"])
VERSIONS = st.sampled_from([CURRENT, CURRENT, None])


@st.composite
def case(draw, entries, values):
    """A condition block of 1 to 3 conditions, a context to evaluate it in, and the Version."""
    block: dict[str, dict] = {}
    for _ in range(draw(st.integers(1, 3))):
        operator, key, policy_values = draw(entries)
        block.setdefault(operator, {})[key] = policy_values
    context = {}
    for key in ("test:a", "test:b", "aws:sourceip"):
        if draw(st.integers(0, 3)):
            context[key] = draw(values)
    if draw(st.integers(0, 3)):
        context["test:v"] = draw(VARIABLE_VALUE)
    if draw(st.booleans()):
        context["test:list"] = draw(LIST_VALUE)
    return block, context, draw(VERSIONS)


def cases(*families: Family):
    entries = st.one_of([condition_entry(family) for family in families])
    values = context_value([v for family in families for v in REQUEST_VALUES[family]])
    return case(entries, values)


FAMILY_CASES = {family: cases(family) for family in Family}
DIFFERENTIAL = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("family", list(Family), ids=str)
@DIFFERENTIAL
@given(data=st.data())
def test_family_matches_reference(family, data):
    block, context, version = data.draw(FAMILY_CASES[family])
    assert_same(block, context, version)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(*Family))
def test_mixed_statements_match_reference(generated):
    block, context, version = generated
    assert_same(block, context, version)


# ---------------------------------------------------------------------- value readers, generated

DATE_PIECES = ["2020", "-", "01", "12", "31", "W", "53", "1", "T", "t", " ", "10", ":", "30", "59", ".", ",", "5",
               "123456", "7", "+", "Z", "z", "05", "00", "é", "٣", "24", "0000", "9999"]


def reader_result(reader, text):
    try:
        return Decimal(reader(text))
    except ValueError:
        return None


def compiled_decimal(value):
    return None if value is None else Decimal(value)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(DATE_PIECES), max_size=14).map("".join))
def test_date_reader_matches_read_date(text):
    assert compiled_decimal(compiled_conditions._read_date_for_tests(text)) == reader_result(read_date, text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="+-.0123456789٣ \t\u2003e", max_size=12))
def test_number_reader_matches_read_number(text):
    assert compiled_decimal(compiled_conditions._read_number_for_tests(text)) == reader_result(read_number, text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="+-.0123456789", max_size=10), st.text(alphabet="+-.0123456789", max_size=10))
def test_numbers_compare_exactly(a, b):
    x, y = reader_result(read_number, a), reader_result(read_number, b)
    if x is None or y is None:
        return
    assert compiled_conditions._compare_for_tests(a, b) == (x > y) - (x < y)


IP_PIECES = ["1", "10", "255", "256", "01", "0", ".", ":", "::", "ffff", "db8", "2001", "%", "eth0", " ", "/", "g"]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(IP_PIECES), max_size=12).map("".join))
def test_address_reader_matches_ip_address(text):
    try:
        address = read_address(text)
        expected = (address.version, int(address))
    except ValueError:
        expected = None
    assert compiled_conditions._read_address_for_tests(text) == expected


# ---------------------------------------------------------------------- patterns

PATTERN_TEXTS = st.lists(
    st.sampled_from(["a", "b", "é", "*", "?", ":", "${test:v}", "${test:w, 'd*'}", "${*}", "${?}", "${$}", "${",
                     "}", "${test:list}"]),
    max_size=8,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    PATTERN_TEXTS, st.booleans(), st.text(alphabet="abé*?:d", max_size=8),
    st.one_of(st.none(), st.text(alphabet="ab*é:", max_size=3), st.just(("a",))),
)
def test_pattern_matches_reference(text, substitute, value, variable):
    context = {"test:list": ("a", "b")}
    if variable is not None:
        context["test:v"] = variable
    key_ids: dict[str, int] = {}
    patterns = PatternSet(key_ids)
    index = patterns.add(text, substitute)
    patterns.freeze()
    try:
        expected = expand_pattern(text, context, substitute)
    except Unresolvable:
        expected = None
    assert patterns.expanded(index, context) == expected
    assert patterns.matches(index, value, context) == (2 if expected is None else int(glob_match(expected, value)))


def test_pattern_registers_variable_keys():
    key_ids = {"aws:username": 0}
    patterns = PatternSet(key_ids)
    patterns.add("arn:aws:s3:::b/${aws:UserName}/${Team:Name, 'x'}/${*}", True)
    patterns.add("${other}", False)  # no substitution: plain text
    assert key_ids == {"aws:username": 0, "team:name": 1}
    patterns.freeze()
    with pytest.raises(ValueError):
        patterns.add("x", True)


def test_pattern_variables_are_literal_and_question_mark_is_one_code_point():
    patterns = PatternSet({})
    star = patterns.add("a${test:v}b", True)
    qmark = patterns.add("x?y", True)
    patterns.freeze()
    assert patterns.matches(star, "a*b", {"test:v": "*"}) == 1
    assert patterns.matches(star, "aZb", {"test:v": "*"}) == 0
    assert patterns.matches(star, "ab", {}) == 2
    assert patterns.matches(star, "ab", {"test:v": ("",)}) == 2
    assert patterns.matches(qmark, "x😀y", {}) == 1
    assert patterns.matches(qmark, "xéey", {}) == 0


def test_star_worst_case_finishes():
    patterns = PatternSet({})
    stars = patterns.add("*" * 200, True)
    alternating = patterns.add("*a" * 100 + "b", True)
    patterns.freeze()
    assert patterns.matches(stars, "x" * 10_000, {}) == 1
    assert patterns.matches(alternating, "a" * 10_000, {}) == 0
    condition_set = ConditionSet({})
    group = condition_set.add_group(conditions_of({"StringLike": {"k": "*" * 200 + "b"}})[0], True)
    condition_set.freeze()
    assert condition_set.evaluate(group, {"k": "a" * 10_000}) == (0, [])


# ---------------------------------------------------------------------- focused cases per family


def test_string_ignore_case_folds_like_casefold():
    for policy, given_value, expected in [
        ("straße", "STRASSE", 1), ("ﬁle", "FILE", 1), ("kelvin", "\u212aelvin", 1), ("σ", "ς", 1),
        ("abc", "ABD", 0), ("İ", "i", 0), ("ǅ", "ǆ", 1), ("é", "É", 1), ("a", "", 0),
    ]:
        assert check({"StringEqualsIgnoreCase": {"k": policy}}, {"k": given_value}) == expected, (policy, given_value)


def test_string_equals_is_exact_and_variables_expand_as_text():
    assert check({"StringEquals": {"k": "a*"}}, {"k": "a*"}) == 1
    assert check({"StringEquals": {"k": "a*"}}, {"k": "ab"}) == 0
    assert check({"StringEquals": {"k": "${u}-x"}}, {"k": "al-x", "u": "al"}) == 1
    assert check({"StringEquals": {"k": "${u}-x"}}, {"k": "${u}-x"}, version=None) == 1
    assert check({"StringEquals": {"k": "${u}"}}, {"k": "x"}) == 2  # unresolvable, key present or not
    assert check({"StringEquals": {"k": "${u}"}}, {}) == 2
    assert check({"StringNotEquals": {"k": "${u, 'd'}"}}, {"k": "d"}) == 0


def test_string_like_and_not_like():
    assert check({"StringLike": {"k": ["a*c", "x?"]}}, {"k": "abbc"}) == 1
    assert check({"StringNotLike": {"k": ["a*c", "x?"]}}, {"k": "xy"}) == 0
    assert check({"StringNotLike": {"k": "a*"}}, {}) == 1


def test_numeric_compares_exactly():
    assert check({"NumericEquals": {"k": "0.1"}}, {"k": "0.10000000000000001"}) == 0
    assert check({"NumericLessThan": {"k": "0.1"}}, {"k": "0.09999999999999999999"}) == 1
    assert check({"NumericEquals": {"k": "3"}}, {"k": "٣"}) == 1  # a Unicode digit, as Decimal reads it
    assert check({"NumericEquals": {"k": "-0"}}, {"k": "0.000"}) == 1
    assert check({"NumericGreaterThanEquals": {"k": "10"}}, {"k": " 10. "}) == 1
    assert check({"NumericEquals": {"k": "1"}}, {"k": "1e0"}) == -1
    assert check({"NumericEquals": {"k": 5}}, {"k": "5"}) == 1  # a JSON number in the policy


def test_dates_read_iso_and_epoch_like_read_date():
    assert check({"DateEquals": {"k": "2020-01-01T00:00:00Z"}}, {"k": "1577836800"}) == 1
    assert check({"DateEquals": {"k": "2020-01-01"}}, {"k": "2020-01-01T01:00:00+01:00"}) == 1
    assert check({"DateGreaterThan": {"k": "0"}}, {"k": "1969-12-31T23:59:59.5Z"}) == 1  # read_date's rounding
    assert check({"DateLessThan": {"k": "2020-01-01"}}, {"k": "2019-W52-1"}) == 1
    assert check({"DateEquals": {"k": "2020-01-01"}}, {"k": "2020-02-30"}) == -1
    assert check({"DateEquals": {"k": "253402300800.999999"}}, {"k": "9999-12-31T23:59:59.999999Z"}) == 1


def test_bool_and_binary():
    assert check({"Bool": {"k": "true"}}, {"k": " TRUE\n"}) == 1
    assert check({"Bool": {"k": True}}, {"k": "false"}) == 0
    assert check({"Bool": {"k": "true"}}, {"k": "yes"}) == -1
    assert check({"BinaryEquals": {"k": "QUJD"}}, {"k": "QUJD"}) == 1
    assert check({"BinaryEquals": {"k": "QUJD"}}, {"k": "qujd"}) == 0


def test_ip_address_families_never_mix():
    assert check({"IpAddress": {"k": "10.0.0.0/8"}}, {"k": "10.9.8.7"}) == 1
    assert check({"IpAddress": {"k": "::ffff:0:0/96"}}, {"k": "10.9.8.7"}) == 0
    assert check({"IpAddress": {"k": "::ffff:0:0/96"}}, {"k": "::ffff:10.9.8.7"}) == 1
    assert check({"IpAddress": {"k": "10.0.0.0/8"}}, {"k": "::ffff:10.9.8.7"}) == 0
    assert check({"IpAddress": {"k": "fe80::/10"}}, {"k": "fe80::1%eth0"}) == 1
    assert check({"NotIpAddress": {"k": "10.0.0.0/8"}}, {"k": "10.0.0.01"}) == -1


def test_arn_fields_are_globbed_one_by_one():
    assert check({"ArnLike": {"k": "arn:aws:s3:::bucket/*"}}, {"k": "arn:aws:s3:::bucket/a:b"}) == 1
    assert check({"ArnLike": {"k": "arn:aws:*"}}, {"k": "arn:aws:s3:::b"}) == 0  # fewer than six fields
    assert check({"ArnLike": {"k": "arn:*:s3:::b"}}, {"k": "arn:aws:x:s3:::b"}) == 0  # '*' never crosses a ':'
    assert check({"ArnEquals": {"k": "arn:aws:iam::*:role/${u}"}}, {"k": "arn:aws:iam::1:role/al", "u": "al"}) == 1
    assert check({"ArnLike": {"k": "${u}:*:*:*"}}, {"k": "arn:aws:s3:::b", "u": "arn:aws:s3"}) == 1  # ':' in a value
    assert check({"ArnLike": {"k": "${u}:*:*"}}, {"k": "arn:aws:s3:::b", "u": "arn:aws:s3"}) == 0  # five fields
    assert check({"ArnNotLike": {"k": "arn:aws:s3:::b"}}, {"k": "arn:aws:s3:::c"}) == 1


def test_null_and_missing_keys():
    assert check({"Null": {"k": "true"}}, {}) == 1
    assert check({"Null": {"k": "true"}}, {"k": ()}) == 0  # an empty list is present
    assert check({"Null": {"k": ["false", "${x}"]}}, {}, version=None) == -1  # read until one decides
    assert check({"Null": {"k": ["true", "${x}"]}}, {}, version=None) == 1
    conditions, substitute = conditions_of({
        "StringEquals": {"test:A": "x", "Test:a": "x"}, "StringEqualsIfExists": {"other": "y"},
        "ForAllValues:StringLike": {"test:a": "x"}, "Null": {"nothing": "false"},
    })
    assert compiled(conditions, {}, substitute)[1] == ["test:A", "Test:a", "other", "test:a"]


def test_qualifiers_on_lists_and_single_values():
    assert check({"ForAllValues:StringEquals": {"k": ["a", "b"]}}, {"k": ("a", "b")}) == 1
    assert check({"ForAllValues:StringEquals": {"k": ["a", "b"]}}, {"k": ()}) == 1
    assert check({"ForAnyValue:StringEquals": {"k": ["a"]}}, {"k": ()}) == 0
    assert check({"ForAnyValue:StringNotEquals": {"k": ["a"]}}, {"k": ("a", "c")}) == 1
    assert check({"ForAllValues:NumericLessThan": {"k": "5"}}, {"k": ("9", "junk")}) == 0  # stops before junk
    assert check({"ForAnyValue:NumericLessThan": {"k": "5"}}, {"k": ("9", "junk")}) == -1
    assert check({"StringEquals": {"k": "a"}}, {"k": ("a",)}) == 1


def test_variables_and_policy_values_are_settled_before_any_condition():
    unresolvable = {"StringEquals": {"k": "${gone}"}}
    unreadable = {"NumericEquals": {"n": "x${y}"}}  # unreadable whatever the request: the parser let it through
    assert check({**unresolvable, **unreadable}, {"n": "1", "k": "a"}) == 2
    assert check({**unreadable, **unresolvable}, {"n": "1", "k": "a"}) == -1
    assert check({"NumericEquals": {"n": "1"}, **unresolvable}, {"n": "junk"}) == 2  # before reading any request
    assert check({"StringEquals": {"k": "a"}, "NumericEquals": {"n": "1"}}, {"k": "b", "n": "junk"}) == -1


def test_key_ids_are_registered_for_conditions_and_variables():
    key_ids = {"aws:sourceip": 0}
    condition_set = ConditionSet(key_ids)
    conditions, substitute = conditions_of({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"},
                                            "StringLike": {"Team": "${aws:PrincipalTag/Team}-*"}})
    condition_set.add_group(conditions, substitute)
    assert key_ids == {"aws:sourceip": 0, "team": 1, "aws:principaltag/team": 2}
    assert condition_set.key_names == ["aws:SourceIp", "Team"]
    condition_set.freeze()
    with pytest.raises(ValueError):
        condition_set.add_group((), True)


def test_groups_are_independent_and_threads_share_a_frozen_set():
    condition_set = ConditionSet({})
    groups = [
        condition_set.add_group(conditions_of({"StringLike": {"k": f"v{i}*"}, "NumericLessThan": {"n": str(i)}})[0],
                                True)
        for i in range(20)
    ]
    empty = condition_set.add_group((), True)
    condition_set.freeze()
    assert condition_set.evaluate(empty, {}) == (1, [])
    contexts = [({"k": f"v{i}x" * 50, "n": str(i - 1)}, (1, [])) for i in range(20)]

    def run(i):
        return all(condition_set.evaluate(groups[i], contexts[i][0]) == contexts[i][1] for _ in range(200))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(20)))
