"""Request logs → Arrow record batches, the input of the evaluator's Arrow API.

Reads JSON Lines (plain or gzip), Parquet and CloudTrail files, and folders of them, and streams batches of at
most ``batch_rows`` rows, so a log of any size is replayed in bounded memory. A record that cannot become a
request is never dropped silently: ``Problems`` counts it and keeps its location, and ``strict=True`` stops at
it instead.

Every batch has these columns:

* ``principal``, ``action``, ``resource``: string, never null.
* ``resource_account``: string; null means "the account in the resource ARN" (the evaluator's default).
* ``context``: a struct with one field per context key present in the batch, named as the input spells it;
  ``string``, or ``list<string>`` when the key holds a list in any row of the batch (its single values then
  become one-element lists, counted as a note); null where a row lacks the key. JSON booleans and numbers
  become their text.
* ``session_tags``: a struct with one string field per tag key present in the batch (the tags of an
  assumed-role session, which the evaluator reads as the session's ``aws:PrincipalTag/*``); null where a row's
  session lacks the tag. Every tag is kept, whatever ``context_keys`` says: a tag on a principal that is not a
  session is itself an error the evaluator reports.
* ``source``: where the record is: ``path:line`` (JSON Lines, from 1), ``path#row`` (Parquet, from 0),
  ``path#Records[i]`` (CloudTrail).
* ``resource_fallback``: true where the record named no resource and ``"*"`` stands in (CloudTrail only).

Inputs: JSON Lines hold one request object a line, with exactly the fields of the evaluator's JSON requests
(``session_tags``, when present, an object of tag keys to strings). Parquet files hold the columns
``principal``, ``action``, ``resource``, optionally ``resource_account``, ``context`` (a struct, or JSON text)
and ``session_tags`` (a struct of string fields); other columns are not read. CloudTrail files are mapped
record by record by ``cloudtrail.request_from_record``. Folders are walked depth first in name order, taking
the files named ``*.json``, ``*.jsonl``, ``*.ndjson`` (each also ``.gz``) and ``*.parquet``, and skipping
CloudTrail digests.

``context_keys`` (lower-case key names) keeps only those keys in the context, for a reader that knows which keys
its policies test: Parquet then reads only their columns. Records are checked whole all the same, and a key
spelled two ways (case aside) is kept whatever its name, so that the evaluator fails the request.

``split_requests`` cuts logs into parts that ``PartReader`` reads on their own, so that worker processes can each
read a share: a JSON Lines file in ranges of whole lines, a Parquet file in runs of row groups, anything else
(gzip, CloudTrail) whole.

Problem kinds: ``bad JSON``, ``not an object``, ``unknown field``, ``missing field``, ``wrong type``,
``bad context``, ``bad session tags`` (a record), ``unreadable file`` (the rest of a file), and the CloudTrail
kinds of ``cloudtrail``.
"""
from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import re
import tempfile
import zlib
from array import array
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from iam_evaluator import RequestError
from iam_evaluator._request import context_text

from . import cloudtrail

DEFAULT_BATCH_ROWS = 8192
DEFAULT_PART_BYTES = 16 << 20
DEFAULT_PART_ROWS = 16384
DEFAULT_ROW_GROUP_ROWS = 131072

UNREADABLE_FILE = "unreadable file"
WIDENED = "context values widened to list<string>"
SKIPPED_FILE = "files skipped in folders (name is not a log's)"

_REQUIRED = ("principal", "action", "resource")
_FIELDS = frozenset((*_REQUIRED, "resource_account", "context", "session_tags"))
_LOG_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".jsonl.gz", ".ndjson.gz", ".json.gz")
_DIGEST_FOLDER = "CloudTrail-Digest"  # signatures of the log files, not events
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_RECORDS_OPENING = r'\s*\{\s*"Records"\s*:\s*\['
_CLOUDTRAIL_START = re.compile(_RECORDS_OPENING.encode())  # sniffs a file's first bytes
_RECORDS_START = re.compile(_RECORDS_OPENING)  # finds where the records begin in its text
_JSON_WHITESPACE = re.compile(r"[ \t\r\n]*")
_CHUNK_CHARS = 1 << 20
_STRING_LIST = pa.list_(pa.string())
_DICTIONARY_COLUMNS = ("principal", "action")  # few distinct values: as Parquet stores them, for PartReader
_JSON = json.JSONDecoder()
_UNREADABLE_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError, pa.ArrowException)


class Problems:
    """Records that could not become requests, for the replay's report: a count per kind, and the first
    ``keep`` as (location, message). ``notes`` counts changes made to readable records (widened values)."""

    def __init__(self, keep: int = 100) -> None:
        self.keep = keep
        self.counts: Counter[str] = Counter()
        self.first: list[tuple[str, str]] = []
        self.notes: Counter[str] = Counter()

    def add(self, kind: str, location: str, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.first) < self.keep:
            self.first.append((location, f"{kind}: {detail}"))

    def note(self, kind: str, count: int = 1) -> None:
        self.notes[kind] += count

    def merge(self, later: Problems) -> None:
        """Add the problems of the records that come after this object's (another part of the input)."""
        self.counts.update(later.counts)
        self.notes.update(later.notes)
        self.first += later.first[:self.keep - len(self.first)]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        lines = [f"{self.total} problem(s)"]
        lines += [f"  {count} {kind}" for kind, count in self.counts.most_common()]
        lines += [f"  {location}: {message}" for location, message in self.first]
        if self.total > len(self.first):
            lines.append(f"  ... and {self.total - len(self.first)} more")
        lines += [f"note: {count} {kind}" for kind, count in self.notes.most_common()]
        return "\n".join(lines)


class MalformedRecord(ValueError):
    """Raised under ``strict=True`` at the first record that cannot become a request."""

    def __init__(self, kind: str, location: str, detail: str) -> None:
        super().__init__(f"{location}: {kind}: {detail}")
        self.kind = kind
        self.location = location
        self.detail = detail

    def __reduce__(self) -> tuple:  # rebuilt from its parts when a worker process sends it
        return MalformedRecord, (self.kind, self.location, self.detail)


class _Invalid(Exception):
    """What is wrong with one record (or a whole Parquet file), before its location is known."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def read_requests(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    batch_rows: int = DEFAULT_BATCH_ROWS,
    problems: Problems | None = None,
    strict: bool = False,
    context_keys: Collection[str] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream the requests of the logs at ``paths`` (files, or folders walked in name order) as record batches.

    The format is read from the content: Parquet by its magic number, gzip by its magic number or a ``.gz``
    name, CloudTrail by its ``{"Records": [`` opening; anything else is JSON Lines. Unreadable records go
    to ``problems``, or raise ``MalformedRecord`` when ``strict``.
    """
    problems = Problems() if problems is None else problems
    builder = _BatchBuilder(batch_rows, problems, strict, context_keys)
    for path in _log_files(_existing(paths), problems):
        yield from _read_file(path, builder)
    if len(builder):
        yield builder.flush()


def _existing(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    named = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(path) for path in paths]
    missing = [str(path) for path in named if not path.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    return named


@dataclass(frozen=True)
class LogPart:
    """A share of the input that can be read on its own: a whole file (``stop`` 0), the lines in bytes
    [start, stop) of a JSON Lines file (``first``: the number of the first), or row groups [start, stop) of a
    Parquet file (``first``: the number of its first row; ``rows``: how many)."""

    path: str
    start: int = 0
    stop: int = 0
    first: int = 1
    rows: int | None = None
    parquet: bool = False


def split_requests(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], problems: Problems,
                   part_bytes: int = DEFAULT_PART_BYTES, part_rows: int = DEFAULT_PART_ROWS,
                   footers: dict[str, pq.FileMetaData] | None = None) -> Iterator[LogPart]:
    """The parts of the logs at ``paths``, in input order: JSON Lines in about ``part_bytes``, Parquet in runs
    of row groups of at least ``part_rows`` rows. A JSON Lines file is read through to find its line breaks.
    ``footers`` (by path) receives the Parquet footers read, for a ``PartReader``."""
    for path in _log_files(_existing(paths), problems):
        yield from _split_file(path, part_bytes, part_rows, footers)


def _split_file(path: Path, part_bytes: int, part_rows: int,
                footers: dict[str, pq.FileMetaData] | None) -> Iterator[LogPart]:
    """A file that cannot be split (gzip, CloudTrail, or unreadable: its reader then says why) is one part."""
    name = str(path)
    try:
        with open(path, "rb") as probe:
            head = probe.read(4096)
        if head[:4] == _PARQUET_MAGIC or path.suffix == ".parquet":
            metadata = pq.read_metadata(name)
            _check_parquet_schema(metadata.schema.to_arrow_schema(), metadata.num_rows)
    except (_Invalid, *_UNREADABLE_ERRORS):
        yield LogPart(name)
        return
    if head[:4] == _PARQUET_MAGIC or path.suffix == ".parquet":
        if footers is not None:
            footers[name] = metadata
        yield from _row_group_parts(name, metadata, part_rows)
    elif head[:2] == _GZIP_MAGIC or path.suffix == ".gz" or _CLOUDTRAIL_START.match(head):
        yield LogPart(name)
    else:
        yield from _line_parts(name, part_bytes)


def _row_group_parts(name: str, metadata: pq.FileMetaData, part_rows: int) -> Iterator[LogPart]:
    start = first = rows = 0
    for group in range(metadata.num_row_groups):
        rows += metadata.row_group(group).num_rows
        if rows >= part_rows or group == metadata.num_row_groups - 1:
            yield LogPart(name, start, group + 1, first, rows, parquet=True)
            start, first, rows = group + 1, first + rows, 0


