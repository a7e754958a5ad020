"""Catalog warnings: services, actions and condition keys that the IAM catalog does not know, each with the
names it knows that come closest ("did you mean"), and condition keys used with the wrong operator.

They read every statement that can be read, also in a policy with structural errors, so one run shows every
typo. IAM accepts names it does not know (real policies name retired actions), so these stay warnings.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from typing import Any

from .catalog import Catalog
from .findings import Finding, Severity, pointer
from .operators import Family, ParsedOperator, UnknownOperator, parse_operator
from .parse import ACTION_SYNTAX, readable_statements

# Which operator families suit each catalog key type.
_FAMILIES_FOR_TYPE = {
    "String": {Family.STRING}, "ArrayOfString": {Family.STRING},
    "ARN": {Family.ARN, Family.STRING}, "ArrayOfARN": {Family.ARN, Family.STRING},
    "Bool": {Family.BOOL, Family.STRING}, "ArrayOfBool": {Family.BOOL, Family.STRING},
    "Numeric": {Family.NUMERIC}, "Date": {Family.DATE}, "IPAddress": {Family.IP},
}
_SUGGESTIONS = 3
_NAME_CUTOFF = 0.8  # difflib's ratio, for action and condition-key names
_PREFIX_CUTOFF = 0.5  # service prefixes are short: "s4" against "s3" is 0.5
_TAG_TEMPLATE = re.compile(r"/(\$\{[^}]*\}|<[^>]*>|tag-key)$")


def _closest(word: str, names: Iterable[str], cutoff: float, count: int = _SUGGESTIONS) -> list[str]:
    """The names closest to ``word``, best first, compared without case as IAM compares them."""
    by_lower = {name.lower(): name for name in names}
    return [by_lower[match] for match in difflib.get_close_matches(word.lower(), by_lower, count, cutoff)]


def _service_suggestions(prefix: str, name: str, catalog: Catalog) -> list[str]:
    """Service prefixes close to ``prefix``: those that have the action ``name``, as service:Action, when any
    has it (s4:GetObject comes out as s3:GetObject), else the closest prefixes."""
    close = _closest(prefix, catalog.actions, _PREFIX_CUTOFF, count=10)
    having = [f"{other}:{catalog.actions[other][name.lower()]}" for other in close
              if name.lower() in catalog.actions[other]]
    return having[:_SUGGESTIONS] or close[:_SUGGESTIONS]


def _did_you_mean(names: list[str]) -> str:
    if not names:
        return ""
    return f"; did you mean {names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' or ' + names[-1]}?"


def _action_warning(pattern: str, catalog: Catalog) -> tuple[str, str] | None:
    if pattern == "*":
        return None
    service, _, name = pattern.partition(":")
    prefix = service.lower()
    if "*" in service or "?" in service:
        return "W010", f"{pattern!r} has a wildcard in the service prefix; IAM matches it, but it is rarely meant"
    actions = catalog.actions.get(prefix)
    if actions is None:
        close = _service_suggestions(prefix, name, catalog)
        return "W002", f"{pattern!r}: no service with prefix {service!r} in the IAM catalog{_did_you_mean(close)}"
    if "*" in name or "?" in name:
        regex = re.compile(re.escape(name.lower()).replace(r"\*", ".*").replace(r"\?", "."))
        if not any(regex.fullmatch(action) for action in actions):
            return "W003", f"{pattern!r} matches no {prefix} action of the IAM catalog"
    elif name.lower() not in actions:
        close = [f"{prefix}:{action}" for action in _closest(name, actions.values(), _NAME_CUTOFF)]
        return "W003", f"{pattern!r}: the IAM catalog has no such {prefix} action{_did_you_mean(close)}"
    return None


def _key_suggestions(name: str, catalog: Catalog) -> list[str]:
    """Known keys close to ``name``, of its service (its prefix) if the catalog knows keys of it; a tag
    template (aws:ResourceTag/${TagKey}) is offered with the tag ``name`` names, so aws:ResourceTagg/team comes
    out as aws:ResourceTag/team."""
    prefix = name.partition(":")[0].lower() + ":"
    keys = [key for key in catalog.all_keys if key.name.lower().startswith(prefix)] or catalog.all_keys
    tag = name.split("/", 1)[1] if "/" in name else None
    return _closest(name, [_TAG_TEMPLATE.sub(f"/{tag}", key.name) if tag and key.template else key.name
                           for key in keys], _NAME_CUTOFF)


def _actions(raw: dict, where: tuple) -> Iterator[tuple[str, str, str]]:
    """(element, pointer, pattern) for each action pattern the parser would accept."""
    for element in ("Action", "NotAction"):
        patterns = raw.get(element)
        if isinstance(patterns, str):
            located = [(pointer(*where, element), patterns)]
        elif isinstance(patterns, list):
            located = [(pointer(*where, element, i), pattern) for i, pattern in enumerate(patterns)]
        else:
            continue
        for at, pattern in located:
            if isinstance(pattern, str) and (pattern == "*" or ACTION_SYNTAX.fullmatch(pattern)):
                yield element, at, pattern


def _conditions(raw: dict, where: tuple) -> Iterator[tuple[str, str, ParsedOperator, str]]:
    """(pointer, operator, its parts, key) for each condition key under an operator the parser knows."""
    block = raw.get("Condition")
    for operator, keys in block.items() if isinstance(block, dict) else ():
        try:
            parsed = parse_operator(operator)
        except UnknownOperator:
            continue
        for key in keys if isinstance(keys, dict) else ():
            if isinstance(key, str) and key.strip():
                yield pointer(*where, "Condition", operator, key), operator, parsed, key


def _key_findings(at: str, operator: str, parsed: ParsedOperator, name: str, services: set[str],
                  catalog: Catalog) -> list[Finding]:
    key = catalog.key(name)
    if key is None:
        return [Finding("W004", Severity.WARNING, at, f"condition key {name!r} is not in the IAM catalog"
                                                      f"{_did_you_mean(_key_suggestions(name, catalog))}")]
    findings = []
    if not key.is_global and services and "*" not in services and not (services & key.services):
        findings.append(Finding(
            "W005", Severity.WARNING, at,
            f"condition key {name!r} is not defined for {', '.join(sorted(services))} "
            f"(it is for {', '.join(sorted(key.services))})",
        ))
    family = parsed.spec.family
    suited = _FAMILIES_FOR_TYPE.get(key.type)
    if family is not Family.NULL and suited and family not in suited:
        findings.append(Finding("W011", Severity.WARNING, at,
                                f"{operator} compares {key.type} key {name!r} as {family}"))
    if key.type.startswith("ArrayOf") and parsed.set_qualifier is None and family is not Family.NULL:
        findings.append(Finding(
            "W012", Severity.WARNING, at,
            f"{name!r} is multivalued: use ForAnyValue: or ForAllValues: with {operator}",
        ))
    return findings


def catalog_findings(doc: Any, catalog: Catalog) -> list[Finding]:
    """Warnings for every action pattern and condition key of every statement that can be read."""
    findings = []
    for where, raw in readable_statements(doc):
        services = set()  # the services the statement's Action names, for keys defined by a service
        for element, at, pattern in _actions(raw, where):
            if element == "Action" and ":" in pattern:
                services.add(pattern.partition(":")[0].lower())
            warning = _action_warning(pattern, catalog)
            if warning:
                findings.append(Finding(warning[0], Severity.WARNING, at, warning[1]))
        for at, operator, parsed, key in _conditions(raw, where):
            findings += _key_findings(at, operator, parsed, key, services, catalog)
    return findings
