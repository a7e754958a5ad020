"""The IAM catalog (services, actions, resource types, condition keys), for validation warnings.

It comes in two forms with the same content. A corpus directory holds ``iam_actions.jsonl`` and
``condition_keys.jsonl`` (and ``services.jsonl`` for the services' names), the layout of ``../shared/corpus``.
The package ships the compact form, ``data/iam_catalog.json.gz``, which ``tools/build_catalog.py`` writes from
a corpus, so ``iam-eval validate`` checks names after a plain ``pip install``. The catalog only ever adds
warnings: real policies name retired actions, and IAM accepts them.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

CATALOG_ENV = "IAM_EVAL_CATALOG"
SHIPPED = "data/iam_catalog.json.gz"
# The variable part of a condition key's name, as the reference spells it: ${TagKey}, <key> or tag-key.
_TEMPLATE_PART = re.compile(r"\$\{[^}]*\}|<[^>]*>|tag-key")
_ESCAPED_TEMPLATE_PART = re.compile(r"\\\$\\\{[^}]*\\\}|<[^>]*>|tag\\-key")


@dataclass(frozen=True)
class ConditionKey:
    name: str
    type: str  # String, ArrayOfString, ARN, Bool, Numeric, Date, IPAddress, ...
    is_global: bool
    services: frozenset[str]  # the service prefixes that document the key (for service keys)
    template: bool  # the name has a variable part, e.g. aws:ResourceTag/${TagKey}


def _lines(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def read_corpus(directory: str | os.PathLike) -> dict[str, Any]:
    """The compact form of the catalog in a corpus directory::

        {"services": {prefix: {"name": "Amazon S3", "actions": {"GetObject": "Read", ...},
                               "resource_types": {"object": "arn:${Partition}:s3:::${BucketName}/${ObjectName}"},
                               "condition_keys": {"s3:x-amz-acl": "String", ...}}},
         "global_condition_keys": {"aws:SourceIp": "IPAddress", "aws:ResourceTag/${TagKey}": "String", ...}}

    Actions keep their canonical case, with the access level the corpus gives (else null); a service's
    condition keys are those its reference page lists; keys with a variable part stay templates.
    """
    folder = Path(directory)
    services: dict[str, dict[str, Any]] = {}

    def service(prefix: str) -> dict[str, Any]:
        return services.setdefault(prefix, {"name": "", "actions": {}, "resource_types": {}, "condition_keys": {}})

    if (folder / "services.jsonl").exists():
        for entry in _lines(folder / "services.jsonl"):
            service(entry["service_prefix"])["name"] = entry["service_name"]
    for entry in _lines(folder / "iam_actions.jsonl"):
        actions = service(entry["service_prefix"])
        actions["actions"][entry["action"]] = entry.get("access_level")
        for resource_type in entry.get("resource_types", ()):
            actions["resource_types"][resource_type["name"]] = resource_type["arn_format"]
    global_keys: dict[str, str] = {}
    for entry in _lines(folder / "condition_keys.jsonl"):
        if entry["scope"] == "global":
            global_keys[entry["key"]] = entry["type"]
        else:
            for prefix in entry["defined_in"]:
                service(prefix)["condition_keys"][entry["key"]] = entry["type"]
    return {"services": services, "global_condition_keys": global_keys}


class Catalog:
    """Services by prefix, their actions, and condition keys; every name is looked up case-insensitively,
    as IAM compares them."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.header: Mapping[str, Any] = data.get("header", {})
        self.services: dict[str, Mapping[str, Any]] = {prefix.lower(): body for prefix, body in
                                                       data["services"].items()}
        self.actions = {prefix: {name.lower(): name for name in body["actions"]}  # lower-cased -> canonical
                        for prefix, body in self.services.items()}
        defined_in: dict[str, set[str]] = {}
        types: dict[str, str] = {}
        for prefix, body in self.services.items():
            for name, key_type in body["condition_keys"].items():
                defined_in.setdefault(name, set()).add(prefix)
                types.setdefault(name, key_type)
        keys = [ConditionKey(name, key_type, True, frozenset(), bool(_TEMPLATE_PART.search(name)))
                for name, key_type in data["global_condition_keys"].items()]
        keys += [ConditionKey(name, types[name], False, frozenset(prefixes), bool(_TEMPLATE_PART.search(name)))
                 for name, prefixes in defined_in.items()]
        self.all_keys = keys
        self.keys = {key.name.lower(): key for key in keys if not key.template}
        self.templates = [
            (re.compile(_ESCAPED_TEMPLATE_PART.sub(".+", re.escape(key.name)), re.IGNORECASE), key)
            for key in keys if key.template
        ]

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Catalog:
        """The catalog of a corpus directory."""
        return cls({**read_corpus(directory), "header": {"source": str(directory)}})

    @classmethod
    @functools.cache
    def shipped(cls) -> Catalog:
        """The catalog shipped in the package (read once)."""
        packed = resources.files("iam_evaluator").joinpath(SHIPPED).read_bytes()
        return cls(json.loads(gzip.decompress(packed)))

    @classmethod
    def from_environment(cls, directory: str | os.PathLike | None = None) -> Catalog:
        """The catalog at ``directory``, else at ``$IAM_EVAL_CATALOG``, else the shipped one."""
        chosen = directory or os.environ.get(CATALOG_ENV)
        return cls.load(chosen) if chosen else cls.shipped()

    def key(self, name: str) -> ConditionKey | None:
        found = self.keys.get(name.lower())
        if found is not None:
            return found
        return next((key for pattern, key in self.templates if pattern.fullmatch(name)), None)
