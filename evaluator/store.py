"""The policy store: which policies apply to whom, as one immutable snapshot.

A ``PolicyStore`` answers "which policies apply when this principal acts on this
resource?" with a ``PolicySet`` that the reference evaluator takes as it is, and
"what does AWS know of this principal?" with its ``facts``;
``compiled_store.CompiledStore`` compiles a whole store into one engine.

A store is a directory that people edit by hand. Every part is optional, file
names are free, and each ``*.json`` file in a folder holds one entry:

    principals/         an IAM role or user; all keys but "arn" may be left out:
                        {"arn": "arn:aws:iam::111122223333:role/ImageBuilderRole",
                         "managed_policies": ["arn:aws:iam::aws:policy/AWSImageBuilderFullAccess"],
                         "inline_policies": {"PolicyName": {policy document}},
                         "groups": ["developers"],                  (users only)
                         "permissions_boundary": "arn:aws:iam::111122223333:policy/Boundary",
                         "tags": {"team": "imaging"}}
    groups/             {"arn": "arn:aws:iam::111122223333:group/developers",
                         "managed_policies": [...], "inline_policies": {...}}
    managed_policies/   {"arn": "arn:aws:iam::aws:policy/Name", "document": {policy document}}
    scps/, rcps/        {"name": "DenyOutsideApprovedRegions", "document": {policy document}}
    resource_policies/  {"resource": "arn:aws:s3:::bucket", "document": {policy document}};
                        a role's trust policy is the resource policy of the role's ARN
    vpc_endpoints/      {"id": "vpce-0123456789abcdef0", "document": {policy document}}: the
                        policy of a VPC endpoint, for the requests whose aws:SourceVpce names it
    organization.json   {"id": "o-…", "root": NODE}, where a NODE is
                        {"id": "r-…" (the root), "ou-…" or a 12-digit account id,
                         "scps": [SCP name…], "rcps": [RCP name…], "children": [NODE…]}

``to_json`` writes the same entries as one document, ``{"principals": [...],
"groups": [...], "managed_policies": [...], "scps": [...], "rcps": [...],
"organization": {...}, "resource_policies": [...], "vpc_endpoints": [...]}``, and ``from_json``
reads it.

Decisions name each policy after where it comes from: a managed policy by its
ARN, an inline policy as ``role/Name:inline/PolicyName`` (or ``user/…``,
``group/…``), an SCP as ``scp/Name``, an RCP as ``rcp/Name``, a resource
policy by its resource's ARN, a VPC endpoint's policy by the endpoint's id.

Anonymous requests (principal ``anonymous``) have no identity in the store: only the
resource's policy, its owner's RCPs and the endpoint's policy apply to them.

Organisation levels. AWS evaluates the SCPs of every level from the root down
to the account, and each level must allow. AWS attaches FullAWSAccess to every
root, OU and account and never leaves one without an SCP, so a node that lists
no SCPs here has that default: it allows everything, and its level is left
out. A node that lists SCPs is evaluated as written (FullAWSAccess can be
detached). RCPFullAWSAccess, unlike it, cannot be detached, so every level that
lists RCPs carries it too: there RCPs can only deny. SCPs apply along the path
of the principal's account, RCPs along the path of the resource owner's.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import reference
from .decision import Decision, DecisionKind, failed
from .findings import Finding, PolicyValidationError, Severity, pointer
from .model import Policy
from .parse import PolicyKind, decode_json, parse_policy
from .principals import Caller, RequestError
from .request import Levels, PolicySet, Request
from .service_rules import ANONYMOUS, SOURCE_VPCE

SECTIONS = ("principals", "groups", "managed_policies", "scps", "rcps", "organization", "resource_policies",
            "vpc_endpoints")
"""The parts of a store: the keys of a snapshot, and of a store directory the folders (but
``organization.json``, a file)."""
_FOLDERS = tuple(section for section in SECTIONS if section != "organization")

_NAME = r"(?:[\w+=,.@/-]*/)?([\w+=,.@-]+)"  # an IAM path, then the name
_PRINCIPAL_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):(role|user)/" + _NAME)
_GROUP_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):group/" + _NAME)
_POLICY_ARN = re.compile(r"arn:aws[a-z-]*:iam::(?:\d{12}|aws):policy/[\w+=,.@/-]+")
_POLICY_NAME = re.compile(r"[\w+=,.@-]+")
_RESOURCE_ARN = re.compile(r"arn:[^:]+:[^:]+:[^:]*:[^:]*:.+")
_ORGANIZATION_ID = re.compile(r"o-[a-z0-9]{10,32}")
_ROOT_ID = re.compile(r"r-[0-9a-z]{4,32}")
_OU_ID = re.compile(r"ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}")
_ACCOUNT_ID = re.compile(r"\d{12}")
_VPC_ENDPOINT_ID = re.compile(r"vpce-[0-9a-f]{8,17}")

RCP_FULL_AWS_ACCESS = parse_policy(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}]},
    kind=PolicyKind.RESOURCE, name="rcp/RCPFullAWSAccess",
)
"""AWS's RCP on every organisation target, which cannot be detached."""


