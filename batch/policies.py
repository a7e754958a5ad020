"""What a batch job evaluates against: policy files or a policy store, shipped to worker processes.

A ``PolicySource`` carries the policy texts (or the store's snapshot), not
paths, so a worker process or a Spark executor needs no shared filesystem; it
is compiled once per process (``evaluator()``, cached).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow as pa

from iam_evaluator import PolicySet, parse_policy
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.compile import CompiledPolicies, CompiledPolicySet
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.store import PolicyStore
from iam_evaluator.usage import StatementUsage


@dataclass(frozen=True)
class PolicySource:
    """Identity policy files (pooled, as ``iam-eval check --policy``) or a store snapshot."""

    policy_files: tuple[tuple[str, str], ...] = ()  # (name, JSON text)
    store_snapshot: str | None = None

    def __post_init__(self) -> None:
        if bool(self.policy_files) == (self.store_snapshot is not None):
            raise ValueError("give either policy files or a policy store, not both or neither")

    @classmethod
    def from_paths(cls, policies: list[str] | None = None, store: str | None = None) -> PolicySource:
        """Read the files now (a store: a directory, or a snapshot file), so that errors surface
        before any work starts."""
        if bool(policies) == bool(store):
            raise ValueError("give either --store DIR or --policy FILE…")
        if store:
            path = Path(store)
            loaded = PolicyStore.from_json(path.read_bytes(), source=store) if path.is_file() \
                else PolicyStore.from_directory(path)
            return cls(store_snapshot=loaded.to_json())
        texts = tuple((path, Path(path).read_text(encoding="utf-8")) for path in policies or ())
        source = cls(policy_files=texts)
        source.evaluator()  # validate every policy up front
        return source

    def evaluator(self) -> BatchEvaluator:
        return _evaluator(self)


@cache
def _evaluator(source: PolicySource) -> BatchEvaluator:
    if source.store_snapshot is not None:
        evaluator = BatchEvaluator(CompiledStore(PolicyStore.from_json(source.store_snapshot)))
    else:
        policies = PolicySet(identity=tuple(parse_policy(text, name=name) for name, text in source.policy_files))
        evaluator = BatchEvaluator(CompiledPolicySet(policies))
    # The policies live as long as the job: keep the cyclic garbage collector from walking them again
    # and again as batches come and go (with a whole store, that walk cost more than deciding).
    gc.freeze()
    return evaluator


class BatchEvaluator:
    """Decides Arrow request batches against compiled policies: a policy set, or a whole store."""

    def __init__(self, compiled: CompiledPolicies) -> None:
        self.compiled = compiled
        self.usage: dict[int, StatementUsage] = {}  # per compiled policies (by id), when counting

    def usage_for(self, compiled: CompiledPolicies) -> StatementUsage:
        usage = self.usage.get(id(compiled))
        if usage is None:
            usage = self.usage[id(compiled)] = StatementUsage(compiled)
        return usage

    def context_keys(self) -> frozenset[str]:
        """The context keys (lower case) that the policies test: a reader need keep no other."""
        return frozenset(self.compiled.key_ids)

    def evaluate(self, batch: pa.RecordBatch, explain: bool = False, count: bool = False) -> pa.RecordBatch:
        """Decisions for ``batch`` in row order (the Arrow API's columns)."""
        return evaluate_arrow(self.compiled, batch, explain, self.usage_for(self.compiled) if count else None)
