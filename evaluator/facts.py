"""Who the principal is: the context keys AWS sets for it, which no caller can set.

AWS fills the keys of the principal's namespace (IAM User Guide, "AWS global
condition context keys", properties of the principal) from what it knows of
the caller; a request cannot add or change them. So for a principal the store
knows, every such key comes from the store alone: the request's values for
them are dropped, and the store's put in their place. The tags of an
assumed-role session are given apart (``Request.session_tags``) and override
the role's tags of the same keys, as AWS does. For a principal no store
describes (inline policies, ``iam-eval check --policy``) the request's keys are
used as given.

This module is the rule; the compiled engine's converters apply it from the
same key list (``is_principal_key``) and the same facts.
"""
from __future__ import annotations

from collections.abc import Mapping

PRINCIPAL_KEYS = frozenset({
    "aws:principalarn", "aws:principalaccount", "aws:principalorgid", "aws:principalorgpaths",
    "aws:principaltype", "aws:userid", "aws:username", "aws:principalisawsservice", "aws:principalservicename",
    "aws:principalservicenameslist",
})
"""The principal's keys (lower case) that AWS sets, besides its tags."""

PRINCIPAL_TAG = "aws:principaltag/"


def is_principal_key(key: str) -> bool:
    """Whether AWS alone sets this context key (given in any case) for the principal."""
    key = key.lower()
    return key in PRINCIPAL_KEYS or key.startswith(PRINCIPAL_TAG)


def effective_context(context: Mapping[str, object], facts: Mapping[str, object] | None,
                      session_tags: Mapping[str, str] | None) -> dict[str, object]:
    """The context a request is decided with (keys lower-cased): the request's own keys, less
    the principal's when ``facts`` (the store's, lower-cased keys) describe it, then the
    facts, then the session tags."""
    merged = {key.lower(): value for key, value in context.items()
              if facts is None or not is_principal_key(key)}
    merged.update(facts or {})
    merged.update((PRINCIPAL_TAG + key.lower(), value) for key, value in (session_tags or {}).items())
    return merged
