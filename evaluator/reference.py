"""The reference evaluator: AWS IAM's evaluation logic, written to be read.

This is the executable specification. It walks every statement of every
policy, so its cost grows with the policy set; the compiled engine must give
the same decisions and statements, faster. Policy layers are combined by
``decision.combine``, shared with the compiled engine.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from . import service_rules
from .conditions import EvaluationError, comparator, condition_holds
from .decision import Decision, LayerResult, Layers, StatementRef, always_allowed, combine, failed
from .facts import effective_context
from .model import Effect, Policy, Statement
from .principals import Caller, Grant, RequestError, statement_grant
from .request import PolicySet, Request
from .variables import Unresolvable, expand_pattern
from .wildcard import glob_match, matcher


def action_matches(patterns: tuple[str, ...], action: str) -> bool:
    """Actions compare case-insensitively; ``*`` and ``?`` may stand anywhere."""
    return any(matcher(p, ignore_case=True)(action) for p in patterns)


def _resource_test(text: str, context: Mapping, substitute: bool) -> Callable[[str], bool]:
    if substitute and "${" in text:
        pattern = expand_pattern(text, context, substitute)  # may raise Unresolvable
        return lambda resource: glob_match(pattern, resource)
    return matcher(text)


def resource_matches(patterns: tuple[str, ...], request: Request, substitute: bool) -> bool:
    """Resource ARNs compare case-sensitively, and ``*`` runs across ``:`` and ``/``.

    A request for ``"*"`` (an action without resource-level permissions) is
    matched only by a policy Resource of ``"*"``. Every pattern's variables are
    resolved first, so one that cannot be resolved raises ``Unresolvable``
    whatever the order of the list.
    """
    tests = [_resource_test(text, request.context, substitute) for text in patterns if text != "*"]
    if "*" in patterns:
        return True
    return request.resource != "*" and any(test(request.resource) for test in tests)


def action_applies(statement: Statement, action: str) -> bool:
    """Action names the request's action (or NotAction does not)."""
    return ((statement.actions is None or action_matches(statement.actions, action))
            and (statement.not_actions is None or not action_matches(statement.not_actions, action)))


def why_not_applies(statement: Statement, policy: Policy, request: Request, missing: set[str]) -> str:
    """Why a statement does not apply beyond its action: the first of Resource, NotResource, a policy
    variable, a condition ("" when it applies). Adds the keys its conditions needed and missed to ``missing``.

    A policy variable that cannot be resolved makes the whole statement not
    apply, whether it stands in Resource or in a condition value; that is
    settled before any condition is evaluated.
    """
    substitute = policy.has_policy_variables
    try:
        if statement.resources is not None and not resource_matches(statement.resources, request, substitute):
            return f"Resource does not match {request.resource}"
        if statement.not_resources is not None and resource_matches(statement.not_resources, request, substitute):
            return f"NotResource matches {request.resource}"
        comparators = [comparator(c, request.context, substitute) for c in statement.conditions]
    except Unresolvable as exc:
        return str(exc)
    reason = ""
    for condition, compare in zip(statement.conditions, comparators, strict=True):
        needed: set[str] = set()  # every condition is evaluated: the decision lists every key it missed
        if not condition_holds(condition, request.context, compare, needed) and not reason:
            reason = (f"context key {condition.key} is missing ({condition.operator})" if needed
                      else f"condition {condition.operator} on {condition.key} is false")
        missing |= needed
    return reason


def statement_applies(statement: Statement, policy: Policy, request: Request, missing: set[str]) -> bool:
    """Action, resource and every condition match (Principal is checked by the caller)."""
    return action_applies(statement, request.action) and not why_not_applies(statement, policy, request, missing)


def _ref(policy: Policy, statement: Statement) -> StatementRef:
    return StatementRef(policy.name, statement.index, statement.sid, statement.effect)


def layer_result(policies: tuple[Policy, ...], request: Request, missing: set[str]) -> LayerResult:
    """The applicable statements of policies whose statements are pooled (one layer)."""
    applicable = [
        _ref(policy, statement)
        for policy in policies
        for statement in policy.statements
        if statement_applies(statement, policy, request, missing)
    ]
    return LayerResult(
        denies=tuple(r for r in applicable if r.effect is Effect.DENY),
        allows=tuple(r for r in applicable if r.effect is Effect.ALLOW),
    )


def resource_layer(
    policy: Policy, request: Request, caller: Caller, has_boundary: bool, missing: set[str]
) -> tuple[LayerResult, Grant]:
    """A resource-based policy (or a VPC endpoint's): statements apply only where their Principal names
    the caller."""
    denies, allows, grant = [], [], Grant.NONE
    for statement in policy.statements:
        names = statement_grant(statement, caller, has_boundary)
        if names is Grant.NONE or not statement_applies(statement, policy, request, missing):
            continue
        if statement.effect is Effect.DENY:
            denies.append(_ref(policy, statement))
        else:
            allows.append(_ref(policy, statement))
            grant = max(grant, names)
    return LayerResult(tuple(denies), tuple(allows)), grant


