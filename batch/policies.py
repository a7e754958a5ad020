"""What a batch job evaluates against: policy files or a policy store, shipped to worker processes.

A ``PolicySource`` carries the policy texts (or the store's snapshot), not
paths, so a worker process or a Spark executor needs no shared filesystem; it
is compiled once per process (``evaluator()``, cached).
"""
from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pyarrow as pa

from iam_evaluator import PolicySet, PolicyValidationError, parse_policy
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.compile import CompiledPolicies, CompiledPolicySet
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.files import policy_files
from iam_evaluator.parse import decode_json
from iam_evaluator.store import SECTIONS, PolicyStore, is_snapshot
from iam_evaluator.usage import StatementUsage


@dataclass(frozen=True)
class PolicySource:
    """Identity policy files (pooled, as ``iam-eval check --policy``) or a store snapshot; ``read_from`` says
    what was read, for people (it is no part of the source's identity)."""

    policy_files: tuple[tuple[str, str], ...] = ()  # (name, JSON text)
    store_snapshot: str | None = None
    read_from: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if bool(self.policy_files) == (self.store_snapshot is not None):
            raise ValueError("give either policy files or a policy store, not both or neither")

    @classmethod
    def from_paths(cls, policies: list[str] | None = None, store: str | None = None) -> PolicySource:
        """Read the files now (policy files, or folders of them; a store: a directory, or a snapshot file), so
        that errors surface before any work starts."""
        if bool(policies) == bool(store):
            raise ValueError("give either --store DIR or --policy FILE…")
        if store:
            path = Path(store)
            loaded = PolicyStore.load(path)
            kind = "store snapshot" if path.is_file() else "store"
            return cls(store_snapshot=loaded.to_json(), read_from=f"{kind} {store} ({_counts(loaded)})")
        files = policy_files(policies or [])
        source = cls(policy_files=tuple((path, _text(path)) for path in files),
                     read_from=f"{len(files)} identity policy file{'s' * (len(files) != 1)} from {_named(policies)}")
        source.evaluator()  # validate every policy up front
        return source

    @classmethod
    def read(cls, paths: Sequence[str]) -> PolicySource:
        """Policy files, folders of them, or one store (a directory or a snapshot file), told apart by what
        they hold rather than by a flag: ``iam-eval diff``'s two sides."""
        stores = [path for path in paths if _holds_store(Path(path))]
        if stores and len(paths) > 1:
            raise ValueError(f"{stores[0]} is a policy store: give a store alone, not with other stores or policy "
                             f"files")
        return cls.from_paths(store=stores[0]) if stores else cls.from_paths(policies=list(paths))

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


_STORE_COUNTS = (("principals", "principal", "principals"), ("groups", "group", "groups"),
                 ("managed_policies", "managed policy", "managed policies"), ("scps", "SCP", "SCPs"),
                 ("rcps", "RCP", "RCPs"), ("resource_policies", "resource policy", "resource policies"),
                 ("vpc_endpoints", "VPC endpoint policy", "VPC endpoint policies"))
"""What a store holds, as its summary names it: (attribute, one, many)."""


def _counts(store: PolicyStore) -> str:
    counts = [(len(getattr(store, attribute)), one, many) for attribute, one, many in _STORE_COUNTS]
    return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts if n) or "empty"


def _named(paths: Sequence[str]) -> str:
    """The paths a person gave, shortened when there are many (a shell glob)."""
    shown = [f"{path.rstrip('/')}/" if Path(path).is_dir() else path for path in paths[:3]]
    return ", ".join(shown) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _text(path: str) -> str:
    """A policy file's text; one that is not UTF-8 is refused, naming the file."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _holds_store(path: Path) -> bool:
    """Whether ``path`` is a store: a folder with the sections of a store directory at its top (principals/,
    managed_policies/, scps/, …, organization.json: ``store.py``), or a file holding a JSON object keyed by
    them (a snapshot, ``PolicyStore.to_json``). Anything else is read as policy files, which is where a
    malformed file is reported. A folder with both sections and loose policy files is refused: reading it
    either way would be a guess."""
    if path.is_dir():
        entries = [child for child in path.iterdir() if not child.name.startswith(".")]
        sections = sorted(child.name for child in entries
                          if (child.name if child.is_dir() else child.stem if child.suffix == ".json" else None)
                          in SECTIONS)
        loose = sorted(child.name for child in entries
                       if child.is_file() and child.suffix == ".json" and child.name not in sections)
        if sections and loose:
            raise ValueError(f"{path} holds both a policy store ({', '.join(sections)}) and policy files "
                             f"({', '.join(loose)}): name the store, or the policy files, not the folder of both")
        return bool(sections)
    try:
        document = decode_json(path.read_bytes())
    except PolicyValidationError:
        return False
    return is_snapshot(document)
