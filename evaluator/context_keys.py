"""Which request context keys policies test, and in which statements: what AWS's
GetContextKeysForPrincipalPolicy (and GetContextKeysForCustomPolicy) answers, with the statements besides.

A key is tested by a condition (of any operator, ``Null`` too) or named by a policy variable (under
Version 2012-10-17, in Resource, NotResource or a condition value), as ``Statement.context_keys`` reads
them. Keys compare case-insensitively, so a key spelled two ways is listed once, as first spelled.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._request import text
from .decision import StatementRef
from .model import Policy
from .reference import action_applies
from .store import PolicyStore


@dataclass(frozen=True, slots=True)
class ContextKeyUse:
    """A context key, and the statements that test it (in the order the policies were given)."""

    key: str
    statements: tuple[StatementRef, ...]

    def to_json(self) -> dict:
        return {"key": self.key, "statements": [s.to_json() for s in self.statements]}


def context_keys(policies: Iterable[Policy], action: str | None = None) -> tuple[ContextKeyUse, ...]:
    """Every context key the policies test, sorted case-insensitively, each with its statements; with
    ``action``, only the statements whose Action (or NotAction) lets it in. Raises ``RequestError`` for an
    action that is not text."""
    if action is not None:
        action = text(action, "action")
    found: dict[str, tuple[str, dict[StatementRef, None]]] = {}
    for policy in policies:
        for statement in policy.statements:
            if action is not None and not action_applies(statement, action):
                continue
            ref = StatementRef(policy.name, statement.index, statement.sid, statement.effect)
            for key in statement.context_keys(policy.has_policy_variables):
                found.setdefault(key.lower(), (key, {}))[1][ref] = None
    return tuple(ContextKeyUse(key, tuple(refs)) for _, (key, refs) in sorted(found.items()))


def store_context_keys(store: PolicyStore, principal: str | None = None,
                       action: str | None = None) -> tuple[ContextKeyUse, ...]:
    """The context keys of a store's policies: every policy in use, or with ``principal`` the policies that
    apply to it whatever the resource (its identity policies, its groups', its permissions boundary, its
    SCP levels; a session's are its role's). Raises ``RequestError`` for a principal that is not text, and
    ``LookupError`` for one the store does not hold."""
    if principal is None:
        return context_keys(store.policies_in_use(), action)
    policy_set = store.policy_set(text(principal, "principal"), "*")
    if policy_set is None:
        raise LookupError(f"the principal {principal} is not in the policy store")
    return context_keys([*policy_set.identity, *(policy_set.permissions_boundary or ()),
                         *(p for level in policy_set.scp or () for p in level)], action)
