"""The reference evaluator: AWS IAM's evaluation logic, written to be read.

This is the executable specification. It walks every statement of every
policy, so its cost grows with the policy set; the compiled engine must give
the same decisions and statements, faster. Policy layers are combined by
``decision.combine``, shared with the compiled engine. So is the explanation
of a decision: which context keys each statement needed (``needed_keys``),
and, for a deny, why each Allow whose action matched did not allow it
(``why_not_applies``, ``near_misses``); the compiled engine asks these rules
about the statements it found.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import NamedTuple

from . import service_rules
from .conditions import EvaluationError, comparator, condition_holds
from .decision import (
    NEAR_MISSES,
    Decision,
    LayerResult,
    Layers,
    Miss,
    MissingKey,
    MissKind,
    NearMiss,
    StatementRef,
    always_allowed,
    combine,
    failed,
)
from .facts import effective_context
from .model import Condition, Effect, Policy, Statement
from .operators import OPERATORS, Family
from .principals import Caller, Grant, RequestError, statement_grant
from .request import PolicySet, Request
from .variables import Unresolvable, absent_variables, expand_pattern, expand_text, open_pattern
from .wildcard import glob_match, matcher


def action_matches(patterns: tuple[str, ...], action: str) -> bool:
    """Actions compare case-insensitively; ``*`` and ``?`` may stand anywhere."""
    return any(matcher(p, ignore_case=True)(action) for p in patterns)


def _resource_test(text: str, context: Mapping, substitute: bool) -> Callable[[str], bool]:
    if substitute and "${" in text:
        pattern = expand_pattern(text, context, substitute)  # may raise Unresolvable
        return lambda resource: glob_match(pattern, resource)
    return matcher(text)


def resource_matches(patterns: tuple[str, ...], resource: str, context: Mapping, substitute: bool) -> bool:
    """Resource ARNs compare case-sensitively, and ``*`` runs across ``:`` and ``/``.

    A request for ``"*"`` (an action without resource-level permissions) is
    matched only by a policy Resource of ``"*"``. Every pattern's variables are
    resolved first, so one that cannot be resolved raises ``Unresolvable``
    whatever the order of the list.
    """
    tests = [_resource_test(text, context, substitute) for text in patterns if text != "*"]
    if "*" in patterns:
        return True
    return resource != "*" and any(test(resource) for test in tests)


def action_applies(statement: Statement, action: str) -> bool:
    """Action names the request's action (or NotAction does not)."""
    return ((statement.actions is None or action_matches(statement.actions, action))
            and (statement.not_actions is None or not action_matches(statement.not_actions, action)))


def why_not_applies(statement: Statement, policy: Policy, resource: str, context: Mapping) -> Miss | None:
    """Why a statement does not apply beyond its action: the first of Resource, NotResource, a policy
    variable, a condition (None when it applies).

    A policy variable that cannot be resolved makes the whole statement not
    apply, whether it stands in Resource or in a condition value; that is
    settled before any condition is evaluated. Every condition is evaluated
    then, so that one that cannot read the request's value fails the request
    (``EvaluationError``) wherever it stands.
    """
    substitute = policy.has_policy_variables
    try:
        if statement.resources is not None and not resource_matches(statement.resources, resource, context,
                                                                    substitute):
            return Miss(MissKind.RESOURCE, f"Resource does not match {resource}", patterns=statement.resources)
        if statement.not_resources is not None and resource_matches(statement.not_resources, resource, context,
                                                                    substitute):
            return Miss(MissKind.RESOURCE, f"NotResource matches {resource}", patterns=statement.not_resources)
        comparators = [comparator(c, context, substitute) for c in statement.conditions]
    except Unresolvable as exc:
        return Miss(MissKind.VARIABLE, str(exc), key=exc.key, sent=_values(context.get(exc.key.lower())))
    first = None
    for condition, compare in zip(statement.conditions, comparators, strict=True):
        absent: set[str] = set()
        if not condition_holds(condition, context, compare, absent) and first is None:
            first = _condition_miss(condition, context, substitute, bool(absent))
    return first


