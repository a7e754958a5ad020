"""Scale-out batch evaluation on Spark: read request logs, decide every request on the executors, write decisions.

``run_spark`` reads JSON Lines (``.jsonl``, ``.ndjson``, ``.json``, each optionally ``.gz``) and Parquet
(``.parquet``) with Spark, decides each Arrow batch with ``evaluate_arrow`` inside ``DataFrame.mapInArrow``,
and writes the requests with their decisions as Parquet or JSON Lines. A ``PolicySource`` carries the
policies as text, so executors need no shared filesystem, and each Python worker compiles them once.

Context typing. Every context key gets one type for the whole run: ``list<string>`` when any row gives it a
JSON array (or a text that begins with ``[``, which Spark's reader cannot tell from an array without
parsing every row again), else ``string``. Numbers and booleans become their JSON text (``300``,
``true``); a JSON null is an absent key. In a list key, a single value becomes a one-element list, which
every condition operator treats alike; a policy variable (``${key}``) needs a single value, so keys used
in variables should not hold lists. Keys that differ only in case are one key, named as most rows spell
it. A row that cannot be read as a request (not a JSON object, a context that is not an object, a key
given twice) is denied with an ``error``, as is a request the evaluator cannot decide; neither fails the
job.

Session tags. A row's ``session_tags`` (an object of tag keys to strings: the tags of an assumed-role
session) become the ``session_tags`` struct that ``evaluate_arrow`` reads, one string field per tag key of
the run, keys that differ only in case being one field named as most rows spell it. A ``session_tags``
that is not an object of strings is the row's problem, worded as ``batch.readers`` words it (``bad
session tags: ...``); a key named twice in one object has its last value, as Python's ``json`` reads it,
and a row that gives one tag key in two spellings is denied as the evaluator denies it. Tags on a
principal that is not a session are the evaluator's error for that row.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    IntegerType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from iam_evaluator.arrow import STATEMENT

from .policies import BatchEvaluator, PolicySource
from .readers import _Invalid, _session_tags

REQUEST_FIELDS = ("principal", "action", "resource", "resource_account")
DECISIONS = ("Allow", "ExplicitDeny", "ImplicitDeny")
_CONTEXT_TEXT = "_context_json"  # the context as JSON text, until it is typed
_TAGS_TEXT = "_session_tags_json"  # the session tags as JSON text, until they are typed
_PROBLEM = "_problem"  # why a row is not a request (null for a readable one)
_TAGS_CHECK = "_session_tags_check"  # session tags the executors check (null: an object of strings)
_HIDDEN = (_PROBLEM, _TAGS_CHECK)  # columns the executors read but do not write
_CORRUPT = "_corrupt_line"
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
_TEXT_MAP = MapType(StringType(), StringType())
_ENTRY = ArrayType(StructType([StructField("tag", BooleanType()), StructField("key", StringType()),
                               StructField("value", StringType())]))
_JSON_STRING = r'"(?:[^"\\]++|\\.)*+"'
_TAG = rf'{_JSON_STRING}\s*+:\s*+{_JSON_STRING}\s*+'
_STRING_OBJECT = rf'\A\s*+\{{\s*+(?:{_TAG}(?:,\s*+{_TAG})*+)?+\}}\s*+\z'  # JSON text of an object of strings

_RESULT_FIELDS = [StructField("decision", StringType()), StructField("error", StringType())]
_EXPLAIN_FIELDS = [
    StructField("decided_by", StringType()),
    StructField("statements", ArrayType(StructType([
        StructField("policy", StringType()), StructField("index", IntegerType()),
        StructField("sid", StringType()), StructField("effect", StringType())]))),
    StructField("missing_keys", ArrayType(StringType())),
]
_RESULT_SCHEMA = pa.schema([("decision", pa.string()), ("error", pa.string())])
_EXPLAIN_SCHEMA = pa.schema([*_RESULT_SCHEMA, ("decided_by", pa.string()), ("statements", pa.list_(STATEMENT)),
                             ("missing_keys", pa.list_(pa.string()))])


def run_spark(policies: PolicySource, inputs: Sequence[str], output: str, explain: bool = False,
              spark: SparkSession | None = None, keep: Sequence[str] = ()) -> dict:
    """Decide every request of ``inputs`` and write them with their decisions to ``output``.

    ``output`` is a directory of Spark part files: Parquet when its name ends in ``.parquet``, else JSON
    Lines (gzip when it ends in ``.gz``); it must not exist yet. ``keep`` names input fields copied to the
    output beside the request (e.g. an event id to join on): as text from JSON Lines, as stored in Parquet.
    Without ``spark``, the active session is used, or a light ``local[2]`` one (under ``spark-submit``,
    one with the submitted settings) that is stopped at the end. Returns the rows, the count of each
    decision and the errors.
    """
    if not inputs:
        raise ValueError("no inputs to read")
    clashes = set(keep) & {*REQUEST_FIELDS, "context", "session_tags",
                           *(f.name for f in _RESULT_FIELDS + _EXPLAIN_FIELDS)}
    if clashes:
        raise ValueError(f"cannot keep {', '.join(sorted(clashes))}: the output has columns of that name")
    policies.evaluator()  # bad policies fail here, before Spark reads anything
    session, own_session = (spark, False) if spark is not None else _session()
    try:
        requests = _typed_requests(_read_requests(session, list(inputs), list(keep)))
        fields = [f for f in requests.schema.fields if f.name not in _HIDDEN]
        decided = requests.mapInArrow(partial(_decide_batches, policies, explain),
                                      StructType(fields + _RESULT_FIELDS + (_EXPLAIN_FIELDS if explain else [])))
        parquet = output.rstrip("/").endswith(".parquet")
        if parquet:
            decided.write.mode("errorifexists").parquet(output)
        else:
            decided.write.mode("errorifexists").json(output, compression="gzip" if output.endswith(".gz") else None)
        return _summary(session, output, parquet)
    finally:
        if own_session:
            session.stop()


def _session() -> tuple[SparkSession, bool]:
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    builder = SparkSession.builder.appName("iam-eval batch")
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # set by spark-submit, whose master and settings then apply
        builder = (builder.master("local[2]").config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "2"))
    return builder.getOrCreate(), True


# ------------------------------------------------------------------ reading

def _input_format(path: str) -> str:
    name = path.rstrip("/").lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.removesuffix(".gz").endswith(_JSON_SUFFIXES):
        return "json"
    raise ValueError(f"{path}: cannot tell the format from the name: JSON Lines must end in .jsonl, .ndjson or "
                     ".json (optionally .gz), Parquet in .parquet; a glob such as logs/*.jsonl.gz names a folder")


def _read_requests(spark: SparkSession, inputs: list[str], keep: list[str]) -> DataFrame:
    """The inputs as keep…, principal, action, resource, resource_account (text), the context and the
    session tags as JSON text, and the problem of each row."""
    by_format: dict[str, list[str]] = {}
    for path in inputs:
        by_format.setdefault(_input_format(path), []).append(path)
    frames = []
    if "json" in by_format:
        frames.append(_read_json(spark, by_format["json"], keep))
    if "parquet" in by_format:
        frames.append(_read_parquet(spark, by_format["parquet"], keep, as_text=len(by_format) > 1))
    requests = frames[0]
    for frame in frames[1:]:
        requests = requests.unionByName(frame)
    return requests


def _read_json(spark: SparkSession, paths: list[str], keep: list[str]) -> DataFrame:
    # Every field is read as text: strings as they are, anything else as its JSON text, so no type that
    # Spark would infer (and merge across rows) stands between the log and the request.
    names = [*keep, *REQUEST_FIELDS, "context", "session_tags"]
    schema = StructType([StructField(name, StringType()) for name in names] + [StructField(_CORRUPT, StringType())])
    lines = spark.read.schema(schema).option("columnNameOfCorruptRecord", _CORRUPT).json(paths)
    not_object = F.concat(F.lit("not a JSON object: "), F.substring(_CORRUPT, 1, 200))
    return lines.select(*keep, *REQUEST_FIELDS, F.col("context").alias(_CONTEXT_TEXT),
                        F.col("session_tags").alias(_TAGS_TEXT),
                        F.when(F.col(_CORRUPT).isNotNull(), not_object).alias(_PROBLEM))


def _read_parquet(spark: SparkSession, paths: list[str], keep: list[str], as_text: bool) -> DataFrame:
    table = spark.read.option("mergeSchema", "true").parquet(*paths)
    types = {field.name: field.dataType for field in table.schema.fields}
    missing = [name for name in ("principal", "action", "resource", *keep) if name not in types]
    if missing:
        raise ValueError(f"Parquet input {', '.join(paths)} lacks the column(s) {', '.join(missing)}")
    kept = [F.col(name).cast(StringType()).alias(name) if as_text else F.col(name) for name in keep]
    requested = [F.col(name).cast(StringType()).alias(name) if name in types else F.lit(None).cast(StringType())
                 .alias(name) for name in REQUEST_FIELDS]
    return table.select(*kept, *requested, _json_text(types, "context").alias(_CONTEXT_TEXT),
                        _json_text(types, "session_tags").alias(_TAGS_TEXT),
                        F.lit(None).cast(StringType()).alias(_PROBLEM))


def _json_text(types: dict, name: str) -> Column:
    """A Parquet struct, map or JSON text column as JSON text; a struct's null fields and a map's null
    values are absent keys."""
    column_type = types.get(name)
    if column_type is None:
        return F.lit(None).cast(StringType())
    if isinstance(column_type, StructType):
        return F.to_json(name)
    if isinstance(column_type, MapType):
        return F.to_json(F.map_filter(name, lambda key, value: value.isNotNull()))
    if isinstance(column_type, StringType):  # JSON text, as batch.readers.write_requests_parquet writes context
        return F.col(name)
    raise ValueError(f"Parquet column {name!r} must be a struct, a map or JSON text, not {column_type.simpleString()}")


# ------------------------------------------------------------------ context and session tags typing

def _typed_requests(requests: DataFrame) -> DataFrame:
    """Replace the context text by a struct with one field per key, and the session tags text by a struct
    with one string field per tag key (the typing rules are in the module docstring); one Spark job finds
    the keys of both."""
    values = F.from_json(F.col(_CONTEXT_TEXT), _TEXT_MAP)
    tags = _last_wins(F.from_json(F.col(_TAGS_TEXT), _TEXT_MAP))
    found = (requests.select(F.explode(F.concat(_entries(values, False), _entries(tags, True))).alias("entry"))
             .select("entry.*").groupBy("tag", "key")
             .agg(F.count(F.lit(1)).alias("rows"), F.max(F.col("value").startswith("[")).alias("listed")).collect())
    spellings: dict[bool, dict[str, list[tuple[int, str]]]] = {False: {}, True: {}}
    listed: dict[str, bool] = {}
    for row in found:
        if row.key or row.tag:  # an empty context key is a row's problem, not a field
            folded = row.key.lower()
            spellings[row.tag].setdefault(folded, []).append((-row.rows, row.key))
            if not row.tag:
                listed[folded] = listed.get(folded, False) or bool(row.listed)
    fields = [_context_field(values, [spelling for _, spelling in sorted(spellings[False][key])], listed[key])
              for key in sorted(spellings[False])]
    tag_fields = [F.coalesce(*(tags[spelling] for _, spelling in sorted(spellings[True][key])))
                  .alias(min(spellings[True][key])[1]) for key in sorted(spellings[True])]
    check = F.when(F.col(_TAGS_TEXT).isNotNull() & (tags.isNull() | ~F.col(_TAGS_TEXT).rlike(_STRING_OBJECT)),
                   F.col(_TAGS_TEXT))
    problem = F.coalesce(F.col(_PROBLEM), _context_problem(values), F.when(check.isNull(), _tags_problem(tags)))
    columns = [name for name in requests.columns if name not in (_CONTEXT_TEXT, _TAGS_TEXT, _PROBLEM)]
    context = [F.when(values.isNotNull(), F.struct(*fields)).alias("context")] if fields else []
    session_tags = [F.when(F.size(tags) > 0, F.struct(*tag_fields)).alias("session_tags")] if tag_fields else []
    return requests.select(*columns, *context, *session_tags, problem.alias(_PROBLEM), check.alias(_TAGS_CHECK))


def _entries(values: Column, tag: bool) -> Column:
    """The (tag, key, value) of each entry of a map column; an empty array for a null map."""
    entries = F.transform(F.map_entries(values), lambda entry: F.struct(
        F.lit(tag).alias("tag"), entry["key"].alias("key"), entry["value"].alias("value")))
    return F.coalesce(entries, F.array().cast(_ENTRY))


def _context_field(values: Column, spellings: list[str], listed: bool) -> Column:
    """One key's values, as text or as a list of texts, named by its most common spelling."""
    if not listed:
        return F.coalesce(*(values[spelling] for spelling in spellings)).alias(spellings[0])
    lists = []
    for spelling in spellings:
        array = F.from_json(F.col(_CONTEXT_TEXT), StructType([StructField(spelling, ArrayType(StringType()))]))
        single = F.when(values[spelling].isNotNull(), F.array(values[spelling]))
        lists.append(F.coalesce(array.getField(spelling), single))
    return F.coalesce(*lists).alias(spellings[0])


