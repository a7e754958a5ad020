"""Policy variables: ``${aws:username}``, ``${key, 'default'}``, ``${*}``, ``${?}``, ``${$}``.

Used in Resource elements and in String and Arn condition values, and only in
policies with Version 2012-10-17 (elsewhere the text is literal). A variable
whose key is absent without a default, or whose value is multi-valued, cannot
be resolved; the statement that needs it then does not apply.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from .wildcard import Pattern, Wildcard, compile_glob

VARIABLE = re.compile(r"\$\{([^}]*)\}")
_WITH_DEFAULT = re.compile(r"^\s*([^,]+?)\s*,\s*'([^']*)'\s*$")
_LITERALS = {"*": "*", "?": "?", "$": "$"}


class Unresolvable(LookupError):
    """A variable has no single value in the request context: ``key`` (as spelled) is absent, or a list."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def parse_variable(body: str) -> tuple[str, str | None]:
    """``aws:username, 'x'`` -> (``aws:username``, ``x``); ``aws:username`` -> (…, None)."""
    with_default = _WITH_DEFAULT.match(body)
    if with_default:
        return with_default.group(1), with_default.group(2)
    return body.strip(), None


def _resolve(body: str, context: Mapping[str, str | tuple[str, ...]]) -> str:
    if body in _LITERALS:
        return _LITERALS[body]
    key, default = parse_variable(body)
    value = context.get(key.lower())  # request context keys are lower-cased
    if value is None:
        if default is None:
            raise Unresolvable(f"policy variable ${{{key}}} is not in the request context", key)
        return default
    if not isinstance(value, str):
        raise Unresolvable(f"policy variable ${{{key}}} is multi-valued in the request context", key)
    return value


def expand_pattern(
    text: str, context: Mapping[str, str | tuple[str, ...]], substitute: bool
) -> Pattern:
    """A glob pattern with variables replaced by their (literal) values."""
    if not substitute or "${" not in text:
        return compile_glob(text)
    items: list[str | Wildcard] = []
    position = 0
    for match in VARIABLE.finditer(text):
        items.extend(compile_glob(text[position : match.start()]))
        items.extend(_resolve(match.group(1), context))
        position = match.end()
    items.extend(compile_glob(text[position:]))
    return tuple(items)


def expand_text(text: str, context: Mapping[str, str | tuple[str, ...]], substitute: bool) -> str:
    """Plain text with variables replaced, for the equality operators."""
    if not substitute or "${" not in text:
        return text
    return VARIABLE.sub(lambda match: _resolve(match.group(1), context), text)



def variable_keys(text: str) -> list[str]:
    """The keys (as spelled) of the variables in ``text``, defaulted or not; ``${*}``, ``${?}`` and ``${$}``
    name none."""
    return [parse_variable(match.group(1))[0] for match in VARIABLE.finditer(text) if match.group(1) not in _LITERALS]


def absent_variables(text: str, context: Mapping[str, str | tuple[str, ...]]) -> list[str]:
    """The keys (as spelled) of the variables in ``text`` that the context does not give and that have no
    default: what the request must add for them to resolve."""
    keys = []
    for match in VARIABLE.finditer(text):
        if match.group(1) in _LITERALS:
            continue
        key, default = parse_variable(match.group(1))
        if default is None and context.get(key.lower()) is None:
            keys.append(key)
    return keys


def open_pattern(text: str, context: Mapping[str, str | tuple[str, ...]]) -> Pattern:
    """A glob pattern with every variable that resolves replaced by its value and every other by ``*``: what
    the pattern could match once the request gives its variables single values."""
    items: list[str | Wildcard] = []
    position = 0
    for match in VARIABLE.finditer(text):
        items.extend(compile_glob(text[position : match.start()]))
        try:
            items.extend(_resolve(match.group(1), context))
        except Unresolvable:
            items.append(Wildcard.STAR)
        position = match.end()
    items.extend(compile_glob(text[position:]))
    return tuple(items)
