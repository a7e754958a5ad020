"""``server/_wire.pyx`` reads a RequestColumns as upb does, and checks its columns as the service always has.

The oracle is upb itself (``RequestColumns.FromString``) and, for the columns, ``upb_columns`` below: the
service's reading of a parsed message before the C reader took its place, kept here as the specification.
Encodings come from upb (hypothesis draws messages) and from ``encode`` (hostile shapes upb never writes:
unknown fields, other wire types, groups, unpacked numbers, truncation, bad UTF-8); a decision made from
the C reader's columns is the one made from the oracle's, and the reference evaluator's.

``test_module_passes_under_the_debug_allocator_subprocess`` runs this module again under
``PYTHONMALLOC=debug``, which overwrites freed memory, so that a string the reader lets go too early shows.
"""
from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iam_evaluator import DecisionKind, PolicySet, Request, RequestError, parse_policy, reference
from iam_evaluator.compile import CompiledPolicySet
from iam_evaluator.server import _wire, convert
from iam_evaluator.server.api import iam_evaluator_pb2 as pb

from .conftest import assert_passes_under_debug_allocator

SESSION = "arn:aws:sts::111122223333:assumed-role/Builder/build-7"
ROLE = "arn:aws:iam::111122223333:role/Builder"
PRINCIPALS = [SESSION, ROLE, "arn:aws:iam::444455556666:user/auditor", "not an arn", ""]
ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:getobject", "s3", ""]
RESOURCES = ["arn:aws:s3:::shared/a.csv", "arn:aws:s3:::private/key", "*", "arn:aws:s3:::shared/\x00nul", "nope"]
KEYS = ["aws:SourceIp", "aws:sourceip", "s3:prefix", "aws:PrincipalTag/team", "", "ünï"]
TAGS = ["team", "Team", "level", ""]
TEXTS = ["10.0.0.1", "dev-1", "blocked", "", "a\x00b", "é", "\U0001F600", "111122223333"]

