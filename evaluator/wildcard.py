"""Glob matching as IAM does it: ``*`` matches any run of characters, ``?`` one.

A pattern is a tuple of items: single characters, or the markers ``STAR`` and
``QMARK``. Keeping wildcards as markers, not characters, lets a policy variable
such as ``${*}`` put a literal ``*`` into a pattern.
"""
from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from functools import lru_cache


class Wildcard(Enum):
    STAR = "*"
    QMARK = "?"


STAR = Wildcard.STAR
QMARK = Wildcard.QMARK

Pattern = tuple["str | Wildcard", ...]


def compile_glob(text: str) -> Pattern:
    """Read ``*`` and ``?`` in ``text`` as wildcards, everything else literally."""
    return tuple(STAR if ch == "*" else QMARK if ch == "?" else ch for ch in text)


def glob_match(pattern: Pattern, text: str, ignore_case: bool = False) -> bool:
    """Whether ``text`` matches ``pattern`` in full.

    Greedy scan that, on a mismatch, retries from the last ``*`` one character
    further on; at most len(pattern) * len(text) steps, never exponential.
    """
    if ignore_case:
        pattern = tuple(item.lower() if isinstance(item, str) else item for item in pattern)
        text = text.lower()
    p = t = 0
    star_p, star_t = -1, 0
    while t < len(text):
        item = pattern[p] if p < len(pattern) else None
        if item is STAR:
            star_p, star_t = p, t
            p += 1
        elif item is not None and (item is QMARK or item == text[t]):
            p += 1
            t += 1
        elif star_p >= 0:
            star_t += 1
            p, t = star_p + 1, star_t
        else:
            return False
    while p < len(pattern) and pattern[p] is STAR:
        p += 1
    return p == len(pattern)


def star_match(parts: list[str], text: str) -> bool:
    """Whether ``text`` matches the glob ``"*".join(parts)`` (no ``?``): the first part starts it, the last
    ends it, and the others stand in order between them, each found leftmost (an earlier place never
    leaves less room for the rest). Linear in ``text`` per part, whatever the number of stars."""
    first, last = parts[0], parts[-1]
    if len(text) < len(first) + len(last) or not text.startswith(first) or not text.endswith(last):
        return False
    at, end = len(first), len(text) - len(last)
    for part in parts[1:-1]:
        at = text.find(part, at, end)
        if at < 0:
            return False
        at += len(part)
    return True


@lru_cache(maxsize=1 << 16)
def matcher(text: str, ignore_case: bool = False) -> Callable[[str], bool]:
    """A reusable test for the glob ``text``, with plain string operations where it has no ``?``: no
    wildcard at all, one ``*`` at the end, or ``*`` anywhere (``star_match``)."""
    if ignore_case:
        text = text.lower()
    fold: Callable[[str], str] = str.lower if ignore_case else str
    body = text[:-1] if text.endswith("*") else text
    if "*" not in body and "?" not in body:
        if body is text:
            return lambda candidate: fold(candidate) == text
        return lambda candidate: fold(candidate).startswith(body)
    if "?" not in text:
        parts = text.split("*")
        return lambda candidate: star_match(parts, fold(candidate))
    pattern = compile_glob(text)
    return lambda candidate: glob_match(pattern, fold(candidate))
