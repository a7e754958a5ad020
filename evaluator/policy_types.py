"""Policy types, and the rules a type adds to the policy grammar.

A document is identity-based, resource-based, a service or resource control policy (SCP, RCP), a permissions
boundary, or a session policy. Each is parsed as identity-like or resource-based (``PolicyKind``): an SCP,
boundary or session policy names no principal, so the parser refuses Principal and NotPrincipal in them
(E018). RCPs have rules of their own, checked here on every statement that can be read.
"""
from __future__ import annotations

from enum import StrEnum
from typing import Any

from .findings import Finding, Severity, pointer
from .parse import PolicyKind, readable_statements


class PolicyType(StrEnum):
    IDENTITY = "identity"
    RESOURCE = "resource"
    SCP = "scp"
    RCP = "rcp"
    BOUNDARY = "boundary"
    SESSION = "session"

    @property
    def kind(self) -> PolicyKind:
        return PolicyKind.RESOURCE if self in (PolicyType.RESOURCE, PolicyType.RCP) else PolicyKind.IDENTITY

    @property
    def grants(self) -> bool:
        """Whether its Allow statements grant access. SCPs, RCPs, boundaries and session policies only set the
        most that a principal may do: AWS's words, they "never grant permissions"."""
        return self in (PolicyType.IDENTITY, PolicyType.RESOURCE)


# AWS's RCPFullAWSAccess, attached to every root, OU and account: the one RCP whose statement allows.
RCP_FULL_AWS_ACCESS = {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}


def _is_rcp_full_aws_access(doc: Any) -> bool:
    raw = doc.get("Statement") if isinstance(doc, dict) else None
    statements = [raw] if isinstance(raw, dict) else raw if isinstance(raw, list) else []
    if len(statements) != 1 or not isinstance(statements[0], dict):
        return False
    fields = {key: value[0] if isinstance(value, list) and len(value) == 1 else value
              for key, value in statements[0].items() if key != "Sid"}
    return fields == RCP_FULL_AWS_ACCESS


def type_findings(doc: Any, policy_type: PolicyType) -> list[Finding]:
    """Errors for what the type forbids. RCPs: "The Allow effect is supported only for the RCPFullAWSAccess
    policy", and a statement names its principals with Principal (NotPrincipal is not supported)."""
    if policy_type is not PolicyType.RCP or _is_rcp_full_aws_access(doc):
        return []
    findings = []
    for where, raw in readable_statements(doc):
        if raw.get("Effect") == "Allow":
            findings.append(Finding(
                "E027", Severity.ERROR, pointer(*where, "Effect"),
                "an RCP may only deny: Allow is for RCPFullAWSAccess alone (one statement allowing Principal \"*\" "
                "every Action on every Resource)",
            ))
        if "NotPrincipal" in raw:
            findings.append(Finding("E028", Severity.ERROR, pointer(*where, "NotPrincipal"),
                                    "an RCP statement needs Principal; RCPs do not support NotPrincipal"))
    return findings