def _line_parts(name: str, part_bytes: int) -> Iterator[LogPart]:
    """Ranges of about ``part_bytes`` that end at a line break (or the end of the file)."""
    start, line = 0, 1
    buffer = bytearray(part_bytes)  # one buffer for the whole file: fresh memory per read costs more than reading
    with open(name, "rb") as stream:
        while size := stream.readinto(buffer):
            cut = buffer.rfind(b"\n", 0, size) + 1
            line_breaks = buffer.count(b"\n", 0, cut)
            if not cut:  # a line longer than a part: on to its end
                cut = size
                while more := stream.read(part_bytes):
                    end = more.find(b"\n")
                    if end >= 0:
                        cut, line_breaks = cut + end + 1, 1
                        break
                    cut += len(more)
            yield LogPart(name, start, start + cut, line)
            line += line_breaks
            start += cut
            stream.seek(start)  # the next part starts after the last line break read


class PartReader:
    """Reads ``LogPart``s as record batches (none spans two parts), keeping the last Parquet file open: its
    footer, with a column per context key, can be large (``footers``: those already read, by path).

    Parquet principals and actions stay dictionary-encoded as the file has them: deciding, counting and
    writing them again all cost less so."""

    def __init__(self, batch_rows: int = DEFAULT_BATCH_ROWS, strict: bool = False,
                 context_keys: Collection[str] | None = None,
                 footers: Mapping[str, pq.FileMetaData] | None = None) -> None:
        self.batch_rows = batch_rows
        self.strict = strict
        self.context_keys = None if context_keys is None else frozenset(context_keys)
        self.footers = footers or {}
        self._parquet: _ParquetLog | None = None

    def read(self, part: LogPart, problems: Problems) -> Iterator[pa.RecordBatch]:
        builder = _BatchBuilder(self.batch_rows, problems, self.strict, self.context_keys)
        if part.parquet:
            yield from self._read_row_groups(part, builder)
        elif part.stop:
            yield from self._read_lines(part, builder)
        else:
            yield from _read_file(Path(part.path), builder)
        if len(builder):
            yield builder.flush()

    def _read_lines(self, part: LogPart, builder: _BatchBuilder) -> Iterator[pa.RecordBatch]:
        try:
            with open(part.path, "rb") as stream:
                stream.seek(part.start)
                lines = stream.read(part.stop - part.start)
        except OSError as error:
            builder.reject(UNREADABLE_FILE, f"{part.path}:{part.first}",
                           f"{type(error).__name__}: {error} (bytes {part.start} to {part.stop} are not read)")
            return
        yield from _read_json_lines(io.BytesIO(lines), part.path, builder, part.first)

    def _read_row_groups(self, part: LogPart, builder: _BatchBuilder) -> Iterator[pa.RecordBatch]:
        try:
            if self._parquet is None or self._parquet.name != part.path:
                if self._parquet is not None:
                    self._parquet.close()
                    self._parquet = None
                self._parquet = _ParquetLog(part.path, self.context_keys, self.footers.get(part.path),
                                            dictionaries=True)
            yield from self._parquet.batches(builder, range(part.start, part.stop), part.first)
        except _UNREADABLE_ERRORS as error:
            builder.reject(UNREADABLE_FILE, f"{part.path}#{part.first}",
                           f"{type(error).__name__}: {error} (the rest of rows {part.first} to "
                           f"{part.first + part.rows - 1} is not read)")


def write_requests_parquet(batches: Iterable[pa.RecordBatch], path: str | os.PathLike[str],
                           row_group_rows: int = DEFAULT_ROW_GROUP_ROWS) -> int:
    """Write request batches (e.g. a JSON Lines log read by ``read_requests``) as Parquet; returns the rows.

    The context is a struct with a field per key of the whole stream, ``list<string>`` where any batch holds
    a list (single values then become one-element lists), else ``string``: a reader can then read just the
    keys its policies test; session tags likewise, a struct of a string field per tag key. Those keys are
    known only at the end of a stream, so the batches are first spooled to a scratch folder beside ``path``.
    Runs of row groups are the parts that workers share (``split_requests``); each row group has a column per
    key, so with many keys, fewer and larger row groups keep the footer small.
    """
    path = Path(path)
    key_types: dict[str, dict[str, pa.DataType]] = {"context": {}, "session_tags": {}}  # per struct column
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.spool-", dir=path.parent) as scratch:
        spooled = []
        for number, batch in enumerate(batches):
            structs = [name for name in key_types if batch.schema.field(name).type.num_fields]
            spooled.append(Path(scratch) / f"{number:08d}.parquet")
            pq.write_table(pa.Table.from_batches([batch.select([*_REQUIRED, "resource_account", *structs])]),
                           spooled[-1])
            for name in structs:
                for field in batch.schema.field(name).type:
                    if key_types[name].get(field.name) != _STRING_LIST:
                        key_types[name][field.name] = field.type
        struct_types = {name: pa.struct(sorted(types.items())) for name, types in key_types.items() if types}
        schema = pa.schema([
            pa.field("principal", pa.string(), nullable=False),
            pa.field("action", pa.string(), nullable=False),
            pa.field("resource", pa.string(), nullable=False),
            pa.field("resource_account", pa.string()),
            *(pa.field(name, struct_type) for name, struct_type in struct_types.items()),  # none empty: Parquet
        ])
        rows = 0
        # No stored Arrow schema nor statistics for the keys: with a field per key they would double the footer
        # that every reader decodes.
        with pq.ParquetWriter(path, schema, store_schema=False,
                              write_statistics=[*_REQUIRED, "resource_account"]) as writer:
            pending = schema.empty_table()
            for spool in spooled:
                for batch in pq.read_table(spool).to_batches():
                    columns = [batch.column(name) for name in (*_REQUIRED, "resource_account")]
                    for name, struct_type in struct_types.items():
                        values = batch.column(name) if name in batch.schema.names else None
                        columns.append(_conformed_context(values, batch.num_rows, struct_type))
                    pending = pa.concat_tables([pending, pa.table(columns, schema=schema)])
                    rows += batch.num_rows
                full = pending.num_rows - pending.num_rows % row_group_rows
                if full:
                    writer.write_table(pending.slice(0, full), row_group_size=row_group_rows)
                    pending = pending.slice(full)
                spool.unlink()
            if pending.num_rows:
                writer.write_table(pending, row_group_size=row_group_rows)
    return rows


