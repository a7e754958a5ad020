"""Reference semantics of one condition: an operator, a key, and its values.

AWS IAM User Guide, "Condition operators" and "Single-valued vs. multivalued
context keys": values of one key are OR-ed (for negated operators: none may
match); a missing key fails the condition, except for negated operators,
``...IfExists``, ``Null: true`` and ``ForAllValues:``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from .model import Condition
from .operators import (
    OPERATORS,
    Comparison,
    Family,
    read_address,
    read_bool,
    read_date,
    read_network,
    read_number,
)
from .variables import expand_pattern, expand_text
from .wildcard import Pattern, glob_match


class EvaluationError(ValueError):
    """A request value that a condition cannot read; the request is denied."""


def _arn_fields(pattern: Pattern) -> list[Pattern] | None:
    """Split an ARN (pattern) into its six ``:``-separated fields; the sixth keeps its colons."""
    fields: list[list] = [[]]
    for item in pattern:
        if item == ":" and len(fields) < 6:
            fields.append([])
        else:
            fields[-1].append(item)
    return [tuple(f) for f in fields] if len(fields) == 6 else None


def _arn_like(pattern: Pattern, value: str) -> bool:
    """ArnLike/ArnEquals: each field on its own, so wildcards never cross a ``:``
    between fields (the resource part after the fifth ``:`` is one field)."""
    wanted, given = _arn_fields(pattern), _arn_fields(tuple(value))
    if wanted is None or given is None:
        return False
    return all(glob_match(w, "".join(g)) for w, g in zip(wanted, given, strict=True))  # type: ignore[arg-type]


def _read(reader: Callable, text: str, key: str):
    try:
        return reader(text)
    except ValueError as exc:
        raise EvaluationError(f"context key {key!r}: {exc}") from None


Comparator = Callable[[str], bool]


def comparator(condition: Condition, context: Mapping, substitute: bool) -> Comparator:
    """A test of one request value against all policy values (OR), positive sense.

    Resolves the policy values' variables, so an unresolvable one raises
    ``Unresolvable`` whether or not the key is present.
    """
    spec = OPERATORS[condition.base_operator]
    values = condition.values
    key = condition.key
    if spec.family is Family.NULL:
        return lambda text: False  # Null tests only whether the key is present
    if spec.family is Family.STRING and spec.comparison is Comparison.LIKE:
        patterns = [expand_pattern(v, context, substitute) for v in values]
        return lambda text: any(glob_match(p, text) for p in patterns)
    if spec.family is Family.STRING:
        texts = [expand_text(v, context, substitute) for v in values]
        if spec.comparison is Comparison.EQUALS_IGNORE_CASE:
            folded = {t.casefold() for t in texts}
            return lambda text: text.casefold() in folded
        return lambda text: text in texts
    if spec.family is Family.ARN:
        patterns = [expand_pattern(v, context, substitute) for v in values]
        return lambda text: any(_arn_like(p, text) for p in patterns)
    if spec.family is Family.BINARY:
        return lambda text: text in values
    if spec.family is Family.BOOL:
        flags = {read_bool(v) for v in values}
        return lambda text: _read(read_bool, text, key) in flags
    if spec.family is Family.IP:
        networks = [read_network(v) for v in values]
        return lambda text: any(_read(read_address, text, key) in n for n in networks)
    reader = read_number if spec.family is Family.NUMERIC else read_date
    bounds = [reader(v) for v in values]
    compare = {
        Comparison.EQUALS: lambda a, b: a == b,
        Comparison.LESS: lambda a, b: a < b,
        Comparison.LESS_EQUALS: lambda a, b: a <= b,
        Comparison.GREATER: lambda a, b: a > b,
        Comparison.GREATER_EQUALS: lambda a, b: a >= b,
    }[spec.comparison]
    return lambda text: any(compare(_read(reader, text, key), bound) for bound in bounds)


def condition_holds(
    condition: Condition, context: Mapping[str, str | tuple[str, ...]], matches: Comparator, missing: set[str]
) -> bool:
    """Whether one condition holds for a request context (keys lower-cased), given its
    ``comparator``. Adds the key to ``missing`` when the condition needed it and it was absent.
    """
    spec = OPERATORS[condition.base_operator]
    value = context.get(condition.key.lower())
    if spec.family is Family.NULL:
        absent = value is None
        return any(read_bool(flag) == absent for flag in condition.values)
    if value is None:
        missing.add(condition.key)
        # IfExists: "If the key is not present, evaluate the condition element as true",
        # whatever the set qualifier.
        if condition.if_exists or condition.set_qualifier == "ForAllValues":
            return True
        if condition.set_qualifier == "ForAnyValue":
            return False
        return spec.negated
    given = (value,) if isinstance(value, str) else value
    if condition.set_qualifier == "ForAllValues":
        return all(matches(v) != spec.negated for v in given)
    if condition.set_qualifier == "ForAnyValue":
        return any(matches(v) != spec.negated for v in given)
    return any(matches(v) for v in given) != spec.negated
