"""The local runner: worker processes read, decide and write shares of the input; the main process
coordinates.

The main process cuts the logs into parts (``readers.split_requests``: ranges
of lines of a JSON Lines file, runs of row groups of a Parquet file, other
files whole) and sends their descriptions, not their data, to the workers.
Each worker (compiling the policies once) reads its part itself, keeping only
the context keys its policies test, decides it batch by batch and writes the
decisions to a part file; it sends back only counts and problems. The main
process joins the part files into the output in input order as they complete
(``writers.JoinedOutput``: bytes copied, nothing decoded) and merges the
counts. At most two parts per worker are outstanding, and a worker holds one
batch and one output row group at a time, so memory stays bounded whatever
the size of the input.

A worker dies with the main process, even when that is killed outright (SIGKILL): on Linux the kernel
kills it (``PR_SET_PDEATHSIG``), elsewhere it notices its parent is gone.
"""
from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .policies import BatchEvaluator, PolicySource
from .readers import (
    DEFAULT_PART_BYTES,
    DEFAULT_PART_ROWS,
    LogPart,
    MalformedRecord,
    PartReader,
    Problems,
    split_requests,
)
from .writers import JoinedOutput, RowsWriter, decision_schema, decision_table

PART_BYTES, PART_ROWS = DEFAULT_PART_BYTES, DEFAULT_PART_ROWS
"""The size of the parts workers take: small enough that two workers share a log evenly, large enough that
a part's own costs (a file, a message) do not count."""

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

    def add(self, decisions: pa.Table) -> None:
        """Count rows of the output (``writers.decision_schema``)."""
        self.rows += decisions.num_rows
        decision = decisions.column("decision")
        self.decisions.update(_value_counts(decision))
        self.errors += decisions.num_rows - decisions.column("error").null_count
        denied = pc.not_equal(decision, "Allow")
        self.denied_actions.update(_value_counts(pc.filter(decisions.column("action"), denied)))
        self.denied_principals.update(_value_counts(pc.filter(decisions.column("principal"), denied)))

    def merge(self, part: Summary) -> None:
        self.rows += part.rows
        self.decisions.update(part.decisions)
        self.errors += part.errors
        self.denied_actions.update(part.denied_actions)
        self.denied_principals.update(part.denied_principals)

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


def _value_counts(values: pa.Array | pa.ChunkedArray) -> dict:
    if not pa.types.is_dictionary(values.type):
        counts = pc.value_counts(values)
        names = counts.field("values")
    else:  # count the indices, then name only those that occur
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        counts = pc.value_counts(values.indices)
        names = values.dictionary.take(counts.field("values"))
    return dict(zip(names.to_pylist(), counts.field("counts").to_pylist(), strict=True))


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


def _parts(inputs: list[str], problems: Problems) -> tuple[Iterable[LogPart], int | None, dict]:
    """The input's parts, its rows when known (every file Parquet: their footers say, for the ETA) and the
    footers read, which the workers then need not read again. Otherwise the parts are found as the job goes:
    a JSON Lines file is read through to cut it."""
    files = [p for path in inputs for p in (sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)])
             if p.is_file()]
    if not files or not all(p.suffix == ".parquet" for p in files):
        return split_requests(inputs, problems, PART_BYTES, PART_ROWS), None, {}
    footers: dict[str, pq.FileMetaData] = {}
    parts = list(split_requests(inputs, problems, PART_BYTES, PART_ROWS, footers))
    known = all(part.rows is not None for part in parts)
    return parts, sum(part.rows for part in parts) if known else None, footers


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


@dataclass(frozen=True)
class _Job:
    """What every worker needs to know, sent once."""

    source: PolicySource
    kind: str  # the output's suffix
    explain: bool
    stats: bool
    batch_rows: int
    strict: bool
    footers: dict  # Parquet footers by path, read while planning


_OUTPUT_ROWS = 65536  # rows a worker gathers into one output row group


