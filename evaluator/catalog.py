"""The IAM action and condition-key catalog, for validation warnings.

Read from a directory holding ``iam_actions.jsonl`` and ``condition_keys.jsonl``
(the corpus in ``../shared/corpus`` has this layout). The catalog only ever
adds warnings: real policies name retired actions, and IAM accepts them.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

CATALOG_ENV = "IAM_EVAL_CATALOG"
_KEY_PLACEHOLDER = re.compile(r"\\\$\\\{[^}]*\\\}|<[^>]*>|tag\\-key")


@dataclass(frozen=True)
class ConditionKey:
    name: str
    type: str  # String, ArrayOfString, ARN, Bool, Numeric, Date, IPAddress, ...
    is_global: bool
    services: frozenset[str]
    template: bool  # the name has a variable part, e.g. aws:ResourceTag/${TagKey}


class Catalog:
    """Actions by service prefix (lower-cased) and condition keys by name."""

    def __init__(self, actions: dict[str, set[str]], keys: list[ConditionKey]) -> None:
        self.actions = actions
        self.keys = {key.name.lower(): key for key in keys if not key.template}
        self.templates = [
            (re.compile(_KEY_PLACEHOLDER.sub(".+", re.escape(key.name)), re.IGNORECASE), key)
            for key in keys if key.template
        ]

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Catalog:
        folder = Path(directory)
        actions: dict[str, set[str]] = {}
        with (folder / "iam_actions.jsonl").open(encoding="utf-8") as lines:
            for line in lines:
                entry = json.loads(line)
                actions.setdefault(entry["service_prefix"].lower(), set()).add(entry["action"].lower())
        keys = []
        with (folder / "condition_keys.jsonl").open(encoding="utf-8") as lines:
            for line in lines:
                entry = json.loads(line)
                keys.append(ConditionKey(entry["key"], entry["type"], entry["scope"] == "global",
                                         frozenset(entry["defined_in"]), entry["template"]))
        return cls(actions, keys)

    @classmethod
    def from_environment(cls, directory: str | None = None) -> Catalog | None:
        """The catalog at ``directory``, else at ``$IAM_EVAL_CATALOG``, else none."""
        chosen = directory or os.environ.get(CATALOG_ENV)
        return cls.load(chosen) if chosen else None

    def key(self, name: str) -> ConditionKey | None:
        found = self.keys.get(name.lower())
        if found is not None:
            return found
        return next((key for pattern, key in self.templates if pattern.fullmatch(name)), None)