class StoreError(ValueError):
    """A store source that cannot be loaded, naming the file (or entry) and carrying every finding in it.

    Store findings have codes S001 (bad shape), S002 (unknown reference), S003
    (defined twice) and S004 (not an organisation target); a policy's own
    findings keep the parser's codes, their pointers starting from the entry.
    """

    def __init__(self, source: str, findings: Sequence[Finding]) -> None:
        self.source = source
        self.findings = list(findings)
        errors = [f for f in self.findings if f.severity is Severity.ERROR]
        lines = "\n".join(f"  {f}" for f in errors)
        super().__init__(f"{source}: {len(errors)} error(s)\n{lines}")


def store_error(source: str, where: tuple, code: str, message: str) -> StoreError:
    """A StoreError with one finding."""
    return StoreError(source, [Finding(code, Severity.ERROR, pointer(*where), message)])


@dataclass(frozen=True)
class PrincipalRecord:
    """An IAM role or user, and what is attached to it."""

    arn: str
    kind: str  # "role" or "user"
    account: str
    name: str
    managed_policy_arns: tuple[str, ...]
    inline_policies: Mapping[str, Policy]
    group_names: tuple[str, ...]
    permissions_boundary_arn: str | None
    tags: Mapping[str, str]
    org_path: tuple[str, ...]  # root id, OU ids…, account id; () outside the organisation


@dataclass(frozen=True)
class GroupRecord:
    arn: str
    account: str
    name: str
    managed_policy_arns: tuple[str, ...]
    inline_policies: Mapping[str, Policy]


@dataclass(frozen=True)
class Organization:
    """The organisation tree, reduced to what evaluation needs."""

    id: str
    account_paths: Mapping[str, tuple[str, ...]]  # account id → (root id, OU ids…, account id)
    scps: Mapping[str, tuple[Policy, ...]]  # target id → its SCPs; a target with AWS's default is absent
    rcps: Mapping[str, tuple[Policy, ...]]  # target id → RCPFullAWSAccess and its RCPs

    def scp_levels(self, account: str) -> Levels | None:
        return self._levels(account, self.scps)

    def rcp_levels(self, account: str) -> Levels | None:
        return self._levels(account, self.rcps)

    def _levels(self, account: str, attached: Mapping[str, tuple[Policy, ...]]) -> Levels | None:
        """One level for each target on the account's path that has policies, root first."""
        levels = tuple(attached[target] for target in self.account_paths.get(account, ()) if target in attached)
        return levels or None


