"""The local runner: stream request logs through worker processes, write decisions, summarise.

The main process reads the logs in record batches and writes the results in
input order; worker processes (each compiling the policies once) decide the
batches. At most two batches per worker are in flight, so memory stays
bounded whatever the size of the input.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .policies import PolicySource
from .readers import Problems, read_requests
from .writers import DecisionWriter

ECHOED = ("source", "principal", "action", "resource", "resource_fallback")
"""Request columns copied into the output, so that every decision says which request it is."""


@dataclass
class Summary:
    rows: int = 0
    decisions: Counter = field(default_factory=Counter)
    errors: int = 0
    denied_actions: Counter = field(default_factory=Counter)
    denied_principals: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    usage: dict | None = None  # (policy, index, sid, effect) -> [applied, decided, {pattern: hits}]

    def add(self, requests: pa.RecordBatch, decided: pa.RecordBatch) -> None:
        self.rows += decided.num_rows
        decisions = decided.column("decision").dictionary_decode() if pa.types.is_dictionary(
            decided.column("decision").type) else decided.column("decision")
        self.decisions.update(dict(zip(*_value_counts(decisions), strict=True)))
        self.errors += decided.num_rows - decided.column("error").null_count
        denied = pc.not_equal(decisions, "Allow")
        for counter, name in ((self.denied_actions, "action"), (self.denied_principals, "principal")):
            counter.update(dict(zip(*_value_counts(pc.filter(requests.column(name), denied)), strict=True)))

    def render(self, out: TextIO, problems: Problems) -> None:
        rate = self.rows / self.seconds if self.seconds else 0.0
        print(f"{self.rows} requests in {self.seconds:.1f} s ({rate:,.0f}/s): "
              + ", ".join(f"{count} {name}" for name, count in self.decisions.most_common())
              + f"; {self.errors} could not be evaluated", file=out)
        for title, counter in (("top denied actions", self.denied_actions),
                               ("top denied principals", self.denied_principals)):
            if counter:
                print(f"{title}:", file=out)
                for name, count in counter.most_common(10):
                    print(f"  {count:>10}  {name}", file=out)
        if problems.total or problems.notes:
            print(problems.report(), file=out)


def _value_counts(array: pa.Array) -> tuple[list, list]:
    counts = pc.value_counts(array)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


class Progress:
    """Records per second (and ETA when the total is known): a live line on a terminal,
    plain lines every ``every`` seconds otherwise."""

    def __init__(self, out: TextIO, total: int | None, every: float = 10.0) -> None:
        self.out, self.total, self.every = out, total, every
        self.live = out.isatty()
        self.start = self.last = time.monotonic()

    def update(self, rows: int) -> None:
        now = time.monotonic()
        if not self.live and now - self.last < self.every:
            return
        self.last = now
        rate = rows / max(now - self.start, 1e-9)
        eta = f", ETA {(self.total - rows) / rate:,.0f} s" if self.total and rate else ""
        of = f"/{self.total:,}" if self.total else ""
        line = f"{rows:,}{of} requests, {rate:,.0f}/s{eta}"
        print(f"\r{line}" if self.live else line, end="" if self.live else "\n", file=self.out, flush=True)

    def done(self) -> None:
        if self.live:
            print(file=self.out)


def _known_total(paths: list[str]) -> int | None:
    """Rows in the input when every file is Parquet (its metadata says), else unknown."""
    files = [p for path in paths for p in (sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)])
             if p.is_file()]
    if not files or not all(p.suffix == ".parquet" for p in files):
        return None
    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


def _to_ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _from_ipc(payload: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(payload).read_next_batch()


def _usage_report(source: PolicySource) -> dict:
    """This process's statement counts, keyed so that other processes' counts add up."""
    report: dict = {}
    for usage in source.evaluator().usage.values():
        part = {(use.statement.policy, use.statement.index, use.statement.sid, str(use.statement.effect)):
                [use.applied, use.decided, dict(use.action_hits)] for use in usage.report()}
        merge_usage(report, part)
    return report


def merge_usage(total: dict, part: dict) -> None:
    for key, (applied, decided, patterns) in part.items():
        entry = total.setdefault(key, [0, 0, {}])
        entry[0] += applied
        entry[1] += decided
        for pattern, hits in patterns.items():
            entry[2][pattern] = entry[2].get(pattern, 0) + hits


def _work(source: PolicySource, explain: bool, stats: bool, tasks, results) -> None:
    """A worker process: decide batches until told to stop, then send its statement counts."""
    evaluator = source.evaluator()
    while (task := tasks.get()) is not None:
        number, payload = task
        try:
            results.put((number, _to_ipc(evaluator.evaluate(_from_ipc(payload), explain, stats)), None))
        except Exception as exc:  # noqa: BLE001 - reported by the main process, which stops the job
            results.put((number, None, f"{type(exc).__name__}: {exc}"))
    results.put((None, None, _usage_report(source) if stats else None))


class WorkerFailed(RuntimeError):
    pass


def _decided_in_order(source: PolicySource, batches: Iterator[pa.RecordBatch], workers: int, explain: bool,
                      stats: bool, usage: dict) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """(requests, decisions) per input batch, in input order, decided by ``workers`` processes."""
    context = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
    tasks, results = context.Queue(maxsize=2 * workers), context.Queue()
    processes = [context.Process(target=_work, args=(source, explain, stats, tasks, results), daemon=True)
                 for _ in range(workers)]
    for process in processes:
        process.start()
    pending: dict[int, pa.RecordBatch] = {}
    done: dict[int, pa.RecordBatch] = {}
    next_out = 0

    def collect() -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
        nonlocal next_out
        number, payload, problem = results.get()
        if problem is not None:
            raise WorkerFailed(f"a worker failed on batch {number}: {problem}")
        done[number] = _from_ipc(payload)
        while next_out in done:
            yield pending.pop(next_out), done.pop(next_out)
            next_out += 1

    try:
        for number, batch in enumerate(batches):
            pending[number] = batch
            while len(pending) - len(done) >= 2 * workers:
                yield from collect()
            tasks.put((number, _to_ipc(batch)))
        while pending:
            yield from collect()
        for _ in processes:
            tasks.put(None)
        for _ in processes:
            _, _, part = results.get()
            if part:
                merge_usage(usage, part)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()


def run_local(source: PolicySource, inputs: list[str], output: str, workers: int | None = None,
              explain: bool = False, stats: bool = False, batch_rows: int = 8192, strict: bool = False,
              progress_out: TextIO = sys.stderr) -> tuple[Summary, Problems]:
    """Decide every request of ``inputs`` into ``output`` (.jsonl or .parquet)."""
    workers = workers or os.cpu_count() or 1
    problems = Problems()
    summary = Summary(usage={} if stats else None)
    progress = Progress(progress_out, _known_total(inputs))
    start = time.monotonic()
    batches = read_requests(inputs, batch_rows=batch_rows, problems=problems, strict=strict)
    with DecisionWriter(output, explain) as writer:
        usage = summary.usage if summary.usage is not None else {}
        for requests, decided in _decided_in_order(source, batches, workers, explain, stats, usage):
            writer.write(requests.select(ECHOED), decided)
            summary.add(requests, decided)
            progress.update(summary.rows)
    progress.done()
    summary.seconds = time.monotonic() - start
    return summary, problems
