"""Who can do an action on a resource, and what can one principal do: a store's engine asked in batches.

Security reviews ask these questions of a whole store. Asked one request at a time they cost a
simulator call per principal or per action; here each is one batch through the compiled store
(``CompiledStore.evaluate_columns``): every principal × one action and resource, or one principal ×
every action of the IAM catalog. The engine and ``decision.combine`` decide every row; this module
only chooses the rows and groups the answers.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._request import text
from .catalog import Catalog
from .compiled_store import CompiledStore
from .decision import Decision, DecisionKind
from .facts import effective_context
from .model import Effect, Statement
from .principals import RequestError
from .reference import action_applies
from .request import Request
from .service_rules import ANONYMOUS
from .store import PolicyStore, PrincipalRecord
from .variables import Unresolvable, expand_text

ASSUME_ROLE = "sts:AssumeRole"
HOPS = 1
"""Role chains are followed one ``sts:AssumeRole`` hop deep: a principal that may assume an allowed role is
listed; one that could reach it only through a second role is not."""

ACCESS_LEVELS = {"List": "List", "Read": "Read", "Write": "Write",
                 "Permissions management, Write": "Permissions management", "Tagging, Write": "Tagging"}
"""The catalog's access levels as AWS's policy summaries name them, in that order."""
_LEVEL_ORDER = {level: order for order, level in enumerate(ACCESS_LEVELS.values())}

_ALLOW = DecisionKind.ALLOW.code

_PROBE_ACTION = "sts:GetCallerIdentity"
"""A valid action, for checking a query's other fields with ``Request.create`` (which checks every field)."""


@dataclass(frozen=True, slots=True)
class Allowed:
    """A principal the request is allowed for, and the engine's explained decision."""

    principal: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class AssumedRole:
    """A principal not allowed itself that may ``sts:AssumeRole`` into an allowed role (one hop)."""

    principal: str
    role: str
    assume_role: Decision  # the principal's sts:AssumeRole on the role, explained


@dataclass(frozen=True, slots=True)
class Undecided:
    """A row the engine could not evaluate (a context value a condition cannot read, say): denied, and why."""

    principal: str
    action: str
    resource: str
    error: str


@dataclass(frozen=True)
class WhoCan:
    action: str
    resource: str
    principals: tuple[Allowed, ...]
    through_roles: tuple[AssumedRole, ...]
    failures: tuple[Undecided, ...]

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "resource": self.resource, "hops": HOPS,
                "principals": [{"principal": a.principal, "decision": a.decision.to_json()} for a in self.principals],
                "through_roles": [{"principal": r.principal, "role": r.role,
                                   "assume_role": r.assume_role.to_json()} for r in self.through_roles],
                "failures": [_failure_json(f) for f in self.failures]}


@dataclass(frozen=True, slots=True)
class ActionGroup:
    service: str  # the service prefix
    access_level: str  # one of ACCESS_LEVELS' names
    actions: tuple[str, ...]  # service:Action, as the catalog spells them


@dataclass(frozen=True, slots=True)
class ResourceAccess:
    resource: str
    groups: tuple[ActionGroup, ...]  # by service, then access level


@dataclass(frozen=True)
class WhatCan:
    principal: str
    resources: tuple[ResourceAccess, ...]
    failures: tuple[Undecided, ...]

    def to_json(self) -> dict[str, Any]:
        resources = []
        for access in self.resources:
            services: dict[str, dict[str, list[str]]] = {}
            for group in access.groups:
                services.setdefault(group.service, {})[group.access_level] = list(group.actions)
            resources.append({"resource": access.resource, "services": services})
        return {"principal": self.principal, "resources": resources,
                "failures": [_failure_json(f) for f in self.failures]}


def _failure_json(failure: Undecided) -> dict[str, str]:
    return {"principal": failure.principal, "action": failure.action, "resource": failure.resource,
            "error": failure.error}


# ---------------------------------------------------------------- who can


def who_can(compiled: CompiledStore, action: str, resource: str, context: Mapping[str, Any] | None = None,
            resource_account: str | None = None) -> WhoCan:
    """Every principal of the store (and ``anonymous``, for public access) for which the request would be
    allowed, explained; then the principals not allowed that may assume an allowed role. Raises
    ``RequestError`` for a query that cannot be evaluated (a malformed action, resource or context)."""
    probe = Request.create(ANONYMOUS, action, resource, context, resource_account)
    resource_account = None if resource_account is None else probe.resource_account  # a str, as read
    store = compiled.store
    principals = [*store.principals, ANONYMOUS]
    n = len(principals)
    allowed, failures = _allowed(compiled, principals, [probe.action] * n, [probe.resource] * n, probe.context,
                                 resource_account)
    direct = tuple(sorted((Allowed(principals[i], decision) for i, decision in allowed), key=lambda a: a.principal))
    allowed_arns = {entry.principal for entry in direct}
    named = _named_callers(store)
    callers, roles = [], []
    for entry in direct:
        role = store.principals.get(entry.principal)
        if role is None or role.kind != "role":
            continue
        for caller in sorted(_trusted_candidates(store, role, named) - allowed_arns):
            callers.append(caller)
            roles.append(role.arn)
    chains, chain_failures = _allowed(compiled, callers, [ASSUME_ROLE] * len(callers), roles, probe.context, None)
    through_roles = sorted((AssumedRole(callers[i], roles[i], decision) for i, decision in chains),
                           key=lambda chain: (chain.principal, chain.role))
    return WhoCan(probe.action, probe.resource, direct, tuple(through_roles), (*failures, *chain_failures))


