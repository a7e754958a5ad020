"""Security warnings (and one suggestion), in the spirit of IAM Access Analyzer's policy checks: grants wider than
they look.

They read a policy that parses. The grant checks apply to the types whose Allow grants (identity-based and
resource-based policies); an Allow in an SCP, RCP, boundary or session policy only sets a limit.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from .findings import Finding, Severity, pointer
from .model import Effect, Policy, Statement
from .parse import readable_statements
from .policy_types import PolicyType
from .wildcard import compile_glob, glob_match

# Services whose every action ("iam:*") is a grant over identities, keys, secrets, the organization, data or
# the audit trail: allowing all of them is rarely meant.
SENSITIVE_SERVICES = frozenset({
    "account", "cloudtrail", "iam", "kms", "organizations", "s3", "secretsmanager", "sso", "sts",
})
_S3_ARN = re.compile(r"arn:[^:]*:s3:::.")  # a bucket, or objects in one


def _at(where: tuple, raw: Mapping, element: str, value: str) -> str:
    """Where ``value`` stands in the statement's ``element`` (a string, or a list holding it)."""
    values = raw[element]
    return pointer(*where, element) if isinstance(values, str) else pointer(*where, element, values.index(value))


def _passes_any_role(statement: Statement) -> bool:
    pass_role = any(glob_match(compile_glob(pattern), "iam:PassRole", ignore_case=True)
                    for pattern in statement.actions or ())
    return pass_role and "*" in (statement.resources or ())


def _is_public(statement: Statement) -> bool:
    principal = statement.principal
    return principal is not None and (principal.everyone or "*" in principal.aws) and not statement.conditions


def _grant_findings(where: tuple, raw: Mapping, statement: Statement, policy_type: PolicyType) -> list[Finding]:
    findings = []
    if _passes_any_role(statement):
        findings.append(Finding(
            "W013", Severity.WARNING, _at(where, raw, "Resource", "*"),
            "iam:PassRole on Resource \"*\" lets the principal pass any role, with all its permissions, to a "
            "service; name the roles it may pass",
        ))
    if statement.not_actions is not None:
        findings.append(Finding(
            "W014", Severity.WARNING, pointer(*where, "NotAction"),
            "Allow with NotAction grants every other action of every service, also those AWS adds later; "
            "list the actions to allow",
        ))
    if statement.not_resources is not None:
        findings.append(Finding(
            "W015", Severity.WARNING, pointer(*where, "NotResource"),
            "Allow with NotResource grants on every other resource, also those created later; list the resources",
        ))
    if policy_type is PolicyType.RESOURCE and _is_public(statement):
        findings.append(Finding(
            "W016", Severity.WARNING, pointer(*where, "Principal"),
            "Allow to every principal without a Condition makes the resource public (anonymous callers "
            "included); name the principals or add a Condition such as aws:PrincipalOrgID or aws:SourceAccount",
        ))
    for pattern in statement.actions or ():
        service = pattern.lower().removesuffix(":*")
        if pattern == "*":
            message = "Allow of \"*\" grants every action of every service: full administrator access"
        elif service in SENSITIVE_SERVICES:
            message = f"Allow of {pattern!r} grants every {service} action; allow the actions needed"
        else:
            continue
        findings.append(Finding("W017", Severity.WARNING, _at(where, raw, "Action", pattern), message))
    return findings


def _denies_insecure_transport(statement: Statement) -> bool:
    return statement.effect is Effect.DENY and any(
        condition.base_operator == "Bool" and condition.key.lower() == "aws:securetransport"
        and "false" in (value.lower() for value in condition.values)
        for condition in statement.conditions
    )


def _insecure_transport_finding(doc: Mapping, policy: Policy) -> list[Finding]:
    """A bucket policy should deny requests without TLS (AWS's S3 security best practice). A note, not a
    warning: a best practice the policy lacks, not a grant wider than it looks."""
    statements = list(zip(readable_statements(doc), policy.statements, strict=True))
    if any(_denies_insecure_transport(statement) for _, statement in statements):
        return []
    for (where, raw), statement in statements:
        bucket = next((arn for arn in statement.resources or () if _S3_ARN.match(arn)), None)
        if bucket is not None:
            return [Finding(
                "W018", Severity.NOTE, _at(where, raw, "Resource", bucket),
                "the bucket policy does not deny requests without TLS: add a statement denying \"s3:*\" to "
                "Principal \"*\" with {\"Bool\": {\"aws:SecureTransport\": \"false\"}}",
            )]
    return []


def security_findings(doc: Mapping, policy: Policy, policy_type: PolicyType) -> list[Finding]:
    """Every security warning for a policy that parses (``doc`` is its JSON document)."""
    findings = []
    if policy_type.grants:
        for (where, raw), statement in zip(readable_statements(doc), policy.statements, strict=True):
            if statement.effect is Effect.ALLOW:
                findings += _grant_findings(where, raw, statement, policy_type)
    if policy_type is PolicyType.RESOURCE:
        findings += _insecure_transport_finding(doc, policy)
    return findings