POLICIES = PolicySet(identity=(parse_policy({"Version": "2012-10-17", "Statement": [
    {"Sid": "Read", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
     "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
    {"Sid": "Blocked", "Effect": "Deny", "Action": "*", "Resource": "*",
     "Condition": {"StringEquals": {"aws:PrincipalTag/team": "blocked"}}},
    {"Sid": "DevWrite", "Effect": "Allow", "Action": "s3:Put*", "Resource": "arn:aws:s3:::shared/*",
     "Condition": {"StringLike": {"aws:PrincipalTag/team": "dev-*"}, "ForAnyValue:StringEquals": {
         "s3:prefix": ["a", "é"]}}},
]}, name="wire"),))


def upb_columns(message: pb.RequestColumns) -> tuple:
    """The columns of a parsed message, as the service read them before ``_wire`` (the specification)."""
    principals, actions, resources = list(message.principals), list(message.actions), list(message.resources)
    n = len(principals)
    if len(actions) != n or len(resources) != n:
        raise ValueError(f"columns differ in length: {n} principals, {len(actions)} actions, "
                         f"{len(resources)} resources")
    owners = list(message.resource_accounts)
    if owners and len(owners) != n:
        raise ValueError(f"resource_accounts has {len(owners)} entries for {n} requests")
    contexts: dict[str, list] = {}
    for column in message.context:
        if column.key in contexts:
            raise ValueError(f"context column {column.key!r} is given twice")
        rows = _rows(column.rows, f"context column {column.key!r}", n)
        count = len(rows) if rows else n
        values = list(column.values)
        if column.is_list:
            lengths = list(column.lengths)
            if len(lengths) != count or sum(lengths) != len(values):
                raise ValueError(f"context column {column.key!r}: lengths must give one count per request with "
                                 f"the key ({count}), adding up to the {len(values)} values")
            starts = [sum(lengths[:k]) for k in range(count)]
            cells = [tuple(values[start:start + length]) for start, length in zip(starts, lengths, strict=True)]
        elif len(values) != count:
            raise ValueError(f"context column {column.key!r} has {len(values)} values for {count} requests")
        else:
            cells = values
        contexts[column.key] = _spread(rows, cells, n)
    tags = None
    if message.session_tags:
        tags = [None] * n
        seen: set[str] = set()
        for column in message.session_tags:
            if column.key in seen:
                raise ValueError(f"session tag column {column.key!r} is given twice")
            seen.add(column.key)
            rows = _rows(column.rows, f"session tag column {column.key!r}", n)
            count = len(rows) if rows else n
            if len(column.values) != count:
                raise ValueError(f"session tag column {column.key!r} has {len(column.values)} values for "
                                 f"{count} requests")
            for row, value in zip(rows or range(n), column.values, strict=True):
                tags[row] = {**(tags[row] or {}), column.key: value}
    return (principals, actions, resources, contexts, [o or None for o in owners] if any(owners) else None, tags)


def _rows(rows, what: str, n: int) -> list[int]:
    rows = list(rows)
    if rows and (rows[-1] >= n or rows != sorted(set(rows))):
        raise ValueError(f"{what}: rows must be ascending positions below {n}")
    return rows


def _spread(rows: list[int], cells: list, n: int) -> list:
    if not rows:
        return cells
    spread: list = [None] * n
    for row, cell in zip(rows, cells, strict=True):
        spread[row] = cell
    return spread


def outcome(read, argument):
    """What reading gives: the columns, or the kind and message of the error."""
    try:
        return read(argument)
    except (ValueError, DecodeError) as exc:
        return type(exc).__name__, str(exc)


def decode_like_upb(encoded: bytes):
    """The oracle: upb parses (or refuses), then ``upb_columns`` reads."""
    try:
        message = pb.RequestColumns.FromString(encoded)
    except DecodeError:
        return "DecodeError"
    return outcome(upb_columns, message)


def decode_with_wire(encoded: bytes):
    found = outcome(_wire.request_columns, encoded)
    return "DecodeError" if isinstance(found, tuple) and found[0] == "DecodeError" else found


# ---------------------------------------------------------------- messages upb writes

texts = st.one_of(st.sampled_from(TEXTS), st.text(max_size=6))
numbers = st.one_of(st.integers(0, 8), st.sampled_from([2**32 - 1]))


@st.composite
def row_lists(draw, n: int, broken: bool) -> list[int]:
    """Ascending positions below n; in a broken message, now and then out of order, repeated or out of range."""
    rows = sorted(draw(st.sets(st.integers(0, max(0, n - 1)), max_size=n))) if n else []
    if broken and draw(st.booleans()):
        rows = draw(st.lists(numbers, max_size=4))
    return rows


def counts(draw, count: int, broken: bool) -> int:
    return max(0, count + (draw(st.sampled_from([0, 1, -1])) if broken else 0))


@st.composite
def context_columns(draw, n: int, broken: bool) -> pb.ContextColumn:
    rows = draw(row_lists(n, broken))
    count = counts(draw, len(rows) if rows else n, broken)
    is_list = draw(st.booleans())
    column = pb.ContextColumn(key=draw(st.sampled_from(KEYS)), rows=rows, is_list=is_list)
    if is_list:
        lengths = draw(st.lists(st.integers(0, 3), min_size=count, max_size=count))
        column.lengths.extend(lengths)
        size = counts(draw, sum(lengths), broken)
        column.values.extend(draw(st.lists(texts, min_size=size, max_size=size)))
    else:
        column.values.extend(draw(st.lists(texts, min_size=count, max_size=count)))
    return column


@st.composite
def tag_columns(draw, n: int, broken: bool) -> pb.SessionTagsColumn:
    rows = draw(row_lists(n, broken))
    count = counts(draw, len(rows) if rows else n, broken)
    return pb.SessionTagsColumn(key=draw(st.sampled_from(TAGS)), rows=rows,
                                values=draw(st.lists(texts, min_size=count, max_size=count)))


@st.composite
def messages(draw) -> pb.RequestColumns:
    """RequestColumns as clients send them; one in three broken: a column that does not fit, a key twice."""
    n = draw(st.integers(0, 6))
    broken = draw(st.integers(0, 2)) == 0

    def column(values, may_differ=True):
        size = counts(draw, n, broken and may_differ)
        return draw(st.lists(st.one_of(st.sampled_from(values), texts), min_size=size, max_size=size))

    message = pb.RequestColumns(principals=column(PRINCIPALS, False), actions=column(ACTIONS),
                                resources=column(RESOURCES))
    if draw(st.booleans()):
        message.resource_accounts.extend(column(["", "111122223333", "444455556666"]))
    unique = None if broken else (lambda column: column.key)
    message.context.extend(draw(st.lists(context_columns(n, broken), max_size=4, unique_by=unique)))
    message.session_tags.extend(draw(st.lists(tag_columns(n, broken), max_size=3, unique_by=unique)))
    return message


@given(messages())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_message_reads_as_upb_and_the_specification_read_it(message):
    encoded = message.SerializeToString()
    assert decode_with_wire(encoded) == decode_like_upb(encoded)
    assert outcome(convert.request_columns, message) == outcome(upb_columns, message)


THREE = {"principals": [ROLE] * 3, "actions": ["s3:GetObject"] * 3, "resources": ["*"] * 3}
COLUMN_FAULTS = {  # one fault each; the specification's message is the one the client gets
    "a column short": pb.RequestColumns(principals=[ROLE] * 3, actions=["s3:GetObject"] * 2, resources=["*"] * 3),
    "resource_accounts short": pb.RequestColumns(**THREE, resource_accounts=["", "1"]),
    "resource_accounts all empty": pb.RequestColumns(**THREE, resource_accounts=["", "", ""]),
    "a context key twice": pb.RequestColumns(**THREE, context=[pb.ContextColumn(key="k", values=["a"] * 3)] * 2),
    "a context key in two spellings": pb.RequestColumns(**THREE, context=[
        pb.ContextColumn(key="k", values=["a"] * 3), pb.ContextColumn(key="K", values=["a"] * 3)]),
    "rows repeated": pb.RequestColumns(**THREE, context=[pb.ContextColumn(key="k", rows=[1, 1], values=["a", "b"])]),
    "rows descending": pb.RequestColumns(**THREE, context=[pb.ContextColumn(key="k", rows=[2, 1], values=["a"] * 2)]),
    "a row past the end": pb.RequestColumns(**THREE, context=[pb.ContextColumn(key="k", rows=[3], values=["a"])]),
    "values short": pb.RequestColumns(**THREE, context=[pb.ContextColumn(key="k", rows=[0, 2], values=["a"])]),
    "lengths short": pb.RequestColumns(**THREE, context=[
        pb.ContextColumn(key="k", is_list=True, lengths=[1, 1], values=["a", "b"])]),
    "lengths adding up wrong": pb.RequestColumns(**THREE, context=[
        pb.ContextColumn(key="k", is_list=True, lengths=[1, 1, 1], values=["a", "b"])]),
    "lengths of 2**32 - 1": pb.RequestColumns(**THREE, context=[
        pb.ContextColumn(key="k", is_list=True, lengths=[2**32 - 1, 1, 0], values=["a", "b"])]),
    "a tag twice": pb.RequestColumns(**THREE, session_tags=[pb.SessionTagsColumn(key="t", values=["a"] * 3)] * 2),
    "tag rows repeated": pb.RequestColumns(**THREE, session_tags=[
        pb.SessionTagsColumn(key="t", rows=[0, 0], values=["a", "b"])]),
    "tag values short": pb.RequestColumns(**THREE, session_tags=[pb.SessionTagsColumn(key="t", values=["a"])]),
    "tags on a role": pb.RequestColumns(**THREE, session_tags=[pb.SessionTagsColumn(key="t", rows=[1], values=["a"])]),
}


@pytest.mark.parametrize("message", COLUMN_FAULTS.values(), ids=COLUMN_FAULTS.keys())
def test_each_column_fault_reads_as_the_specification_reads_it(message):
    assert outcome(convert.request_columns, message) == outcome(upb_columns, message)


def test_each_distinct_text_becomes_one_string():
    principals, actions, resources, contexts, _, _ = _wire.request_columns(pb.RequestColumns(
        principals=[ROLE] * 3, actions=["s3:GetObject"] * 3, resources=[ROLE, "*", "*"],
        context=[pb.ContextColumn(key="k", values=[ROLE, "*", ROLE])]).SerializeToString())
    assert principals[0] is principals[1] is principals[2] is resources[0] is contexts["k"][0] is contexts["k"][2]
    assert resources[1] is resources[2] is contexts["k"][1]


def test_the_reader_is_the_compiled_module():
    """A build that left it out must not pass (there is no Python reader to fall back on)."""
    assert _wire.__file__.endswith(".so")


# ---------------------------------------------------------------- encodings upb never writes

def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def length_delimited(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


utf8 = st.one_of(st.sampled_from(PRINCIPALS + ACTIONS + RESOURCES + TEXTS), st.text(max_size=5)).map(str.encode)
raw_bytes = st.one_of(utf8, st.binary(max_size=5), st.sampled_from(
    [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x00b", b"\xe2\x82"]))
wire_numbers = st.one_of(st.integers(0, 8), st.sampled_from([2**32 - 1, 2**32, 2**32 + 3, 2**63, 2**64 - 1]))


@st.composite
def unknown_fields(draw, numbers_known: tuple[int, ...], depth: int = 0) -> bytes:
    """A field the message does not know, or a known one sent with another wire type; groups nest."""
    field = draw(st.one_of(st.sampled_from(numbers_known), st.sampled_from([7, 15, 16, 99, 2**29 - 1])))
    wire = draw(st.sampled_from([0, 1, 2, 3, 5] if depth < 2 else [0, 1, 2, 5]))
    if wire == 0:
        return tag(field, 0) + varint(draw(wire_numbers))
    if wire in (1, 5):
        return tag(field, wire) + bytes(8 if wire == 1 else 4)
    if wire == 2:
        return length_delimited(field, draw(st.binary(max_size=6)))
    inner = b"".join(draw(st.lists(unknown_fields(numbers_known, depth + 1), max_size=2)))
    return tag(field, 3) + inner + tag(field, 4)


@st.composite
def number_fields(draw, field: int) -> bytes:
    """Repeated uint32: packed, one by one, or both."""
    values = draw(st.lists(wire_numbers, max_size=4))
    if draw(st.booleans()):
        return length_delimited(field, b"".join(map(varint, values)))
    return b"".join(tag(field, 0) + varint(v) for v in values)


@st.composite
def column_encodings(draw, kind: str) -> bytes:
    """A ContextColumn (key 1, values 2, is_list 3, lengths 4, rows 5) or a SessionTagsColumn (key 1, rows 2,
    values 3), fields in any order, any of them repeated."""
    values_field, rows_field = (2, 5) if kind == "context" else (3, 2)
    pieces = st.one_of(
        st.builds(length_delimited, st.just(1), raw_bytes),
        st.builds(length_delimited, st.just(values_field), raw_bytes),
        number_fields(rows_field),
        unknown_fields((1, 2, 3, 4, 5)),
        *([st.builds(lambda v: tag(3, 0) + varint(v), wire_numbers), number_fields(4)] if kind == "context" else []),
    )
    return b"".join(draw(st.lists(pieces, max_size=7)))


@st.composite
def hostile_encodings(draw) -> bytes:
    """RequestColumns fields in any order and number, with unknown ones between; then maybe cut short,
    a byte changed, or bytes added."""
    pieces = st.one_of(
        st.builds(length_delimited, st.sampled_from([1, 2, 3, 4]), raw_bytes),
        st.builds(length_delimited, st.just(5), column_encodings("context")),
        st.builds(length_delimited, st.just(6), column_encodings("tags")),
        unknown_fields((1, 2, 3, 4, 5, 6)),
    )
    encoded = b"".join(draw(st.lists(pieces, max_size=10)))
    change = draw(st.sampled_from(["none", "none", "cut", "byte", "append"]))
    if change == "cut" and encoded:
        encoded = encoded[:draw(st.integers(0, len(encoded) - 1))]
    elif change == "byte" and encoded:
        at = draw(st.integers(0, len(encoded) - 1))
        encoded = encoded[:at] + bytes([draw(st.integers(0, 255))]) + encoded[at + 1:]
    elif change == "append":
        encoded += draw(st.binary(min_size=1, max_size=6))
    return encoded


@given(hostile_encodings())
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_hostile_encoding_reads_as_upb_reads_it(encoded):
    assert decode_with_wire(encoded) == decode_like_upb(encoded)


@given(st.binary(max_size=64))
@settings(max_examples=1000, deadline=None)
def test_any_bytes_read_as_upb_reads_them(encoded):
    assert decode_with_wire(encoded) == decode_like_upb(encoded)


def group(depth: int, field: int = 7) -> bytes:
    return tag(field, 3) * depth + tag(field, 4) * depth


HOSTILE = {
    "truncated varint": tag(7, 0) + b"\xff",
    "varint of ten bytes": tag(7, 0) + b"\xff" * 9 + b"\x01",
    "varint of eleven bytes": tag(7, 0) + b"\xff" * 10 + b"\x01",
    "tag of six bytes": b"\xf8\x80\x80\x80\x80\x00\x00",
    "tag past 32 bits": b"\xf8\xff\xff\xff\x1f\x00",
    "field number 0": tag(0, 0) + b"\x00",
    "wire type 6": tag(7, 6),
    "wire type 7": tag(7, 7),
    "end of a group never started": tag(7, 4),
    "group ended by another field": tag(7, 3) + tag(8, 4),
    "group left open": tag(7, 3) + tag(8, 0) + b"\x01",
    "field number 0 in a group": tag(7, 3) + tag(0, 0) + b"\x00" + tag(0, 3) + tag(0, 4) + tag(7, 4),
    "a group ended as field 0": tag(7, 3) + tag(0, 4),
    "group crossing a column's end": length_delimited(5, tag(9, 3)) + tag(9, 4),
    "100 nested groups": group(100),
    "101 nested groups": group(101),
    "99 nested groups in a column": length_delimited(5, group(99)),
    "100 nested groups in a column": length_delimited(5, group(100)),
    "length past the end": tag(1, 2) + varint(5) + b"ab",
    "length of 2**32 + 1": tag(1, 2) + varint(2**32 + 1) + b"ab",
    "length of 2**63": tag(1, 2) + varint(2**63),
    "length in six bytes": tag(1, 2) + b"\x81\x80\x80\x80\x80\x00a",
    "fixed64 cut short": tag(7, 1) + b"1234",
    "fixed32 cut short": tag(7, 5) + b"12",
    "packed rows cut short": length_delimited(5, length_delimited(5, b"\x80")),
    "invalid UTF-8": length_delimited(1, b"\xff"),
    "an encoded surrogate": length_delimited(1, b"\xed\xa0\x80"),
    "an overlong NUL": length_delimited(1, b"\xc0\x80"),
    "past U+10FFFF": length_delimited(1, b"\xf4\x90\x80\x80"),
    "invalid UTF-8 in a context key": length_delimited(5, length_delimited(1, b"k\xff")),
    "invalid UTF-8 in a tag value": length_delimited(6, length_delimited(3, b"\xe2\x82")),
    "invalid UTF-8 in an unknown field": length_delimited(9, b"\xff"),
    "a known field as a group": tag(1, 3) + tag(1, 4),
    "a column as a group": tag(5, 3) + length_delimited(1, b"k") + tag(5, 4),
    "is_list packed": length_delimited(5, length_delimited(3, b"\x01")),
    "rows as fixed32": length_delimited(5, tag(5, 5) + b"\x01\x00\x00\x00"),
    "embedded NULs": b"".join(length_delimited(f, b"a\x00b") for f in (1, 2, 3)),
    "rows and lengths past 32 bits": b"".join(length_delimited(f, b"x") for f in (1, 2, 3)) + length_delimited(
        5, length_delimited(1, b"k") + tag(3, 0) + varint(2**33) + tag(4, 0) + varint(2**32 + 1)
        + tag(5, 0) + varint(2**32) + length_delimited(2, b"v")),
    "fields out of order, key given twice": length_delimited(5, length_delimited(2, b"v") + length_delimited(1, b"a")
                                                             + length_delimited(1, b"b")) + b"".join(
        length_delimited(f, b"x") for f in (3, 2, 1)),
}


@pytest.mark.parametrize("encoded", HOSTILE.values(), ids=HOSTILE.keys())
def test_each_hostile_shape_reads_as_upb_reads_it(encoded):
    assert decode_with_wire(encoded) == decode_like_upb(encoded)


def test_the_hostile_shapes_include_both_outcomes():
    """The table is worth its name: upb refuses some of these, reads others."""
    outcomes = {name: decode_like_upb(encoded) == "DecodeError" for name, encoded in HOSTILE.items()}
    assert outcomes["101 nested groups"] and not outcomes["100 nested groups"] and not outcomes["embedded NULs"]


def test_colliding_texts_are_read_all_the_same():
    """Thousands of distinct texts (the table of distinct texts grows, and runs of slots collide)."""
    many = [f"arn:aws:iam::111122223333:role/r{i}" for i in range(5000)]
    message = pb.RequestColumns(principals=many, actions=many[::-1], resources=["*"] * len(many))
    assert _wire.request_columns(message.SerializeToString()) == upb_columns(message)


# ---------------------------------------------------------------- decisions

@pytest.fixture(scope="module")
def compiled():
    return CompiledPolicySet(POLICIES)


def expected(principal, action, resource, context, owner, tags) -> DecisionKind | RequestError:
    """The reference's decision for one row of the oracle's columns, or the error Request.create raises."""
    try:
        request = Request.create(principal, action, resource, context, owner, tags)
    except RequestError as exc:
        return exc
    return reference.evaluate(POLICIES, request).decision


@given(messages())
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_decisions_from_the_reader_are_the_specifications_and_the_references(compiled, message):
    wanted = outcome(upb_columns, message)
    found = outcome(convert.request_columns, message)
    assert found == wanted
    if isinstance(found, tuple) and isinstance(found[0], str):
        return  # the batch is refused, as it was
    principals, actions, resources, contexts, owners, tags = found
    decide = lambda columns: compiled.evaluate_columns(*columns[:5], session_tags=columns[5])  # noqa: E731
    decided = outcome(decide, found)
    if isinstance(decided, tuple):  # refused whole (a context key that is empty), as the specification's is
        assert decided == outcome(decide, wanted)
        return
    assert decided == decide(wanted)
    for i in range(len(principals)):
        context = {key: column[i] for key, column in contexts.items() if column[i] is not None}
        want = expected(principals[i], actions[i], resources[i], context, owners[i] if owners else None,
                        tags[i] if tags else None)
        if isinstance(want, RequestError):
            assert decided[i] is DecisionKind.IMPLICIT_DENY and decided.errors.get(i), (i, want)
        else:
            assert decided[i] is want, (i, want, decided.errors.get(i))


def test_module_passes_under_the_debug_allocator_subprocess():
    """PYTHONMALLOC=debug fills freed memory, so a string read after the reader let it go gives a wrong answer."""
    assert_passes_under_debug_allocator("tests/test_wire_decode.py")