def _conformed_context(context: pa.StructArray | None, rows: int, context_type: pa.StructType) -> pa.StructArray:
    """One batch's context (or session tags) with every field of ``context_type``: nulls for keys it lacks,
    lists for widened keys."""
    fields = {} if context is None else dict(zip((field.name for field in context.type), context.flatten(),
                                                 strict=True))
    arrays = []
    absent: dict[pa.DataType, pa.Array] = {}  # one all-null array per type, shared by the keys the batch lacks
    for field in context_type:
        values = fields.get(field.name)
        if values is None:
            values = absent.get(field.type) or absent.setdefault(field.type, pa.nulls(rows, field.type))
        elif _is_list(field.type) and not _is_list(values.type):  # single values of a key that is a list elsewhere
            values = pa.ListArray.from_arrays(pa.array(range(len(values) + 1), pa.int32()), values,
                                              mask=values.is_null())
        arrays.append(values)
    return pa.StructArray.from_arrays(arrays, fields=list(context_type))


def _log_files(paths: list[Path], problems: Problems) -> Iterator[Path]:
    for path in paths:
        yield from _walk(path, problems) if path.is_dir() else (path,)


def _walk(folder: Path, problems: Problems) -> Iterator[Path]:
    """The log files under a folder, depth first in name order, as AWS lays out ``AWSLogs/…/YYYY/MM/DD/``."""
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            if entry.name != _DIGEST_FOLDER:
                yield from _walk(entry, problems)
        elif entry.name.endswith(_LOG_SUFFIXES):
            yield entry
        else:
            problems.note(SKIPPED_FILE)


def _read_file(path: Path, builder: _BatchBuilder) -> Iterator[pa.RecordBatch]:
    """One file's batches; a file that breaks off (truncated gzip, corrupt Parquet) keeps the rows read before."""
    name = str(path)
    try:
        with open(path, "rb") as probe:
            magic = probe.read(4)
        if magic == _PARQUET_MAGIC or path.suffix == ".parquet":
            parquet = _ParquetLog(name, builder.context_keys)
            try:
                yield from parquet.batches(builder)
            finally:
                parquet.close()
            return
        gzipped = magic[:2] == _GZIP_MAGIC or path.suffix == ".gz"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as stream:
            if _CLOUDTRAIL_START.match(stream.peek(4096)):
                yield from _read_cloudtrail(io.TextIOWrapper(stream, encoding="utf-8"), name, builder)
            else:
                yield from _read_json_lines(stream, name, builder)
    except _Invalid as error:
        builder.reject(error.kind, name, error.detail)
    except _UNREADABLE_ERRORS as error:
        builder.reject(UNREADABLE_FILE, name, f"{type(error).__name__}: {error} (the rest of the file is not read)")


def _read_json_lines(stream: IO[bytes], name: str, builder: _BatchBuilder,
                     first_line: int = 1) -> Iterator[pa.RecordBatch]:
    for number, line in enumerate(stream, first_line):
        if line.isspace():
            continue
        try:
            record = _decoded(line)
        except (ValueError, RecursionError) as error:
            builder.reject("bad JSON", f"{name}:{number}", str(error))
            continue
        builder.add_record(record, f"{name}:{number}")
        if builder.full:
            yield builder.flush()


def _decoded(line: bytes) -> Any:
    """``json.loads(line)``, less its encoding detection when the line is plain UTF-8 (as logs are)."""
    if line.startswith(codecs.BOM_UTF8) or b"\0" in line[:4]:  # UTF-8 with a BOM, UTF-16 or UTF-32
        return _text_only(json.loads(line))
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return _text_only(json.loads(line))
    record = _JSON.decode(text)
    return _text_only(record) if "\\u" in text else record  # only an escape can make a lone surrogate


