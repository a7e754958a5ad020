"""Where a JSON pointer's element stands in the JSON text it came from: its line and column.

Findings point into the decoded document (RFC 6901); editors and code-scanning tools want a place in the
file. The text is walked, not re-parsed into a tree with positions: each value the pointer passes by is
skipped with the standard decoder.
"""
from __future__ import annotations

import json
import re
from json.decoder import scanstring

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, offset: int) -> int:
    return _WHITESPACE.match(text, offset).end()


def _next(text: str, offset: int, close: str) -> int:
    """Past the comma after a member or item, or at the bracket that closes its object or array."""
    offset = _skip(text, offset)
    if text[offset] == ",":
        return _skip(text, offset + 1)
    if text[offset] != close:
        raise ValueError(f"expected ',' or {close!r} at {offset}")
    return offset


def _member(text: str, offset: int, token: str) -> int | None:
    """In the object at ``offset``: where the last member named ``token`` starts (its key; JSON readers
    keep the last of a key given twice), or None."""
    found = None
    offset = _skip(text, offset + 1)
    while text[offset] != "}":
        start = offset
        key, offset = scanstring(text, offset + 1)
        if key == token:
            found = start
        _, offset = _DECODER.raw_decode(text, _value(text, start))
        offset = _next(text, offset, "}")
    return found


def _item(text: str, offset: int, token: str) -> int | None:
    """In the array at ``offset``: where item number ``token`` starts, or None."""
    if not token.isdigit():
        return None
    offset = _skip(text, offset + 1)
    for _ in range(int(token)):
        if text[offset] == "]":
            return None
        _, offset = _DECODER.raw_decode(text, offset)
        offset = _next(text, offset, "]")
    return None if text[offset] == "]" else offset


def _value(text: str, start: int) -> int:
    """Where the value starts of the object member whose key starts at ``start``."""
    _, offset = scanstring(text, start + 1)
    offset = _skip(text, offset)
    if text[offset] != ":":
        raise ValueError(f"expected ':' at {offset}")
    return _skip(text, offset + 1)


def locate(text: str, pointer: str) -> tuple[int, int] | None:
    """The 1-based line and column (in code points) where the element at ``pointer`` starts in the JSON
    ``text``: an object member at its key, an array item at its value, the whole document ("") at its first
    character. None when ``text`` is not JSON or has no such element."""
    tokens = [token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:]]
    try:
        start: int | None = _skip(text, 0)
        in_object = False  # whether start is a member's key, whose value comes after the colon
        for token in tokens:
            offset = _value(text, start) if in_object else start
            if text[offset] == "{":
                start, in_object = _member(text, offset, token), True
            elif text[offset] == "[":
                start, in_object = _item(text, offset, token), False
            else:
                start = None
            if start is None:
                return None
        if start >= len(text):
            return None
    except (ValueError, IndexError):  # not JSON, or a text that ends too soon
        return None
    line = text.count("\n", 0, start) + 1
    return line, start - (text.rfind("\n", 0, start) + 1) + 1