def _context_problem(values: Column) -> Column:
    keys = F.map_keys(values)
    return (F.when(F.col(_CONTEXT_TEXT).isNotNull() & values.isNull(),
                   F.lit("request context must be a JSON object of context keys"))
            .when(F.size(F.array_distinct(F.transform(keys, F.lower))) < F.size(keys),
                  F.lit("request context gives a key twice (key names are case-insensitive)"))
            .when(F.array_contains(keys, ""), F.lit("request context keys must be non-empty")))


def _last_wins(tags: Column) -> Column:
    """A map read from JSON text that names a key more than once, with the key's last value (as Python's
    ``json`` reads it, and so the local readers)."""
    keys = F.map_keys(tags)
    last = F.filter(F.map_entries(tags), lambda entry, at: F.array_position(
        F.slice(keys, at + 2, F.size(keys)), entry["key"]) == 0)
    return F.when(F.size(F.array_distinct(keys)) < F.size(keys), F.map_from_entries(last)).otherwise(tags)


def _tags_problem(tags: Column) -> Column:
    """A tag key given twice in one row (tag keys ignore case), worded as the evaluator words it."""
    keys = F.map_keys(tags)
    folded = F.transform(keys, F.lower)
    again = F.filter(keys, lambda key, at: F.array_position(F.slice(folded, 1, at), F.lower(key)) > 0)
    return F.when(F.size(F.array_distinct(folded)) < F.size(keys),
                  F.concat(F.lit("session tag '"), F.element_at(again, 1),
                           F.lit("' is given twice (tag keys ignore case)")))