def _text_only(value: Any) -> Any:
    """``value``, unless one of its strings holds a lone surrogate (an escape such as ``\\ud800`` left
    unpaired): that is no text, and would fail the whole batch where it is encoded, so the record is refused
    (``ValueError``) with its line."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"a lone surrogate (\\u{ord(value[error.start]):04x}) is not text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _text_only(key)
            _text_only(item)
    elif isinstance(value, list):
        for item in value:
            _text_only(item)
    return value


def _read_cloudtrail(text: IO[str], name: str, builder: _BatchBuilder) -> Iterator[pa.RecordBatch]:
    for index, record in enumerate(_cloudtrail_records(text)):
        location = f"{name}#Records[{index}]"
        try:
            request = cloudtrail.request_from_record(_text_only(record))
        except cloudtrail.UnmappableRecord as error:
            builder.reject(error.kind, location, error.detail)
            continue
        except ValueError as error:
            builder.reject("bad JSON", location, str(error))
            continue
        builder.add(request.principal, request.action, request.resource, request.resource_account,
                    request.context, None, location, request.resource_fallback)
        if builder.full:
            yield builder.flush()


def _cloudtrail_records(text: IO[str]) -> Iterator[Any]:
    """The elements of a CloudTrail file's ``Records`` array, decoded one at a time: the file is one JSON
    document, and a busy account's can be large."""
    decoder = json.JSONDecoder()
    buffer = text.read(_CHUNK_CHARS)
    start = _RECORDS_START.match(buffer)
    if start is None:
        raise json.JSONDecodeError('expected {"Records": [', buffer, 0)
    position = start.end()
    expect_comma = False
    while True:
        position = _JSON_WHITESPACE.match(buffer, position).end()
        if position == len(buffer):
            more = text.read(_CHUNK_CHARS)
            if not more:
                raise json.JSONDecodeError("the Records array is not closed", buffer, position)
            buffer, position = more, 0
            continue
        if buffer[position] == "]":
            return
        if expect_comma:
            if buffer[position] != ",":
                raise json.JSONDecodeError("expected ',' or ']' between records", buffer, position)
            position += 1
            expect_comma = False
            continue
        while True:
            try:
                record, position = decoder.raw_decode(buffer, position)
                break
            except json.JSONDecodeError:
                more = text.read(_CHUNK_CHARS)
                if not more:
                    raise
                buffer, position = buffer[position:] + more, 0
        expect_comma = True
        yield record


class _KeptKeys:
    """The context keys a reader keeps, as spelled: those its policies test, and every spelling of a key met in two
    (case aside). A request giving both fails, as ``Request.create`` refuses it, and only the evaluator says so."""

    def __init__(self, context_keys: frozenset[str]) -> None:
        self.context_keys = context_keys
        self.seen: set[str] = set()  # the names met, and of those,
        self.kept: set[str] = set()  # the ones kept (set operations in C, not a loop per key)
        self._spellings: dict[str, list[str]] = {}  # a name no policy tests, lower-cased -> its spellings met

    def meet(self, names: Iterable[str]) -> None:
        """Take in names not met before."""
        for name in names:
            self.seen.add(name)
            folded = name.lower()
            if folded in self.context_keys:
                self.kept.add(name)
                continue
            spellings = self._spellings.setdefault(folded, [])
            spellings.append(name)
            if len(spellings) > 1:
                self.kept.update(spellings)


class _ParquetLog:
    """An open Parquet log, its schema checked and the columns to read chosen once: the context struct's
    wanted keys only, or the whole context when it is JSON text (then decoded row by row)."""

    def __init__(self, path: str, context_keys: frozenset[str] | None, metadata: pq.FileMetaData | None = None,
                 dictionaries: bool = False) -> None:
        self.name = path
        self.dictionaries = dictionaries
        self.file = pq.ParquetFile(path, metadata=metadata,
                                   read_dictionary=_DICTIONARY_COLUMNS if dictionaries else None)
        try:
            schema = self.file.schema_arrow
            _check_parquet_schema(schema, self.file.metadata.num_rows)
        except _Invalid:
            self.file.close()
            raise
        self.columns = [column for column in (*_REQUIRED, "resource_account", "context", "session_tags")
                        if column in schema.names and not pa.types.is_null(schema.field(column).type)]
        self.json_context = "context" in self.columns and _is_text(schema.field("context").type)
        if "context" in self.columns and not self.json_context and context_keys is not None:
            self.columns.remove("context")
            names = [field.name for field in schema.field("context").type]
            kept = _KeptKeys(context_keys)
            kept.meet(names)
            self.columns += [f"context.{name}" for name in names if name in kept.kept]

    def batches(self, builder: _BatchBuilder, row_groups: Iterable[int] | None = None,
                first_row: int = 0) -> Iterator[pa.RecordBatch]:
        """One thread: the caller decides how many cores a job uses."""
        for batch in self.file.iter_batches(batch_size=builder.batch_rows, row_groups=row_groups,
                                            columns=self.columns, use_threads=False):
            if self.json_context:
                yield from _add_json_context_rows(batch, self.name, first_row, builder)
            else:
                if len(builder):
                    yield builder.flush()
                converted = _convert_parquet_batch(batch, self.name, first_row, builder, self.dictionaries)
                if converted.num_rows:
                    yield converted
            first_row += batch.num_rows

    def close(self) -> None:
        self.file.close()


