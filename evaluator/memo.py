"""Answers kept between calls and batches (parsed callers, the resolvers' answers): each cache is
bounded, and starts again when full, so that hostile input cannot grow memory without bound."""
from __future__ import annotations

CACHE = 1 << 16
"""Entries a cache keeps by default (callers, places, profiles, grants: a few hundred bytes each)."""


def remember(cache: dict, key, value, limit: int = CACHE) -> None:
    """Keep ``value`` in a cache that starts again when it holds ``limit`` entries (dict operations hold
    the GIL, so threads may share one)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
