"""Arrow-native evaluation: decide a ``pyarrow`` RecordBatch or Table of requests.

The one contract every batch runner uses (local processes, Spark executors).
Input columns: ``principal``, ``action``, ``resource`` (strings), optionally
``resource_account`` (string, null: from the ARN), ``context`` (a struct with
one field per context key, each a string or a list of strings, null where a
request lacks the key) and ``session_tags`` (a struct with one string field per
tag key, for assumed-role session principals: see ``facts``). Strings are read
from the Arrow buffers directly: the hot path creates no Python object per row;
only distinct principals and failing rows become Python strings.

Output columns: ``decision`` (dictionary-encoded Allow / ExplicitDeny /
ImplicitDeny) and ``error`` (null, or why the request could not be evaluated
and was denied); with ``explain``, also ``decided_by``, ``statements`` (list of
policy, index, sid, effect) and ``missing_keys``.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from . import _engine
from .compile import CHUNK, CompiledPolicies
from .decision import BY_CODE, Decision
from .facts import PRINCIPAL_TAG
from .usage import StatementUsage

DECISIONS = pa.array([str(kind) for kind in BY_CODE[1:]])
"""The ``decision`` column's dictionary: the decision of code c at index c - 1."""
STATEMENT = pa.struct([("policy", pa.string()), ("index", pa.int32()), ("sid", pa.string()),
                       ("effect", pa.string())])
_INDICES = bytes.maketrans(
    bytes([_engine.ALLOW, _engine.EXPLICIT_DENY, _engine.IMPLICIT_DENY, _engine.FAILED, 0]),
    bytes([_engine.ALLOW - 1, _engine.EXPLICIT_DENY - 1] + [_engine.IMPLICIT_DENY - 1] * 3))
"""Engine codes → indices into DECISIONS: a request that could not be evaluated is denied, and so is one
left without a code (0, which no decision has: fail closed)."""


class SchemaError(ValueError):
    """The input lacks a required column or has one of the wrong type."""


def _strings(batch: pa.RecordBatch, name: str, required: bool = True) -> pa.Array | None:
    index = batch.schema.get_field_index(name)
    if index < 0:
        if required:
            raise SchemaError(f"requests need a {name!r} column (have {', '.join(batch.schema.names)})")
        return None
    column = batch.column(index)
    if pa.types.is_dictionary(column.type):
        column = _checked(column, name).dictionary_decode()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise SchemaError(f"column {name!r} must hold strings, not {column.type}")
    return _plain(column, pa.string(), name)


def _checked(array: pa.Array, name: str) -> pa.Array:
    """``array`` once its offsets and indices are checked, before one of Arrow's kernels reads it by them (as
    a hostile array's would run outside its buffers); its text is checked later, row by row, by the
    engine, which reads the plain string and list<string> layouts it is given by their offsets itself."""
    try:
        array.view(_as_binary(array.type)).validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
        raise SchemaError(f"column {name!r} is not a well-formed Arrow array: {exc}") from None
    return array


def _as_binary(type_: pa.DataType) -> pa.DataType:
    """The type of the same layout with binary in place of text (whose validation would check UTF-8)."""
    if pa.types.is_string(type_):
        return pa.binary()
    if pa.types.is_large_string(type_):
        return pa.large_binary()
    if pa.types.is_list(type_):
        return pa.list_(_as_binary(type_.value_type))
    if pa.types.is_large_list(type_):
        return pa.large_list(_as_binary(type_.value_type))
    if pa.types.is_dictionary(type_):
        return pa.dictionary(type_.index_type, _as_binary(type_.value_type))
    return type_


def _struct_fields(batch: pa.RecordBatch, name: str, what: str) -> list[tuple[pa.Field, pa.Array]]:
    """The fields of the struct column ``name`` (none when the column is absent), each with its values."""
    index = batch.schema.get_field_index(name)
    if index < 0:
        return []
    column = batch.column(index)
    if not pa.types.is_struct(column.type):
        raise SchemaError(f"column {name!r} must be a struct of {what}, not {column.type}")
    return list(zip(column.type, column.flatten(), strict=True))


def _context_fields(compiled: CompiledPolicies, batch: pa.RecordBatch) -> list[tuple[int, str, pa.Array, bool]]:
    """The context struct's fields as the converter takes them: those no policy tests too (key id -1), when
    they hold text, so that a row is refused for what ``Request.create`` refuses (text that is not UTF-8,
    a null item in a list, a key spelled twice). A field no policy tests may also hold numbers or booleans,
    which are context values too; a field of any other type is refused."""
    fields = []
    for field, values in _struct_fields(batch, "context", "context keys"):
        key_id = compiled.key_ids.get(field.name.lower(), -1)
        # Two spellings of one key may be two fields; a row that gives both fails alone.
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            fields.append((key_id, field.name, _plain(values, pa.string(), field.name), False))
        elif (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)) \
                and _context_scalar(values.type.value_type):
            fields.append((key_id, field.name, _plain(values, pa.list_(pa.string()), field.name), True))
        elif key_id >= 0 or not _context_scalar(values.type):
            raise SchemaError(f"context key {field.name!r} must hold strings or lists of strings, not {values.type}")
    return fields


def _context_scalar(type_: pa.DataType) -> bool:
    """Whether ``type_`` holds what a context value or list item may be: text, a number or a boolean."""
    return any(check(type_) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer,
                                          pa.types.is_floating, pa.types.is_boolean, pa.types.is_null))