class _Checker:
    """Checks one entry (a file, or an element of a snapshot) and raises all its findings together."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.findings: list[Finding] = []

    def error(self, code: str, where: tuple, message: str) -> None:
        self.findings.append(Finding(code, Severity.ERROR, pointer(*where), message))

    def raise_findings(self) -> None:
        if self.findings:
            raise StoreError(self.source, self.findings)

    def object(self, raw: Any, where: tuple, keys: tuple[str, ...], required: tuple[str, ...]) -> dict:
        """``raw`` if it is an object with only ``keys`` and all of ``required``; else {} (and findings)."""
        if not isinstance(raw, dict):
            self.error("S001", where, f"expected a JSON object, not {json.dumps(raw)[:60]}")
            return {}
        for key in getattr(raw, "duplicates", ()):
            self.error("S001", (*where, key), f"the key {key!r} is given more than once")
        for key in raw:
            if key not in keys:
                self.error("S001", (*where, key), f"unknown key {key!r}; expected {', '.join(keys)}")
        for key in required:
            if key not in raw:
                self.error("S001", where, f"{key!r} is missing")
        return raw

    def text(self, obj: dict, key: str, where: tuple, form: re.Pattern, expected: str) -> re.Match | None:
        """The match of ``obj[key]`` against ``form``; None when absent or wrong (with a finding)."""
        value = obj.get(key)
        if value is None:
            return None
        match = form.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            self.error("S001", (*where, key), f"{key} must be {expected}, not {json.dumps(value)}")
        return match

    def texts(self, obj: dict, key: str, where: tuple) -> list[tuple[tuple, str]]:
        """The strings of the list ``obj[key]``, each with where it stands."""
        value = obj.get(key, [])
        if not isinstance(value, list):
            self.error("S001", (*where, key), f"{key} must be a list of strings")
            return []
        strings = []
        for i, item in enumerate(value):
            if isinstance(item, str) and item:
                strings.append(((*where, key, i), item))
            else:
                self.error("S001", (*where, key, i), f"{key} must hold non-empty strings, not {json.dumps(item)}")
        return strings

    def policy(self, document: Any, where: tuple, kind: PolicyKind, name: str) -> Policy | None:
        if not isinstance(document, dict):
            self.error("S001", where, "a policy document must be a JSON object")
            return None
        try:
            return parse_policy(document, kind=kind, name=name)
        except PolicyValidationError as exc:
            prefix = pointer(*where)
            self.findings += [replace(finding, pointer=prefix + finding.pointer) for finding in exc.findings]
            return None

    def inline_policies(self, obj: dict, owner: str) -> dict[str, Policy]:
        """The ``inline_policies`` object, each named ``owner:inline/PolicyName``."""
        documents = obj.get("inline_policies", {})
        if not isinstance(documents, dict):
            self.error("S001", ("inline_policies",), "inline_policies must map policy names to documents")
            return {}
        policies = {}
        for name, document in documents.items():
            policy = self.policy(document, ("inline_policies", name), PolicyKind.IDENTITY, f"{owner}:inline/{name}")
            if policy is not None:
                policies[name] = policy
        return policies

    def tags(self, obj: dict) -> dict[str, str]:
        """Tag keys become context keys, which ignore case, so two may not differ only in case."""
        tags = obj.get("tags", {})
        if not isinstance(tags, dict) or not all(isinstance(value, str) for value in tags.values()):
            self.error("S001", ("tags",), "tags must map tag keys to string values")
            return {}
        folded: set[str] = set()
        for key in tags:
            if key.lower() in folded:
                self.error("S003", ("tags", key), f"tag {key!r} is given twice (tag keys ignore case)")
            folded.add(key.lower())
        return dict(tags)

    def managed_policy_arns(self, obj: dict, managed: Mapping[str, Policy]) -> tuple[str, ...]:
        arns = []
        for where, arn in self.texts(obj, "managed_policies", ()):
            if arn not in managed:
                self.error("S002", where, f"no managed policy {arn} in the store")
            arns.append(arn)
        return tuple(arns)


class StoreBuilder:
    """Collects entries from any source, then checks and links them all in ``build``.

    Entries are checked in the order their references need (managed policies
    and SCPs before the principals and nodes that name them), and the first
    entry with a problem raises a ``StoreError`` carrying all of that entry's
    findings; nothing half-built is returned. The builder keeps the entries it
    is given, for ``PolicyStore.to_json``.
    """

    def __init__(self) -> None:
        self._entries: dict[str, list[tuple[str, Any]]] = {section: [] for section in SECTIONS}

    def add(self, section: str, entry: Any, source: str) -> None:
        """Add one entry of ``section``; ``source`` names it in errors (a file, or where in a document)."""
        self._entries[section].append((source, entry))

    def build(self) -> PolicyStore:
        managed = self._policies("managed_policies", "arn", _POLICY_ARN, "a managed policy ARN", PolicyKind.IDENTITY)
        scps = self._policies("scps", "name", _POLICY_NAME, "an SCP name", PolicyKind.IDENTITY)
        rcps = self._policies("rcps", "name", _POLICY_NAME, "an RCP name", PolicyKind.RESOURCE)
        organization = self._organization(scps, rcps)
        groups = self._groups(managed)
        principals = self._principals(managed, groups, organization)
        resource_policies = self._policies(
            "resource_policies", "resource", _RESOURCE_ARN, "an ARN", PolicyKind.RESOURCE)
        vpc_endpoints = self._policies("vpc_endpoints", "id", _VPC_ENDPOINT_ID, "a VPC endpoint id (vpce-…)",
                                       PolicyKind.RESOURCE)
        snapshot: dict[str, Any] = {
            section: [raw for _, raw in entries] for section, entries in self._entries.items() if entries
        }
        if "organization" in snapshot:
            snapshot["organization"] = snapshot["organization"][0]
        return PolicyStore(
            principals=principals, groups=groups, managed_policies=managed, scps=scps, rcps=rcps,
            organization=organization, resource_policies=resource_policies, vpc_endpoints=vpc_endpoints,
            snapshot=snapshot,
        )

    def _policies(self, section: str, key: str, form: re.Pattern, expected: str,
                  kind: PolicyKind) -> dict[str, Policy]:
        """Entries ``{key: …, "document": …}``, by key; SCPs and RCPs are named ``scp/…`` and ``rcp/…``."""
        policies: dict[str, Policy] = {}
        first_source: dict[str, str] = {}
        prefix = {"scps": "scp/", "rcps": "rcp/"}.get(section, "")
        for source, raw in self._entries[section]:
            check = _Checker(source)
            entry = check.object(raw, (), (key, "document"), (key, "document"))
            match = check.text(entry, key, (), form, expected)
            if match is not None and match[0] in first_source:
                check.error("S003", (key,), f"{match[0]} is already defined in {first_source[match[0]]}")
            name = prefix + (match[0] if match else "?")
            policy = check.policy(entry.get("document"), ("document",), kind, name)
            check.raise_findings()
            assert match is not None and policy is not None
            policies[match[0]] = policy
            first_source[match[0]] = source
        return policies

    def _organization(self, scps: Mapping[str, Policy], rcps: Mapping[str, Policy]) -> Organization | None:
        entries = self._entries["organization"]
        if not entries:
            return None
        if len(entries) > 1:
            raise store_error(entries[1][0], (), "S003", f"a store has one organization; {entries[0][0]} has it")
        source, raw = entries[0]
        check = _Checker(source)
        entry = check.object(raw, (), ("id", "root"), ("id", "root"))
        organization_id = check.text(entry, "id", (), _ORGANIZATION_ID, "an organization id (o-…)")
        account_paths: dict[str, tuple[str, ...]] = {}
        attached: dict[str, dict[str, tuple[Policy, ...]]] = {"scps": {}, "rcps": {}}
        seen: set[str] = set()

        def visit(raw_node: Any, where: tuple, path: tuple[str, ...]) -> None:
            node = check.object(raw_node, where, ("id", "scps", "rcps", "children"), ("id",))
            if "id" not in node:
                return
            target = node["id"]
            forms = ((_ROOT_ID, "root"),) if not path else ((_OU_ID, "ou"), (_ACCOUNT_ID, "account"))
            kind = next((k for form, k in forms if isinstance(target, str) and form.fullmatch(target)), None)
            if kind is None:
                expected = "a root id (r-…)" if not path else "an OU id (ou-…-…) or a 12-digit account id"
                check.error("S004", (*where, "id"), f"unknown organisation target {json.dumps(target)}: "
                                                    f"expected {expected}")
                return
            if target in seen:
                check.error("S003", (*where, "id"), f"{target} appears twice in the organisation")
            seen.add(target)
            path = (*path, target)
            for layer, named, default in (("scps", scps, ()), ("rcps", rcps, (RCP_FULL_AWS_ACCESS,))):
                policies = []
                for at, name in check.texts(node, layer, where):
                    if name in named:
                        policies.append(named[name])
                    else:
                        check.error("S002", at, f"no {layer[:-1].upper()} named {name!r} in the store")
                if policies:
                    attached[layer][target] = (*default, *policies)
            children = node.get("children", [])
            if not isinstance(children, list):
                check.error("S001", (*where, "children"), "children must be a list of nodes")
            elif kind == "account":
                account_paths[target] = path
                if children:
                    check.error("S004", (*where, "children"), f"account {target} cannot have children")
            else:
                for i, child in enumerate(children):
                    visit(child, (*where, "children", i), path)

        if "root" in entry:
            visit(entry["root"], ("root",), ())
        check.raise_findings()
        assert organization_id is not None
        return Organization(organization_id[0], MappingProxyType(account_paths),
                            MappingProxyType(attached["scps"]), MappingProxyType(attached["rcps"]))

    def _groups(self, managed: Mapping[str, Policy]) -> dict[str, GroupRecord]:
        groups: dict[str, GroupRecord] = {}
        by_name: dict[tuple[str, str], str] = {}
        for source, raw in self._entries["groups"]:
            check = _Checker(source)
            entry = check.object(raw, (), ("arn", "managed_policies", "inline_policies"), ("arn",))
            match = check.text(entry, "arn", (), _GROUP_ARN, "an IAM group ARN")
            if match is not None and (match[1], match[2]) in by_name:
                check.error("S003", ("arn",), f"group {match[2]} of account {match[1]} is already defined in "
                                              f"{by_name[match[1], match[2]]} (group names are unique in an account)")
            name = match[2] if match else "?"
            inline = check.inline_policies(entry, f"group/{name}")
            arns = check.managed_policy_arns(entry, managed)
            check.raise_findings()
            assert match is not None
            groups[match[0]] = GroupRecord(match[0], match[1], name, arns, MappingProxyType(inline))
            by_name[match[1], name] = source
        return groups

    def _principals(self, managed: Mapping[str, Policy], groups: Mapping[str, GroupRecord],
                    organization: Organization | None) -> dict[str, PrincipalRecord]:
        principals: dict[str, PrincipalRecord] = {}
        by_name: dict[tuple[str, str, str], str] = {}
        group_names = {(group.account, group.name) for group in groups.values()}
        keys = ("arn", "managed_policies", "inline_policies", "groups", "permissions_boundary", "tags")
        for source, raw in self._entries["principals"]:
            check = _Checker(source)
            entry = check.object(raw, (), keys, ("arn",))
            match = check.text(entry, "arn", (), _PRINCIPAL_ARN, "an IAM role or user ARN")
            account, kind, name = match.groups() if match else ("?", "?", "?")
            if (account, kind, name) in by_name:
                check.error("S003", ("arn",), f"{kind} {name} of account {account} is already defined in "
                                              f"{by_name[account, kind, name]} (IAM names are unique in an account)")
            inline = check.inline_policies(entry, f"{kind}/{name}")
            arns = check.managed_policy_arns(entry, managed)
            member_of = check.texts(entry, "groups", ())
            if member_of and kind == "role":
                check.error("S001", ("groups",), "only users belong to groups")
            for where, group in member_of:
                if (account, group) not in group_names:
                    check.error("S002", where, f"no group {group} of account {account} in the store")
            boundary = check.text(entry, "permissions_boundary", (), _POLICY_ARN, "a managed policy ARN")
            if boundary is not None and boundary[0] not in managed:
                check.error("S002", ("permissions_boundary",), f"no managed policy {boundary[0]} in the store")
            tags = check.tags(entry)
            check.raise_findings()
            assert match is not None
            org_path = organization.account_paths.get(account, ()) if organization else ()
            principals[match[0]] = PrincipalRecord(
                match[0], kind, account, name, arns, MappingProxyType(inline), tuple(g for _, g in member_of),
                boundary[0] if boundary else None, MappingProxyType(tags), org_path,
            )
            by_name[account, kind, name] = source
        return principals


def _read_json(path: Path) -> Any:
    try:
        return decode_json(path.read_bytes(), unique_keys=True)
    except OSError as exc:
        raise store_error(str(path), (), "S001", f"cannot read: {exc.strerror}") from None
    except PolicyValidationError as exc:
        raise StoreError(str(path), exc.findings) from None


def _arn_account(arn: str) -> str:
    fields = arn.split(":", 5)
    return fields[4] if len(fields) == 6 else ""


class PolicyStore:
    """Principals, groups and policies, read-only once built.

    Build one with ``from_directory``, ``from_json`` or
    ``account_export.load_account_export``; the loaders check every policy and
    reference first, so a store that exists is complete.
    """

    def __init__(self, *, principals: Mapping[str, PrincipalRecord], groups: Mapping[str, GroupRecord],
                 managed_policies: Mapping[str, Policy], scps: Mapping[str, Policy], rcps: Mapping[str, Policy],
                 organization: Organization | None, resource_policies: Mapping[str, Policy],
                 vpc_endpoints: Mapping[str, Policy], snapshot: Mapping[str, Any]) -> None:
        self.principals = MappingProxyType(dict(principals))  # by ARN
        self.groups = MappingProxyType(dict(groups))  # by ARN
        self.managed_policies = MappingProxyType(dict(managed_policies))  # by ARN
        self.scps = MappingProxyType(dict(scps))  # by name
        self.rcps = MappingProxyType(dict(rcps))  # by name
        self.organization = organization
        self.resource_policies = MappingProxyType(dict(resource_policies))  # by resource ARN
        self.vpc_endpoints = MappingProxyType(dict(vpc_endpoints))  # by endpoint id
        self._snapshot = snapshot
        self._roles_by_name = {(p.account, p.name): p for p in principals.values() if p.kind == "role"}
        groups_by_name = {(g.account, g.name): g for g in groups.values()}
        self._identity_policies = {
            principal.arn: self._identity(principal, [groups_by_name[principal.account, name]
                                                      for name in principal.group_names])
            for principal in principals.values()
        }

    def policies_in_use(self) -> list[Policy]:
        """Every policy that applies to some request, once each: attached managed policies and
        boundaries, inline policies, SCPs and RCPs attached in the organisation (with
        RCPFullAWSAccess), resource policies and VPC endpoints' policies. An unattached managed policy
        applies to none."""
        policies: dict[int, Policy] = {}
        for identity in self._identity_policies.values():
            policies.update((id(p), p) for p in identity)
        for principal in self.principals.values():
            if principal.permissions_boundary_arn is not None:
                boundary = self.managed_policies[principal.permissions_boundary_arn]
                policies[id(boundary)] = boundary
        if self.organization is not None:
            for attached in (*self.organization.scps.values(), *self.organization.rcps.values()):
                policies.update((id(p), p) for p in attached)
        policies.update((id(p), p) for p in self.resource_policies.values())
        policies.update((id(p), p) for p in self.vpc_endpoints.values())
        return list(policies.values())

    def _identity(self, principal: PrincipalRecord, groups: list[GroupRecord]) -> tuple[Policy, ...]:
        """Inline, then attached, then each group's; a policy attached twice counts once."""
        policies: list[Policy] = []
        for holder in (principal, *groups):
            policies += holder.inline_policies.values()
            policies += (self.managed_policies[arn] for arn in holder.managed_policy_arns)
        return tuple({id(policy): policy for policy in policies}.values())

    @classmethod
    def from_directory(cls, path: str | Path) -> PolicyStore:
        """Load a store directory (the layout is in this module's docstring)."""
        root = Path(path)
        if not root.is_dir():
            raise store_error(str(root), (), "S001", "not a store directory")
        for child in sorted(root.iterdir()):
            unknown_folder = child.is_dir() and child.name not in _FOLDERS and not child.name.startswith(".")
            if unknown_folder or (child.suffix == ".json" and child.name != "organization.json"):
                raise store_error(str(child), (), "S001",
                                  f"not part of a store, which holds organization.json and {', '.join(_FOLDERS)}")
        builder = StoreBuilder()
        for section in _FOLDERS:
            for file in sorted((root / section).glob("*.json")):
                builder.add(section, _read_json(file), str(file))
        organization = root / "organization.json"
        if organization.exists():
            builder.add("organization", _read_json(organization), str(organization))
        return builder.build()

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "snapshot") -> PolicyStore:
        """Read a snapshot written by ``to_json``; ``source`` names it in errors."""
        try:
            snapshot = decode_json(text, unique_keys=True)
        except PolicyValidationError as exc:
            raise StoreError(source, exc.findings) from None
        check = _Checker(source)
        for section, entries in check.object(snapshot, (), SECTIONS, ()).items():
            if section != "organization" and not isinstance(entries, list):
                check.error("S001", (section,), f"{section} must be a list of entries")
        check.raise_findings()
        builder = StoreBuilder()
        for section, entries in snapshot.items():
            if section == "organization":
                builder.add(section, entries, f"{source} /organization")
            else:
                for i, entry in enumerate(entries):
                    builder.add(section, entry, f"{source} /{section}/{i}")
        return builder.build()

    def to_json(self) -> str:
        """The whole snapshot as one JSON document, for ``from_json``."""
        return json.dumps(self._snapshot, separators=(",", ":"))

    def principal(self, principal_arn: str) -> PrincipalRecord | None:
        """The role or user ``principal_arn`` names; an assumed-role session ARN names its role."""
        record = self.principals.get(principal_arn)
        if record is not None or ":assumed-role/" not in principal_arn:
            return record
        try:
            caller = Caller.parse(principal_arn)
        except RequestError:
            return None
        return self._roles_by_name.get((caller.account, caller.role_name))

    def resource_policy(self, resource_arn: str) -> Policy | None:
        """The resource's policy; an S3 object is governed by its bucket's policy."""
        policy = self.resource_policies.get(resource_arn)
        fields = resource_arn.split(":", 5)
        if policy is None and len(fields) == 6 and fields[2] == "s3" and "/" in fields[5]:
            policy = self.resource_policies.get(resource_arn.split("/", 1)[0])
        return policy

    def vpc_endpoint(self, source_vpce: object) -> Policy | None:
        """The policy of the VPC endpoint a request's ``aws:SourceVpce`` names (None for an endpoint the
        store does not hold: AWS's default endpoint policy allows everything)."""
        return self.vpc_endpoints.get(source_vpce) if isinstance(source_vpce, str) else None

    def policy_set(self, principal_arn: str, resource_arn: str, resource_account: str | None = None,
                   source_vpce: object = None) -> PolicySet | None:
        """The policies that apply when the principal acts on the resource, through the VPC endpoint
        ``source_vpce`` names if any; None for an unknown principal.

        ``resource_account`` (the owner, whose RCPs apply) defaults as in
        ``Request``: the account in the resource ARN, else the principal's.
        """
        endpoint = self.vpc_endpoint(source_vpce)
        organization = self.organization
        if principal_arn == ANONYMOUS:
            owner = resource_account or _arn_account(resource_arn)
            return PolicySet(resource=self.resource_policy(resource_arn),
                             rcp=organization.rcp_levels(owner) if organization and owner else None,
                             vpc_endpoint=None if endpoint is None else (endpoint,))
        principal = self.principal(principal_arn)
        if principal is None:
            return None
        owner = resource_account or _arn_account(resource_arn) or principal.account
        boundary = principal.permissions_boundary_arn
        return PolicySet(
            identity=self._identity_policies[principal.arn],
            resource=self.resource_policy(resource_arn),
            permissions_boundary=None if boundary is None else (self.managed_policies[boundary],),
            scp=organization.scp_levels(principal.account) if organization else None,
            rcp=organization.rcp_levels(owner) if organization else None,
            vpc_endpoint=None if endpoint is None else (endpoint,),
        )

    def principal_context(self, principal_arn: str) -> dict[str, str | list[str]]:
        """The request context keys AWS sets for a principal the store holds ({} for an unknown one).

        For a role session, ``aws:PrincipalArn`` is the role's ARN, as in AWS;
        ``aws:PrincipalOrgPaths`` is the path down to the account's parent.
        """
        principal = self.principal(principal_arn)
        if principal is None:
            return {}
        context: dict[str, str | list[str]] = {
            "aws:PrincipalArn": principal.arn, "aws:PrincipalAccount": principal.account,
            "aws:PrincipalIsAWSService": "false",
        }
        if principal.kind == "user":
            context["aws:username"] = principal.name
            context["aws:PrincipalType"] = "User"
        elif principal_arn != principal.arn:  # a session of the role
            context["aws:PrincipalType"] = "AssumedRole"
        context.update({f"aws:PrincipalTag/{key}": value for key, value in principal.tags.items()})
        if principal.org_path and self.organization:
            context["aws:PrincipalOrgID"] = self.organization.id
            context["aws:PrincipalOrgPaths"] = ["/".join((self.organization.id, *principal.org_path[:-1])) + "/"]
        return context

    def facts(self, principal_arn: str) -> dict[str, str | tuple[str, ...]] | None:
        """``principal_context`` as the ``facts`` rule takes it (keys lower-cased, lists as
        tuples), or None for a principal the store does not hold; an anonymous caller has none."""
        if principal_arn == ANONYMOUS:
            return {}
        if self.principal(principal_arn) is None:
            return None
        return {key.lower(): tuple(value) if isinstance(value, list) else value
                for key, value in self.principal_context(principal_arn).items()}


def unknown_principal(principal_arn: str) -> Decision:
    """A principal the store does not hold has no permissions: an implicit deny that says so.
    A principal that is not even an IAM principal ARN is a malformed request: an error."""
    try:
        Caller.parse(principal_arn)
    except RequestError as exc:
        return failed(str(exc))
    return Decision(DecisionKind.IMPLICIT_DENY, "principal",
                    reason=f"the principal {principal_arn} is not in the policy store")


def reference_decision(store: PolicyStore, request: Request) -> Decision:
    """The reference evaluator's answer for a request to the store: the policies that apply
    to it, and the store's facts of its principal in place of the request's (``facts``)."""
    policy_set = store.policy_set(request.principal, request.resource, request.resource_account,
                                  request.context.get(SOURCE_VPCE))
    if policy_set is None:
        return unknown_principal(request.principal)
    return reference.evaluate(policy_set, request, store.facts(request.principal))
