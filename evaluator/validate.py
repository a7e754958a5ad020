"""Validation beyond structure: catalog, size and good-practice warnings.

``validate_policy`` returns every finding (the parser's errors plus these
warnings) and never raises for a bad policy; it is what ``iam-eval validate``
prints.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping

from .catalog import Catalog
from .findings import Finding, Severity, pointer
from .model import Effect, Policy, Statement
from .operators import OPERATORS, Family
from .parse import PolicyKind, check_policy, decode_json

# AWS IAM quotas, in characters not counting white space.
SIZE_LIMITS = {PolicyKind.IDENTITY: (6_144, "a managed policy"), PolicyKind.RESOURCE: (20_480, "an S3 bucket policy")}

_SID = re.compile(r"[A-Za-z0-9]*")
_WHITESPACE = re.compile(r"\s")
# Which operator families suit each catalog key type.
_FAMILIES_FOR_TYPE = {
    "String": {Family.STRING}, "ArrayOfString": {Family.STRING},
    "ARN": {Family.ARN, Family.STRING}, "ArrayOfARN": {Family.ARN, Family.STRING},
    "Bool": {Family.BOOL, Family.STRING}, "ArrayOfBool": {Family.BOOL, Family.STRING},
    "Numeric": {Family.NUMERIC}, "Date": {Family.DATE}, "IPAddress": {Family.IP},
}


def _statement_at(policy_doc: Mapping, statement: Statement) -> tuple:
    return ("Statement",) if isinstance(policy_doc.get("Statement"), dict) else ("Statement", statement.index)


def _action_warning(pattern: str, catalog: Catalog) -> tuple[str, str] | None:
    if pattern == "*":
        return None
    service, _, name = pattern.lower().partition(":")
    if "*" in service or "?" in service:
        return "W010", f"{pattern!r} has a wildcard in the service prefix; IAM matches it, but it is rarely meant"
    actions = catalog.actions.get(service)
    if actions is None:
        return "W002", f"{pattern!r}: no service with prefix {service!r} in the IAM catalog"
    if "*" in name or "?" in name:
        regex = re.compile(re.escape(name).replace(r"\*", ".*").replace(r"\?", "."))
        if not any(regex.fullmatch(action) for action in actions):
            return "W003", f"{pattern!r} matches no {service} action in the IAM catalog"
    elif name not in actions:
        return "W003", f"{pattern!r} is not a {service} action in the IAM catalog"
    return None


def _catalog_findings(doc: Mapping, policy: Policy, catalog: Catalog) -> list[Finding]:
    findings = []
    for statement in policy.statements:
        at = _statement_at(doc, statement)
        raw = doc["Statement"] if len(at) == 1 else doc["Statement"][statement.index]
        for element in ("Action", "NotAction"):
            patterns = raw.get(element)
            for i, pattern in enumerate([patterns] if isinstance(patterns, str) else patterns or []):
                warning = _action_warning(pattern, catalog)
                if warning:
                    where = pointer(*at, element) if isinstance(patterns, str) else pointer(*at, element, i)
                    findings.append(Finding(warning[0], Severity.WARNING, where, warning[1]))
        services = {a.split(":", 1)[0].lower() for a in statement.actions or () if ":" in a}
        for condition in statement.conditions:
            where = pointer(*at, "Condition", condition.operator, condition.key)
            key = catalog.key(condition.key)
            if key is None:
                findings.append(Finding("W004", Severity.WARNING, where,
                                        f"condition key {condition.key!r} is not in the IAM catalog"))
                continue
            if not key.is_global and services and "*" not in services and not (services & key.services):
                findings.append(Finding(
                    "W005", Severity.WARNING, where,
                    f"condition key {condition.key!r} is not defined for {', '.join(sorted(services))} "
                    f"(it is for {', '.join(sorted(key.services))})",
                ))
            family = OPERATORS[condition.base_operator].family
            suited = _FAMILIES_FOR_TYPE.get(key.type)
            if family is not Family.NULL and suited and family not in suited:
                findings.append(Finding(
                    "W011", Severity.WARNING, where,
                    f"{condition.operator} compares {key.type} key {condition.key!r} as {family}",
                ))
            if key.type.startswith("ArrayOf") and condition.set_qualifier is None and family is not Family.NULL:
                findings.append(Finding(
                    "W012", Severity.WARNING, where,
                    f"{condition.key!r} is multivalued: use ForAnyValue: or ForAllValues: with {condition.operator}",
                ))
    return findings


def _practice_findings(doc: Mapping, policy: Policy, kind: PolicyKind, size: int) -> list[Finding]:
    findings = []
    limit, what = SIZE_LIMITS[kind]
    if size > limit:
        findings.append(Finding("W006", Severity.WARNING, "",
                                f"policy has {size} characters (without white space); {what} may have {limit}"))
    for statement in policy.statements:
        at = _statement_at(doc, statement)
        if statement.sid and kind is PolicyKind.IDENTITY and not _SID.fullmatch(statement.sid):
            findings.append(Finding("W007", Severity.WARNING, pointer(*at, "Sid"),
                                    f"Sid {statement.sid!r}: IAM identity policies allow only letters and digits"))
        if statement.not_principal is not None and statement.effect is Effect.ALLOW:
            findings.append(Finding("W008", Severity.WARNING, pointer(*at, "NotPrincipal"),
                                    "NotPrincipal with Allow grants to everyone not listed, anonymous users included"))
        if not policy.has_policy_variables and any(
            "${" in text for text in (*(statement.resources or ()), *(statement.not_resources or ()),
                                      *(v for c in statement.conditions for v in c.values))
        ):
            findings.append(Finding("W009", Severity.WARNING, pointer(*at),
                                    "${...} is plain text here: policy variables need Version 2012-10-17"))
    return findings


def validate_policy(
    source: str | bytes | Mapping, *, kind: PolicyKind = PolicyKind.IDENTITY, catalog: Catalog | None = None
) -> list[Finding]:
    """Every finding for one policy: structural errors, then warnings."""
    policy, findings = check_policy(source, kind=kind)
    if policy is None:
        return findings
    doc = decode_json(source) if isinstance(source, (str, bytes)) else source
    size = len(_WHITESPACE.sub("", json.dumps(doc, separators=(",", ":"))))
    findings += _practice_findings(doc, policy, kind, size)
    if catalog is not None:
        findings += _catalog_findings(doc, policy, catalog)
    return findings
