"""What is evaluated: a request, and the set of policies that apply to it.

The JSON shapes are those of the conformance cases (``../shared/conformance``):
``{"principal", "action", "resource", "resource_account", "context"}`` and
``{"identity", "resource", "permissions_boundary", "scp", "rcp", "session"}``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _request
from .model import Policy
from .parse import PolicyKind, parse_policy
from .principals import RequestError

ContextValue = str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
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

    if TYPE_CHECKING:
        @classmethod
        def create(cls, principal: str, action: str, resource: str, context: Mapping[str, Any] | None = None,
                   resource_account: str | None = None, session_tags: Mapping[str, Any] | None = None) -> Request:
            ...
    else:  # compiled, and called with no Python frame between: the single-call path makes a request per call
        create = classmethod(_request.create)

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


_request.lay_out(Request)  # create fills the slots in place, the engine reads them so

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
