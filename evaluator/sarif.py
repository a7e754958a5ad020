"""Validation findings as a SARIF 2.1.0 log, the format code-scanning tools and editors read.

One run of the tool ``iam-eval``: a rule per finding code that occurs, and a result per finding, placed at
the line and column where its JSON pointer's element stands in the file. Files are named as GitHub code
scanning reads them best, relative to the repository's root: iam-eval runs there, so a file under the current
directory is a relative reference from it (base ``%SRCROOT%``), any other an absolute ``file`` URI.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .findings import CODE_MEANINGS, Finding
from .locate import locate

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SOURCE_ROOT = "%SRCROOT%"


def _artifact_location(path: str, root: Path) -> dict[str, str]:
    """The file as a URI (RFC 3986: forward slashes, other bytes than unreserved ones percent-encoded): relative
    to ``root`` with its base id when the file is under it, else absolute, which takes no base id (SARIF 3.4.4)."""
    absolute = Path(os.path.abspath(path))
    if not absolute.is_relative_to(root):
        return {"uri": absolute.as_uri()}
    return {"uri": quote(os.fsencode(absolute.relative_to(root).as_posix())), "uriBaseId": SOURCE_ROOT}


def _result(location: dict[str, str], text: str, finding: Finding, rule_index: int) -> dict[str, Any]:
    line, column = locate(text, finding.pointer) or (1, 1)
    return {
        "ruleId": finding.code,
        "ruleIndex": rule_index,
        "level": str(finding.severity),  # error, warning or note: SARIF's names
        "message": {"text": finding.message},
        "locations": [{"physicalLocation": {
            "artifactLocation": location,
            "region": {"startLine": line, "startColumn": column},
        }}],
        "properties": {"pointer": finding.pointer},
    }


def sarif_log(files: Mapping[str, tuple[str, Sequence[Finding]]], version: str) -> dict[str, Any]:
    """The log for ``{path: (the file's text, its findings)}``; ``version`` is iam-eval's. Relative paths and
    relative URIs are from the current directory."""
    root = Path.cwd()
    levels = {finding.code: str(finding.severity) for _, findings in files.values() for finding in findings}
    codes = sorted(levels)
    rule_index = {code: index for index, code in enumerate(codes)}
    rules = [{"id": code, "shortDescription": {"text": CODE_MEANINGS.get(code, code)},
              "defaultConfiguration": {"level": levels[code]}} for code in codes]
    results = [_result(_artifact_location(path, root), text, finding, rule_index[finding.code])
               for path, (text, findings) in files.items() for finding in findings]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {"name": "iam-eval", "version": version, "rules": rules}},
            # A base ends in "/", or RFC 3986 resolution would replace its last segment.
            "originalUriBaseIds": {SOURCE_ROOT: {"uri": root.as_uri().removesuffix("/") + "/"}},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }
