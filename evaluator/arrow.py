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
import pyarrow.compute as pc

from . import _engine
from .compile import CHUNK, CompiledPolicies
from .decision import BY_CODE, Decision, failed
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
        column = column.dictionary_decode()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise SchemaError(f"column {name!r} must hold strings, not {column.type}")
    return column.cast(pa.string())


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
    fields = []
    for field, values in _struct_fields(batch, "context", "context keys"):
        key_id = compiled.key_ids.get(field.name.lower())
        if key_id is None:
            continue  # no policy tests this key
        # Two spellings of one key may be two fields; a row that gives both fails alone.
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            fields.append((key_id, field.name, values.cast(pa.string()), False))
        elif pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
            fields.append((key_id, field.name, values.cast(pa.list_(pa.string())), True))
        else:
            raise SchemaError(f"context key {field.name!r} must hold strings or lists of strings, not {values.type}")
    return fields


def _tag_fields(compiled: CompiledPolicies, batch: pa.RecordBatch) -> list[tuple[int, str, pa.Array]]:
    """The ``session_tags`` struct (one string field per tag key) as the converter takes it."""
    fields = []
    for field, values in _struct_fields(batch, "session_tags", "tag keys"):
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise SchemaError(f"session tag {field.name!r} must hold strings, not {values.type}")
        fields.append((compiled.key_ids.get(PRINCIPAL_TAG + field.name.lower(), -1), field.name,
                       values.cast(pa.string())))
    return fields


def _tags_twice(tag_fields: list[tuple[int, str, pa.Array]], n: int) -> pa.Array:
    """Per row: whether it gives one session tag under two spellings (tested by a policy or not, as
    ``Request.create`` checks every tag)."""
    twice = pa.array([False] * n, pa.bool_())
    spellings: dict[str, list[pa.Array]] = {}
    for _, name, values in tag_fields:
        spellings.setdefault(name.lower(), []).append(values)
    for group in spellings.values():
        if len(group) > 1:
            given = pa.array([0] * n, pa.int8())
            for values in group:
                given = pc.add(given, values.is_valid().cast(pa.int8()))
            twice = pc.or_(twice, pc.greater(given, 1))
    return twice


