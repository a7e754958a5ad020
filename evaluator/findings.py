"""Validation findings: what is wrong with a policy, where, and how badly.

Every finding carries a stable code (``E…`` errors, ``W…`` warnings and notes) and
a JSON pointer (RFC 6901) into the policy document, so tools and people can find
the offending element without re-reading the whole policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    """How bad a finding is, named as SARIF names its levels: an error makes the policy invalid, a warning is
    most likely a mistake, a note is a suggestion."""

    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


FAILING = {"error": frozenset({Severity.ERROR}), "warning": frozenset({Severity.ERROR, Severity.WARNING})}
"""For each ``--fail-on`` choice, the severities that fail a check (exit 1): a note, a suggestion, never does."""


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    pointer: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.severity} at {self.pointer or '/'}: {self.message}"


# What each validation code means, in a few words (the rules of the SARIF output).
CODE_MEANINGS = {
    "E001": "The policy is not readable JSON text",
    "E002": "A key is given more than once",
    "E003": "An element IAM does not know",
    "E004": "The policy is not a JSON object",
    "E005": "Version is not 2012-10-17 or 2008-10-17",
    "E006": "The policy has no statement",
    "E007": "An element has the wrong JSON type",
    "E008": "Two statements have the same Sid",
    "E009": "A statement has no Effect",
    "E010": "Effect is neither Allow nor Deny",
    "E011": "A statement has both an element and its Not- form",
    "E012": "A statement lacks Action or NotAction (or Resource or NotResource)",
    "E013": "Not a string or a list of strings",
    "E014": "An empty string or list",
    "E015": "Not an action (service:Action)",
    "E016": "Not an ARN pattern",
    "E017": "A malformed policy variable",
    "E018": "Principal or NotPrincipal in a policy that names no principal",
    "E019": "A resource-based policy statement without Principal or NotPrincipal",
    "E020": "A malformed Principal",
    "E021": "Not an AWS principal",
    "E022": "A malformed Condition block",
    "E023": "An unknown condition operator",
    "E024": "An empty condition key",
    "E025": "A condition value that is not a string, number or boolean",
    "E026": "A condition value the operator cannot read",
    "E027": "An Allow in an RCP other than RCPFullAWSAccess",
    "E028": "NotPrincipal in an RCP",
    "W001": "No Version: policy variables are plain text",
    "W002": "A service prefix not in the IAM catalog",
    "W003": "An action not in the IAM catalog",
    "W004": "A condition key not in the IAM catalog",
    "W005": "A condition key the statement's services do not define",
    "W006": "The policy is larger than its IAM quota",
    "W007": "A Sid with characters IAM identity policies refuse",
    "W008": "NotPrincipal with Allow",
    "W009": "A policy variable under Version 2008-10-17",
    "W010": "A wildcard in the service prefix",
    "W011": "A condition operator that does not suit the key's type",
    "W012": "A multivalued condition key without ForAnyValue or ForAllValues",
    "W013": "iam:PassRole allowed on every resource",
    "W014": "Allow with NotAction",
    "W015": "Allow with NotResource",
    "W016": "A resource policy allowing every principal without a Condition",
    "W017": "Allow of every action, or of every action of a sensitive service",
    "W018": "A bucket policy that does not deny requests without TLS (a suggestion)",
}


def pointer(*parts: str | int) -> str:
    """Build a JSON pointer, escaping '~' and '/' inside keys as RFC 6901 says."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


class PolicyValidationError(ValueError):
    """Raised for an invalid policy; carries every error found, never only the first."""

    def __init__(self, findings: list[Finding], source: str = "") -> None:
        self.findings = findings
        self.source = source
        errors = [f for f in findings if f.severity is Severity.ERROR]
        where = f"{source}: " if source else ""
        lines = "\n".join(f"  {f}" for f in errors)
        super().__init__(f"{where}invalid policy ({len(errors)} error(s))\n{lines}")
