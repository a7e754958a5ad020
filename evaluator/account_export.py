"""Load what ``aws iam get-account-authorization-details`` prints into a ``PolicyStore``.

The export holds one account's users (inline policies, attached managed
policies, groups, permissions boundary, tags), groups, roles (the same, and
the trust policy, which becomes the resource policy of the role's ARN) and
managed policies with all their versions, of which the default one is used.
Policy documents are objects when printed by the CLI and URL-encoded JSON text
from the API; both are read. A key given twice anywhere in the export (a role's
RolePolicyList as well as a policy's Effect) is an error (E002), never read as
the last one written.

It does not hold the AWS managed policies its principals use unless they were
asked for, nor SCPs, RCPs or other services' resource policies. Pass the AWS
managed policies (``aws_managed_policies``) to resolve them; without them, any
managed policy attached but not in the export is an error that lists each one
and where it is attached.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .findings import Finding, PolicyValidationError, Severity, pointer
from .parse import decode_json
from .store import PolicyStore, StoreBuilder, StoreError, store_error


class _BadExport(Exception):
    """The export is not shaped as the CLI prints it, at ``where``."""

    def __init__(self, where: tuple, message: str) -> None:
        super().__init__(message)
        self.where = where


def _objects(holder: Mapping, key: str, where: tuple) -> list[tuple[tuple, dict]]:
    """The list of objects ``holder[key]`` (absent is empty), each with where it stands."""
    items = holder.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise _BadExport((*where, key), f"{key} must be a list of objects")
    return [((*where, key, i), item) for i, item in enumerate(items)]


def _string(holder: Mapping, key: str, where: tuple) -> str:
    value = holder.get(key)
    if not isinstance(value, str):
        raise _BadExport((*where, key), f"{key} must be a string")
    return value


def _document(holder: Mapping, key: str, where: tuple) -> Any:
    """A policy document: an object, or (from the API) URL-encoded JSON text."""
    value = holder.get(key)
    if not isinstance(value, str):
        return value
    text = value if value.lstrip().startswith("{") else unquote(value)
    try:
        return decode_json(text)
    except PolicyValidationError as exc:
        raise _BadExport((*where, key), exc.findings[0].message) from None


def _identity_entry(item: dict, where: tuple, inline_key: str) -> dict:
    """A user, group or role as a store entry (``evaluator.store`` names the fields)."""
    entry: dict[str, Any] = {
        "arn": _string(item, "Arn", where),
        "managed_policies": [_string(attached, "PolicyArn", at)
                             for at, attached in _objects(item, "AttachedManagedPolicies", where)],
        "inline_policies": {_string(inline, "PolicyName", at): _document(inline, "PolicyDocument", at)
                            for at, inline in _objects(item, inline_key, where)},
    }
    if "GroupList" in item:
        entry["groups"] = item["GroupList"]
    boundary = item.get("PermissionsBoundary")
    if boundary:
        entry["permissions_boundary"] = _string(boundary, "PermissionsBoundaryArn", (*where, "PermissionsBoundary"))
    tags = {_string(tag, "Key", at): tag.get("Value") for at, tag in _objects(item, "Tags", where)}
    if tags:
        entry["tags"] = tags
    return entry


def _default_document(policy: dict, where: tuple) -> Any:
    for at, version in _objects(policy, "PolicyVersionList", where):
        if version.get("IsDefaultVersion") is True:
            return _document(version, "Document", at)
    raise _BadExport((*where, "PolicyVersionList"), "no version is the default (IsDefaultVersion)")


def _attachments(entry: dict, where: tuple) -> list[tuple[tuple, str]]:
    """The managed policy ARNs an entry needs, each with where the export names it."""
    needed = [((*where, "AttachedManagedPolicies", i, "PolicyArn"), arn)
              for i, arn in enumerate(entry["managed_policies"])]
    if "permissions_boundary" in entry:
        needed.append(((*where, "PermissionsBoundary", "PermissionsBoundaryArn"), entry["permissions_boundary"]))
    return needed


def read_aws_managed_policies(path: str | Path, arns: set[str]) -> dict[str, tuple[str, Any]]:
    """The documents of the AWS managed policies ``arns`` found at ``path``, with where each was found.

    ``path`` is a JSON Lines file of ``{"arn", "document"}`` objects (as
    ``aws_managed_policies.jsonl``; other keys are ignored), or a folder of
    such ``.jsonl`` files and of ``.json`` files holding one object each (a
    store's ``managed_policies/``).
    """
    root = Path(path)
    files = sorted(f for f in root.iterdir() if f.suffix in (".json", ".jsonl")) if root.is_dir() else [root]
    found: dict[str, tuple[str, Any]] = {}
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise store_error(str(file), (), "S001", f"cannot read: {exc}") from None
        lines = text.splitlines() if file.suffix == ".jsonl" else [text]
        for number, line in enumerate(lines, 1):
            source = f"{file}:{number}" if file.suffix == ".jsonl" else str(file)
            if not line.strip():
                continue
            try:
                entry = decode_json(line, unique_keys=True)
            except PolicyValidationError as exc:
                raise StoreError(source, exc.findings) from None
            if isinstance(entry, dict) and entry.get("arn") in arns:
                found[entry["arn"]] = (source, entry.get("document"))
    return found


def load_account_export(path: str | Path, aws_managed_policies: str | Path | None = None) -> PolicyStore:
    """A store of the account in the export at ``path``; raises ``StoreError`` naming what is wrong."""
    source = str(path)
    try:
        export = decode_json(Path(path).read_bytes(), unique_keys=True)  # the export's own keys too
    except OSError as exc:
        raise store_error(source, (), "S001", f"cannot read: {exc.strerror}") from None
    except PolicyValidationError as exc:
        raise StoreError(source, exc.findings) from None
    if not isinstance(export, dict):
        raise store_error(source, (), "S001", "an authorization details export is a JSON object")
    if export.get("IsTruncated"):
        raise store_error(source, ("IsTruncated",), "S001",
                          "the export is one page of several; let the CLI fetch every page (no --max-items)")

    builder = StoreBuilder()
    needed: dict[str, tuple] = {}  # managed policy ARN → where the export first attaches it
    try:
        for list_key, inline_key in (("GroupDetailList", "GroupPolicyList"), ("UserDetailList", "UserPolicyList"),
                                     ("RoleDetailList", "RolePolicyList")):
            for where, item in _objects(export, list_key, ()):
                entry = _identity_entry(item, where, inline_key)
                builder.add("groups" if list_key == "GroupDetailList" else "principals", entry,
                            f"{source}: {entry['arn']}")
                for at, arn in _attachments(entry, where):
                    needed.setdefault(arn, at)
                if "AssumeRolePolicyDocument" in item:
                    trust = _document(item, "AssumeRolePolicyDocument", where)
                    builder.add("resource_policies", {"resource": entry["arn"], "document": trust},
                                f"{source}: trust policy of {entry['arn']}")
        for where, policy in _objects(export, "Policies", ()):
            arn = _string(policy, "Arn", where)
            builder.add("managed_policies", {"arn": arn, "document": _default_document(policy, where)},
                        f"{source}: {arn}")
            needed.pop(arn, None)
    except _BadExport as exc:
        raise store_error(source, exc.where, "S001", str(exc)) from None

    if needed and aws_managed_policies is not None:
        for arn, (found_in, document) in read_aws_managed_policies(aws_managed_policies, set(needed)).items():
            builder.add("managed_policies", {"arn": arn, "document": document}, found_in)
            del needed[arn]
    if needed:
        if aws_managed_policies is None:
            missing = "is attached but not in the export (pass the AWS managed policies to resolve AWS's own)"
        else:
            missing = f"is attached but neither in the export nor in {aws_managed_policies}"
        raise StoreError(source, [Finding("S002", Severity.ERROR, pointer(*where), f"managed policy {arn} {missing}")
                                  for arn, where in needed.items()])
    return builder.build()
