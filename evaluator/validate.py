"""Validation beyond structure: the policy type's rules, catalog, size, good-practice and security warnings.

``validate_policy`` returns every finding (the parser's errors plus these) and never raises for a bad policy;
it is what ``iam-eval validate`` prints. The type's rules and the catalog checks read every statement that can
be read, also in a policy with errors; the other warnings need a policy that parses. ``validate_store`` applies it
to every document of a store, with the type of the document's place, beside the store's own checks.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from .catalog import Catalog
from .catalog_checks import catalog_findings
from .findings import Finding, Severity, pointer
from .model import Effect, Policy
from .parse import PolicyKind, check_policy, decode_json, readable_statements
from .policy_types import PolicyType, type_findings
from .security_checks import security_findings
from .store import read_store

# AWS IAM quotas, in characters not counting white space.
SIZE_LIMITS = {PolicyKind.IDENTITY: (6_144, "a managed policy"), PolicyKind.RESOURCE: (20_480, "an S3 bucket policy")}

_SID = re.compile(r"[A-Za-z0-9]*")
_WHITESPACE = re.compile(r"\s")


def _practice_findings(doc: Mapping, policy: Policy, kind: PolicyKind, size: int) -> list[Finding]:
    findings = []
    limit, what = SIZE_LIMITS[kind]
    if size > limit:
        findings.append(Finding("W006", Severity.WARNING, "",
                                f"policy has {size} characters (without white space); {what} may have {limit}"))
    for (at, _), statement in zip(readable_statements(doc), policy.statements, strict=True):
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
    source: str | bytes | Mapping, *, kind: PolicyKind | PolicyType = PolicyType.IDENTITY,
    catalog: Catalog | None = None,
) -> list[Finding]:
    """Every finding for one policy: structural errors, the type's rules, then warnings. ``kind`` is a
    ``PolicyType`` (a ``PolicyKind`` reads as the type of the same name); without ``catalog``, the shipped one."""
    policy_type = PolicyType(kind)
    policy, findings = check_policy(source, kind=policy_type.kind)
    if any(f.code == "E001" for f in findings):  # not JSON, or text no answer could quote: nothing more to read
        return findings
    doc = decode_json(source) if isinstance(source, (str, bytes)) else source
    findings += type_findings(doc, policy_type)
    if policy is not None:
        size = len(_WHITESPACE.sub("", json.dumps(doc, separators=(",", ":"))))
        findings += _practice_findings(doc, policy, policy_type.kind, size)
        findings += security_findings(doc, policy, policy_type)
    findings += catalog_findings(doc, catalog or Catalog.shipped())
    return findings


def validate_store(path: str | Path, *, catalog: Catalog | None = None) -> dict[str, list[Finding]]:
    """Every finding of the store at ``path`` (a store directory, or a snapshot file), by the file it is in, in
    name order, each pointing from the top of its file: what cannot be read, each entry's shape and references
    (the store's S findings), and ``validate_policy``'s findings for each document with its type. A file with no
    finding is listed too. Raises ``OSError`` when a snapshot cannot be read."""
    builder = read_store(path)
    report: dict[str, list[Finding]] = {}
    for entry in builder.check(lambda document, policy_type: validate_policy(document, kind=policy_type,
                                                                             catalog=catalog)):
        at = pointer(*entry.at)
        report.setdefault(entry.file, []).extend(replace(finding, pointer=at + finding.pointer)
                                                 for finding in entry.findings)
    return dict(sorted(report.items()))
