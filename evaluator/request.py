"""What is evaluated: a request, and the set of policies that apply to it.

The JSON shapes are those of the conformance cases (``../shared/conformance``):
``{"principal", "action", "resource", "resource_account", "context"}`` and
``{"identity", "resource", "permissions_boundary", "scp", "rcp", "session"}``.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import Policy
from .parse import PolicyKind, parse_policy
from .principals import Caller, RequestError

ContextValue = str | tuple[str, ...]

_ACTION = re.compile(r"[A-Za-z0-9_-]+:[A-Za-z0-9_-]+")


def _shown(value: Any) -> str:
    """A value for a message, cut short; never raises: a value that cannot show itself (nested deeper than
    ``repr`` goes, or whose ``__repr__`` fails) is named by its type."""
    try:
        shown = repr(value)
    except Exception:  # noqa: BLE001 - RecursionError, or any error of a hostile __repr__
        return f"a {type(value).__name__} that cannot be shown"
    return shown if len(shown) <= 200 else shown[:200] + "…"


def text(value: Any, what: str) -> str:
    """A request string as IAM reads it: the characters of a ``str`` (a subclass is read for
    what it holds, never through its own methods), which must encode to UTF-8 (no lone
    surrogates). Every path that takes a request (``Request.create``, both converters of the
    compiled engine) reads strings by this rule."""
    if not isinstance(value, str):
        raise RequestError(f"{what} must be a string, not {_shown(value)}")
    if type(value) is not str:
        value = str.__str__(value)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(f"{what} is not valid Unicode text (a lone surrogate at {exc.start})") from None
    return value


def context_text(value: Any, key: str) -> str:
    """One context value as IAM reads it: a string by ``text``, JSON booleans and numbers as
    their JSON text (subclasses of int and float by their value, never their own ``repr``)."""
    if type(value) is str and value.isascii():  # the common case, settled before any message is built
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return text(value, f"context key {_shown(key)}")
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    raise RequestError(f"context key {_shown(key)}: values must be strings (or lists of strings), not {_shown(value)}")


def _context_value(key: str, value: Any) -> ContextValue:
    if isinstance(value, (list, tuple)):
        return tuple(context_text(item, key) for item in tuple(value))
    return context_text(value, key)


@dataclass(frozen=True)
class Request:
    """One authorization question. Context keys are stored lower-cased: IAM compares
    key names case-insensitively.

    ``session_tags`` are the tags of an assumed-role session (the principal must be
    one): they are what ``aws:PrincipalTag/…`` says for the session, over the role's own
    tags of the same keys (see ``facts``)."""

    principal: str
    action: str
    resource: str
    resource_account: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    session_tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        principal: str,
        action: str,
        resource: str,
        context: Mapping[str, Any] | None = None,
        resource_account: str | None = None,
        session_tags: Mapping[str, Any] | None = None,
    ) -> Request:
        """Check and normalise a request; raises ``RequestError`` with what is wrong."""
        principal = text(principal, "request principal")
        action = text(action, "request action")
        resource = text(resource, "request resource")
        caller = Caller.parse(principal)
        if not _ACTION.fullmatch(action):
            raise RequestError(f"request action {_shown(action)} is not service:Action")
        fields = resource.split(":", 5)
        if resource != "*" and (len(fields) != 6 or fields[0] != "arn"):
            raise RequestError(f"request resource {_shown(resource)} is neither an ARN nor \"*\"")
        if resource_account is None:
            resource_account = fields[4] if resource != "*" and fields[4] else caller.account
        else:
            resource_account = text(resource_account, "resource account")
        if not isinstance(context, Mapping) and context is not None:
            raise RequestError(f"request context must be an object, not {type(context).__name__}")
        normalised: dict[str, ContextValue] = {}
        for key, value in dict(context or {}).items():
            if type(key) is not str or not key.isascii():
                key = text(key, "context key")
            if not key:
                raise RequestError("context key names must be non-empty")
            folded = key.lower()
            if folded in normalised:
                raise RequestError(f"context key {_shown(key)} is given twice (key names are case-insensitive)")
            # A plain ASCII string, the common value, is settled here.
            normalised[folded] = value if type(value) is str and value.isascii() else _context_value(key, value)
        tags: dict[str, str] = {}
        if session_tags is not None:
            if not isinstance(session_tags, Mapping):
                raise RequestError("session tags must map tag keys to values")
            if caller.kind != "assumed-role":
                raise RequestError("session tags belong to an assumed-role session principal")
            for key, value in dict(session_tags).items():
                key = text(key, "session tag key")
                if any(key.lower() == other.lower() for other in tags):
                    raise RequestError(f"session tag {_shown(key)} is given twice (tag keys ignore case)")
                tags[key] = text(value, "session tag value")
        # Built without __init__, which sets each field through object.__setattr__ (frozen): every field
        # is checked above, and a request is made per call on the single-call path.
        request = object.__new__(cls)
        request.__dict__.update(principal=principal, action=action, resource=resource,
                                resource_account=resource_account, context=normalised, session_tags=tags)
        return request

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Request:
        if not isinstance(data, Mapping):
            raise RequestError(f"a request must be an object, not {type(data).__name__}")
        unknown = set(data) - {"principal", "action", "resource", "resource_account", "context", "session_tags"}
        if unknown:
            raise RequestError(f"unknown request field(s): {', '.join(sorted(map(str, unknown)))}")
        return cls.create(
            data.get("principal"), data.get("action"), data.get("resource"),  # type: ignore[arg-type]
            data.get("context"), data.get("resource_account"), data.get("session_tags"),
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
    vpc_endpoint: tuple[Policy, ...] | None = None  # the policy of the VPC endpoint the request came through

    def __post_init__(self) -> None:
        if self.vpc_endpoint is not None and len(self.vpc_endpoint) != 1:
            raise RequestError("vpc_endpoint must be a list of exactly one policy: an endpoint has one")

    @classmethod
    def from_json(cls, data: Mapping[str, Any], read: Callable[[str], Any] | None = None) -> PolicySet:
        """Parse the conformance ``policies`` object; raises ``PolicyValidationError``
        (naming the layer) or ``RequestError`` for a bad shape. With ``read``, a string where a
        policy stands names a policy file: ``read`` gives its document, and the policy is named by it."""
        if not isinstance(data, Mapping):
            raise RequestError(f"policies must be an object, not {data!r}")
        unknown = set(data) - {"identity", "resource", "permissions_boundary", "session", "scp", "rcp", "vpc_endpoint"}
        if unknown:
            raise RequestError(f"unknown policy layer(s): {', '.join(sorted(unknown))}")

        def policy(doc: Any, kind: PolicyKind, name: str) -> Policy:
            if read is not None and isinstance(doc, str):
                return parse_policy(read(doc), kind=kind, name=doc)
            return parse_policy(doc, kind=kind, name=name)

        def docs(layer: str, kind: PolicyKind = PolicyKind.IDENTITY) -> tuple[Policy, ...] | None:
            raw = data.get(layer)
            if raw is None:
                return None
            if not isinstance(raw, list):
                raise RequestError(f"{layer} must be a list of policies")
            return tuple(policy(doc, kind, f"{layer}[{i}]") for i, doc in enumerate(raw))

        def levels(layer: str, kind: PolicyKind) -> Levels | None:
            raw = data.get(layer)
            if raw is None:
                return None
            if not isinstance(raw, list) or not all(isinstance(level, list) for level in raw):
                raise RequestError(f"{layer} must be a list of levels, each a list of policies")
            return tuple(
                tuple(policy(doc, kind, f"{layer}[{i}][{j}]") for j, doc in enumerate(level))
                for i, level in enumerate(raw)
            )

        resource = data.get("resource")
        return cls(
            identity=docs("identity") or (),
            resource=None if resource is None else policy(resource, PolicyKind.RESOURCE, "resource"),
            permissions_boundary=docs("permissions_boundary"),
            session=docs("session"),
            scp=levels("scp", PolicyKind.IDENTITY),
            rcp=levels("rcp", PolicyKind.RESOURCE),
            vpc_endpoint=docs("vpc_endpoint", PolicyKind.RESOURCE),
        )
