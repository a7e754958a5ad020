"""Between protobuf messages and evaluator types: the one place that knows both.

The batch path works on columns: it pulls each field of every request into a
plain list and builds results from the engine's decision codes, so that no
evaluator object is built per request.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from iam_evaluator import PolicySet, Request
from iam_evaluator.access_queries import (
    ActionGroup,
    Allowed,
    AssumedRole,
    ResourceAccess,
    Undecided,
    WhatCan,
    WhoCan,
)
from iam_evaluator.compile import BatchDecisions
from iam_evaluator.context_keys import ContextKeyUse
from iam_evaluator.decision import BY_CODE, Decision, DecisionKind, Miss, MissingKey, MissKind, NearMiss, StatementRef
from iam_evaluator.findings import Finding, PolicyValidationError
from iam_evaluator.model import Effect
from iam_evaluator.parse import PolicyKind as DocumentKind
from iam_evaluator.parse import decode_json, parse_policy
from iam_evaluator.store import SECTION_TYPES
from iam_evaluator.usage import StatementCount

from . import _wire
from .api import iam_evaluator_pb2 as pb

_CODE_RESULTS = tuple(pb.CheckResult(decision=kind.code) for kind in DecisionKind)
"""The result of each decision without explanation, built once and copied into responses: the proto's
``Decision`` numbers are ``DecisionKind.code``."""

_ENCODED_RESULTS = {result.decision: pb.CheckBatchResponse(results=[result]).SerializeToString()
                    for result in _CODE_RESULTS}
"""Each code's result as a CheckBatchResponse holding it alone: encoded messages concatenate into one
whose repeated fields are the parts' in order, so a response is these pieces joined."""

SECTIONS = {pb.MANAGED: "managed_policies", pb.SCP: "scps", pb.RCP: "rcps", pb.RESOURCE: "resource_policies",
            pb.VPC_ENDPOINT: "vpc_endpoints"}
"""The store section that holds each kind of policy."""
_NAME_FIELDS = {"managed_policies": "arn", "scps": "name", "rcps": "name", "resource_policies": "resource",
                "vpc_endpoints": "id"}


def context_value(values: pb.ContextValues) -> str | tuple[str, ...]:
    if values.is_list or len(values.values) != 1:
        return tuple(values.values)
    return values.values[0]


def context(message: Mapping[str, pb.ContextValues]) -> dict[str, str | tuple[str, ...]]:
    return {key: context_value(values) for key, values in message.items()}


def request(message: pb.CheckRequest) -> Request:
    """A checked request; raises ``RequestError`` saying what is wrong with it (session tags on a
    principal that is not an assumed-role session, say)."""
    return Request.create(message.principal, message.action, message.resource, context(message.context),
                          message.resource_account or None, dict(message.session_tags) or None)


def columns(requests: Sequence[pb.CheckRequest]) -> tuple[list, list, list, list, list | None, list | None]:
    """Principals, actions, resources, contexts, resource owners and session tags of a batch, as lists
    (owners and session tags: None when no request has any)."""
    principals = [r.principal for r in requests]
    actions = [r.action for r in requests]
    resources = [r.resource for r in requests]
    contexts = [context(r.context) if len(r.context) else None for r in requests]
    owners = [r.resource_account or None for r in requests]
    session_tags = [dict(r.session_tags) if len(r.session_tags) else None for r in requests]
    return (principals, actions, resources, contexts, owners if any(owners) else None,
            session_tags if any(session_tags) else None)


def request_columns(message: pb.RequestColumns) -> tuple[list, list, list, dict[str, list], list | None,
                                                         list | None]:
    """The columns as lists, contexts as one list per key (None where a request lacks it), session
    tags as one mapping per request (None where a request has none; the whole list None when no
    request has any); raises ``ValueError`` for columns that do not fit together. Read from the
    message's encoding (``_wire``): each distinct text becomes one string, not one per request."""
    return _wire.request_columns(message.SerializeToString())


def inline_policies(message: pb.InlinePolicies) -> PolicySet:
    """The policies a request brought; raises ``PolicyValidationError`` naming the bad one, or ``RequestError``
    for more than one VPC endpoint policy."""
    def parse(documents: Iterable[str], layer: str, kind: DocumentKind = DocumentKind.IDENTITY):
        return tuple(parse_policy(text, kind=kind, name=f"{layer}[{i}]") for i, text in enumerate(documents))

    def levels(levels: Sequence[pb.PolicyLevel], layer: str, kind: DocumentKind):
        return tuple(parse(level.documents, f"{layer}[{i}]", kind) for i, level in enumerate(levels)) or None

    return PolicySet(
        identity=parse(message.identity, "identity"),
        resource=parse_policy(message.resource, kind=DocumentKind.RESOURCE, name="resource")
        if message.resource else None,
        permissions_boundary=parse(message.permissions_boundary, "permissions_boundary") or None,
        session=parse(message.session, "session") or None,
        scp=levels(message.scp, "scp", DocumentKind.IDENTITY),
        rcp=levels(message.rcp, "rcp", DocumentKind.RESOURCE),
        vpc_endpoint=parse(message.vpc_endpoint, "vpc_endpoint", DocumentKind.RESOURCE) or None,
    )


