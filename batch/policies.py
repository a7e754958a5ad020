"""What a batch job evaluates against: policy files or a policy store, shipped to worker processes.

A ``PolicySource`` carries the policy texts (or the store's snapshot), not
paths, so a worker process or a Spark executor needs no shared filesystem; it
is compiled once per process (``evaluator()``, cached).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from evaluator import PolicySet, parse_policy
from evaluator.arrow import DECISIONS, STATEMENT, evaluate_arrow
from evaluator.compile import CompiledPolicySet
from evaluator.principals import Caller, RequestError
from evaluator.store import CompiledStore, PolicyStore
from evaluator.usage import StatementUsage


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
        return BatchEvaluator(store=CompiledStore(PolicyStore.from_json(source.store_snapshot)))
    policies = PolicySet(identity=tuple(parse_policy(text, name=name) for name, text in source.policy_files))
    return BatchEvaluator(compiled=CompiledPolicySet(policies))


class BatchEvaluator:
    """Decides Arrow request batches against one compiled policy set, or a store's per-principal sets."""

    def __init__(self, compiled: CompiledPolicySet | None = None, store: CompiledStore | None = None) -> None:
        self.compiled = compiled
        self.store = store
        self.usage: dict[int, StatementUsage] = {}  # per compiled set (by id), when counting

    def usage_for(self, compiled: CompiledPolicySet) -> StatementUsage:
        usage = self.usage.get(id(compiled))
        if usage is None:
            usage = self.usage[id(compiled)] = StatementUsage(compiled)
        return usage

    def context_keys(self) -> frozenset[str]:
        """The context keys (lower case) that the policies test: a reader need keep no other."""
        return frozenset(self.compiled.key_ids) if self.compiled is not None else self.store.context_keys

    def evaluate(self, batch: pa.RecordBatch, explain: bool = False, count: bool = False) -> pa.RecordBatch:
        """Decisions for ``batch`` in row order (the Arrow API's columns)."""
        if self.compiled is not None:
            return evaluate_arrow(self.compiled, batch, explain, self.usage_for(self.compiled) if count else None)
        return self._evaluate_store(batch, explain, count)

    def _evaluate_store(self, batch: pa.RecordBatch, explain: bool, count: bool) -> pa.RecordBatch:
        """Group rows by the policy set that applies, decide each group, put rows back in order.

        The set depends on the principal and, for a resource with its own policy or an
        owner with RCPs, on the resource: those are looked up once per distinct value, and
        rows are moved only once per group.
        """
        store = self.store.store
        batch = self._used_context(batch)
        principals = batch.column("principal").dictionary_encode()
        principal_of_row = principals.indices.fill_null(-1)
        group_of_row = principal_of_row
        variants: list[tuple[str | None, str | None]] = [(None, None)]  # resource variant -> (resource, owner)
        if store.resource_policies or store.rcps:
            resources = batch.column("resource").dictionary_encode()
            owners = batch.column("resource_account") if "resource_account" in batch.schema.names else None
            keys: dict[tuple, int] = {(None, None): 0}
            variant_of_resource = []
            for resource in resources.dictionary.to_pylist():
                policy = store.resource_policy(resource)
                key = (id(policy) if policy is not None else None,
                       resource.split(":", 5)[4] if store.rcps and resource.count(":") >= 5 else None)
                if key not in keys:
                    keys[key] = len(variants)
                    variants.append((resource, None))
                variant_of_resource.append(keys[key])
            variant_of_row = pc.take(pa.array(variant_of_resource, pa.int64()), resources.indices)
            if owners is not None and store.rcps:  # an explicit owner: its own variant per row (rare)
                variant_of_row = pc.if_else(owners.is_valid(), -1, variant_of_row)
            group_of_row = pc.add(pc.multiply(principal_of_row.cast(pa.int64()), len(variants) + 1),
                                  pc.add(variant_of_row, 1))
        pieces, order = [], []
        distinct = principals.dictionary.to_pylist()
        for group in pc.unique(group_of_row).to_pylist():
            rows = pc.indices_nonzero(pc.equal(group_of_row, group))
            first = rows[0].as_py()
            number = principal_of_row[first].as_py()
            principal = distinct[number] if number >= 0 else None
            piece = batch.take(rows)
            resource = piece.column("resource")[0].as_py()
            owner = piece.column("resource_account")[0].as_py() if "resource_account" in piece.schema.names \
                else None
            policy_set = None if principal is None else store.policy_set(principal, resource, owner)
            if policy_set is None:
                decided = _unknown_principal(piece.num_rows, explain, _malformed(principal))
            else:
                compiled = self.store.compiled_set(policy_set)
                decided = evaluate_arrow(compiled, piece, explain, self.usage_for(compiled) if count else None)
            pieces.append(decided)
            order.append(rows)
        if not pieces:
            return _unknown_principal(0, explain, None)
        decided = pa.Table.from_batches([piece.cast(pieces[0].schema) for piece in pieces])
        return decided.take(pc.sort_indices(pa.chunked_array(order))).combine_chunks().to_batches()[0]

    def _used_context(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Drop context keys no policy of the store tests: moving rows then costs less."""
        index = batch.schema.get_field_index("context")
        if index < 0:
            return batch
        used = self.store.context_keys
        context = batch.column(index)
        kept = [(field.name, values) for field, values in zip(context.type, context.flatten(), strict=True)
                if field.name.lower() in used]
        slim = pa.StructArray.from_arrays([values for _, values in kept], [name for name, _ in kept]) if kept \
            else pa.array([{}] * batch.num_rows, pa.struct([]))
        return batch.set_column(index, "context", slim)



def _malformed(principal: str | None) -> str | None:
    """Why a principal the store lacks is not even an IAM principal; None for a well-formed ARN."""
    if principal is None:
        return "request principal must not be null"
    try:
        Caller.parse(principal)
    except RequestError as exc:
        return str(exc)
    return None


def _unknown_principal(rows: int, explain: bool, error: str | None) -> pa.RecordBatch:
    """A principal the store lacks is denied implicitly, decided by "principal"; that is not an
    evaluation error, unless the principal is not even an ARN."""
    columns = [pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int8()), DECISIONS),
               pa.array([error] * rows, pa.string())]
    names = ["decision", "error"]
    if explain:
        columns += [pa.array(["error" if error else "principal"] * rows), pa.array([[]] * rows, pa.list_(STATEMENT)),
                    pa.array([[]] * rows, pa.list_(pa.string()))]
        names += ["decided_by", "statements", "missing_keys"]
    return pa.RecordBatch.from_arrays(columns, names)
