"""Which statements a request log used: least-privilege evidence at statement level.

Counts, per statement of every policy, the requests it applied to and those it
decided (an Allow in an allowed request, a Deny in a denied one), and per
action pattern of each statement the applied requests it matched. Statements
and patterns that nothing used are candidates for removal. Counting runs in C
over whole batches (``CompiledPolicySet`` and ``evaluate_arrow`` feed it); a
usage from several worker processes is summed with ``merge``. A long-running
process (the service) counts with ``ServedUsage``: since it started, across the
compiled versions it serves, without a lock on the deciding path.
"""
from __future__ import annotations

import threading
import time
import weakref
from array import array
from collections import deque
from dataclasses import dataclass

from .compile import CompiledPolicies
from .decision import StatementRef


@dataclass(frozen=True)
class StatementUse:
    statement: StatementRef
    applied: int
    decided: int
    action_hits: tuple[tuple[str, int], ...]  # per Action pattern, the applied requests it matched (not NotAction)

    @property
    def unused_actions(self) -> tuple[str, ...]:
        return tuple(pattern for pattern, hits in self.action_hits if not hits)


class StatementUsage:
    """Counters over one compiled policy set, filled by ``tally`` and summed by ``merge``.

    It keeps the compiled set's engine and statement records, not the set itself, so that counters
    kept beside a set (``ServedUsage``) do not keep it alive."""

    def __init__(self, compiled: CompiledPolicies) -> None:
        self._engine = compiled._engine
        self.statements = compiled.statements
        n = len(compiled.statements)
        self.applied = array("Q", bytes(8 * n))
        self.decided = array("Q", bytes(8 * n))
        self.action_patterns = array("Q", bytes(8 * max(1, compiled._engine.n_statement_actions)))

    def tally(self, batch) -> None:
        """Decide a converted batch, counting as it goes (its codes are filled in too)."""
        self._engine.tally_range(batch, 0, batch.n, self.applied, self.decided, self.action_patterns)

    def merge(self, other: StatementUsage) -> None:
        for mine, theirs in ((self.applied, other.applied), (self.decided, other.decided),
                             (self.action_patterns, other.action_patterns)):
            for i, count in enumerate(theirs):
                mine[i] += count

    def counts(self) -> tuple[bytes, bytes, bytes]:
        """The raw counters, to send from a worker process to the one that merges."""
        return self.applied.tobytes(), self.decided.tobytes(), self.action_patterns.tobytes()

    def add_counts(self, counts: tuple[bytes, bytes, bytes]) -> None:
        other = StatementUsage.__new__(StatementUsage)
        other.applied, other.decided, other.action_patterns = (array("Q", raw) for raw in counts)
        self.merge(other)

    def report(self) -> list[StatementUse]:
        uses = []
        slot = 0
        for number, compiled in enumerate(self.statements):
            patterns = compiled.actions
            matched = self.action_patterns[slot:slot + len(patterns)]
            slot += len(patterns)
            hits = () if compiled.not_action else tuple(zip(patterns, matched, strict=True))
            uses.append(StatementUse(compiled.ref, self.applied[number], self.decided[number], hits))
        return uses


@dataclass(frozen=True, slots=True)
class StatementCount:
    """How often a served statement applied, and since when it is counted."""

    statement: StatementRef
    applied: int
    decided: int
    since: float  # seconds since the epoch: when a version holding the statement was first served


class _VersionCounts:
    """One compiled version's counters: a ``StatementUsage`` per thread that decides with it, so that no
    thread waits for another to count; summed when read."""

    def __init__(self, compiled: CompiledPolicies) -> None:
        self._compiled = weakref.ref(compiled)
        self._local = threading.local()
        self.threads: list[StatementUsage] = []  # every thread's, to sum

    def mine(self) -> StatementUsage:
        usage = getattr(self._local, "usage", None)
        if usage is None:
            compiled = self._compiled()
            if compiled is None:
                raise RuntimeError("counting for a compiled version that is gone")
            usage = self._local.usage = StatementUsage(compiled)
            self.threads.append(usage)  # list.append is atomic under the GIL
        return usage


Counters = list[tuple[array, array]]
"""Each thread's applied and decided counters of one version."""


def _counters(threads: list[StatementUsage]) -> Counters:
    return [(usage.applied, usage.decided) for usage in list(threads)]


def _sums(counters: Counters, n: int) -> tuple[list[int], list[int]]:
    """Every thread's counters added up (read while threads may still count: each value is a whole word,
    at worst a few requests behind)."""
    applied, decided = [0] * n, [0] * n
    for thread_applied, thread_decided in counters:
        for i, count in enumerate(thread_applied):
            applied[i] += count
        for i, count in enumerate(thread_decided):
            decided[i] += count
    return applied, decided


def _ended(queue: deque, threads: list[StatementUsage], refs: list[StatementRef]) -> None:
    """A version's end: queue its counters alone (not the engine its counters decide with)."""
    queue.append((_counters(threads), refs))


class ServedUsage:
    """Statement use counted by a long-running process as it decides (``evaluate_columns(usage=…)``),
    for every compiled version it serves, since the process started.

    A statement is known by its policy, index, Sid and effect, so an edit that keeps them keeps its
    count, and its count covers every version that held it. Each version's counters live as long as the
    version does (a call still deciding with a version replaced meanwhile counts into it); when the last
    call on it ends, they join the totals kept by statement.
    """

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._versions: weakref.WeakKeyDictionary[CompiledPolicies, _VersionCounts] = weakref.WeakKeyDictionary()
        self._folded: dict[StatementRef, list[int]] = {}  # applied, decided, of versions no longer in use
        self._since: dict[StatementRef, float] = {}
        # The counters of versions that ended, not yet folded: a version may end in any thread at any
        # allocation (the cyclic collector), also one holding the lock, so its end only queues them.
        self._ended: deque[tuple[Counters, list[StatementRef]]] = deque()

    def serve(self, compiled: CompiledPolicies) -> None:
        """Start counting for a version now served (its statements are counted from now on)."""
        self._counts(compiled)

    def counter(self, compiled: CompiledPolicies) -> StatementUsage:
        """The calling thread's counters for ``compiled``."""
        counts = self._versions.get(compiled)
        return (counts if counts is not None else self._counts(compiled)).mine()

    def _counts(self, compiled: CompiledPolicies) -> _VersionCounts:
        with self._lock:
            self._fold_ended()
            counts = self._versions.get(compiled)
            if counts is None:
                counts = self._versions[compiled] = _VersionCounts(compiled)
                now = self._clock()
                refs = [c.ref for c in compiled.statements]
                for ref in refs:
                    self._since.setdefault(ref, now)
                weakref.finalize(counts, _ended, self._ended, counts.threads, refs)
        return counts

    def _fold_ended(self) -> None:
        """With the lock held: add the counters of the versions that ended to the totals."""
        while self._ended:
            counters, refs = self._ended.popleft()
            applied, decided = _sums(counters, len(refs))
            for ref, a, d in zip(refs, applied, decided, strict=True):
                if a or d:
                    total = self._folded.setdefault(ref, [0, 0])
                    total[0] += a
                    total[1] += d

    def report(self, compiled: CompiledPolicies) -> list[StatementCount]:
        """Every statement of ``compiled`` (each once, in its order) with its counts since the process
        started, over every version that held it."""
        # Hold every version alive now, so that none ends while they are read beside the totals.
        versions = [version for ref in self._versions.keyrefs() if (version := ref()) is not None]
        with self._lock:
            self._fold_ended()
            totals = {ref: list(counts) for ref, counts in self._folded.items()}
            since = dict(self._since)
            alive = [(version.statements, _counters(self._versions[version].threads)) for version in versions]
        for statements, counters in alive:
            applied, decided = _sums(counters, len(statements))
            for record, a, d in zip(statements, applied, decided, strict=True):
                total = totals.setdefault(record.ref, [0, 0])
                total[0] += a
                total[1] += d
        now = self._clock()
        return [StatementCount(ref, *totals.get(ref, (0, 0)), since.get(ref, now))
                for ref in dict.fromkeys(c.ref for c in compiled.statements)]
