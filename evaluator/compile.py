"""Compile a policy set into the C engine, and evaluate requests with it.

Compilation numbers every statement of every layer, indexes their action
patterns in one wildcard trie (case-folded) and their static resource patterns
in another, compiles their conditions to C structs, and keeps resource
patterns with policy variables apart (they are expanded per request). A
``CompiledPolicySet`` is immutable and safe to share between threads.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import _engine
from ._conditions import ConditionSet
from ._globtrie import GlobTrie
from ._pattern import PatternSet
from .decision import Decision, DecisionKind, LayerResult, Layers, StatementRef, combine, failed
from .model import Effect, Policy, Statement
from .principals import Caller, Grant, statement_grant
from .request import PolicySet, Request

CHUNK = 2048
"""Requests converted and decided together: small enough to stay in cache, large enough
to amortise a call."""

CODES = (DecisionKind.IMPLICIT_DENY, DecisionKind.ALLOW, DecisionKind.EXPLICIT_DENY, DecisionKind.IMPLICIT_DENY)
"""Decision of each batch code; code 3 (evaluation failed) denies, like every error."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    """What the Python side keeps of a statement: how to name it and where it came from."""

    ref: StatementRef
    layer: str  # "identity", "resource", "permissions_boundary", "session", "scp[i]", "rcp[i]"
    slot: int  # position among resource-policy statements (their grants), else -1
    condition_keys: frozenset[str]
    actions: tuple[str, ...]  # Action (or NotAction) patterns as written, in the engine's order
    not_action: bool


@dataclass(frozen=True)
class BatchDecisions:
    """Decisions of a batch without explanations: one code a request, and why any failed."""

    codes: bytes  # 0 ImplicitDeny, 1 Allow, 2 ExplicitDeny, 3 evaluation failed (denied)
    errors: Mapping[int, str]

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> DecisionKind:
        return CODES[self.codes[index]]

    def __iter__(self):
        return (CODES[code] for code in self.codes)


def _layers(policies: PolicySet) -> list[tuple[str, int, int, tuple[Policy, ...]]]:
    """(layer name, engine layer code, level, policies) in statement-id order."""
    layers = [("identity", _engine.LAYER_IDENTITY, 0, policies.identity)]
    if policies.resource is not None:
        layers.append(("resource", _engine.LAYER_RESOURCE, 0, (policies.resource,)))
    if policies.permissions_boundary is not None:
        layers.append(("permissions_boundary", _engine.LAYER_BOUNDARY, 0, policies.permissions_boundary))
    if policies.session is not None:
        layers.append(("session", _engine.LAYER_SESSION, 0, policies.session))
    layers += [(f"scp[{i}]", _engine.LAYER_SCP, i, level) for i, level in enumerate(policies.scp or ())]
    layers += [(f"rcp[{i}]", _engine.LAYER_RCP, i, level) for i, level in enumerate(policies.rcp or ())]
    return layers


class CompiledPolicySet:
    """A policy set compiled for fast evaluation; gives the reference evaluator's answers."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self.key_ids: dict[str, int] = {}
        self.statements: list[_Compiled] = []
        self._resource_statements: list[Statement] = []
        patterns = PatternSet(self.key_ids)
        conditions = ConditionSet(self.key_ids)
        action_trie, resource_trie = GlobTrie(True), GlobTrie(False)
        action_ids: dict[str, int] = {}
        resource_ids: dict[str, int] = {}
        action_lists: list[list[int]] = []
        resource_lists: list[list[int]] = []
        dynamic: list[int] = []
        table = []

        def index(text: str, trie: GlobTrie, ids: dict[str, int], lists: list[list[int]], number: int | None) -> int:
            """The pattern's id in its trie; ``number`` (a statement) joins the pattern's list."""
            pattern_id = ids.get(text)
            if pattern_id is None:
                pattern_id = ids[text] = len(lists)
                lists.append([])
                trie.add(text, pattern_id)
            if number is not None and (not lists[pattern_id] or lists[pattern_id][-1] != number):
                lists[pattern_id].append(number)
            return pattern_id

        for layer_name, layer, level, layer_policies in _layers(policies):
            for policy in layer_policies:
                substitute = policy.has_policy_variables
                for statement in policy.statements:
                    number = len(self.statements)
                    flags = _engine.FLAG_DENY if statement.effect is Effect.DENY else 0
                    if statement.not_actions is not None:
                        flags |= _engine.FLAG_NOT_ACTION
                    resources = statement.resources if statement.resources is not None else statement.not_resources
                    if statement.not_resources is not None:
                        flags |= _engine.FLAG_NOT_RESOURCE
                        if "*" in statement.not_resources:
                            flags |= _engine.FLAG_NOT_RESOURCE_STAR
                    elif resources is None or "*" in resources:
                        flags |= _engine.FLAG_ANY_RESOURCE
                    dynamic_here = []
                    for text in resources or ():
                        if text == "*":
                            continue
                        if substitute and "${" in text:
                            dynamic_here.append(len(dynamic))
                            dynamic.append(patterns.add(text, True))
                        else:
                            index(text, resource_trie, resource_ids, resource_lists, number)
                    # A statement whose Resource lists only fixed patterns is found through the
                    # resource trie alone (its actions are checked then), so a common action does
                    # not make every such statement a candidate.
                    indexed = not flags & _engine.FLAG_ANY_RESOURCE and statement.resources is not None \
                        and not dynamic_here
                    if indexed:
                        flags |= _engine.FLAG_RESOURCE_INDEXED
                    action_patterns = tuple(
                        index(text.lower(), action_trie, action_ids, action_lists, None if indexed else number)
                        for text in statement.actions or statement.not_actions or ()
                    )
                    group = conditions.add_group(statement.conditions, substitute) if statement.conditions else -1
                    slot = -1
                    if layer == _engine.LAYER_RESOURCE:
                        slot = len(self._resource_statements)
                        self._resource_statements.append(statement)
                    table.append((layer, flags, level, group, dynamic_here, slot, action_patterns))
                    ref = StatementRef(policy.name, statement.index, statement.sid, statement.effect)
                    keys = frozenset(condition.key for condition in statement.conditions)
                    self.statements.append(_Compiled(ref, layer_name, slot, keys,
                                                     statement.actions or statement.not_actions or (),
                                                     statement.not_actions is not None))
        action_trie.freeze()
        resource_trie.freeze()
        patterns.freeze()
        conditions.freeze()
        self._key_names = conditions.key_names
        self._engine = _engine.Engine(
            table, action_trie, action_lists, resource_trie, resource_lists, dynamic, patterns, conditions,
            self.key_ids, len(self._resource_statements), policies.permissions_boundary is not None,
            policies.session is not None, len(policies.scp or ()), len(policies.rcp or ()),
        )
        self._stats = {
            "statements": len(self.statements),
            "action_patterns": len(action_lists),
            "resource_patterns": len(resource_lists),
            "dynamic_resource_patterns": len(dynamic),
            "condition_keys": len(self.key_ids),
            "action_trie": action_trie.get_stats(),
            "resource_trie": resource_trie.get_stats(),
        }

    def get_stats(self) -> dict[str, Any]:
        """Sizes of the compiled tables, for capacity planning and benchmarks."""
        return dict(self._stats)

    # ------------------------------------------------------------ conversion

    @lru_cache(maxsize=1 << 16)  # noqa: B019 - the set is immutable and lives as long as its cache
    def _describe_caller(self, principal: str) -> tuple[str, bytes]:
        caller = Caller.parse(principal)
        has_boundary = self.policies.permissions_boundary is not None
        grants = bytes(statement_grant(statement, caller, has_boundary) for statement in self._resource_statements)
        return caller.account, grants

    def _convert(self, principals, actions, resources, contexts, resource_accounts) -> _engine.Batch:
        return _engine.convert(self._engine, principals, actions, resources, contexts, resource_accounts,
                               self.key_ids, self._describe_caller)

    # ------------------------------------------------------------ evaluation

    def _explain(self, batch: _engine.Batch) -> list[Decision]:
        decisions = []
        explained = self._engine.explain_range(batch, 0, batch.n)
        for i, (code, applicable, missing, failed_statement) in enumerate(explained):
            if i in batch.errors:
                decisions.append(failed(batch.errors[i]))
            elif code == _engine.FAILED:
                decisions.append(failed(self._failure(failed_statement)))
            else:
                decisions.append(self._decision(applicable, missing, batch.same_account(i), batch.caller(i)))
        return decisions

    def _failure(self, statement: int) -> str:
        if statement < 0:  # the request failed before any statement: its reason is reported with it
            return "the request could not be evaluated"
        compiled = self.statements[statement]
        return (f"a condition of {compiled.ref} cannot read the request's value of "
                f"{' or '.join(sorted(compiled.condition_keys))}")

    def _decision(self, applicable: list[int], missing: list[int], same_account: bool, principal: str) -> Decision:
        """Build the explained decision with ``decision.combine``, the rule the reference uses."""
        by_layer: dict[str, tuple[list[StatementRef], list[StatementRef]]] = {}
        grant = Grant.NONE
        grants = None
        for number in applicable:
            compiled = self.statements[number]
            denies, allows = by_layer.setdefault(compiled.layer, ([], []))
            if compiled.ref.effect is Effect.DENY:
                denies.append(compiled.ref)
                continue
            allows.append(compiled.ref)
            if compiled.layer == "resource":
                if grants is None:
                    grants = self._describe_caller(principal)[1]
                grant = max(grant, Grant(grants[compiled.slot]))

        def result(layer: str) -> LayerResult:
            denies, allows = by_layer.get(layer, ((), ()))
            return LayerResult(tuple(denies), tuple(allows))

        policies = self.policies
        layers = Layers(
            identity=result("identity"),
            resource=result("resource") if policies.resource is not None else None,
            resource_grant=grant,
            permissions_boundary=result("permissions_boundary") if policies.permissions_boundary is not None else None,
            session=result("session") if policies.session is not None else None,
            scp=None if policies.scp is None else tuple(result(f"scp[{i}]") for i in range(len(policies.scp))),
            rcp=None if policies.rcp is None else tuple(result(f"rcp[{i}]") for i in range(len(policies.rcp))),
        )
        missing_keys = tuple(sorted(self._key_names[name] for name in missing))
        return combine(layers, same_account, missing_keys)

    def evaluate(self, request: Request, explain: bool = True) -> Decision:
        """Decide one request; with ``explain``, name the statements and missing keys."""
        batch = self._convert([request.principal], [request.action], [request.resource], [request.context],
                              [request.resource_account])
        if explain:
            return self._explain(batch)[0]
        self._engine.evaluate_range(batch, 0, 1)
        code = batch.codes_view()[0]
        if code == _engine.FAILED:
            return failed(batch.errors.get(0) or self._failure(self._engine.explain_range(batch, 0, 1)[0][3]))
        return Decision(CODES[code], "", reason="decided without explanation")

    def evaluate_batch(self, requests: Sequence[Request], explain: bool = False,
                       threads: int = 1) -> BatchDecisions | list[Decision]:
        """Decide many requests: converted once, then decided in C without the GIL."""
        return self.evaluate_columns(
            [r.principal for r in requests], [r.action for r in requests], [r.resource for r in requests],
            [r.context for r in requests], [r.resource_account for r in requests], explain=explain, threads=threads,
        )

    def evaluate_columns(
        self,
        principals: Sequence[str],
        actions: Sequence[str],
        resources: Sequence[str],
        contexts: Sequence[Mapping[str, Any] | None] | Mapping[str, Sequence[Any]] | None = None,
        resource_accounts: Sequence[str | None] | None = None,
        explain: bool = False,
        threads: int = 1,
    ) -> BatchDecisions | list[Decision]:
        """The columnar form: parallel sequences, one entry per request (the fastest path).

        ``contexts`` is either one mapping per request, or, fastest, one column per context
        key (``{"aws:SourceIp": [...], ...}``, ``None`` where a request lacks the key), so
        that no per-request object is touched. A request that cannot be evaluated (a
        malformed ARN, a context value of the wrong type) does not raise: it is denied, and
        ``errors`` says why.
        """
        if explain:
            return self._explain(self._convert(principals, actions, resources, contexts, resource_accounts))
        n = len(principals)
        codes = bytearray(n)
        errors: dict[int, str] = {}

        def decide(start: int) -> None:
            """Convert one chunk (with the GIL), then decide it (without): while one thread
            decides, another converts, and the chunk's data is still in cache when decided."""
            stop = min(n, start + CHUNK)
            if isinstance(contexts, Mapping):
                chunk_contexts: Any = {key: column[start:stop] for key, column in contexts.items()}
            else:
                chunk_contexts = None if contexts is None else contexts[start:stop]
            batch = self._convert(principals[start:stop], actions[start:stop], resources[start:stop], chunk_contexts,
                                  None if resource_accounts is None else resource_accounts[start:stop])
            self._engine.evaluate_range(batch, 0, batch.n)
            chunk_codes = batch.codes_view()
            codes[start:stop] = chunk_codes
            for i, message in batch.errors.items():
                errors[start + i] = message
            for i in range(len(chunk_codes)):  # rare: explain each evaluation failure to say why
                if chunk_codes[i] == _engine.FAILED and i not in batch.errors:
                    errors[start + i] = self._failure(self._engine.explain_range(batch, i, i + 1)[0][3])

        starts = range(0, n, CHUNK)
        if threads <= 1 or n <= CHUNK:
            for start in starts:
                decide(start)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(decide, starts))
        return BatchDecisions(bytes(codes), errors)


def compile_policies(policies: PolicySet) -> CompiledPolicySet:
    return CompiledPolicySet(policies)
