"""Validation findings: what is wrong with a policy, where, and how badly.

Every finding carries a stable code (``E…`` errors, ``W…`` warnings) and a JSON
pointer (RFC 6901) into the policy document, so tools and people can find the
offending element without re-reading the whole policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    pointer: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.severity} at {self.pointer or '/'}: {self.message}"


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
