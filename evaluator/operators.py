"""IAM condition operators: the catalogue, and how each family reads its values.

Both the parser (to reject bad policy values up front) and the evaluators (to
compare request values) use these readers, so a value means the same thing in
both places.
"""
from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import StrEnum


class Family(StrEnum):
    STRING = "String"
    NUMERIC = "Numeric"
    DATE = "Date"
    BOOL = "Bool"
    BINARY = "Binary"
    IP = "IpAddress"
    ARN = "Arn"
    NULL = "Null"


class Comparison(StrEnum):
    EQUALS = "equals"
    EQUALS_IGNORE_CASE = "equals_ignore_case"
    LIKE = "like"
    LESS = "less"
    LESS_EQUALS = "less_equals"
    GREATER = "greater"
    GREATER_EQUALS = "greater_equals"
    IN_RANGE = "in_range"  # IpAddress
    IS_ABSENT = "is_absent"  # Null


@dataclass(frozen=True, slots=True)
class OperatorSpec:
    """A base operator: its family, what it compares, and whether it is negated.

    A negated operator ("...Not...") is true when no policy value matches,
    and true when the key is absent (AWS: negated operators match missing keys).
    """

    family: Family
    comparison: Comparison
    negated: bool = False


def _ordering(family: Family) -> dict[str, OperatorSpec]:
    return {
        f"{family}Equals": OperatorSpec(family, Comparison.EQUALS),
        f"{family}NotEquals": OperatorSpec(family, Comparison.EQUALS, negated=True),
        f"{family}LessThan": OperatorSpec(family, Comparison.LESS),
        f"{family}LessThanEquals": OperatorSpec(family, Comparison.LESS_EQUALS),
        f"{family}GreaterThan": OperatorSpec(family, Comparison.GREATER),
        f"{family}GreaterThanEquals": OperatorSpec(family, Comparison.GREATER_EQUALS),
    }


OPERATORS: dict[str, OperatorSpec] = {
    "StringEquals": OperatorSpec(Family.STRING, Comparison.EQUALS),
    "StringNotEquals": OperatorSpec(Family.STRING, Comparison.EQUALS, negated=True),
    "StringEqualsIgnoreCase": OperatorSpec(Family.STRING, Comparison.EQUALS_IGNORE_CASE),
    "StringNotEqualsIgnoreCase": OperatorSpec(Family.STRING, Comparison.EQUALS_IGNORE_CASE, negated=True),
    "StringLike": OperatorSpec(Family.STRING, Comparison.LIKE),
    "StringNotLike": OperatorSpec(Family.STRING, Comparison.LIKE, negated=True),
    **_ordering(Family.NUMERIC),
    **_ordering(Family.DATE),
    "Bool": OperatorSpec(Family.BOOL, Comparison.EQUALS),
    "BinaryEquals": OperatorSpec(Family.BINARY, Comparison.EQUALS),
    "IpAddress": OperatorSpec(Family.IP, Comparison.IN_RANGE),
    "NotIpAddress": OperatorSpec(Family.IP, Comparison.IN_RANGE, negated=True),
    "ArnEquals": OperatorSpec(Family.ARN, Comparison.LIKE),
    "ArnLike": OperatorSpec(Family.ARN, Comparison.LIKE),
    "ArnNotEquals": OperatorSpec(Family.ARN, Comparison.LIKE, negated=True),
    "ArnNotLike": OperatorSpec(Family.ARN, Comparison.LIKE, negated=True),
    "Null": OperatorSpec(Family.NULL, Comparison.IS_ABSENT),
}

SET_QUALIFIERS = ("ForAllValues", "ForAnyValue")
IF_EXISTS = "IfExists"


@dataclass(frozen=True, slots=True)
class ParsedOperator:
    base: str
    set_qualifier: str | None
    if_exists: bool

    @property
    def spec(self) -> OperatorSpec:
        return OPERATORS[self.base]


class UnknownOperator(ValueError):
    pass


def parse_operator(operator: str) -> ParsedOperator:
    """Split ``ForAnyValue:StringLikeIfExists`` into its parts; raise for unknown names."""
    qualifier = None
    base = operator
    if ":" in operator:
        qualifier, base = operator.split(":", 1)
        if qualifier not in SET_QUALIFIERS:
            raise UnknownOperator(f"unknown set qualifier {qualifier!r} (use ForAllValues or ForAnyValue)")
    if_exists = base.endswith(IF_EXISTS) and base != IF_EXISTS
    if if_exists:
        base = base[: -len(IF_EXISTS)]
    if base not in OPERATORS:
        close = difflib.get_close_matches(base, OPERATORS, n=1, cutoff=0.75)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownOperator(f"unknown condition operator {operator!r}{suggestion}")
    if base == "Null" and (if_exists or qualifier):
        raise UnknownOperator(f"{operator!r}: Null takes neither IfExists nor a set qualifier")
    return ParsedOperator(base, qualifier, if_exists)


# --- value readers: each raises ValueError with a readable message ---------

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def read_number(text: str) -> Decimal:
    if not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a number")
    try:
        return Decimal(text.strip())
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise ValueError(f"{text!r} is not a number") from exc


_EPOCH = re.compile(r"[+-]?\d+(\.\d+)?")


def read_date(text: str) -> Decimal:
    """Seconds since the epoch, from ISO 8601 or from epoch seconds (``aws:EpochTime``)."""
    value = text.strip()
    if _EPOCH.fullmatch(value):
        return Decimal(value)
    iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an ISO 8601 date or epoch seconds") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    whole = int(moment.timestamp())
    return Decimal(whole) + Decimal(moment.microsecond) / Decimal(1_000_000)


def read_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"{text!r} is not true or false")
    return lowered == "true"


def read_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR block or a bare address (a /32 or /128 network)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP address or CIDR block") from exc


def read_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP address") from exc


def read_base64(text: str) -> str:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{text!r} is not base64") from exc
    return text


POLICY_VALUE_READERS = {
    Family.NUMERIC: read_number,
    Family.DATE: read_date,
    Family.BOOL: read_bool,
    Family.BINARY: read_base64,
    Family.IP: read_network,
    Family.NULL: read_bool,
}
"""How a policy value of each typed family is checked; String and Arn take any text."""