def _as_decided(request: Request, caller: Caller, facts: Mapping[str, object] | None) -> Request:
    """The request with the context it is decided with: the store's facts of the principal in place of
    what the request says of it, and the session's tags."""
    if caller.kind == service_rules.ANONYMOUS:
        facts = {}  # AWS knows nothing of an anonymous caller, and the request cannot say otherwise
    if facts is not None or request.session_tags:
        return replace(request, context=effective_context(request.context, facts, request.session_tags))
    return request


def evaluate(policies: PolicySet, request: Request, facts: Mapping[str, object] | None = None) -> Decision:
    """Decide one request. Any error denies it, with the reason in the decision.

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
        missing: set[str] = set()

        def layer(pool: tuple[Policy, ...] | None) -> LayerResult | None:
            return None if pool is None else layer_result(pool, request, missing)

        has_boundary = policies.permissions_boundary is not None and not anonymous
        resource, grant = (
            resource_layer(policies.resource, request, caller, has_boundary, missing)
            if policies.resource
            else (None, Grant.NONE)
        )
        endpoint = (resource_layer(policies.vpc_endpoint[0], request, caller, has_boundary, missing)[0]
                    if policies.vpc_endpoint else None)
        rcp_applies = flags & service_rules.RCP_APPLIES and policies.rcp is not None
        if anonymous:  # none of the caller's own layers: it has no identity
            identity, boundary, session, scp = LayerResult(), None, None, None
        else:
            identity, boundary, session = (layer_result(policies.identity, request, missing),
                                           layer(policies.permissions_boundary), layer(policies.session))
            scp = None if policies.scp is None else tuple(layer_result(lv, request, missing) for lv in policies.scp)
        layers = Layers(
            identity=identity,
            resource=resource,
            resource_grant=grant,
            permissions_boundary=boundary,
            session=session,
            scp=scp,
            rcp=tuple(layer_result(lv, request, missing) for lv in policies.rcp) if rcp_applies else None,
            vpc_endpoint=endpoint,
        )
        must_allow = service_rules.must_allow(flags, service_rules.resource_kind(request.resource))
        return combine(layers, request.resource_account == caller.account, tuple(sorted(missing)),
                       must_allow=must_allow if policies.resource is not None else 0, anonymous=anonymous)
    except (EvaluationError, RequestError) as exc:
        return failed(str(exc))
    except Exception as exc:  # noqa: BLE001 - fail closed on any defect, and say so
        return failed(f"internal error: {type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class NearMiss:
    """An Allow statement whose action matched the request but that did not apply, and the first reason."""

    statement: StatementRef
    reason: str

    def __str__(self) -> str:
        return f"{self.statement}: {self.reason}"


def near_misses(policies: PolicySet, request: Request, facts: Mapping[str, object] | None = None,
                limit: int = 5) -> tuple[tuple[NearMiss, ...], int]:
    """The Allow statements, in any layer, that nearly applied: what to look at when a request expected
    to be allowed is denied (a Deny that did not apply cannot explain a deny). Returns the first ``limit``
    and how many more there are.
    """
    caller = Caller.parse(request.principal)
    request = _as_decided(request, caller, facts)
    anonymous = caller.kind == service_rules.ANONYMOUS  # it has no identity: none of the caller's own layers
    pooled = [] if anonymous else [*policies.identity, *(policies.permissions_boundary or ()),
                                   *(policies.session or ()), *(p for level in policies.scp or () for p in level)]
    pooled += [p for level in policies.rcp or () for p in level]
    resource_based = [p for p in (policies.resource, *(policies.vpc_endpoint or ())) if p is not None]
    has_boundary = policies.permissions_boundary is not None and not anonymous
    misses = []
    for policy, names_caller in [*((p, False) for p in pooled), *((p, True) for p in resource_based)]:
        for statement in policy.statements:
            if statement.effect is not Effect.ALLOW or not action_applies(statement, request.action):
                continue
            try:
                if names_caller and statement_grant(statement, caller, has_boundary) is Grant.NONE:
                    reason = "its Principal does not name the caller"
                else:
                    reason = why_not_applies(statement, policy, request, set())
            except EvaluationError as exc:  # a context value its condition cannot read
                reason = str(exc)
            if reason:
                misses.append(NearMiss(_ref(policy, statement), reason))
    return tuple(misses[:limit]), max(0, len(misses) - limit)
