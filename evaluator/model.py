"""The policy model: immutable, normalised IAM policy documents.

Every string-or-list element is a tuple here, condition values are strings
(JSON booleans and numbers are rendered as IAM compares them), and each
statement knows its index and the policy it belongs to, so a decision can name
the statements that made it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .variables import variable_keys

POLICY_VARIABLES_VERSION = "2012-10-17"


class Effect(StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"


@dataclass(frozen=True, slots=True)
class Principal:
    """A Principal or NotPrincipal element; ``everyone`` is the bare ``"*"``."""

    everyone: bool = False
    aws: tuple[str, ...] = ()
    service: tuple[str, ...] = ()
    federated: tuple[str, ...] = ()
    canonical_user: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    """One key under one operator: ``{"ForAnyValue:StringLikeIfExists": {key: values}}``."""

    operator: str  # as written, e.g. "ForAnyValue:StringLikeIfExists"
    base_operator: str  # without qualifier and IfExists, e.g. "StringLike"
    set_qualifier: str | None  # "ForAllValues", "ForAnyValue" or None
    if_exists: bool
    key: str  # as written; compared case-insensitively
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Statement:
    index: int
    sid: str | None
    effect: Effect
    actions: tuple[str, ...] | None = None
    not_actions: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    not_resources: tuple[str, ...] | None = None
    principal: Principal | None = None
    not_principal: Principal | None = None
    conditions: tuple[Condition, ...] = ()

    def context_keys(self, substitute: bool) -> tuple[str, ...]:
        """The request context keys this statement reads, as spelled, each spelling once: the keys of its
        policy variables (with ``substitute``: under Version 2012-10-17), in Resource, NotResource and
        condition values, and its condition keys."""
        keys: list[str] = []
        if substitute:
            for text in (*(self.resources or ()), *(self.not_resources or ()),
                         *(v for c in self.conditions for v in c.values)):
                keys += variable_keys(text)
        keys += (c.key for c in self.conditions)
        return tuple(dict.fromkeys(keys))


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy; ``name`` says where it came from (a file, a layer position)."""

    name: str
    version: str | None
    statements: tuple[Statement, ...]
    id: str | None = None

    @property
    def has_policy_variables(self) -> bool:
        """Policy variables are substituted only under Version 2012-10-17."""
        return self.version == POLICY_VARIABLES_VERSION

    def context_keys(self) -> frozenset[str]:
        """The request context keys this policy can read (lower-cased): its statements' (``Statement.context_keys``).
        Batch runners drop every other key early."""
        return frozenset(key.lower() for s in self.statements for key in s.context_keys(self.has_policy_variables))