def statement_ref(ref: StatementRef) -> pb.StatementRef:
    return pb.StatementRef(policy=ref.policy, sid=ref.sid or "", index=ref.index, effect=str(ref.effect))


def _statement(message: pb.StatementRef) -> StatementRef:
    return StatementRef(message.policy, message.index, message.sid or None, Effect(message.effect))


def result(decision: Decision, explain: bool) -> pb.CheckResult:
    message = pb.CheckResult(decision=decision.decision.code, error=decision.error or "")
    if explain:
        message.decided_by = decision.decided_by
        message.reason = decision.reason
        message.missing_keys.extend(decision.missing_keys)
        message.statements.extend(map(statement_ref, decision.statements))
        message.missing_key_statements.extend(
            pb.MissingKey(key=m.key, statements=map(statement_ref, m.statements))
            for m in decision.missing_key_statements)
        message.near_misses.extend(
            pb.NearMiss(statement=statement_ref(m.statement), layer=m.layer, kind=str(m.miss.kind),
                        reason=m.miss.reason, patterns=m.miss.patterns, operator=m.miss.operator, key=m.miss.key,
                        sent=m.miss.sent, wanted=m.miss.wanted, cut_by=m.miss.cut_by)
            for m in decision.near_misses)
        message.more_near_misses = decision.more_near_misses
    return message


def decision(message: pb.CheckResult) -> Decision:
    """A result as the library's decision, so that clients print what ``iam-eval check`` prints."""
    kind = BY_CODE[message.decision] if 0 < message.decision < len(BY_CODE) else None
    if kind is None:
        raise ValueError(f"the service answered an unknown decision {message.decision}")
    return Decision(kind, message.decided_by, tuple(map(_statement, message.statements)),
                    tuple(message.missing_keys), message.reason, message.error or None,
                    tuple(MissingKey(m.key, tuple(map(_statement, m.statements)))
                          for m in message.missing_key_statements),
                    tuple(NearMiss(_statement(m.statement), m.layer,
                                   Miss(MissKind(m.kind), m.reason, tuple(m.patterns), m.operator, m.key,
                                        tuple(m.sent), tuple(m.wanted), m.cut_by))
                          for m in message.near_misses),
                    message.more_near_misses)


def context_keys(keys: Iterable[ContextKeyUse]) -> list[pb.ContextKey]:
    return [pb.ContextKey(key=k.key, statements=map(statement_ref, k.statements)) for k in keys]


