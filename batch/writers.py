"""Where decisions go: JSON Lines or Parquet, written whole or not at all.

Rows are written to ``<output>.partial`` and renamed into place when the job
ends well, so an interrupted job never leaves a file that looks complete.

The local runner's workers each write their own part files; ``JoinedOutput``
puts the parts together in input order without decoding them: JSON Lines parts
are concatenated, and Parquet parts contribute their row groups' bytes as they
are, their footers merged into one with the row groups' file offsets moved.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from iam_evaluator.arrow import STATEMENT

OUTPUT_SUFFIXES = (".jsonl", ".parquet")
_MAGIC = b"PAR1"
_DICTIONARY_COLUMNS = ("principal", "action", "decision", "decided_by")  # few distinct values
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
_COPY_BYTES = 1 << 20


def decision_schema(explain: bool) -> pa.Schema:
    """The local runner's output: the request's place and identity, then its decision. Columns of few distinct
    values are dictionary-encoded in memory; the file stores them as strings either way."""
    fields = [("source", pa.string()), ("principal", _DICTIONARY), ("action", _DICTIONARY),
              ("resource", pa.string()), ("resource_fallback", pa.bool_()),
              ("decision", pa.dictionary(pa.int8(), pa.string())), ("error", pa.string())]
    if explain:
        fields += [("decided_by", pa.string()), ("statements", pa.list_(STATEMENT)),
                   ("missing_keys", pa.list_(pa.string()))]
    return pa.schema(fields)


def decision_table(requests: pa.RecordBatch, decided: pa.RecordBatch) -> pa.Table:
    """The request columns beside the decision columns."""
    columns = {name: requests.column(name) for name in requests.schema.names}
    columns.update(zip(decided.schema.names, decided.columns, strict=True))
    return pa.table(columns)


def _check_suffix(path: Path) -> str:
    if path.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"output {str(path)!r} must end in .jsonl or .parquet")
    return path.suffix


class RowsWriter:
    """Tables to one file, as JSON Lines or Parquet (``kind``, the output's suffix); a Parquet file gets the
    schema of the first table, or ``schema`` when given (then the file is valid even without rows)."""

    def __init__(self, path: str | os.PathLike[str], kind: str, schema: pa.Schema | None = None) -> None:
        self.path = Path(path)
        self.kind = kind
        self._lines: IO[bytes] | None = None
        self._parquet: pq.ParquetWriter | None = None
        if kind == ".jsonl":
            self._lines = open(self.path, "wb")
        elif schema is not None:
            self._open_parquet(schema)

    def _open_parquet(self, schema: pa.Schema) -> None:
        # No page index, so that row groups can be moved; no statistics, which cost a tenth of the writing and
        # narrow nothing here; no stored Arrow schema, so that readers see plain strings whatever the columns
        # were in memory.
        dictionary = [name for name in _DICTIONARY_COLUMNS if name in schema.names]
        self._parquet = pq.ParquetWriter(self.path, schema, use_dictionary=dictionary, write_statistics=False,
                                         write_page_index=False, store_schema=False)

    def write(self, table: pa.Table) -> None:
        if self._lines is not None:
            self._lines.write(json_lines(table))
            return
        if self._parquet is None:
            self._open_parquet(table.schema)
        self._parquet.write_table(_one_dictionary(table.cast(self._parquet.schema)))

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()
        elif self._parquet is not None:
            self._parquet.close()
        else:  # no rows and no schema: still a valid, empty file
            pq.write_table(pa.table({}), self.path, store_schema=False)


class DecisionWriter:
    """Decision rows (the request columns given, then the decision columns) to ``path`` via ``path.partial``."""

    def __init__(self, path: str, explain: bool) -> None:
        self.path = Path(path)
        self.kind = _check_suffix(self.path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.explain = explain
        self._rows: RowsWriter | None = None

    def __enter__(self) -> DecisionWriter:
        self._rows = RowsWriter(self.partial, self.kind)
        return self

    def write(self, requests: pa.RecordBatch, decided: pa.RecordBatch) -> None:
        self._rows.write(decision_table(requests, decided))

    def __exit__(self, kind, value, traceback) -> None:
        self._rows.close()
        if kind is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


class JoinedOutput:
    """An output assembled from part files, joined in order as they complete.

    ``part_path(number)`` says where part ``number`` is to be written (in a scratch folder beside the output);
    ``join(number)`` appends it (each part exactly once, in increasing order) and deletes it.
    """

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = Path(path)
        self.kind = _check_suffix(self.path)
        self.schema = schema
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._scratch: Path | None = None
        self._out: IO[bytes] | None = None
        self._footer: _ParquetFooter | None = None

    def __enter__(self) -> JoinedOutput:
        self._scratch = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.parts-", dir=self.path.parent))
        self._out = open(self.partial, "wb")
        if self.kind == ".parquet":
            self._out.write(_MAGIC)
            self._footer = _ParquetFooter()
        return self

    def part_path(self, number: int) -> str:
        return str(self._scratch / f"{number:08d}{self.kind}")

    def join(self, number: int) -> None:
        part = Path(self.part_path(number))
        with open(part, "rb") as source:
            if self._footer is None:
                shutil.copyfileobj(source, self._out, _COPY_BYTES)
            else:
                start, stop = self._footer.add(source, self._out.tell())
                source.seek(start)
                _copy(source, self._out, stop - start)
        part.unlink()

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None and self._footer is not None:
                self._footer.write(self._out, self.schema)
            self._out.close()
            if kind is None:
                os.replace(self.partial, self.path)
            else:
                self.partial.unlink(missing_ok=True)
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _one_dictionary(table: pa.Table) -> pa.Table:
    """The table with one dictionary per column, which Parquet then takes as it is. The batches of one row
    group of a Parquet input share theirs already; unifying costs a hash of every dictionary value."""
    for column in table.columns:
        if pa.types.is_dictionary(column.type) and column.num_chunks > 1:
            first = column.chunk(0).dictionary
            if not all(chunk.dictionary.equals(first) for chunk in column.chunks[1:]):
                return table.unify_dictionaries()
    return table


def _copy(source: IO[bytes], target: IO[bytes], size: int) -> None:
    while size > 0:
        chunk = source.read(min(size, _COPY_BYTES))
        if not chunk:
            raise EOFError(f"{source.name} ended {size} bytes early")
        target.write(chunk)
        size -= len(chunk)


# JSON Lines ---------------------------------------------------------------------------------------------------

def json_lines(table: pa.Table) -> pa.Buffer:
    """The table's rows as JSON Lines, built column by column in Arrow (one Python call per column, not per row)."""
    pieces: list[Any] = []
    for index, (name, column) in enumerate(zip(table.column_names, table.columns, strict=True)):
        pieces += [("{" if index == 0 else ",") + json.dumps(name) + ":", _json_values(column)]
    if not pieces or not table.num_rows:
        return pa.py_buffer(b"{}\n" * table.num_rows)
    return _string_bytes(pc.binary_join_element_wise(*pieces, "}\n", "").combine_chunks())


def _string_bytes(strings: pa.StringArray) -> pa.Buffer:
    """The bytes of all the values of ``strings``, one after the other."""
    _, offsets, data = strings.buffers()
    offsets = pa.Array.from_buffers(pa.int32(), len(strings) + 1, [None, offsets], offset=strings.offset)
    return data[offsets[0].as_py():offsets[-1].as_py()] if data is not None else pa.py_buffer(b"")


def _json_values(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Each value of ``column`` as JSON text."""
    if column.null_count == len(column):
        return pa.repeat("null", len(column))
    if pa.types.is_dictionary(column.type):  # the dictionary's values only, then picked per row
        if isinstance(column, pa.ChunkedArray):
            return pa.chunked_array([_json_values(chunk) for chunk in column.chunks], pa.string())
        return pc.fill_null(pc.take(_json_values(column.dictionary), column.indices), "null")
    if pa.types.is_boolean(column.type):
        return pc.fill_null(pc.if_else(column, "true", "false"), "null")
    if pa.types.is_string(column.type):
        control, escaped = _needs_escapes(column)
        if not control:
            if escaped:
                column = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
            return pc.fill_null(pc.binary_join_element_wise('"', column, '"', ""), "null")
    return pa.array([json.dumps(value, separators=(",", ":")) for value in column.to_pylist()], pa.string())


def _needs_escapes(column: pa.ChunkedArray | pa.Array) -> tuple[bool, bool]:
    """Whether the strings hold control characters (rare; JSON escapes them), and quotes or backslashes."""
    control = escaped = False
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        data = _string_bytes(chunk)
        if not data.size:
            continue
        text = data.to_pybytes()
        escaped = escaped or b'"' in text or b"\\" in text
        control = control or pc.min(pa.Array.from_buffers(pa.uint8(), data.size, [None, data])).as_py() < 0x20
    return control, escaped


# Parquet footers ----------------------------------------------------------------------------------------------

class _ParquetFooter:
    """The footer of a Parquet file joined from parts: the parts' row groups, their offsets moved.

    A Parquet footer is one Thrift (compact protocol) ``FileMetaData`` struct; the fields that hold file
    offsets are rewritten and everything else is kept as read (see ``_Thrift``).
    """

    def __init__(self) -> None:
        self.metadata: list | None = None  # the first part's FileMetaData: schema and key/value metadata
        self.row_groups: list = []
        self.rows = 0

    def add(self, part: IO[bytes], position: int) -> tuple[int, int]:
        """Take the row groups of ``part`` (to be copied to ``position``); returns the byte range to copy."""
        size = part.seek(0, os.SEEK_END)
        part.seek(size - 8)
        tail = part.read(8)
        if tail[4:] != _MAGIC:
            raise ValueError(f"{part.name} is not a Parquet file")
        footer_size = int.from_bytes(tail[:4], "little")
        stop = size - 8 - footer_size
        part.seek(stop)
        metadata = _Thrift(part.read(footer_size)).struct()
        shift = position - len(_MAGIC)
        for row_group in _value(metadata, _ROW_GROUPS)[1]:
            _shift_row_group(row_group, shift)
            self.row_groups.append(row_group)
        self.rows += _value(metadata, _NUM_ROWS)
        if self.metadata is None:
            self.metadata = metadata
        return len(_MAGIC), stop

    def write(self, out: IO[bytes], schema: pa.Schema) -> None:
        footer = self.metadata
        if footer is None:  # no parts: the footer of an empty file of the schema
            empty = pa.BufferOutputStream()
            pq.write_table(schema.empty_table(), empty, store_schema=False)
            data = empty.getvalue().to_pybytes()
            footer = _Thrift(data[-8 - int.from_bytes(data[-8:-4], "little"):-8]).struct()
        _set(footer, _NUM_ROWS, self.rows)
        _set(footer, _ROW_GROUPS, (_STRUCT, self.row_groups))
        for ordinal, row_group in enumerate(self.row_groups):
            if _field(row_group, _RG_ORDINAL) is not None:
                _set(row_group, _RG_ORDINAL, ordinal)
        encoded = _Thrift.encode_struct(footer)
        out.write(encoded)
        out.write(len(encoded).to_bytes(4, "little"))
        out.write(_MAGIC)


# Field ids of parquet.thrift that the join reads or rewrites.
_NUM_ROWS, _ROW_GROUPS = 3, 4  # FileMetaData
_RG_COLUMNS, _RG_FILE_OFFSET, _RG_ORDINAL = 1, 5, 7  # RowGroup
_CC_FILE_OFFSET, _CC_META_DATA, _CC_OFFSET_INDEX, _CC_COLUMN_INDEX = 2, 3, 4, 6  # ColumnChunk
_CM_OFFSETS = (9, 10, 11, 14)  # ColumnMetaData: data, index and dictionary page, bloom filter
_STRUCT = 12


def _shift_row_group(row_group: list, shift: int) -> None:
    _add(row_group, _RG_FILE_OFFSET, shift)
    for column in _value(row_group, _RG_COLUMNS)[1]:
        if _field(column, _CC_OFFSET_INDEX) is not None or _field(column, _CC_COLUMN_INDEX) is not None:
            raise ValueError("a part with a page index cannot be moved (its page locations are absolute)")
        if _value(column, _CC_FILE_OFFSET):  # deprecated; writers leave it 0
            _add(column, _CC_FILE_OFFSET, shift)
        meta_data = _value(column, _CC_META_DATA)
        for field_id in _CM_OFFSETS:
            _add(meta_data, field_id, shift)


def _field(struct: list, field_id: int) -> list | None:
    return next((field for field in struct if field[0] == field_id), None)


def _value(struct: list, field_id: int) -> Any:
    field = _field(struct, field_id)
    return None if field is None else field[2]


def _set(struct: list, field_id: int, value: Any) -> None:
    _field(struct, field_id)[2] = value


def _add(struct: list, field_id: int, shift: int) -> None:
    field = _field(struct, field_id)
    if field is not None:
        field[2] += shift


class _Thrift:
    """Thrift's compact protocol, the types a Parquet footer uses. A struct reads as a list of
    ``[field id, type, value]``; a list as ``(element type, values)``; a boolean field's value is its type."""

    _BOOLEANS = (1, 2)
    _INTEGERS = (4, 5, 6)
    _LISTS = (9, 10)

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def _byte(self) -> int:
        value = self.data[self.position]
        self.position += 1
        return value

    def _varint(self) -> int:
        value = shift = 0
        while True:
            byte = self._byte()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def _integer(self) -> int:
        value = self._varint()
        return (value >> 1) ^ -(value & 1)

    def struct(self) -> list:
        fields: list = []
        field_id = 0
        while header := self._byte():
            kind, delta = header & 0x0F, header >> 4
            field_id = field_id + delta if delta else self._integer()
            fields.append([field_id, kind, kind if kind in self._BOOLEANS else self._value(kind)])
        return fields

    def _value(self, kind: int) -> Any:
        if kind in self._INTEGERS:
            return self._integer()
        if kind == 3:
            return self._byte()
        if kind == 7:
            self.position += 8
            return self.data[self.position - 8:self.position]
        if kind == 8:
            size = self._varint()
            self.position += size
            return self.data[self.position - size:self.position]
        if kind in self._LISTS:
            header = self._byte()
            size, element = header >> 4, header & 0x0F
            if size == 15:
                size = self._varint()
            # A boolean element is one byte, kept as read.
            read = self._byte if element in self._BOOLEANS else lambda: self._value(element)
            return element, [read() for _ in range(size)]
        if kind == _STRUCT:
            return self.struct()
        raise ValueError(f"Thrift type {kind} does not occur in a Parquet footer")

    @classmethod
    def encode_struct(cls, fields: list) -> bytes:
        out = bytearray()
        cls._struct(out, fields)
        return bytes(out)

    @staticmethod
    def _put_varint(out: bytearray, value: int) -> None:
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)

    @classmethod
    def _put_integer(cls, out: bytearray, value: int) -> None:
        cls._put_varint(out, 2 * value if value >= 0 else -2 * value - 1)

    @classmethod
    def _struct(cls, out: bytearray, fields: list) -> None:
        last = 0
        for field_id, kind, value in fields:
            if 0 < field_id - last <= 15:
                out.append((field_id - last) << 4 | kind)
            else:
                out.append(kind)
                cls._put_integer(out, field_id)
            last = field_id
            if kind not in cls._BOOLEANS:
                cls._put(out, kind, value)
        out.append(0)

    @classmethod
    def _put(cls, out: bytearray, kind: int, value: Any) -> None:
        if kind in cls._INTEGERS:
            cls._put_integer(out, value)
        elif kind == 3:
            out.append(value)
        elif kind == 7:
            out += value
        elif kind == 8:
            cls._put_varint(out, len(value))
            out += value
        elif kind in cls._LISTS:
            element, values = value
            if len(values) < 15:
                out.append(len(values) << 4 | element)
            else:
                out.append(0xF0 | element)
                cls._put_varint(out, len(values))
            for item in values:
                if element in cls._BOOLEANS:
                    out.append(item)
                else:
                    cls._put(out, element, item)
        else:
            cls._struct(out, value)