def _decide_part(job: _Job, evaluator: BatchEvaluator, reader: PartReader, part: LogPart,
                 path: str) -> tuple[Summary, Problems]:
    """Read, decide and write one part; its counts and problems."""
    summary, problems = Summary(), Problems()
    schema = decision_schema(job.explain)
    writer = RowsWriter(path, job.kind, schema)
    pending: list[pa.Table] = []

    def flush() -> None:
        table = pa.concat_tables(pending)
        summary.add(table)
        writer.write(table)
        pending.clear()

    try:
        for requests in reader.read(part, problems):
            decided = evaluator.evaluate(requests, job.explain, job.stats)
            pending.append(decision_table(requests.select(ECHOED), decided).cast(schema))
            if sum(table.num_rows for table in pending) >= _OUTPUT_ROWS:
                flush()
        if pending:
            flush()
    finally:
        writer.close()
    return summary, problems


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """End this worker when ``parent`` (the main process) ends, however it ends; else a killed job would
    leave its workers waiting for work forever. On Linux, the kernel sends SIGKILL when the thread that
    started the worker ends: ``run_local``'s caller's thread, which outlives the job."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def orphaned() -> None:
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(1)
        threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it ended before the request above took hold
        os._exit(1)


def _work(job: _Job, tasks, results, parent: int) -> None:
    """A worker process: decide parts until told to stop, then send its statement counts. It uses one core
    (Arrow's own threads too), so that N workers are N cores' work."""
    _die_with(parent)
    pa.set_cpu_count(1)
    evaluator = job.source.evaluator()
    reader = PartReader(job.batch_rows, job.strict, evaluator.context_keys(), job.footers)
    while (task := tasks.get()) is not None:
        number, part, path = task
        try:
            results.put((number, _decide_part(job, evaluator, reader, part, path), None))
        except MalformedRecord as exc:
            results.put((number, None, exc))
        except Exception as exc:  # noqa: BLE001 - reported by the main process, which stops the job
            results.put((number, None, f"{type(exc).__name__}: {exc}"))
    results.put((None, _usage_report(job.source) if job.stats else None, None))


class WorkerFailed(RuntimeError):
    pass


class _Workers:
    """Worker processes and their queues; a worker that dies fails the job instead of hanging it."""

    def __init__(self, job: _Job, count: int) -> None:
        context = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
        self.tasks, self.results = context.Queue(), context.Queue()
        self.processes = [context.Process(target=_work, args=(job, self.tasks, self.results, os.getpid()),
                                          daemon=True) for _ in range(count)]
        gc.freeze()  # a forked worker's collector then leaves the objects it inherits alone (and their pages shared)
        try:
            for process in self.processes:
                process.start()
        finally:
            gc.unfreeze()

    def result(self) -> tuple:
        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [process.exitcode for process in self.processes if process.exitcode not in (None, 0)]
                if dead:
                    raise WorkerFailed(f"a worker process died (exit code {dead[0]})") from None

    def finish(self) -> list:
        """Stop the workers once their tasks are done; the last message of each."""
        for _ in self.processes:
            self.tasks.put(None)
        return [self.result()[1] for _ in self.processes]

    def close(self, failed: bool) -> None:
        for process in self.processes:
            if failed:
                process.terminate()
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()


def _decided_in_order(job: _Job, parts: Iterable[LogPart], output: JoinedOutput, workers: int,
                      usage: dict) -> Iterator[tuple[Summary, Problems]]:
    """Per part, in input order, once its decisions are joined to the output: its counts and problems.

    Under ``strict``, the first malformed record in input order stops the job: parts after the failing one
    are no longer handed out, and the parts before it are finished first (one of them may fail earlier).
    """
    pool = _Workers(job, workers)
    failed = True
    try:
        pending = enumerate(parts)
        outstanding: set[int] = set()
        done: dict[int, tuple[Summary, Problems]] = {}
        next_out = 0
        malformed: dict[int, MalformedRecord] = {}
        while True:
            while not malformed and len(outstanding) < 2 * workers and (task := next(pending, None)) is not None:
                number, part = task
                outstanding.add(number)
                pool.tasks.put((number, part, output.part_path(number)))
            if not outstanding:
                break
            number, counted, problem = pool.result()
            outstanding.discard(number)
            if isinstance(problem, MalformedRecord):
                malformed[number] = problem
            elif problem is not None:
                raise WorkerFailed(f"a worker failed on part {number}: {problem}")
            else:
                done[number] = counted
            while next_out in done:
                try:
                    output.join(next_out)
                except OSError as exc:
                    if exc.filename is not None:
                        raise
                    raise OSError(exc.errno, exc.strerror, str(output.partial)) from None  # a full disk, say
                yield done.pop(next_out)
                next_out += 1
            if next_out in malformed:
                raise malformed[next_out]
        for part_usage in pool.finish():
            if part_usage:
                merge_usage(usage, part_usage)
        failed = False
    finally:
        pool.close(failed)


def run_local(source: PolicySource, inputs: list[str], output: str, workers: int | None = None,
              explain: bool = False, stats: bool = False, batch_rows: int = 8192, strict: bool = False,
              progress_out: TextIO = sys.stderr) -> tuple[Summary, Problems]:
    """Decide every request of ``inputs`` into ``output`` (.jsonl or .parquet)."""
    workers = workers or os.cpu_count() or 1
    problems = Problems()
    usage: dict = {}
    summary = Summary(usage=usage if stats else None)
    start = time.monotonic()
    joined = JoinedOutput(output, decision_schema(explain))
    with joined:
        parts, total, footers = _parts(inputs, problems)
        job = _Job(source, joined.kind, explain, stats, batch_rows, strict, footers)
        progress = Progress(progress_out, total)
        for part_summary, part_problems in _decided_in_order(job, parts, joined, workers, usage):
            summary.merge(part_summary)
            problems.merge(part_problems)
            progress.update(summary.rows)
    progress.done()
    summary.seconds = time.monotonic() - start
    return summary, problems