def _check_parquet_schema(schema: pa.Schema, rows: int) -> None:
    """``_Invalid`` unless the columns are of types requests can be read from."""
    lost = f"{rows} rows not read"
    for name in _REQUIRED:
        if name not in schema.names:
            raise _Invalid("missing field", f"no column {name!r}: {lost}")
    for name in (*_REQUIRED, "resource_account"):
        column_type = schema.field(name).type if name in schema.names else pa.null()
        if not (_is_text(column_type) or pa.types.is_null(column_type)):
            raise _Invalid("wrong type", f"column {name!r} is {column_type}, not string: {lost}")
    if "context" in schema.names:
        context_type = schema.field("context").type
        if not (_is_text(context_type) or pa.types.is_struct(context_type) or pa.types.is_null(context_type)):
            raise _Invalid("bad context", f"column 'context' is {context_type}, neither a struct nor JSON text: {lost}")
        readable: set[pa.DataType] = set()  # thousands of keys, a few types
        for field in context_type if pa.types.is_struct(context_type) else ():
            if field.type in readable:
                continue
            value_type = field.type.value_type if _is_list(field.type) else field.type
            if not (_is_text(value_type) or _is_scalar(value_type) or pa.types.is_null(value_type)):
                raise _Invalid("bad context", f"context key {field.name!r} is {field.type}: {lost}")
            readable.add(field.type)
    if "session_tags" in schema.names:
        tags_type = schema.field("session_tags").type
        if not (pa.types.is_struct(tags_type) or pa.types.is_null(tags_type)):
            raise _Invalid("bad session tags", f"column 'session_tags' is {tags_type}, not a struct: {lost}")
        for field in tags_type if pa.types.is_struct(tags_type) else ():
            if not (_is_text(field.type) or pa.types.is_null(field.type)):
                raise _Invalid("bad session tags", f"session tag {field.name!r} is {field.type}, not string: {lost}")


def _is_text(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        return _is_text(data_type.value_type)
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type)


def _is_list(data_type: pa.DataType) -> bool:
    return pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_list_view(data_type)


def _is_scalar(data_type: pa.DataType) -> bool:
    return pa.types.is_boolean(data_type) or pa.types.is_integer(data_type) or pa.types.is_floating(data_type)


def _add_json_context_rows(batch: pa.RecordBatch, name: str, first_row: int,
                           builder: _BatchBuilder) -> Iterator[pa.RecordBatch]:
    for offset, record in enumerate(batch.to_pylist()):
        location = f"{name}#{first_row + offset}"
        tags = record.get("session_tags")
        if tags is not None:  # a struct row: null where the session lacks the tag
            record["session_tags"] = {key: value for key, value in tags.items() if value is not None}
        context = record.get("context")
        if context is not None:
            try:
                record["context"] = _text_only(json.loads(context))
            except (ValueError, RecursionError) as error:
                builder.reject("bad context", location, f"context is not JSON: {error}")
                continue
        builder.add_record(record, location)
        if builder.full:
            yield builder.flush()


def _convert_parquet_batch(batch: pa.RecordBatch, name: str, first_row: int, builder: _BatchBuilder,
                           dictionaries: bool = False) -> pa.RecordBatch:
    """A Parquet batch in the batch schema, without the rows that lack a principal, action or resource;
    with ``dictionaries``, dictionary-encoded columns stay so."""
    rows = batch.num_rows
    required = {field: _text(batch.column(field), dictionaries) for field in _REQUIRED}
    missing = {field: blank for field, column in required.items() if (blank := _blank(column)) is not None}
    if missing:
        blanks = list(missing.values())
        any_missing = blanks[0]
        for blank in blanks[1:]:
            any_missing = pc.or_(any_missing, blank)
        for index in pc.indices_nonzero(any_missing).to_pylist():
            fields = [field for field, blank in missing.items() if blank[index].as_py()]
            builder.reject("missing field", f"{name}#{first_row + index}", f"{', '.join(fields)} null or empty")
    account = (_text(batch.column("resource_account"), False) if "resource_account" in batch.schema.names
               else pa.nulls(rows, pa.string()))
    context = (_normalised_context(batch.column("context")) if "context" in batch.schema.names
               else _empty_context(rows))
    tags = (_normalised_context(batch.column("session_tags")) if "session_tags" in batch.schema.names
            else _empty_context(rows))
    numbers = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), rows), start=first_row - 1)
    sources = pc.binary_join_element_wise(f"{name}#", numbers.cast(pa.string()), "")
    converted = _request_batch(required["principal"], required["action"], required["resource"], account,
                               context, tags, sources, pa.repeat(False, rows))
    return converted.filter(pc.invert(any_missing)) if missing and any_missing.true_count else converted


def _text(column: pa.Array, dictionaries: bool) -> pa.Array:
    if dictionaries and pa.types.is_dictionary(column.type):
        return column.cast(pa.dictionary(column.type.index_type, pa.string()))
    return column.cast(pa.string())


def _blank(column: pa.Array) -> pa.Array | None:
    """Where ``column`` is null or empty; None when nowhere (the common case, found without a pass per row)."""
    values = column.dictionary if pa.types.is_dictionary(column.type) else column
    empty = pc.equal(pc.binary_length(values), 0)
    if not column.null_count and not empty.true_count:
        return None
    if pa.types.is_dictionary(column.type):
        empty = pc.take(empty, column.indices)
    return pc.fill_null(empty, True)


def _empty_context(rows: int) -> pa.StructArray:
    return pa.StructArray.from_buffers(pa.struct([]), rows, [None])


def _normalised_context(context: pa.StructArray) -> pa.StructArray:
    """A Parquet context (or session tags) struct in the batch form: keys with a value in this batch, as string
    or list<string>."""
    names, arrays = [], []
    for field, values in zip(context.type, context.flatten(), strict=True):
        if values.null_count == len(values):
            continue
        names.append(field.name)
        arrays.append(pc.cast(values, _STRING_LIST if _is_list(field.type) else pa.string()))
    if not arrays:
        return _empty_context(len(context))
    return pa.StructArray.from_arrays(arrays, names=names)


def _request_batch(principal: pa.Array, action: pa.Array, resource: pa.Array, resource_account: pa.Array,
                   context: pa.StructArray, session_tags: pa.StructArray, source: pa.Array,
                   resource_fallback: pa.Array) -> pa.RecordBatch:
    schema = pa.schema([
        pa.field("principal", principal.type, nullable=False),
        pa.field("action", action.type, nullable=False),
        pa.field("resource", resource.type, nullable=False),
        pa.field("resource_account", pa.string()),
        pa.field("context", context.type),
        pa.field("session_tags", session_tags.type),
        pa.field("source", pa.string(), nullable=False),
        pa.field("resource_fallback", pa.bool_(), nullable=False),
    ])
    return pa.RecordBatch.from_arrays(
        [principal, action, resource, resource_account, context, session_tags, source, resource_fallback],
        schema=schema)


def _request_fields(record: Any) -> tuple[str, str, str, str | None, dict[str, Any] | None, dict[str, str] | None]:
    """The columns of one JSON request, or ``_Invalid`` saying what is wrong with it."""
    if not isinstance(record, dict):
        raise _Invalid("not an object", f"a request must be a JSON object, not {type(record).__name__}")
    unknown = record.keys() - _FIELDS
    if unknown:
        raise _Invalid("unknown field", f"unknown field(s) {', '.join(sorted(unknown))}")
    for field in _REQUIRED:
        value = record.get(field)
        if value is None:
            raise _Invalid("missing field", f"{field} is missing")
        if not isinstance(value, str) or not value:
            raise _Invalid("wrong type", f"{field} must be a non-empty string, not {_shown(value)}")
    account = record.get("resource_account")
    if account is not None and not isinstance(account, str):
        raise _Invalid("wrong type", f"resource_account must be a string, not {_shown(account)}")
    return (record["principal"], record["action"], record["resource"], account, _context(record.get("context")),
            _session_tags(record.get("session_tags")))


def _session_tags(tags: Any) -> dict[str, str] | None:
    """An assumed-role session's tags: an object of tag keys to strings (a tag's value is text, never a
    number, a boolean or a list)."""
    if tags is None:
        return None
    if not isinstance(tags, dict):
        raise _Invalid("bad session tags", f"session_tags must be an object, not {_shown(tags)}")
    if set(map(type, tags.values())) - {str}:
        key, value = next((key, value) for key, value in tags.items() if type(value) is not str)
        raise _Invalid("bad session tags", f"session tag {key!r}: values are strings, not {_shown(value)}")
    return tags


def _context(context: Any) -> dict[str, Any] | None:
    """The context with its values as text; the input dict itself when they already are (the common case)."""
    if context is None:
        return None
    if not isinstance(context, dict):
        raise _Invalid("bad context", f"context must be an object, not {_shown(context)}")
    if "" in context:
        raise _Invalid("bad context", "a context key is empty")
    value_types = set(map(type, context.values()))
    if value_types <= {str, list} and (list not in value_types or all(
            type(item) is str for value in context.values() if type(value) is list for item in value)):
        return context
    return {key: _context_value(key, value) for key, value in context.items()}


def _context_value(key: str, value: Any) -> str | list[str]:
    if isinstance(value, list):
        return [_context_text(key, item) for item in value]
    return _context_text(key, value)


