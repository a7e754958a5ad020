"""Validation findings as a SARIF 2.1.0 log, the format code-scanning tools and editors read.

One run of the tool ``iam-eval``: a rule per finding code that occurs, and a result per finding, placed at
the line and column where its JSON pointer's element stands in the file.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .findings import CODE_MEANINGS, Finding
from .locate import locate

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def _result(path: str, text: str, finding: Finding, rule_index: int) -> dict[str, Any]:
    line, column = locate(text, finding.pointer) or (1, 1)
    return {
        "ruleId": finding.code,
        "ruleIndex": rule_index,
        "level": str(finding.severity),  # error or warning, as SARIF names its levels
        "message": {"text": finding.message},
        "locations": [{"physicalLocation": {
            "artifactLocation": {"uri": quote(Path(path).as_posix())},
            "region": {"startLine": line, "startColumn": column},
        }}],
        "properties": {"pointer": finding.pointer},
    }


def sarif_log(files: Mapping[str, tuple[str, Sequence[Finding]]], version: str) -> dict[str, Any]:
    """The log for ``{path: (the file's text, its findings)}``; ``version`` is iam-eval's."""
    levels = {finding.code: str(finding.severity) for _, findings in files.values() for finding in findings}
    codes = sorted(levels)
    rule_index = {code: index for index, code in enumerate(codes)}
    rules = [{"id": code, "shortDescription": {"text": CODE_MEANINGS.get(code, code)},
              "defaultConfiguration": {"level": levels[code]}} for code in codes]
    results = [_result(path, text, finding, rule_index[finding.code])
               for path, (text, findings) in files.items() for finding in findings]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {"name": "iam-eval", "version": version, "rules": rules}},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }
