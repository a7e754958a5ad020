"""Where decisions go: JSON Lines or Parquet, written whole or not at all.

Rows are written to ``<output>.partial`` and renamed into place when the job
ends well, so an interrupted job never leaves a file that looks complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class DecisionWriter:
    def __init__(self, path: str, explain: bool) -> None:
        self.path = Path(path)
        if self.path.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"output {path!r} must end in .jsonl or .parquet")
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.explain = explain
        self._parquet: pq.ParquetWriter | None = None
        self._lines = None

    def __enter__(self) -> DecisionWriter:
        if self.path.suffix == ".jsonl":
            self._lines = self.partial.open("w", encoding="utf-8")
        return self

    def write(self, requests: pa.RecordBatch, decided: pa.RecordBatch) -> None:
        columns = {name: requests.column(name) for name in requests.schema.names}
        for name in decided.schema.names:
            column = decided.column(name)
            columns[name] = column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
        table = pa.table(columns)
        if self._lines is not None:
            for row in table.to_pylist():
                self._lines.write(json.dumps(row, separators=(",", ":")) + "\n")
            return
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.partial, table.schema)
        self._parquet.write_table(table.cast(self._parquet.schema))

    def __exit__(self, kind, value, traceback) -> None:
        if self._lines is not None:
            self._lines.close()
        if self._parquet is not None:
            self._parquet.close()
        elif self.path.suffix == ".parquet" and kind is None:  # no rows: still a valid, empty file
            pq.write_table(pa.table({}), self.partial)
        if kind is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)