def _context_text(key: str, value: Any) -> str:
    """A value as IAM reads it, by the rule every path reads context values by (``Request.create``'s)."""
    try:
        return context_text(value, key)
    except RequestError as exc:
        raise _Invalid("bad context", str(exc)) from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _spread(present: pa.Array, key_rows: list[int], rows: int) -> pa.Array:
    """A key's column over the batch's ``rows``: ``present`` holds a null, then the value of each row in
    ``key_rows``, in order; the other rows get the null."""
    value_of_row = array("i", bytes(4 * rows))  # 0: the row lacks the key, and present[0] is null
    for position, row in enumerate(key_rows, 1):
        value_of_row[row] = position
    return present.take(pa.Array.from_buffers(pa.int32(), rows, [None, pa.py_buffer(value_of_row)]))


class _BatchBuilder:
    """Accepted rows, column by column, until a batch is full.

    A batch meets a thousand distinct context keys while each row has a few dozen, so each key keeps only
    the rows that have it and their values; a struct field is then one ``take`` from its values.
    """

    def __init__(self, batch_rows: int, problems: Problems, strict: bool,
                 context_keys: Collection[str] | None = None) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
        self.batch_rows = batch_rows
        self.problems = problems
        self.strict = strict
        self.context_keys = None if context_keys is None else frozenset(context_keys)
        self._kept: _KeptKeys | None = None if self.context_keys is None else _KeptKeys(self.context_keys)
        self._start()

    def _start(self) -> None:
        self.principals: list[str] = []
        self.actions: list[str] = []
        self.resources: list[str] = []
        self.accounts: list[str | None] = []
        self.sources: list[str] = []
        self.fallbacks: list[bool] = []
        self.context_columns: dict[str, tuple[list[int], list[Any]]] = {}
        self.list_keys: set[str] = set()
        self.tag_columns: dict[str, tuple[list[int], list[str | None]]] = {}

    def __len__(self) -> int:
        return len(self.principals)

    @property
    def full(self) -> bool:
        return len(self.principals) >= self.batch_rows

    def reject(self, kind: str, location: str, detail: str) -> None:
        self.problems.add(kind, location, detail)
        if self.strict:
            raise MalformedRecord(kind, location, detail)

    def add_record(self, record: Any, location: str) -> None:
        """Add one decoded JSON request, or reject it."""
        try:
            fields = _request_fields(record)
        except _Invalid as error:
            self.reject(error.kind, location, error.detail)
            return
        self.add(*fields, location)

    def add(self, principal: str, action: str, resource: str, resource_account: str | None,
            context: dict[str, Any] | None, session_tags: dict[str, str] | None, source: str,
            resource_fallback: bool = False) -> None:
        row = len(self.principals)
        columns = self.context_columns
        items = (context or {}).items()
        if self._kept is not None and context:
            keys = context.keys()
            self._kept.meet(keys - self._kept.seen)
            items = [(key, context[key]) for key in keys & self._kept.kept]
        for key, value in items:
            column = columns.get(key)
            if column is None:
                column = columns[key] = ([], [None])
            key_rows, values = column
            key_rows.append(row)
            values.append(value)
            if type(value) is list:
                self.list_keys.add(key)
        if session_tags:
            for key, value in session_tags.items():
                tag_column = self.tag_columns.get(key)
                if tag_column is None:
                    tag_column = self.tag_columns[key] = ([], [None])
                tag_rows, tag_values = tag_column
                tag_rows.append(row)
                tag_values.append(value)
        self.principals.append(principal)
        self.actions.append(action)
        self.resources.append(resource)
        self.accounts.append(resource_account)
        self.sources.append(source)
        self.fallbacks.append(resource_fallback)

    def flush(self) -> pa.RecordBatch:
        rows = len(self.principals)
        names, fields = [], []
        for key, (key_rows, values) in self.context_columns.items():
            if key in self.list_keys:
                widened = sum(type(value) is str for value in values)
                if widened:
                    self.problems.note(WIDENED, widened)
                    values = [[value] if type(value) is str else value for value in values]
                present = pa.array(values, _STRING_LIST)
            else:
                present = pa.array(values, pa.string())
            names.append(key)
            fields.append(_spread(present, key_rows, rows))
        context = pa.StructArray.from_arrays(fields, names=names) if fields else _empty_context(rows)
        tags = pa.StructArray.from_arrays(
            [_spread(pa.array(values, pa.string()), tag_rows, rows) for tag_rows, values in self.tag_columns.values()],
            names=list(self.tag_columns)) if self.tag_columns else _empty_context(rows)
        batch = _request_batch(
            pa.array(self.principals, pa.string()), pa.array(self.actions, pa.string()),
            pa.array(self.resources, pa.string()), pa.array(self.accounts, pa.string()), context, tags,
            pa.array(self.sources, pa.string()), pa.array(self.fallbacks, pa.bool_()))
        self._start()
        return batch