def _allowed(compiled: CompiledStore, principals: Sequence[str], actions: Sequence[str], resources: Sequence[str],
             context: Mapping[str, Any], resource_account: str | None
             ) -> tuple[list[tuple[int, Decision]], tuple[Undecided, ...]]:
    """The allowed rows (by position) with their explained decisions, and the rows that failed: every row
    is decided without explanation first (the fast path), then only the allowed ones again, explained."""
    decided = _decide(compiled, principals, actions, resources, context, resource_account)
    failures = tuple(Undecided(principals[i], actions[i], resources[i], error)
                     for i, error in sorted(decided.errors.items()))
    rows = [i for i, code in enumerate(decided.codes) if code == _ALLOW]
    if not rows:
        return [], failures
    explained = _decide(compiled, [principals[i] for i in rows], [actions[i] for i in rows],
                        [resources[i] for i in rows], context, resource_account, explain=True)
    return [(i, decision) for i, decision in zip(rows, explained, strict=True) if decision.allowed], failures


def _decide(compiled: CompiledStore, principals: Sequence[str], actions: Sequence[str], resources: Sequence[str],
            context: Mapping[str, Any], resource_account: str | None, explain: bool = False):
    """One batch through the engine, every row with the same context (as columns: no per-row object)."""
    n = len(principals)
    columns = {key: [value] * n for key, value in context.items()}
    accounts = None if resource_account is None else [resource_account] * n
    return compiled.evaluate_columns(principals, actions, resources, columns, accounts, explain=explain)


def _named_callers(store: PolicyStore) -> dict[str, list[str]]:
    """Each name a Principal element may give that names store principals, with the principals it names:
    a principal's own ARN, its account's id and its account's root ARN (``principals.principal_grant``)."""
    named: dict[str, list[str]] = {}
    for record in store.principals.values():
        for name in (record.arn, record.account, f"arn:aws:iam::{record.account}:root"):
            named.setdefault(name, []).append(record.arn)
    return named


def _trusted_candidates(store: PolicyStore, role: PrincipalRecord, named: Mapping[str, list[str]]) -> set[str]:
    """The principals the role's trust policy may let assume it: an index that narrows the pairs the engine
    then decides, never an answer itself. An Allow of sts:AssumeRole can only grant to the principals its
    Principal names (everyone, for ``"*"`` or a NotPrincipal). A role the store gives no trust policy is
    decided by the generic rules, as ``check`` decides it: only its own account's principals can be allowed."""
    trust = store.resource_policy(role.arn)
    if trust is None:
        return set(named.get(role.account, ()))
    candidates: set[str] = set()
    for statement in trust.statements:
        if statement.effect is not Effect.ALLOW or not action_applies(statement, ASSUME_ROLE):
            continue
        principal = statement.principal
        if statement.not_principal is not None or (principal is not None and (principal.everyone
                                                                               or "*" in principal.aws)):
            return set(store.principals)
        for name in principal.aws if principal is not None else ():
            candidates.update(named.get(name, ()))
    return candidates


# ---------------------------------------------------------------- what can


@dataclass(frozen=True)
class _CatalogActions:
    """Every action of a catalog in the order answers list them, and each service's."""

    actions: tuple[str, ...]  # service:Action, by service prefix, then action name
    levels: Mapping[str, str]  # action -> its access level (ACCESS_LEVELS' names)
    services: Mapping[str, tuple[str, ...]]  # lower-cased prefix -> its actions


@functools.lru_cache(maxsize=4)
def _catalog_actions(catalog: Catalog) -> _CatalogActions:
    services: dict[str, tuple[str, ...]] = {}
    levels: dict[str, str] = {}
    for prefix in sorted(catalog.services):
        names = sorted(catalog.services[prefix]["actions"].items())
        services[prefix] = tuple(f"{prefix}:{name}" for name, _ in names)
        levels.update((f"{prefix}:{name}", ACCESS_LEVELS.get(level or "", level or "Unknown")) for name, level in names)
    return _CatalogActions(tuple(a for actions in services.values() for a in actions), levels, services)


def what_can(compiled: CompiledStore, principal: str, resource: str | None = None, service: str | None = None,
             context: Mapping[str, Any] | None = None, resource_account: str | None = None,
             catalog: Catalog | None = None) -> WhatCan:
    """Every action of the catalog (of one service, with ``service``) allowed for the principal on
    ``resource``; without one, on ``"*"`` (every action) and on each resource pattern of the principal's
    identity-based Allow statements (the actions those statements name, if any). Raises ``RequestError`` for a
    principal the store does not hold, an unknown service, or a query that cannot be evaluated."""
    catalog = catalog or Catalog.shipped()
    probe = Request.create(principal, _PROBE_ACTION, "*" if resource is None else resource, context,
                           resource_account)
    principal = probe.principal
    resource_account = None if resource_account is None else probe.resource_account  # a str, as read
    store = compiled.store
    if principal != ANONYMOUS and store.principal(principal) is None:
        raise RequestError(f"the principal {principal} is not in the policy store")
    every = _catalog_actions(catalog)
    actions = every.actions
    if service is not None:
        prefix = text(service, "service").lower()
        if prefix not in every.services:
            raise RequestError(f"the IAM catalog has no service {prefix[:100]!r}")
        actions = every.services[prefix]
    if resource is not None:
        asked = [(probe.resource, actions)]
    else:
        asked = [("*", actions), *_named_resources(store, probe, actions, every)]
    resources = [name for name, names in asked for _ in names]
    rows = [action for _, names in asked for action in names]
    decided = _decide(compiled, [principal] * len(rows), rows, resources, probe.context, resource_account)
    allowed: dict[str, list[str]] = {name: [] for name, _ in asked}
    for i, code in enumerate(decided.codes):
        if code == _ALLOW:
            allowed[resources[i]].append(rows[i])
    failures = tuple(Undecided(principal, rows[i], resources[i], error) for i, error in sorted(decided.errors.items()))
    return WhatCan(principal, tuple(ResourceAccess(name, _grouped(names, every.levels))
                                    for name, names in allowed.items()), failures)


def _named_resources(store: PolicyStore, probe: Request, actions: Sequence[str],
                     every: _CatalogActions) -> list[tuple[str, tuple[str, ...]]]:
    """Each resource pattern the principal's identity-based Allow statements name (policy variables
    resolved from what the store knows of it and the query's context; a pattern that cannot be resolved,
    or is not an ARN, is left out), with the actions of ``actions`` those statements name."""
    policy_set = store.policy_set(probe.principal, "*")
    if policy_set is None:  # anonymous: no identity
        return []
    variables = effective_context(probe.context, store.facts(probe.principal), None)
    wanted = set(actions)
    named: dict[str, set[str]] = {}
    for policy in policy_set.identity:
        for statement in policy.statements:
            if statement.effect is not Effect.ALLOW or not statement.resources:
                continue
            patterns = []
            for pattern in statement.resources:
                try:
                    pattern = expand_text(pattern, variables, policy.has_policy_variables)
                    Request.create(probe.principal, _PROBE_ACTION, pattern)
                except (Unresolvable, RequestError):
                    continue
                if pattern != "*":
                    patterns.append(pattern)
            if patterns:
                statement_actions = [a for a in _action_pool(statement, every) if a in wanted
                                     and action_applies(statement, a)]
                for pattern in patterns:
                    named.setdefault(pattern, set()).update(statement_actions)
    order = {action: i for i, action in enumerate(actions)}
    return [(pattern, tuple(sorted(named[pattern], key=order.__getitem__))) for pattern in sorted(named)
            if named[pattern]]


def _action_pool(statement: Statement, every: _CatalogActions) -> Iterable[str]:
    """The catalog actions a statement's Action could name: those of the services its patterns name, or
    every action when a service part has a wildcard or the statement says NotAction."""
    if statement.actions is None:
        return every.actions
    prefixes = dict.fromkeys(pattern.partition(":")[0].lower() for pattern in statement.actions)
    if any("*" in prefix or "?" in prefix for prefix in prefixes):
        return every.actions
    return [action for prefix in prefixes for action in every.services.get(prefix, ())]


def _grouped(actions: Iterable[str], levels: Mapping[str, str]) -> tuple[ActionGroup, ...]:
    groups: dict[tuple[str, str], list[str]] = {}
    for action in actions:
        groups.setdefault((action.partition(":")[0], levels[action]), []).append(action)
    ordered = sorted(groups, key=lambda key: (key[0], _LEVEL_ORDER.get(key[1], len(_LEVEL_ORDER)), key[1]))
    return tuple(ActionGroup(service, level, tuple(groups[service, level])) for service, level in ordered)

