"""Who is asking, and whether a resource policy's Principal element names them.

How a resource-based policy names the caller changes what it grants (AWS IAM
User Guide, "Policy evaluation logic", same-account requests): an Allow that
names an IAM user ARN or an assumed-role session ARN grants on its own; one
that names a role ARN is still limited by the permissions boundary and the
session policy; one that names only the account delegates to the account's
identity-based policies and grants nothing by itself.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from .memo import remember
from .model import Effect, Principal, Statement
from .service_rules import ANONYMOUS

_ACCOUNT_ID = re.compile(r"\d{12}")


class RequestError(ValueError):
    """A request that cannot be evaluated as given (bad principal, action, resource or context)."""


class Grant(IntEnum):
    """How strongly a Principal element names the caller, weakest first."""

    NONE = 0
    ACCOUNT = 1  # the caller's account: delegates to its identity-based policies
    BOUNDED = 2  # the caller's role (or everyone): still limited by boundary and session policy
    DIRECT = 3  # the caller's own user or session ARN: grants on its own


_PARSED: dict[str, Caller] = {}
_PARSED_MAX = 4096
"""Parsed callers kept (``memo``): a few thousand principals at a time."""


@dataclass(frozen=True, slots=True)
class Caller:
    """A caller ARN split into what principal matching needs."""

    arn: str
    account: str
    kind: str  # user, role, assumed-role, root, federated-user, or another resource type
    role_name: str | None  # the role of an assumed-role session, or of a role caller

    @classmethod
    def parse(cls, arn: str) -> Caller:
        """An IAM or STS ARN, or ``anonymous`` (a request no credentials signed: no account). Callers
        repeat from request to request: the parsed form of an exact ``str`` is kept (a few thousand at
        most; the cache starts again when full)."""
        caller = _PARSED.get(arn) if type(arn) is str else None
        if caller is None:
            caller = cls._parse(arn)
            if type(arn) is str:
                remember(_PARSED, arn, caller, _PARSED_MAX)
        return caller

    @classmethod
    def _parse(cls, arn: str) -> Caller:
        if arn == ANONYMOUS:
            return cls(arn=arn, account="", kind=ANONYMOUS, role_name=None)
        parts = arn.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn" or parts[2] not in ("iam", "sts"):
            raise RequestError(f"principal {arn!r} is not an IAM or STS ARN")
        account, resource = parts[4], parts[5]
        if not _ACCOUNT_ID.fullmatch(account):
            raise RequestError(f"principal {arn!r} has no 12-digit account id")
        kind, _, rest = resource.partition("/")
        role_name = None
        if kind == "assumed-role":
            role_name = rest.split("/", 1)[0]
        elif kind == "role":
            role_name = rest.rsplit("/", 1)[-1]
        return cls(arn=arn, account=account, kind=kind, role_name=role_name)

    @property
    def own_grant(self) -> Grant:
        """What naming this caller's own ARN grants: roles stay bounded, users and sessions do not."""
        return Grant.BOUNDED if self.kind == "role" else Grant.DIRECT


def _names(name: str, caller: Caller) -> Grant:
    if name == "*":
        return caller.own_grant
    if caller.kind == ANONYMOUS:  # only everyone names an anonymous caller
        return Grant.NONE
    if name == caller.account or name == f"arn:aws:iam::{caller.account}:root":
        return Grant.ACCOUNT
    if name == caller.arn:
        return caller.own_grant
    parts = name.split(":", 5)
    if (
        caller.kind == "assumed-role"
        and len(parts) == 6
        and parts[2] == "iam"
        and parts[4] == caller.account
        and parts[5].startswith("role/")
        and parts[5].rsplit("/", 1)[-1] == caller.role_name
    ):
        return Grant.BOUNDED
    return Grant.NONE


def principal_grant(principal: Principal, caller: Caller) -> Grant:
    """The strongest way ``principal`` names ``caller`` (service, federated and canonical
    user principals never name an IAM caller)."""
    if principal.everyone:
        return caller.own_grant
    return max((_names(name, caller) for name in principal.aws), default=Grant.NONE)


def statement_grant(statement: Statement, caller: Caller, has_boundary: bool) -> Grant:
    """How a resource-policy statement's Principal/NotPrincipal applies to the caller.

    NotPrincipal applies to everyone it does not name, as if it said ``"*"``;
    and, as the IAM User Guide warns, a Deny with NotPrincipal always denies a
    principal that has a permissions boundary, whatever NotPrincipal names.
    """
    if statement.principal is not None:
        return principal_grant(statement.principal, caller)
    if statement.not_principal is not None:
        if statement.effect is Effect.DENY and has_boundary:
            return caller.own_grant
        return Grant.NONE if principal_grant(statement.not_principal, caller) else caller.own_grant
    return Grant.NONE
