"""Compile policies into the C engine, and evaluate requests with it.

Compilation numbers every statement of every policy, indexes their action
patterns in one wildcard trie (case-folded) and their static resource patterns
in another, compiles their conditions to C structs, and keeps resource
patterns with policy variables apart (they are expanded per request). Which
policies apply to a request, and in which layer, is the request's *profile*,
given per request by a resolver: one fixed profile for a ``CompiledPolicySet``,
one per principal and resource for a whole store (``compiled_store``). Compiled
policies are immutable and safe to share between threads.
"""
from __future__ import annotations

import functools
import gc
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _engine, service_rules
from ._arntrie import ArnTrie
from ._conditions import ConditionSet
from ._globtrie import GlobTrie
from ._pattern import PatternSet
from .decision import (
    BY_CODE,
    NEAR_MISSES,
    Decision,
    DecisionKind,
    LayerResult,
    Layers,
    StatementRef,
    always_allowed,
    combine,
    failed,
)
from .facts import is_principal_key
from .memo import remember
from .model import Effect, Policy
from .principals import Caller, Grant, statement_grant
from .reference import Candidate, Candidates, Needs, action_applies, explained, needed_keys
from .request import ContextValue, PolicySet, Request

if TYPE_CHECKING:
    from .usage import StatementUsage