SHOWN_VALUES, SHOWN_CHARS = 8, 200
"""A miss shows at most this many values sent or wanted, each cut to this many characters: an explanation
travels in responses and logs, and must not grow with what a request sends."""


def _cut_short(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(v if len(v) <= SHOWN_CHARS else v[:SHOWN_CHARS] + "…" for v in values[:SHOWN_VALUES])


def _values(value: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if value is None else _cut_short((value,) if isinstance(value, str) else value)


def _condition_miss(condition: Condition, context: Mapping, substitute: bool, absent: bool) -> Miss:
    """Why a false condition is false: its key is missing, or the value sent is not one it wants."""
    if absent:
        return Miss(MissKind.MISSING_KEY, f"context key {condition.key} is missing ({condition.operator})",
                    operator=condition.operator, key=condition.key)
    family = OPERATORS[condition.base_operator].family
    wanted = _cut_short([expand_text(v, context, substitute) for v in condition.values]
                    if family in (Family.STRING, Family.ARN) else condition.values)
    return Miss(MissKind.CONDITION, f"condition {condition.operator} on {condition.key} is false",
                operator=condition.operator, key=condition.key, sent=_values(context.get(condition.key.lower())),
                wanted=wanted)


def statement_applies(statement: Statement, policy: Policy, request: Request) -> bool:
    """Action, resource and every condition match (Principal is checked by the caller)."""
    return (action_applies(statement, request.action)
            and why_not_applies(statement, policy, request.resource, request.context) is None)


def needed_keys(statement: Statement, policy: Policy, resource: str, context: Mapping) -> tuple[str, ...]:
    """The context keys a statement needed and the request did not give (as the policy spells them), when
    it could have applied: its Resource and NotResource let the request's resource in, or would for some
    values of the policy variables the request leaves unresolved; otherwise none.

    They are the keys of its policy variables without a default (in Resource, NotResource, and String and
    Arn condition values) and the keys of its conditions but ``Null``'s, each absent from the context. A
    key counts even where its condition holds without it (``...IfExists``, a negated operator,
    ``ForAllValues``): sent, it could change the answer. The action (and a resource-based policy's
    Principal) is the caller's to check.
    """
    substitute = policy.has_policy_variables
    if not _resource_could_match(statement, resource, context, substitute):
        return ()
    keys: list[str] = []
    if substitute:
        for text in (*(statement.resources or ()), *(statement.not_resources or ())):
            keys += absent_variables(text, context)
    for condition in statement.conditions:
        family = OPERATORS[condition.base_operator].family
        if family is not Family.NULL and context.get(condition.key.lower()) is None:
            keys.append(condition.key)
        if substitute and family in (Family.STRING, Family.ARN):
            for value in condition.values:
                keys += absent_variables(value, context)
    return tuple(dict.fromkeys(keys))


def _resource_could_match(statement: Statement, resource: str, context: Mapping, substitute: bool) -> bool:
    """``why_not_applies``'s Resource and NotResource tests, with each policy variable the context does not
    resolve standing for any text: a Resource pattern may match with it as ``*``, and a NotResource pattern
    holding one may be made not to match."""
    def could_match(text: str) -> bool:
        if substitute and "${" in text:
            return glob_match(open_pattern(text, context), resource)
        return matcher(text)(resource)

    if statement.resources is not None and "*" not in statement.resources:
        if resource == "*" or not any(could_match(text) for text in statement.resources):
            return False
    if statement.not_resources is not None:
        if "*" in statement.not_resources:
            return False
        for text in statement.not_resources:
            try:
                if resource != "*" and glob_match(expand_pattern(text, context, substitute), resource):
                    return False
            except Unresolvable:
                continue
    return True


def _ref(policy: Policy, statement: Statement) -> StatementRef:
    return StatementRef(policy.name, statement.index, statement.sid, statement.effect)


class Candidate(NamedTuple):
    """An Allow statement whose action matched, as it stands in one layer: what ``near_misses`` reads."""

    policy: Policy
    statement: Statement
    names_caller: bool  # a resource-based policy's Principal names the caller (always, elsewhere)


Needs = dict[StatementRef, tuple[str, ...]]
"""Per statement that could have applied, the context keys it needed and did not get (``needed_keys``)."""
Candidates = dict[str, list[Candidate]]
"""Per layer (``Layers.named``), its Allow statements whose action matched, in policy order."""


def layer_result(name: str, policies: Sequence[Policy], request: Request, needs: Needs, candidates: Candidates,
                 caller: Caller | None = None, has_boundary: bool = False) -> tuple[LayerResult, Grant]:
    """The applicable statements of one layer, its policies pooled, and the keys its statements needed.

    With ``caller``, the policies are resource-based (a resource's, a VPC endpoint's): a statement applies
    only where its Principal names the caller, and the grant says how the applicable Allows name it.
    """
    denies, allows, grant = [], [], Grant.NONE
    for policy in policies:
        for statement in policy.statements:
            if not action_applies(statement, request.action):
                continue
            names = None if caller is None else statement_grant(statement, caller, has_boundary)
            if statement.effect is Effect.ALLOW:
                candidates.setdefault(name, []).append(Candidate(policy, statement, names is not Grant.NONE))
            if names is Grant.NONE:
                continue
            ref = _ref(policy, statement)
            keys = needed_keys(statement, policy, request.resource, request.context)
            if keys:
                needs[ref] = keys
            if why_not_applies(statement, policy, request.resource, request.context) is not None:
                continue
            if statement.effect is Effect.DENY:
                denies.append(ref)
            else:
                allows.append(ref)
                grant = max(grant, names or Grant.NONE)
    return LayerResult(tuple(denies), tuple(allows)), grant


GRANTING_LAYERS = frozenset({"identity", "resource"})
"""The layers whose Allows grant; the others (boundary, session, SCP and RCP levels, VPC endpoint) only limit."""


def near_misses(layers: Layers, candidates: Mapping[str, Sequence[Candidate]], resource: str, context: Mapping,
                decision: Decision, limit: int = NEAR_MISSES) -> tuple[tuple[NearMiss, ...], int]:
    """For a denied request, the Allow statements whose action matched, each with the first reason it did
    not allow the request, layer by layer in the order decisions list them (``Layers.named``): the first
    ``limit``, and how many more there are.

    An Allow that applied in a layer that only limits is no miss; one that applied in the identity or
    resource layer was cut by the layer that decided. A Deny that did not apply cannot explain a deny, and
    is left out. Whether a statement applied in a layer is read from ``layers``; only the listed ones are
    asked why, so the count of the rest costs nothing more.
    """
    listed: list[NearMiss] = []
    more = 0
    for layer, result in layers.named():
        applied = set(result.allows)
        for policy, statement, names_caller in candidates.get(layer, ()):
            ref = _ref(policy, statement)
            if ref in applied and layer not in GRANTING_LAYERS:
                continue
            if len(listed) >= limit:
                more += 1
                continue
            miss = None
            if not names_caller:
                miss = Miss(MissKind.PRINCIPAL, "its Principal does not name the caller")
            elif ref not in applied:
                try:
                    miss = why_not_applies(statement, policy, resource, context)
                except EvaluationError as exc:  # a context value its condition cannot read
                    miss = Miss(MissKind.ERROR, str(exc))
            listed.append(NearMiss(ref, layer, miss or Miss(MissKind.LAYER, decision.reason,
                                                            cut_by=decision.decided_by)))
    return tuple(listed), more


def explained(decision: Decision, layers: Layers, needs: Mapping[StatementRef, Sequence[str]],
              candidates: Mapping[str, Sequence[Candidate]], resource: str, context: Mapping,
              near_miss_limit: int = NEAR_MISSES) -> Decision:
    """``decision`` (from ``combine``) with its explanation: the missing keys, each with the statements
    that needed it, and, for a deny, its near misses (none asked with ``near_miss_limit`` 0)."""
    by_key: dict[str, set[StatementRef]] = {}
    for ref, keys in needs.items():
        for key in keys:
            by_key.setdefault(key, set()).add(ref)
    missing = tuple(MissingKey(key, tuple(sorted(refs, key=_ref_order))) for key, refs in sorted(by_key.items()))
    misses: tuple[tuple[NearMiss, ...], int] = ((), 0)
    if not decision.allowed and near_miss_limit:
        misses = near_misses(layers, candidates, resource, context, decision, near_miss_limit)
    return replace(decision, missing_keys=tuple(m.key for m in missing), missing_key_statements=missing,
                   near_misses=misses[0], more_near_misses=misses[1])


def _ref_order(ref: StatementRef) -> tuple:
    return ref.policy, ref.index, ref.sid or "", ref.effect


def _as_decided(request: Request, caller: Caller, facts: Mapping[str, object] | None) -> Request:
    """The request with the context it is decided with: the store's facts of the principal in place of
    what the request says of it, and the session's tags."""
    if caller.kind == service_rules.ANONYMOUS:
        facts = {}  # AWS knows nothing of an anonymous caller, and the request cannot say otherwise
    if facts is not None or request.session_tags:
        return replace(request, context=effective_context(request.context, facts, request.session_tags))
    return request


def evaluate(policies: PolicySet, request: Request, facts: Mapping[str, object] | None = None,
             near_miss_limit: int = NEAR_MISSES) -> Decision:
    """Decide one request, explained (``explained``). Any error denies it, with the reason in the decision.

    ``facts``: what a store knows of the principal (``facts`` module; lower-cased keys),
    which replaces what the request says of it; the session's tags join either way.
    """
    try:
        caller = Caller.parse(request.principal)
        anonymous = caller.kind == service_rules.ANONYMOUS
        request = _as_decided(request, caller, facts)
        flags = service_rules.action_flags(request.action)
        if flags & service_rules.ALWAYS and not anonymous:
            return always_allowed()
        needs: Needs = {}
        candidates: Candidates = {}

        def layer(name: str, pool: Sequence[Policy] | None) -> LayerResult | None:
            return None if pool is None else layer_result(name, pool, request, needs, candidates)[0]

        def levels(kind: str, pools: Sequence[Sequence[Policy]] | None) -> tuple[LayerResult, ...] | None:
            return None if pools is None else tuple(layer(f"{kind}[{i}]", pool) for i, pool in enumerate(pools))

        has_boundary = policies.permissions_boundary is not None and not anonymous
        resource, grant = (
            layer_result("resource", (policies.resource,), request, needs, candidates, caller, has_boundary)
            if policies.resource
            else (None, Grant.NONE)
        )
        endpoint = (layer_result("vpc_endpoint", policies.vpc_endpoint, request, needs, candidates, caller,
                                 has_boundary)[0] if policies.vpc_endpoint else None)
        rcp_applies = flags & service_rules.RCP_APPLIES
        if anonymous:  # none of the caller's own layers: it has no identity
            identity, boundary, session, scp = LayerResult(), None, None, None
        else:
            identity = layer_result("identity", policies.identity, request, needs, candidates)[0]
            boundary, session = (layer("permissions_boundary", policies.permissions_boundary),
                                 layer("session", policies.session))
            scp = levels("scp", policies.scp)
        layers = Layers(
            identity=identity,
            resource=resource,
            resource_grant=grant,
            permissions_boundary=boundary,
            session=session,
            scp=scp,
            rcp=levels("rcp", policies.rcp) if rcp_applies else None,
            vpc_endpoint=endpoint,
        )
        must_allow = service_rules.must_allow(flags, service_rules.resource_kind(request.resource))
        decision = combine(layers, request.resource_account == caller.account,
                           must_allow=must_allow if policies.resource is not None else 0, anonymous=anonymous)
        return explained(decision, layers, needs, candidates, request.resource, request.context, near_miss_limit)
    except (EvaluationError, RequestError) as exc:
        return failed(str(exc))
    except Exception as exc:  # noqa: BLE001 - fail closed on any defect, and say so
        return failed(f"internal error: {type(exc).__name__}: {exc}")