def rfc3339(seconds: float) -> str:
    """A time (seconds since the epoch) as the service writes times: RFC 3339, UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def statement_uses(counts: Iterable[StatementCount]) -> list[pb.StatementUse]:
    return [pb.StatementUse(statement=statement_ref(c.statement), applied=c.applied, decided=c.decided,
                            since=rfc3339(c.since)) for c in counts]


def encoded_response(decided: BatchDecisions, store_version: int, batch_id: int) -> bytes:
    """The CheckBatchResponse for unexplained decisions, encoded without building a message per result."""
    pieces = [_ENCODED_RESULTS[code] for code in decided.codes]
    for i, error in decided.errors.items():
        pieces[i] = pb.CheckBatchResponse(results=[pb.CheckResult(decision=pb.IMPLICIT_DENY, error=error)]
                                          ).SerializeToString()
    pieces.append(pb.CheckBatchResponse(store_version=store_version, batch_id=batch_id).SerializeToString())
    return b"".join(pieces)


def finding(item: Finding) -> pb.Finding:
    return pb.Finding(code=item.code, severity=str(item.severity), pointer=item.pointer, message=item.message)


def _document(text: str, kind: DocumentKind, name: str) -> Any:
    """A policy document sent as text, decoded and checked by the parser; raises ``PolicyValidationError``
    naming ``name``, with every finding. The store keeps documents re-encoded, which would silently keep
    only the last of a key given twice, so such a document (E002) must be refused here."""
    try:
        document = decode_json(text)
    except PolicyValidationError as exc:
        raise PolicyValidationError(exc.findings, source=name) from None
    parse_policy(document, kind=kind, name=name)
    return document


def policy_entry(policy: pb.StoredPolicy) -> tuple[str, dict[str, Any]]:
    """The store section and entry of a policy; raises ``PolicyValidationError`` for an invalid document."""
    section = SECTIONS[policy.kind]
    document = _document(policy.document, SECTION_TYPES[section].kind, policy.name)
    return section, {_NAME_FIELDS[section]: policy.name, "document": document}


def stored_policy(kind: int, entry: Mapping[str, Any]) -> pb.StoredPolicy:
    return pb.StoredPolicy(kind=kind, name=entry[_NAME_FIELDS[SECTIONS[kind]]],
                           document=json.dumps(entry["document"], indent=2))


def principal_entry(principal: pb.Principal) -> dict[str, Any]:
    """A principal as a store directory's file holds it; empty fields are left out. Raises
    ``PolicyValidationError`` for an invalid inline policy."""
    entry: dict[str, Any] = {"arn": principal.arn}
    if principal.managed_policies:
        entry["managed_policies"] = list(principal.managed_policies)
    if principal.inline_policies:
        entry["inline_policies"] = {name: _document(text, DocumentKind.IDENTITY, f"inline policy {name!r}")
                                    for name, text in principal.inline_policies.items()}
    if principal.groups:
        entry["groups"] = list(principal.groups)
    if principal.permissions_boundary:
        entry["permissions_boundary"] = principal.permissions_boundary
    if principal.tags:
        entry["tags"] = dict(principal.tags)
    return entry


def principal(entry: Mapping[str, Any]) -> pb.Principal:
    """A principal entry (a store's, or a principals/*.json file) as the message."""
    return pb.Principal(
        arn=entry.get("arn", ""), managed_policies=entry.get("managed_policies", []),
        inline_policies={name: json.dumps(doc, indent=2) for name, doc in entry.get("inline_policies", {}).items()},
        groups=entry.get("groups", []), permissions_boundary=entry.get("permissions_boundary") or "",
        tags=entry.get("tags", {}),
    )


def who_can_query(message: pb.WhoCanRequest) -> dict[str, Any]:
    """The arguments of ``access_queries.who_can`` a request gives."""
    return {"action": message.action, "resource": message.resource, "context": context(message.context),
            "resource_account": message.resource_account or None}


def what_can_query(message: pb.WhatCanRequest) -> dict[str, Any]:
    """The arguments of ``access_queries.what_can`` a request gives (an empty resource or service: none)."""
    return {"principal": message.principal, "resource": message.resource or None,
            "service": message.service or None, "context": context(message.context),
            "resource_account": message.resource_account or None}


def _undecided(failure: Undecided) -> pb.Undecided:
    return pb.Undecided(principal=failure.principal, action=failure.action, resource=failure.resource,
                        error=failure.error)


def who_can_response(answer: WhoCan, store_version: int) -> pb.WhoCanResponse:
    return pb.WhoCanResponse(
        principals=[pb.PrincipalResult(principal=a.principal, result=result(a.decision, True))
                    for a in answer.principals],
        through_roles=[pb.RoleChain(principal=c.principal, role=c.role, assume_role=result(c.assume_role, True))
                       for c in answer.through_roles],
        failures=[_undecided(f) for f in answer.failures], store_version=store_version)


def what_can_response(answer: WhatCan, store_version: int) -> pb.WhatCanResponse:
    return pb.WhatCanResponse(
        resources=[pb.ResourceAccess(resource=access.resource, groups=[
            pb.ActionGroup(service=g.service, access_level=g.access_level, actions=g.actions) for g in access.groups])
            for access in answer.resources],
        failures=[_undecided(f) for f in answer.failures], store_version=store_version)


def _failures(messages: Iterable[pb.Undecided]) -> tuple[Undecided, ...]:
    return tuple(Undecided(f.principal, f.action, f.resource, f.error) for f in messages)


def who_can(message: pb.WhoCanResponse, action: str, resource: str) -> WhoCan:
    """A response as the library's answer, so that clients print what ``iam-eval who-can`` prints."""
    return WhoCan(action, resource, tuple(Allowed(p.principal, decision(p.result)) for p in message.principals),
                  tuple(AssumedRole(c.principal, c.role, decision(c.assume_role)) for c in message.through_roles),
                  _failures(message.failures))


def what_can(message: pb.WhatCanResponse, principal: str) -> WhatCan:
    """A response as the library's answer, so that clients print what ``iam-eval what-can`` prints."""
    return WhatCan(principal, tuple(ResourceAccess(r.resource, tuple(
        ActionGroup(g.service, g.access_level, tuple(g.actions)) for g in r.groups)) for r in message.resources),
        _failures(message.failures))