def collector_paused(function: Callable) -> Callable:
    """Run ``function`` with the cyclic garbage collector paused (unless it was off already): compiling
    allocates objects by the hundred thousand, which either live as long as the engine or die together,
    and the collector would walk the whole heap again and again meanwhile (a fifth of the time)."""
    @functools.wraps(function)
    def paused(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()
    return paused


CHUNK = 2048
"""Requests converted and decided together: small enough to stay in cache, large enough
to amortise a call."""

if (_engine.ALLOW, _engine.EXPLICIT_DENY, _engine.IMPLICIT_DENY) != tuple(
        kind.code for kind in (DecisionKind.ALLOW, DecisionKind.EXPLICIT_DENY, DecisionKind.IMPLICIT_DENY)):
    raise ImportError("the engine's decision codes are not DecisionKind's: rebuild the extension")

UNEXPLAINED = {kind.code: Decision(kind, "", reason="decided without explanation") for kind in DecisionKind}
"""The decision of each code when no explanation is asked: one immutable object each, shared."""

FAILED_DENIES = bytes.maketrans(bytes([_engine.FAILED, 0]), bytes([_engine.IMPLICIT_DENY] * 2))
"""Engine codes → decision codes: a request that could not be evaluated is denied (ImplicitDeny), and so
is one left without a code (0, which no decision has: fail closed)."""


class _Compiled(NamedTuple):
    """What the Python side keeps of a statement: how to name it and where it came from (a named tuple:
    one is made per statement compiled, at a third of a frozen dataclass's cost)."""

    ref: StatementRef
    policy: int  # the engine's number of its policy
    slot: int  # its position in its policy
    actions: tuple[str, ...]  # Action (or NotAction) patterns as written, in the engine's order
    not_action: bool


@dataclass(frozen=True)
class BatchDecisions:
    """Decisions of a batch without explanations: one code a request, and why any failed."""

    codes: bytes  # DecisionKind.code a request; one that could not be evaluated is ImplicitDeny, in errors
    errors: Mapping[int, str]

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> DecisionKind:
        return BY_CODE[self.codes[index]]

    def __iter__(self):
        return (BY_CODE[code] for code in self.codes)


LAYER_NAMES = {_engine.LAYER_IDENTITY: "identity", _engine.LAYER_RESOURCE: "resource",
               _engine.LAYER_BOUNDARY: "permissions_boundary", _engine.LAYER_SESSION: "session",
               _engine.LAYER_ENDPOINT: "vpc_endpoint"}


def layer_name(layer: int, level: int) -> str:
    """The name decisions give a layer: ``identity``, …, ``scp[i]``, ``rcp[i]``."""
    if layer == _engine.LAYER_SCP:
        return f"scp[{level}]"
    if layer == _engine.LAYER_RCP:
        return f"rcp[{level}]"
    return LAYER_NAMES[layer]


@dataclass(frozen=True, slots=True)
class Profile:
    """Some layers of a request as the engine's policy numbers: the role each policy plays.

    A request has two: its caller's (identity, boundary, session, SCP levels) and its
    resource's (the resource's policy, the owner's RCP levels, and the policy of the VPC
    endpoint the request came through), so that each is shared by many requests. An
    anonymous caller's profile has no layers. ``roles`` lists (policy, layer, level) in the order decisions list
    statements, each layer's policies in their own order. A policy may play several roles.
    """

    roles: tuple[tuple[int, int, int], ...]
    resource_policy: int  # -1: the resource has no policy (or this is a caller's profile)
    has_boundary: bool
    has_session: bool
    n_scp: int
    n_rcp: int
    endpoint_policy: int  # -1: no VPC endpoint policy (or this is a caller's profile)
    anonymous: bool       # the caller's profile of an anonymous request
    packed: bytes  # the roles merged per policy, as the engine reads them (``_engine.pack_roles``)
    highest_policy: int

    @classmethod
    def of(cls, roles: list[tuple[int, int, int]], resource_policy: int = -1, has_boundary: bool = False,
           has_session: bool = False, n_scp: int = 0, n_rcp: int = 0, endpoint_policy: int = -1,
           anonymous: bool = False) -> Profile:
        return cls(tuple(roles), resource_policy, has_boundary, has_session, n_scp, n_rcp, endpoint_policy,
                   anonymous, *_engine.pack_roles(roles))

    @property
    def has_endpoint(self) -> bool:
        return self.endpoint_policy >= 0

    def with_endpoint(self, policy: int) -> Profile:
        """This resource's profile for a request that came through a VPC endpoint with that policy."""
        return Profile.of([*self.roles, (policy, _engine.LAYER_ENDPOINT, 0)], self.resource_policy,
                          n_rcp=self.n_rcp, endpoint_policy=policy)


def profiles_of(policies: PolicySet, number: Callable[[Policy], int]) -> tuple[Profile, Profile, Profile]:
    """The caller's, the resource's and an anonymous caller's profile of a policy set whose policies the
    engine numbers with ``number`` (called once for each place a policy stands: identity, resource,
    boundary, session, SCP levels, RCP levels). A VPC endpoint's policy joins per request
    (``Profile.with_endpoint``)."""
    caller = [(number(p), _engine.LAYER_IDENTITY, 0) for p in policies.identity]
    resource, resource_policy = [], -1
    if policies.resource is not None:
        resource_policy = number(policies.resource)
        resource.append((resource_policy, _engine.LAYER_RESOURCE, 0))
    caller += [(number(p), _engine.LAYER_BOUNDARY, 0) for p in policies.permissions_boundary or ()]
    caller += [(number(p), _engine.LAYER_SESSION, 0) for p in policies.session or ()]
    caller += [(number(p), _engine.LAYER_SCP, level) for level, pool in enumerate(policies.scp or ()) for p in pool]
    resource += [(number(p), _engine.LAYER_RCP, level) for level, pool in enumerate(policies.rcp or ()) for p in pool]
    return (Profile.of(caller, has_boundary=policies.permissions_boundary is not None,
                       has_session=policies.session is not None, n_scp=len(policies.scp or ())),
            Profile.of(resource, resource_policy=resource_policy, n_rcp=len(policies.rcp or ())),
            Profile.of([], anonymous=True))


set_spare_scratch_budget = _engine.set_spare_scratch_budget
spare_scratch_bytes = _engine.spare_scratch_bytes


class CompiledPolicies:
    """Policies compiled once into one engine, each statement knowing its policy.

    A subclass says which policies apply to a request by answering the converter's
    questions (the *resolver* protocol), each asked once per distinct value of a batch:

    * ``caller(principal)``: (account, identity, owner class of its own account, facts,
      is a session), or None for a principal it does not know (an implicit deny decided
      by ``principal``); raises ``RequestError`` for one that cannot be evaluated. ``facts``
      are the principal's context entries that the policies test, when the caller's identity
      is known (``facts`` module), as (key id, values, is a list); else None. Identities
      and owner classes are small numbers: what selects the identity layers, and the RCP
      levels of a resource owner.
    * ``resource(resource)``: (resource policy number or -1, owner class, or None for the
      caller's own account). ``places_every_resource``: True when that answer is the same for
      every resource (a policy set), so that it is asked once, not once per distinct resource.
    * ``owner(account)``: the owner class of an explicit resource account.
    * ``identity_profile(identity)``: the caller's ``Profile`` (identity, boundary, session, SCPs).
    * ``resource_profile(resource policy, owner class)``: the resource's ``Profile`` (its policy, RCPs).
    * ``grants(principal, identity, resource policy)``: per statement of that policy (or of a VPC
      endpoint's), how its Principal names the caller (``principals.Grant``).
    * ``reads_endpoints``: whether requests may come through VPC endpoints with policies; if so,
      ``endpoint(source_vpce)``: the policy number of the endpoint a request's ``aws:SourceVpce``
      names (None: the request gives none), or -1 for none.
    """

    reads_endpoints = False
    places_every_resource = False

    @collector_paused
    def __init__(self, policies: Sequence[Policy], private: frozenset[int] = frozenset(),
                 read_keys: Sequence[str] = ()) -> None:
        """Compile ``policies``; those numbered in ``private`` (each one principal's or one resource's)
        are scanned for the requests that name them rather than indexed for all (see ``_engine.Engine``).
        ``read_keys``: context keys (lower case) the converters read though no policy tests them."""
        self.policies = tuple(policies)
        self.key_ids: dict[str, int] = {key: number for number, key in enumerate(read_keys)}
        self.statements: list[_Compiled] = []
        patterns = PatternSet(self.key_ids)
        conditions = ConditionSet(self.key_ids)
        action_patterns = _engine.PatternStatements(GlobTrie(True), True)  # actions compare case-insensitively
        resource_patterns = _engine.PatternStatements(ArnTrie(), False)  # keyed by ARN fields when many
        dynamic: list[int] = []
        table = []

        for policy_number, policy in enumerate(self.policies):
            substitute = policy.has_policy_variables
            listed = policy_number not in private
            for slot, statement in enumerate(policy.statements):
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
                fixed_texts = []
                for text in resources or ():
                    if text == "*":
                        continue
                    if substitute and "${" in text:
                        dynamic_here.append(len(dynamic))
                        dynamic.append(patterns.add(text, True))
                    else:
                        fixed_texts.append(text)
                fixed = resource_patterns.add(fixed_texts, number if listed else None)
                # A statement whose Resource lists only fixed patterns is found through the
                # resource trie alone (its actions are checked then), so a common action does
                # not make every such statement a candidate.
                indexed = not flags & _engine.FLAG_ANY_RESOURCE and statement.resources is not None \
                    and not dynamic_here
                if indexed:
                    flags |= _engine.FLAG_RESOURCE_INDEXED
                action_ids = action_patterns.add(statement.actions or statement.not_actions or (),
                                                 number if listed and not indexed else None)
                group = conditions.add_group(statement.conditions, substitute) if statement.conditions else -1
                table.append((policy_number, flags, group, dynamic_here, slot, action_ids, fixed))
                ref = StatementRef(policy.name, statement.index, statement.sid, statement.effect)
                self.statements.append(_Compiled(ref, policy_number, slot,
                                                 statement.actions or statement.not_actions or (),
                                                 statement.not_actions is not None))
        action_patterns.trie.freeze()
        resource_patterns.trie.freeze()
        patterns.freeze()
        conditions.freeze()
        self._key_by_id = {number: key for key, number in self.key_ids.items()}
        self._engine = _engine.Engine(
            table, action_patterns, resource_patterns, dynamic, patterns, conditions, self.key_ids, len(self.policies),
            [kid for key, kid in self.key_ids.items() if is_principal_key(key)], private,
        )
        self._singles = _engine.SingleRequests(self._engine, tuple(UNEXPLAINED.get(code) for code in range(4)))
        self._stats = {
            "policies": len(self.policies),
            "statements": len(self.statements),
            "action_patterns": len(action_patterns.lists),
            "resource_patterns": len(resource_patterns.lists),
            "dynamic_resource_patterns": len(dynamic),
            "condition_keys": len(self.key_ids),
            "action_trie": action_patterns.trie.get_stats(),
            "resource_trie": resource_patterns.trie.get_stats(),
        }

    def get_stats(self) -> dict[str, Any]:
        """Sizes of the compiled tables, and the state of the lazy-DFA caches of the scratch buffers
        kept for reuse, for capacity planning and benchmarks."""
        return {**self._stats, "dfa_caches": self._engine.dfa_stats()}

    @property
    def nbytes(self) -> int:
        """Bytes of C memory the engine holds now: its tables and its spare scratch buffers."""
        return self._engine.nbytes

    # ------------------------------------------------------------ explanation

    def _unknown(self, principal: str) -> Decision:
        """The decision for a principal the resolver does not know."""
        return Decision(DecisionKind.IMPLICIT_DENY, "principal", reason=f"the principal {principal} is not known")

    def _explain(self, batch: _engine.Batch, near_miss_limit: int = NEAR_MISSES, memo: dict | None = None,
                 candidates: dict[tuple, Candidates] | None = None) -> list[Decision]:
        """The explained decision of every request of a converted batch; ``near_miss_limit`` 0 lists no
        near misses (``reference.explained``).

        The same statements in the same place (``Batch.place``) combine into the same decision: ``memo``
        keeps it for the batch, or for every request of a single-request converter, and rows in other places
        that read alike share one too (``_shared_combined``). What a request's own values explain (the keys
        each statement needed, the near misses of a deny) is added to it request by request, from the Allows
        of its action and layers (``candidates``: kept likewise)."""
        decisions = []
        memo = {} if memo is None else memo
        candidates = {} if candidates is None else candidates
        shared: dict[tuple, tuple[Decision, Layers | None]] = {}
        explained_requests = self._engine.explain_range(batch, 0, batch.n)
        for i, (code, applicable, needy, failed_statement) in enumerate(explained_requests):
            if i in batch.errors:
                decisions.append(failed(batch.errors[i]))
            elif i in batch.unknown:
                decisions.append(self._unknown(batch.unknown[i]))
            elif code == _engine.FAILED:
                decisions.append(failed(self._failure(failed_statement)))
            else:
                key = (tuple(applicable), batch.place(i))
                combined = memo.get(key)
                if combined is None:
                    combined = memo[key] = self._shared_combined(shared, batch, i, applicable)
                decision, layers = combined
                if layers is not None and (needy or (near_miss_limit and not decision.allowed)):
                    decision = self._explained(batch, i, decision, layers, needy, near_miss_limit, candidates)
                decisions.append(decision)
        return decisions

    def _shared_combined(self, shared: dict[tuple, tuple[Decision, Layers | None]], batch: _engine.Batch, i: int,
                         applicable: list[int]) -> tuple[Decision, Layers | None]:
        """``_combined`` for request i, built once for the rows of a batch that give it the same inputs (many
        principals of a store do: who-can explains a row per principal), and shared: a decision is immutable.
        Of the profiles it reads only the roles of the policies whose statements applied, and which layers
        are present. An action that needs no permission has no layers."""
        caller, resource = batch.profiles(i)
        action_flags, resource_kind = batch.rules(i)
        if action_flags & service_rules.ALWAYS and not caller.anonymous:
            return always_allowed(), None
        same_account, grants, endpoint_grants = batch.same_account(i), batch.grants(i), batch.endpoint_grants(i)
        policies = {self.statements[number].policy for number in applicable}
        key = (tuple(applicable), same_account, grants, endpoint_grants, action_flags, resource_kind,
               tuple(role for role in caller.roles if role[0] in policies), caller.has_boundary, caller.has_session,
               caller.n_scp, caller.anonymous, tuple(role for role in resource.roles if role[0] in policies),
               resource.resource_policy >= 0, resource.n_rcp, resource.has_endpoint)
        combined = shared.get(key)
        if combined is None:
            combined = shared[key] = self._combined(applicable, same_account, caller, resource, grants,
                                                    endpoint_grants, action_flags, resource_kind)
        return combined

    def _failure(self, statement: int) -> str:
        if statement < 0:  # the request failed before any statement: its reason is reported with it
            return "the request could not be evaluated"
        compiled = self.statements[statement]
        conditions = self.policies[compiled.policy].statements[compiled.slot].conditions
        return (f"a condition of {compiled.ref} cannot read the request's value of "
                f"{' or '.join(sorted({condition.key for condition in conditions}))}")

    def _combined(self, applicable: list[int], same_account: bool, caller: Profile, resource: Profile,
                  grants: bytes | None, endpoint_grants: bytes | None, action_flags: int,
                  resource_kind: int) -> tuple[Decision, Layers]:
        """The decision of the statements that applied, with ``decision.combine``, the rule the reference
        uses, and the layers it was combined from."""
        rcp_applies = bool(action_flags & service_rules.RCP_APPLIES)
        by_policy: dict[int, list[_Compiled]] = {}
        for number in applicable:
            compiled = self.statements[number]
            by_policy.setdefault(compiled.policy, []).append(compiled)
        by_layer: dict[str, tuple[list[StatementRef], list[StatementRef]]] = {}
        grant = Grant.NONE
        for policy, layer, level in caller.roles + resource.roles:
            if layer == _engine.LAYER_RCP and not rcp_applies:
                continue
            for compiled in by_policy.get(policy, ()):
                names = Grant.NONE
                if layer == _engine.LAYER_RESOURCE:
                    names = Grant(grants[compiled.slot]) if grants is not None else Grant.NONE
                    if names is Grant.NONE:
                        continue  # a resource-policy statement applies only to the callers it names
                if layer == _engine.LAYER_ENDPOINT and (endpoint_grants is None
                                                        or endpoint_grants[compiled.slot] == Grant.NONE):
                    continue  # so does an endpoint policy's
                denies, allows = by_layer.setdefault(layer_name(layer, level), ([], []))
                if compiled.ref.effect is Effect.DENY:
                    denies.append(compiled.ref)
                else:
                    allows.append(compiled.ref)
                    grant = max(grant, names)

        def result(layer: str) -> LayerResult:
            denies, allows = by_layer.get(layer, ((), ()))
            return LayerResult(tuple(denies), tuple(allows))

        layers = Layers(
            identity=result("identity"),
            resource=result("resource") if resource.resource_policy >= 0 else None,
            resource_grant=grant,
            permissions_boundary=result("permissions_boundary") if caller.has_boundary else None,
            session=result("session") if caller.has_session else None,
            scp=tuple(result(f"scp[{i}]") for i in range(caller.n_scp)) if caller.n_scp else None,
            rcp=tuple(result(f"rcp[{i}]") for i in range(resource.n_rcp)) if resource.n_rcp and rcp_applies else None,
            vpc_endpoint=result("vpc_endpoint") if resource.has_endpoint else None,
        )
        must_allow = service_rules.must_allow(action_flags, resource_kind) if resource.resource_policy >= 0 else 0
        return combine(layers, same_account, must_allow=must_allow, anonymous=caller.anonymous), layers

    def _explained(self, batch: _engine.Batch, i: int, decision: Decision, layers: Layers, needy: list[int],
                   near_miss_limit: int, candidates_by_layers: dict[tuple, Candidates]) -> Decision:
        """Request i's decision explained with the reference's rules (``reference.explained``): the keys each
        statement the engine found needy needed, and the near misses among the Allows of the request's
        layers (found once per action and layers, in ``candidates_by_layers``)."""
        near_miss_limit = 0 if decision.allowed else near_miss_limit
        action, resource_arn, entries = batch.decided(i)
        candidates: Candidates = {}
        if near_miss_limit:
            caller, resource = batch.profiles(i)
            grants, endpoint_grants = batch.grants(i), batch.endpoint_grants(i)
            rcp_applies = bool(batch.rules(i)[0] & service_rules.RCP_APPLIES)
            key = (action, id(caller), id(resource), grants, endpoint_grants, rcp_applies)  # the batch holds both
            if key not in candidates_by_layers:
                candidates_by_layers[key] = self._candidates(action, caller.roles + resource.roles, grants,
                                                             endpoint_grants, rcp_applies)
            candidates = candidates_by_layers[key]
            if not needy and not candidates:  # no Allow of its action anywhere: nothing nearly applied
                return decision
        context: dict[str, ContextValue] = {
            self._key_by_id[key]: values if is_list or len(values) != 1 else values[0]
            for key, values, is_list in entries}
        needs: Needs = {}
        for number in needy:
            compiled = self.statements[number]
            policy = self.policies[compiled.policy]
            keys = needed_keys(policy.statements[compiled.slot], policy, resource_arn, context)
            if keys:
                needs[compiled.ref] = keys
        return explained(decision, layers, needs, candidates, resource_arn, context, near_miss_limit)

    def _candidates(self, action: str, roles: tuple[tuple[int, int, int], ...], grants: bytes | None,
                    endpoint_grants: bytes | None, rcp_applies: bool) -> Candidates:
        """The Allow statements whose action matches, by layer, as ``reference.layer_result`` finds them: the
        request's roles, in order, and whether a resource-based policy's statement names the caller."""
        candidates: Candidates = {}
        for policy_number, layer, level in roles:
            if layer == _engine.LAYER_RCP and not rcp_applies:
                continue
            names = grants if layer == _engine.LAYER_RESOURCE else \
                endpoint_grants if layer == _engine.LAYER_ENDPOINT else None
            resource_based = layer in (_engine.LAYER_RESOURCE, _engine.LAYER_ENDPOINT)
            policy = self.policies[policy_number]
            for slot, statement in enumerate(policy.statements):
                if statement.effect is Effect.ALLOW and action_applies(statement, action):
                    names_caller = not resource_based or (names is not None and names[slot] != Grant.NONE)
                    candidates.setdefault(layer_name(layer, level), []).append(
                        Candidate(policy, statement, names_caller))
        return candidates

    # ------------------------------------------------------------ evaluation

    def _convert(self, principals, actions, resources, contexts=None, resource_accounts=None,
                 session_tags=None, fresh: bool = False) -> _engine.Batch:
        return _engine.convert(self._engine, self, principals, actions, resources, contexts, resource_accounts,
                               session_tags, fresh)

    if TYPE_CHECKING:
        def evaluate(self, request: Request, explain: bool = True, usage: StatementUsage | None = None) -> Decision:
            ...
    else:  # compiled (``_engine.evaluate``), with no Python frame between a caller and the single-request path
        evaluate = _engine.evaluate

    def _evaluate_counted(self, request: Request, explain: bool, usage: StatementUsage) -> Decision:
        """``evaluate`` with ``usage``: the request converted and decided, then counted and decided again."""
        conversion = self._singles.convert(self, request)
        try:
            usage.tally(conversion.batch)
            if explain:
                return self._explain(conversion.batch, memo=conversion.explained, candidates=conversion.candidates)[0]
            return self._unexplained(conversion.batch)
        finally:
            self._singles.release(conversion)

    def _unexplained(self, batch: _engine.Batch) -> Decision:
        """The decision without explanation of a single request's batch, decided (``SingleRequests.decide`` asks
        only for a request that failed, or whose principal is unknown)."""
        if 0 in batch.errors:
            return failed(batch.errors[0])
        if 0 in batch.unknown:
            return self._unknown(batch.unknown[0])
        code = batch.codes_view()[0]
        if code == _engine.FAILED:
            return failed(self._failure(self._engine.explain_range(batch, 0, 1)[0][3]))
        return UNEXPLAINED.get(code) or UNEXPLAINED[_engine.IMPLICIT_DENY]  # no decision has another code

    def evaluate_batch(self, requests: Sequence[Request], explain: bool = False,
                       threads: int = 1) -> BatchDecisions | list[Decision]:
        """Decide many requests: converted once, then decided in C without the GIL."""
        return self.evaluate_columns(
            [r.principal for r in requests], [r.action for r in requests], [r.resource for r in requests],
            [r.context for r in requests], [r.resource_account for r in requests], explain=explain, threads=threads,
            session_tags=[r.session_tags or None for r in requests],
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
        session_tags: Sequence[Mapping[str, str] | None] | None = None,
        usage: StatementUsage | None = None,
    ) -> BatchDecisions | list[Decision]:
        """The columnar form: parallel sequences, one entry per request (the fastest path).

        ``contexts`` is either one mapping per request, or, fastest, one column per context
        key (``{"aws:SourceIp": [...], ...}``, ``None`` where a request lacks the key), so
        that no per-request object is touched. ``session_tags``: per request, the tags of an
        assumed-role session, or None. A request that cannot be evaluated (a malformed ARN, a
        context value of the wrong type) does not raise: it is denied, and ``errors`` says why. ``usage``:
        count into it, per statement, the requests it applied to (``usage.StatementUsage``; then the requests
        are decided on one thread).
        """
        if explain:
            batch = self._convert(principals, actions, resources, contexts, resource_accounts, session_tags)
            if usage is not None:
                usage.tally(batch)
            return self._explain(batch)
        n = len(principals)
        codes = bytearray(n)
        errors: dict[int, str] = {}
        # Exact lists (and a dict of them) are read in place, and mostly without the GIL, when their values are
        # plain (``_engine.convert_plain``); any other chunk is read by the converter of Python objects.
        in_place = session_tags is None and all(type(column) is list for column in (
            principals, actions, resources, [] if resource_accounts is None else resource_accounts)) \
            and (contexts is None or type(contexts) is dict)

        def convert(start: int) -> _engine.Batch:
            """One chunk: small enough that its data is still in cache when decided."""
            stop = min(n, start + CHUNK)
            if in_place:
                batch = _engine.convert_plain(self._engine, self, principals, actions, resources, contexts,
                                              resource_accounts, start, stop)
                if batch is not None:
                    return batch

            def chunk(column):  # a list of one chunk that only the batch holds (copied once)
                if column is None:
                    return None
                if type(column) is list:
                    return column[start:stop]
                return list(column if start == 0 and stop == n else column[start:stop])

            if isinstance(contexts, Mapping):
                chunk_contexts: Any = {key: chunk(column) for key, column in dict(contexts).items()}
            else:
                chunk_contexts = chunk(contexts)
            return self._convert(chunk(principals), chunk(actions), chunk(resources), chunk_contexts,
                                 chunk(resource_accounts), chunk(session_tags), fresh=True)

        def collect(start: int, batch: _engine.Batch) -> None:
            chunk_codes = batch.codes_view()
            codes[start:start + len(chunk_codes)] = chunk_codes
            for i, message in batch.errors.items():
                errors[start + i] = message
            i = chunk_codes.find(_engine.FAILED)
            while i >= 0:  # rare: explain each evaluation failure to say why
                if i not in batch.errors:
                    errors[start + i] = self._failure(self._engine.explain_range(batch, i, i + 1)[0][3])
                i = chunk_codes.find(_engine.FAILED, i + 1)

        starts = range(0, n, CHUNK)
        if threads <= 1 or n <= CHUNK or usage is not None:
            for start in starts:
                batch = convert(start)
                if usage is None:
                    self._engine.evaluate_range(batch, 0, batch.n)
                else:
                    usage.tally(batch)
                collect(start, batch)
        else:
            # Each thread converts and decides chunks of its own. Deciding needs no GIL, nor does most of
            # converting columns read in place; Python objects are converted with the GIL, one thread at a
            # time. At most two chunks per thread wait to be collected, which bounds the memory they hold.
            def decided(start: int) -> _engine.Batch:
                batch = convert(start)
                self._engine.evaluate_range(batch, 0, batch.n)
                return batch

            with ThreadPoolExecutor(threads) as pool:
                waiting: deque = deque()
                for start in starts:
                    waiting.append((start, pool.submit(decided, start)))
                    while len(waiting) > 2 * threads:
                        start, future = waiting.popleft()
                        collect(start, future.result())
                for start, future in waiting:
                    collect(start, future.result())
        return BatchDecisions(bytes(codes).translate(FAILED_DENIES), errors)


class CompiledPolicySet(CompiledPolicies):
    """A policy set compiled for fast evaluation; gives the reference evaluator's answers.

    Every request has the same profile; a policy that stands in two layers is compiled
    once for each. Immutable, and safe to share between threads.
    """

    def __init__(self, policies: PolicySet) -> None:
        layered = [*policies.identity, *((policies.resource,) if policies.resource is not None else ()),
                   *(policies.permissions_boundary or ()), *(policies.session or ()),
                   *(p for level in policies.scp or () for p in level),
                   *(p for level in policies.rcp or () for p in level), *(policies.vpc_endpoint or ())]
        # The resource's policy is scanned, as a store's resource policies are (numbered after the identity's).
        super().__init__(layered, frozenset({len(policies.identity)} if policies.resource is not None else ()))
        self.policy_set = policies
        numbers = iter(range(len(layered)))
        self._caller_profile, self._resource_profile, self._anonymous_profile = profiles_of(
            policies, lambda _: next(numbers))
        self._endpoint = len(layered) - 1 if policies.vpc_endpoint else -1
        self.reads_endpoints = self._endpoint >= 0
        self._grants: dict[tuple[str, int, int], bytes] = {}  # the resolver's answers, kept between calls

    places_every_resource = True

    # The resolver: one profile for every request (another for anonymous ones), all through the set's VPC
    # endpoint if it has one; the caller's own keys are used as given (an anonymous caller has none).
    def caller(self, principal: str) -> tuple[str, int, int, tuple | None, bool]:
        caller = Caller.parse(principal)  # kept between calls by Caller.parse
        if caller.kind == service_rules.ANONYMOUS:
            return caller.account, 1, 0, (), False
        return caller.account, 0, 0, None, caller.kind == "assumed-role"

    def endpoint(self, source_vpce: str | None) -> int:
        return self._endpoint

    def resource(self, resource: str) -> tuple[int, int]:
        return self._resource_profile.resource_policy, 0

    def owner(self, account: str) -> int:
        return 0

    def identity_profile(self, identity: int) -> Profile:
        return self._anonymous_profile if identity else self._caller_profile

    def resource_profile(self, resource_policy: int, owner: int) -> Profile:
        return self._resource_profile

    def grants(self, principal: str, identity: int, resource_policy: int) -> bytes:
        grants = self._grants.get((principal, identity, resource_policy))
        if grants is None:
            caller = Caller.parse(principal)
            has_boundary = self.identity_profile(identity).has_boundary
            grants = bytes(statement_grant(statement, caller, has_boundary)
                           for statement in self.policies[resource_policy].statements)
            remember(self._grants, (principal, identity, resource_policy), grants)
        return grants
