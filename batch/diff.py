"""Policy change impact: which requests of a log change decision between two policy versions.

Both versions decide every request; the rows whose decision differs are
written to a file and grouped (by change, principal and action) for the
terminal.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc

from .policies import PolicySource
from .readers import Problems, read_requests
from .writers import DecisionWriter


def _decisions(batch: pa.RecordBatch) -> pa.Array:
    column = batch.column("decision")
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def changed_rows(before: PolicySource, after: PolicySource,
                 batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, pa.Array, pa.Array, int]]:
    """Per input batch: the rows whose decision changed, their old and new decisions, and the batch's size."""
    old_evaluator, new_evaluator = before.evaluator(), after.evaluator()
    for batch in batches:
        old = _decisions(old_evaluator.evaluate(batch))
        new = _decisions(new_evaluator.evaluate(batch))
        changed = pc.not_equal(old, new)
        yield batch.filter(changed), pc.filter(old, changed), pc.filter(new, changed), batch.num_rows


def run_diff(before: PolicySource, after: PolicySource, inputs: list[str], output: str, out: TextIO,
             batch_rows: int = 8192, strict: bool = False) -> tuple[int, Counter, Problems]:
    """Write every changed request to ``output``; print the changes grouped; return (rows, groups, problems)."""
    problems = Problems()
    groups: Counter = Counter()
    rows = 0
    keys = before.evaluator().context_keys() | after.evaluator().context_keys()
    with DecisionWriter(output, explain=False) as writer:
        for changed, old, new, size in changed_rows(before, after, read_requests(inputs, batch_rows, problems,
                                                                                  strict, keys)):
            rows += size
            if not changed.num_rows:
                continue
            echo = changed.select(["source", "principal", "action", "resource"])
            writer.write(echo, pa.RecordBatch.from_arrays([old, new], ["before", "after"]))
            for principal, action, was, now in zip(echo.column("principal").to_pylist(),
                                                   echo.column("action").to_pylist(), old.to_pylist(),
                                                   new.to_pylist(), strict=True):
                groups[(_change(was, now), principal, action, was, now)] += 1
    render(groups, rows, out)
    if problems.total or problems.notes:
        print(problems.report(), file=out)
    return rows, groups, problems


CHANGES = ("newly allowed", "newly denied", "deny changed")
"""The kinds of change, in the order they are listed: what a change newly grants first."""


def _change(was: str, now: str) -> str:
    if now == "Allow":
        return "newly allowed"
    return "newly denied" if was == "Allow" else "deny changed"


def fails(groups: Counter, fail_on: str | None) -> bool:
    """Whether a diff used as a gate fails: ``newly-allowed`` on a change that grants, ``any-change`` on any."""
    if fail_on == "any-change":
        return bool(groups)
    return fail_on == "newly-allowed" and any(key[0] == "newly allowed" for key in groups)


def render(groups: Counter, rows: int, out: TextIO) -> None:
    total = sum(groups.values())
    print(f"{total} of {rows} requests change decision", file=out)
    if not groups:
        return
    print(f"{'change':<14} {'requests':>9}  {'before → after':<28} {'action':<40} principal", file=out)
    for (change, principal, action, was, now), count in sorted(
            groups.items(), key=lambda item: (CHANGES.index(item[0][0]), -item[1])):
        print(f"{change:<14} {count:>9}  {was + ' → ' + now:<28} {action:<40} {principal}", file=out)
