"""Policy change impact: which requests of a log change decision between two policy versions.

Both versions decide every request; the rows whose decision differs (usually few) are decided again with
explanations against both, so that each change names the statements that made it, before and after. They are
written to a file and grouped (by change, principal, action and those statements) for the terminal.

Each side is decided on its own terms, so the two may be of different kinds: a store decides by what is
attached to the principal and by its organisation; policy files are the identity policies of every principal,
with no boundary, SCP or resource policy. Comparing a store with files shows what would change if the files
replaced everything each principal has.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc

from iam_evaluator.decision import DecisionKind, StatementRef
from iam_evaluator.model import Effect

from .policies import PolicySource
from .readers import Problems, read_requests
from .writers import DecisionWriter


def _decisions(batch: pa.RecordBatch) -> pa.Array:
    column = batch.column("decision")
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def changed_rows(before: PolicySource, after: PolicySource, batches: Iterator[pa.RecordBatch]
                 ) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch, int]]:
    """Per input batch: the rows whose decision changed, their explained decisions before and after (the Arrow
    API's explained columns), and the batch's size."""
    old_evaluator, new_evaluator = before.evaluator(), after.evaluator()
    for batch in batches:
        changed = batch.filter(pc.not_equal(_decisions(old_evaluator.evaluate(batch)),
                                            _decisions(new_evaluator.evaluate(batch))))
        yield (changed, old_evaluator.evaluate(changed, explain=True), new_evaluator.evaluate(changed, explain=True),
               batch.num_rows)


def _side(explained: pa.RecordBatch) -> dict[str, list]:
    """One side's explained columns as the output writes them: statements named as ``StatementRef`` prints them."""
    return {"decision": _decisions(explained).to_pylist(), "decided_by": explained.column("decided_by").to_pylist(),
            "statements": [[str(StatementRef(s["policy"], s["index"], s["sid"], Effect(s["effect"]))) for s in row]
                           for row in explained.column("statements").to_pylist()],
            "error": explained.column("error").to_pylist()}


def _columns(was: dict[str, list], now: dict[str, list]) -> pa.RecordBatch:
    """The output's decision columns: ``before`` and ``after``, then each side's explanation."""
    columns = {"before": pa.array(was["decision"], pa.string()), "after": pa.array(now["decision"], pa.string())}
    for name, side in (("before", was), ("after", now)):
        columns[f"{name}_decided_by"] = pa.array(side["decided_by"], pa.string())
        columns[f"{name}_statements"] = pa.array(side["statements"], pa.list_(pa.string()))
        columns[f"{name}_error"] = pa.array(side["error"], pa.string())
    return pa.RecordBatch.from_pydict(columns)


def run_diff(before: PolicySource, after: PolicySource, inputs: list[str], output: str, out: TextIO,
             batch_rows: int = 8192, strict: bool = False) -> tuple[int, Counter, Problems]:
    """Write every changed request to ``output``; print what each side read and the changes grouped; return
    (rows, groups, problems)."""
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
            was, now = _side(old), _side(new)
            writer.write(echo, _columns(was, now))
            for row, (principal, action) in enumerate(zip(echo.column("principal").to_pylist(),
                                                          echo.column("action").to_pylist(), strict=True)):
                groups[(_change(was["decision"][row], now["decision"][row]), principal, action,
                        was["decision"][row], now["decision"][row], _why(was, row), _why(now, row))] += 1
    render(groups, rows, (before.read_from, after.read_from), out)
    if problems.total or problems.notes:
        print(problems.report(), file=out)
    return rows, groups, problems


CHANGES = ("newly allowed", "newly denied", "deny changed")
"""The kinds of change, in the order they are listed: what a change newly grants first."""


def _change(was: str, now: str) -> str:
    if now == DecisionKind.ALLOW:
        return "newly allowed"
    return "newly denied" if was == DecisionKind.ALLOW else "deny changed"


def _why(side: dict[str, list], row: int) -> str:
    """One side of a change in words: the statements that decided it. An implicit deny names the layer that did
    not allow, after the Allows (if any) that were not enough there; a request that could not be evaluated, why."""
    if side["error"][row]:
        return f"error: {side['error'][row]}"
    named, layer = ", ".join(side["statements"][row]), side["decided_by"][row]
    if side["decision"][row] != DecisionKind.IMPLICIT_DENY:
        return named or f"[{layer}]"
    return f"{named + ' but ' if named else ''}no statement allowed [{layer}]"


def fails(groups: Counter, fail_on: str | None) -> bool:
    """Whether a diff used as a gate fails: ``newly-allowed`` on a change that grants, ``any-change`` on any."""
    if fail_on == "any-change":
        return bool(groups)
    return fail_on == "newly-allowed" and any(key[0] == "newly allowed" for key in groups)


def render(groups: Counter, rows: int, read_from: tuple[str, str], out: TextIO) -> None:
    total = sum(groups.values())
    print(f"{total} of {rows} requests change decision", file=out)
    print(f"before: {read_from[0]}\nafter: {read_from[1]}", file=out)
    if not groups:
        return
    print(f"{'change':<14} {'requests':>9}  {'before → after':<28} {'action':<40} principal", file=out)
    for (change, principal, action, was, now, why_was, why_now), count in sorted(
            groups.items(), key=lambda item: (CHANGES.index(item[0][0]), -item[1])):
        print(f"{change:<14} {count:>9}  {was + ' → ' + now:<28} {action:<40} {principal}  "
              f"(before: {why_was}; after: {why_now})", file=out)
