"""What is evaluated: a request, and the set of policies that apply to it.

The JSON shapes are those of the conformance cases (``../shared/conformance``):
``{"principal", "action", "resource", "resource_account", "context"}`` and
``{"identity", "resource", "permissions_boundary", "scp", "rcp", "session"}``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import Policy
from .parse import PolicyKind, parse_policy
from .principals import Caller, RequestError

ContextValue = str | tuple[str, ...]

_ACTION = re.compile(r"[A-Za-z0-9_-]+:[A-Za-z0-9_-]+")


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    raise RequestError(f"context key {key!r}: values must be strings (or lists of strings), not {value!r}")


def _context_value(key: str, value: Any) -> ContextValue:
    if isinstance(value, (list, tuple)):
        return tuple(_scalar(key, item) for item in value)
    return _scalar(key, value)


@dataclass(frozen=True)
class Request:
    """One authorization question. Context keys are stored lower-cased: IAM compares
    key names case-insensitively."""

    principal: str
    action: str
    resource: str
    resource_account: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        principal: str,
        action: str,
        resource: str,
        context: Mapping[str, Any] | None = None,
        resource_account: str | None = None,
    ) -> Request:
        """Check and normalise a request; raises ``RequestError`` with what is wrong."""
        for name, value in (("principal", principal), ("action", action), ("resource", resource)):
            if not isinstance(value, str) or not value:
                raise RequestError(f"request {name} must be a non-empty string, not {value!r}")
        caller = Caller.parse(principal)
        if not _ACTION.fullmatch(action):
            raise RequestError(f"request action {action!r} is not service:Action")
        fields = resource.split(":", 5)
        if resource != "*" and (len(fields) != 6 or fields[0] != "arn"):
            raise RequestError(f"request resource {resource!r} is neither an ARN nor \"*\"")
        if resource_account is None:
            resource_account = fields[4] if resource != "*" and fields[4] else caller.account
        if not isinstance(context, Mapping) and context is not None:
            raise RequestError(f"request context must be an object, not {context!r}")
        normalised: dict[str, ContextValue] = {}
        for key, value in (context or {}).items():
            if not isinstance(key, str) or not key:
                raise RequestError(f"context key {key!r} must be a non-empty string")
            if key.lower() in normalised:
                raise RequestError(f"context key {key!r} is given twice (key names are case-insensitive)")
            normalised[key.lower()] = _context_value(key, value)
        return cls(principal, action, resource, resource_account, normalised)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Request:
        if not isinstance(data, Mapping):
            raise RequestError(f"a request must be an object, not {data!r}")
        unknown = set(data) - {"principal", "action", "resource", "resource_account", "context"}
        if unknown:
            raise RequestError(f"unknown request field(s): {', '.join(sorted(unknown))}")
        return cls.create(
            data.get("principal"), data.get("action"), data.get("resource"),  # type: ignore[arg-type]
            data.get("context"), data.get("resource_account"),
        )


Levels = tuple[tuple[Policy, ...], ...]


@dataclass(frozen=True)
class PolicySet:
    """All the policies that apply to one principal's requests, by layer.

    ``scp`` and ``rcp`` hold one tuple per level of the organisation, root
    first; ``None`` means the layer is absent (not that it allows nothing).
    """

    identity: tuple[Policy, ...] = ()
    resource: Policy | None = None
    permissions_boundary: tuple[Policy, ...] | None = None
    session: tuple[Policy, ...] | None = None
    scp: Levels | None = None
    rcp: Levels | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicySet:
        """Parse the conformance ``policies`` object; raises ``PolicyValidationError``
        (naming the layer) or ``RequestError`` for a bad shape."""
        if not isinstance(data, Mapping):
            raise RequestError(f"policies must be an object, not {data!r}")
        unknown = set(data) - {"identity", "resource", "permissions_boundary", "session", "scp", "rcp"}
        if unknown:
            raise RequestError(f"unknown policy layer(s): {', '.join(sorted(unknown))}")

        def docs(layer: str, kind: PolicyKind = PolicyKind.IDENTITY) -> tuple[Policy, ...] | None:
            raw = data.get(layer)
            if raw is None:
                return None
            if not isinstance(raw, list):
                raise RequestError(f"{layer} must be a list of policies")
            return tuple(parse_policy(doc, kind=kind, name=f"{layer}[{i}]") for i, doc in enumerate(raw))

        def levels(layer: str, kind: PolicyKind) -> Levels | None:
            raw = data.get(layer)
            if raw is None:
                return None
            if not isinstance(raw, list) or not all(isinstance(level, list) for level in raw):
                raise RequestError(f"{layer} must be a list of levels, each a list of policies")
            return tuple(
                tuple(parse_policy(doc, kind=kind, name=f"{layer}[{i}][{j}]") for j, doc in enumerate(level))
                for i, level in enumerate(raw)
            )

        resource = data.get("resource")
        return cls(
            identity=docs("identity") or (),
            resource=None if resource is None else parse_policy(resource, kind=PolicyKind.RESOURCE, name="resource"),
            permissions_boundary=docs("permissions_boundary"),
            session=docs("session"),
            scp=levels("scp", PolicyKind.IDENTITY),
            rcp=levels("rcp", PolicyKind.RESOURCE),
        )