def _plain(values: pa.Array, type_: pa.DataType, name: str) -> pa.Array:
    """``values`` in the layout the engine reads (string, or list<string>), converted once checked."""
    return values if values.type == type_ else _checked(values, name).cast(type_)


def _tag_fields(compiled: CompiledPolicies, batch: pa.RecordBatch) -> list[tuple[int, str, pa.Array]]:
    """The ``session_tags`` struct (one string field per tag key) as the converter takes it."""
    fields = []
    for field, values in _struct_fields(batch, "session_tags", "tag keys"):
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise SchemaError(f"session tag {field.name!r} must hold strings, not {values.type}")
        fields.append((compiled.key_ids.get(PRINCIPAL_TAG + field.name.lower(), -1), field.name,
                       _plain(values, pa.string(), field.name)))
    return fields


def _decide(compiled: CompiledPolicies, batch: pa.RecordBatch, explain: bool,
            usage: StatementUsage | None) -> pa.RecordBatch:
    conversion = _engine.converter(compiled._engine, compiled, batch.num_rows)
    converted = _engine.convert_arrow(conversion, _strings(batch, "principal"), _strings(batch, "action"),
                                      _strings(batch, "resource"), _strings(batch, "resource_account", required=False),
                                      _context_fields(compiled, batch), _tag_fields(compiled, batch))
    errors = dict(converted.errors)
    if usage is not None:
        usage.tally(converted)
    if explain:
        return _explained(compiled._explain(converted, near_miss_limit=0))  # its rows list no near misses
    if usage is None:
        compiled._engine.evaluate_range(converted, 0, converted.n)
    codes = converted.codes_view()
    row = codes.find(_engine.FAILED)
    while row >= 0:  # a condition that could not read its value: say which (rare)
        if row not in errors:
            errors[row] = compiled._failure(compiled._engine.explain_range(converted, row, row + 1)[0][3])
        row = codes.find(_engine.FAILED, row + 1)
    decision = pa.DictionaryArray.from_arrays(
        pa.Array.from_buffers(pa.int8(), len(codes), [None, pa.py_buffer(codes.translate(_INDICES))]),
        DECISIONS)
    return pa.RecordBatch.from_arrays([decision, _errors(len(codes), errors)], ["decision", "error"])


def _errors(n: int, errors: dict[int, str]) -> pa.Array:
    if not errors:
        return pa.nulls(n, pa.string())
    messages: list[str | None] = [None] * n
    for row, message in errors.items():
        messages[row] = message
    return pa.array(messages, pa.string())


def _explained(decisions: list[Decision]) -> pa.RecordBatch:
    decision = pa.DictionaryArray.from_arrays(pa.array([d.decision.code - 1 for d in decisions], pa.int8()),
                                              DECISIONS)
    return pa.RecordBatch.from_arrays([
        decision,
        pa.array([d.error for d in decisions], pa.string()),
        pa.array([d.decided_by for d in decisions], pa.string()),
        pa.array([[{"policy": s.policy, "index": s.index, "sid": s.sid, "effect": str(s.effect)}
                   for s in d.statements] for d in decisions], pa.list_(STATEMENT)),
        pa.array([list(d.missing_keys) for d in decisions], pa.list_(pa.string())),
    ], ["decision", "error", "decided_by", "statements", "missing_keys"])


def evaluate_arrow(compiled: CompiledPolicies, requests: pa.RecordBatch | pa.Table, explain: bool = False,
                   usage: StatementUsage | None = None, threads: int = 1) -> pa.RecordBatch | pa.Table:
    """Decide every row of ``requests``; the result has one row per request, in order.

    With ``usage``, also count which statements and action patterns the requests used. ``threads``
    share each record batch: each converts and decides a slice of it (the rows are read from Arrow's
    buffers without the GIL, as they are decided).
    """
    if isinstance(requests, pa.Table):
        batches = [_decide_in_slices(compiled, batch, explain, usage, threads) for batch in requests.to_batches()]
        return pa.Table.from_batches(batches, schema=_output_schema(explain))
    return _decide_in_slices(compiled, requests, explain, usage, threads)


def _decide_in_slices(compiled: CompiledPolicies, batch: pa.RecordBatch, explain: bool,
                      usage: StatementUsage | None, threads: int) -> pa.RecordBatch:
    """``_decide`` on ``threads`` slices of the batch at once (each with its own usage tally, added
    to ``usage`` after), the results put back in order."""
    if threads <= 1 or batch.num_rows < 2 * CHUNK:
        return _decide(compiled, batch, explain, usage)
    step = -(-batch.num_rows // threads)
    starts = range(0, batch.num_rows, step)
    tallies = [None if usage is None else StatementUsage(compiled) for _ in starts]
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda start, tally: _decide(compiled, batch.slice(start, step), explain, tally),
                              starts, tallies))
    for tally in tallies:
        if tally is not None:
            usage.merge(tally)
    return pa.RecordBatch.from_arrays([pa.concat_arrays([part.column(i) for part in parts])
                                       for i in range(parts[0].num_columns)], schema=parts[0].schema)


def _output_schema(explain: bool) -> pa.Schema:
    fields = [("decision", pa.dictionary(pa.int8(), pa.string())), ("error", pa.string())]
    if explain:
        fields += [("decided_by", pa.string()), ("statements", pa.list_(STATEMENT)),
                   ("missing_keys", pa.list_(pa.string()))]
    return pa.schema(fields)
