"""The part of SARIF 2.1.0 that ``iam-eval validate --format sarif`` writes, as a JSON Schema written for these
tests from the standard (OASIS SARIF 2.1.0, errata 01: sections 3.13 sarifLog, 3.14 run, 3.18 tool, 3.19
toolComponent, 3.27 result, 3.28 location, 3.29 physicalLocation, 3.30 region, 3.4 artifactLocation, 3.49
reportingDescriptor). Every object is closed, so a misspelt property fails as the standard's schema fails it;
the constraints are the standard's: required properties, the level names, 1-based lines and columns."""
from __future__ import annotations

LEVELS = ["none", "note", "warning", "error"]


def _closed(required: list[str], **properties) -> dict:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


_MESSAGE = _closed(["text"], text={"type": "string"})
_ARTIFACT_LOCATION = _closed([], uri={"type": "string"}, uriBaseId={"type": "string"})
_PROPERTY_BAG = {"type": "object"}
_REGION = _closed(["startLine"], startLine={"type": "integer", "minimum": 1},
                  startColumn={"type": "integer", "minimum": 1})
_LOCATION = _closed(["physicalLocation"], physicalLocation=_closed(
    ["artifactLocation"], artifactLocation=_ARTIFACT_LOCATION, region=_REGION))
_RULE = _closed(["id"], id={"type": "string"}, shortDescription=_MESSAGE,
                defaultConfiguration=_closed([], level={"enum": LEVELS}))
_RESULT = _closed(["message"], ruleId={"type": "string"}, ruleIndex={"type": "integer", "minimum": -1},
                  level={"enum": LEVELS}, message=_MESSAGE, locations={"type": "array", "items": _LOCATION},
                  properties=_PROPERTY_BAG)
_RUN = _closed(
    ["tool"],
    tool=_closed(["driver"], driver=_closed(["name"], name={"type": "string"}, version={"type": "string"},
                                            rules={"type": "array", "items": _RULE})),
    originalUriBaseIds={"type": "object", "additionalProperties": _ARTIFACT_LOCATION},
    columnKind={"enum": ["utf16CodeUnits", "unicodeCodePoints"]},
    results={"type": "array", "items": _RESULT},
)
SARIF_SCHEMA = _closed(["version", "runs"], **{"$schema": {"type": "string", "format": "uri"},
                                              "version": {"enum": ["2.1.0"]},
                                              "runs": {"type": "array", "items": _RUN}})
SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
"""What a 2.1.0 log's $schema names (the standard's own schema, errata 01)."""
