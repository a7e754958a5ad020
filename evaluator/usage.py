"""Which statements a request log used: least-privilege evidence at statement level.

Counts, per statement of every policy, the requests it applied to and those it
decided (an Allow in an allowed request, a Deny in a denied one), and per
action pattern of each statement the applied requests it matched. Statements
and patterns that nothing used are candidates for removal. Counting runs in C
over whole batches (``CompiledPolicySet`` and ``evaluate_arrow`` feed it); a
usage from several worker processes is summed with ``merge``.
"""
from __future__ import annotations

from array import array
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
    """Counters over one compiled policy set, filled by ``tally`` and summed by ``merge``."""

    def __init__(self, compiled: CompiledPolicies) -> None:
        self.compiled = compiled
        n = len(compiled.statements)
        self.applied = array("Q", bytes(8 * n))
        self.decided = array("Q", bytes(8 * n))
        self.action_patterns = array("Q", bytes(8 * max(1, compiled._engine.n_statement_actions)))

    def tally(self, batch) -> None:
        """Decide a converted batch, counting as it goes (its codes are filled in too)."""
        self.compiled._engine.tally_range(batch, 0, batch.n, self.applied, self.decided, self.action_patterns)

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
        for number, compiled in enumerate(self.compiled.statements):
            patterns = compiled.actions
            matched = self.action_patterns[slot:slot + len(patterns)]
            slot += len(patterns)
            hits = () if compiled.not_action else tuple(zip(patterns, matched, strict=True))
            uses.append(StatementUse(compiled.ref, self.applied[number], self.decided[number], hits))
        return uses