def _places(conversion, principals: pa.Array, resources: pa.DictionaryArray, accounts: pa.Array | None,
            n_policies: int) -> tuple[list[pa.Array], dict[int, str], pa.Array]:
    """Per row: its caller row, identity profile, resource profile and grants offset, asking the converter
    once per distinct principal, resource, owner, (policy, owner) and (caller, policy); why the principals
    that fail are denied, by principal number; and each row's principal number."""
    by_principal = principals.dictionary_encode()
    distinct = by_principal.dictionary.to_pylist()
    callers, identities, own_owners = [], [], []
    reasons: dict[int, str] = {len(distinct): "request principal must not be null"}
    for number, principal in enumerate(distinct):
        try:
            row = conversion.caller_row(principal)
        except ValueError as exc:
            row, reasons[number] = _engine.ROW_FAILED, str(exc)
        callers.append(row)
        identities.append(conversion.identity_profile(row) if row >= 0 else 0)
        own_owners.append(conversion.own_owner(row) if row >= 0 else 0)
    principal_of_row = by_principal.indices.fill_null(len(distinct))
    caller, identity, own = (pc.take(pa.array([*values, fill], pa.int32()), principal_of_row)
                             for values, fill in ((callers, _engine.ROW_FAILED), (identities, 0), (own_owners, 0)))
    if conversion.every_place is not None:  # one answer for all: no Python call per distinct resource
        every_policy, every_owner = conversion.every_place
        policy = pa.nulls(len(resources), pa.int64()).fill_null(every_policy)
        owner = pa.nulls(len(resources), pa.int64()).fill_null(every_owner)
    else:
        places = [conversion.resource_place(resource) for resource in resources.dictionary.to_pylist()]
        resource_of_row = resources.indices.fill_null(0)
        policy = pc.take(pa.array([place[0] for place in places] or [0], pa.int64()), resource_of_row)
        owner = pc.take(pa.array([place[1] for place in places] or [0], pa.int64()), resource_of_row)
    if accounts is not None:
        by_account = accounts.dictionary_encode()
        classes = [conversion.owner_class(account) for account in by_account.dictionary.to_pylist()]
        owner = pc.if_else(accounts.is_valid(), pc.take(pa.array(classes or [0], pa.int64()),
                                                        by_account.indices.fill_null(0)), owner)
    owner = pc.if_else(pc.less(owner, 0), own.cast(pa.int64()), owner)
    keys = pc.add(pc.multiply(pc.add(policy, 1), 1 << 32), owner)
    unique = pc.unique(keys)
    profiles = [conversion.resource_profile((key >> 32) - 1, key & 0xFFFFFFFF) for key in unique.to_pylist()]
    resource_profile = pc.take(pa.array(profiles, pa.int32()), pc.index_in(keys, unique))
    placed = pc.and_(pc.greater_equal(policy, 0), pc.greater_equal(caller, 0))
    grant_keys = pc.if_else(placed, pc.add(pc.multiply(caller.cast(pa.int64()), n_policies), policy), -1)
    unique = pc.unique(grant_keys)
    offsets = [-1 if key < 0 else conversion.grants(key // n_policies, key % n_policies) for key in unique.to_pylist()]
    grants = pc.take(pa.array(offsets, pa.int32()), pc.index_in(grant_keys, unique))
    return [caller, identity, resource_profile, grants], reasons, principal_of_row


def _decide(compiled: CompiledPolicies, batch: pa.RecordBatch, explain: bool,
            usage: StatementUsage | None) -> pa.RecordBatch:
    principals = _strings(batch, "principal")
    actions, resources = _strings(batch, "action"), _strings(batch, "resource")
    accounts = _strings(batch, "resource_account", required=False)
    conversion = _engine.converter(compiled._engine, compiled, batch.num_rows)
    actions, resources = actions.dictionary_encode(), resources.dictionary_encode()  # matched once each
    (callers, identities, resource_profiles, offsets), reasons, principal_of_row = _places(
        conversion, principals, resources, accounts, compiled._engine.n_policies)
    missing = pc.or_(actions.is_null(), resources.is_null())
    tag_fields = _tag_fields(compiled, batch)
    tags_twice = _tags_twice(tag_fields, batch.num_rows)
    refused = pc.or_(missing, tags_twice)
    if refused.true_count:
        callers = pc.if_else(refused, pa.scalar(_engine.ROW_FAILED, pa.int32()), callers)
    converted = _engine.convert_arrow(conversion, callers, identities, resource_profiles, offsets, actions, resources,
                                      accounts, _context_fields(compiled, batch), tag_fields)
    failing = pc.less(callers, 0)
    if failing.true_count:
        for row in pc.indices_nonzero(failing).to_pylist():
            number = principal_of_row[row].as_py()
            if number in reasons:
                converted.errors[row] = reasons[number]
            elif missing[row].as_py():
                converted.errors[row] = "request action and resource must not be null"
            elif tags_twice[row].as_py():
                converted.errors[row] = "a session tag is given twice (tag keys ignore case)"
            else:
                converted.unknown[row] = principals[row].as_py()
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
    """``_decide_text`` on ``threads`` slices of the batch at once (each with its own usage tally, added
    to ``usage`` after), the results put back in order."""
    if threads <= 1 or batch.num_rows < 2 * CHUNK:
        return _decide_text(compiled, batch, explain, usage)
    step = -(-batch.num_rows // threads)
    starts = range(0, batch.num_rows, step)
    tallies = [None if usage is None else StatementUsage(compiled) for _ in starts]
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda start, tally: _decide_text(compiled, batch.slice(start, step), explain, tally),
                              starts, tallies))
    for tally in tallies:
        if tally is not None:
            usage.merge(tally)
    return pa.RecordBatch.from_arrays([pa.concat_arrays([part.column(i) for part in parts])
                                       for i in range(parts[0].num_columns)], schema=parts[0].schema)


def _decide_text(compiled: CompiledPolicies, batch: pa.RecordBatch, explain: bool,
                 usage: StatementUsage | None) -> pa.RecordBatch:
    """``_decide``, after checking that every string is UTF-8 (Arrow does not check what it is handed): a
    row with text that is not fails alone, as a lone surrogate does on the other paths."""
    if _valid_text(batch.columns):
        return _decide(compiled, batch, explain, usage)
    bad = _rows_with_invalid_text(batch)
    keep = pa.array([row not in bad for row in range(batch.num_rows)])
    decided = _decide(compiled, batch.filter(keep), explain, usage).to_pylist()
    failure = dict(failed("request text is not valid UTF-8").to_json(), statements=[], missing_keys=[])
    rows, at = [], 0
    for row in range(batch.num_rows):
        if row in bad:
            rows.append({name: failure.get(name) for name in _output_schema(explain).names})
        else:
            rows.append(decided[at])
            at += 1
    return pa.RecordBatch.from_pylist(rows, schema=_output_schema(explain))


def _valid_text(arrays) -> bool:
    """Whether every string is UTF-8; a struct's fields are checked one by one (pyarrow checks a wide
    struct as a whole many times slower)."""
    for array in arrays:
        if pa.types.is_struct(array.type):
            if not _valid_text(array.flatten()):
                return False
            continue
        try:
            array.validate(full=True)
        except pa.ArrowInvalid:
            return False
    return True


def _rows_with_invalid_text(batch: pa.RecordBatch) -> set[int]:
    """The rows whose strings (also inside the context and session_tags structs) are not UTF-8."""
    bad: set[int] = set()

    def visit(array: pa.Array, rows: list[int]) -> None:
        if pa.types.is_struct(array.type):
            for child in array.flatten():
                visit(child, rows)
        elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            offsets = array.offsets.to_pylist()
            visit(array.values, [rows[i] for i in range(len(array)) for _ in range(offsets[i + 1] - offsets[i])])
        elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            for row, value in zip(rows, array.view(pa.binary() if pa.types.is_string(array.type)
                                                     else pa.large_binary()).to_pylist(), strict=True):
                if value is not None:
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        bad.add(row)

    for column in batch.columns:
        visit(column, list(range(batch.num_rows)))
    return bad


def _output_schema(explain: bool) -> pa.Schema:
    fields = [("decision", pa.dictionary(pa.int8(), pa.string())), ("error", pa.string())]
    if explain:
        fields += [("decided_by", pa.string()), ("statements", pa.list_(STATEMENT)),
                   ("missing_keys", pa.list_(pa.string()))]
    return pa.schema(fields)