def _checked_tags(text: str) -> str | None:
    """What ``batch.readers`` says of a record's ``session_tags`` given as this JSON text (text that is not
    JSON is a string), or None when they are an object of strings."""
    try:
        tags = json.loads(text)
    except (ValueError, RecursionError):
        tags = text
    try:
        _session_tags(tags)
    except _Invalid as error:
        return f"{error.kind}: {error.detail}"
    return None


# ------------------------------------------------------------------ deciding (on the executors)

def _decide_batches(policies: PolicySource, explain: bool,
                    batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    evaluator = policies.evaluator()  # compiled once per Python worker, which Spark reuses
    for batch in batches:
        if batch.num_rows:
            decisions = _decide(evaluator, batch, explain)
            names = [name for name in batch.schema.names if name not in _HIDDEN]
            yield pa.RecordBatch.from_arrays([batch.column(name) for name in names] + decisions.columns,
                                             names + decisions.schema.names)


def _decide(evaluator: BatchEvaluator, batch: pa.RecordBatch, explain: bool) -> pa.RecordBatch:
    """The decision columns of every row of ``batch``, in row order; rows that are not requests are denied."""
    problems = _problems(batch)
    if problems.null_count == len(problems):
        return _result(evaluator.evaluate(batch, explain), explain)
    readable = pc.is_null(problems)
    unreadable = pc.indices_nonzero(pc.invert(readable))
    rows = pc.indices_nonzero(readable)
    return _in_row_order([(unreadable, _denied(problems.take(unreadable).to_pylist(), explain)),
                          (rows, _result(evaluator.evaluate(batch.take(rows), explain), explain))])


def _problems(batch: pa.RecordBatch) -> pa.Array:
    """Each row's problem: found by Spark, or in session tags that are not plainly an object of strings."""
    problems = batch.column(_PROBLEM)
    checks = batch.column(_TAGS_CHECK)
    if checks.null_count == len(checks):
        return problems
    found = problems.to_pylist()
    for row in pc.indices_nonzero(pc.is_valid(checks)).to_pylist():
        if found[row] is None:
            found[row] = _checked_tags(checks[row].as_py())
    return pa.array(found, pa.string())


def _result(decisions: pa.RecordBatch, explain: bool) -> pa.RecordBatch:
    """Decisions as the output holds them: the decision as plain text."""
    columns = [decisions.column(0).dictionary_decode(), *decisions.columns[1:]]
    return pa.RecordBatch.from_arrays(columns, schema=_EXPLAIN_SCHEMA if explain else _RESULT_SCHEMA)


def _denied(errors: list[str], explain: bool) -> pa.RecordBatch:
    """Rows that are not requests: denied, with why."""
    n = len(errors)
    columns = [pa.array(["ImplicitDeny"] * n, pa.string()), pa.array(errors, pa.string())]
    if explain:
        columns += [pa.array(["error"] * n, pa.string()),
                    pa.array([[]] * n, pa.list_(STATEMENT)), pa.array([[]] * n, pa.list_(pa.string()))]
    return pa.RecordBatch.from_arrays(columns, schema=_EXPLAIN_SCHEMA if explain else _RESULT_SCHEMA)


def _in_row_order(groups: list[tuple[pa.Array, pa.RecordBatch]]) -> pa.RecordBatch:
    """Put the decisions of row groups back in the order of the rows they came from."""
    rows = pa.concat_arrays([row_numbers.cast(pa.int64()) for row_numbers, _ in groups])
    decisions = pa.Table.from_batches([result for _, result in groups]).take(pc.sort_indices(rows))
    return decisions.combine_chunks().to_batches()[0]


# ------------------------------------------------------------------ summary

def _summary(spark: SparkSession, output: str, parquet: bool) -> dict:
    """Counted from what was written, so a retried task is never counted twice."""
    written = spark.read.parquet(output) if parquet else spark.read.schema("decision string, error string").json(output)
    counts = written.groupBy("decision").agg(F.count(F.lit(1)).alias("rows"), F.count("error").alias("errors"))
    decisions = dict.fromkeys(DECISIONS, 0)
    errors = 0
    for row in counts.collect():
        decisions[row.decision] = row.rows
        errors += row.errors
    return {"rows": sum(decisions.values()), "decisions": decisions, "errors": errors, "output": output}
