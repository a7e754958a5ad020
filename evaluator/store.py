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

One checker serves loading and validation: ``read_directory`` and ``read_snapshot``
collect the entries, then ``StoreBuilder.build`` refuses the store at its first
entry with an error, and ``StoreBuilder.check`` reports every finding of every
entry (``iam-eval validate --store``).

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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import reference
from .decision import Decision, DecisionKind, failed
from .findings import Finding, PolicyValidationError, Severity, pointer
from .model import Policy
from .parse import PolicyKind, check_policy, decode_json, parse_policy
from .policy_types import PolicyType
from .principals import Caller, RequestError
from .request import Levels, PolicySet, Request
from .service_rules import ANONYMOUS, SOURCE_VPCE

SECTIONS = ("principals", "groups", "managed_policies", "scps", "rcps", "organization", "resource_policies",
            "vpc_endpoints")
"""The parts of a store: the keys of a snapshot, and of a store directory the folders (but
``organization.json``, a file)."""
_FOLDERS = tuple(section for section in SECTIONS if section != "organization")


def is_snapshot(document: Any) -> bool:
    """Whether a decoded JSON document is meant as a store snapshot (``PolicyStore.to_json``): an object
    with a store section among its keys. A policy document or an account export has none; a snapshot
    with a stray key is still one, and its loader says what is wrong with it."""
    return isinstance(document, dict) and any(key in SECTIONS for key in document)

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


SECTION_TYPES = {"managed_policies": PolicyType.IDENTITY, "scps": PolicyType.SCP, "rcps": PolicyType.RCP,
                 "resource_policies": PolicyType.RESOURCE, "vpc_endpoints": PolicyType.RESOURCE}
"""The type whose rules the policies of each section follow. Inline policies are identity-based, and a managed
policy that principals use only as their permissions boundary follows a boundary's rules."""

DocumentCheck = Callable[[Mapping, PolicyType], list[Finding]]
"""Every finding for one policy document, checked with the rules of its type (``validate.validate_policy``)."""


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


@dataclass
class EntryFindings:
    """The findings of one entry of a store, pointing into the entry: a file of a store directory, an element
    of a snapshot (``at`` is its place in the snapshot's file), or a file or folder that cannot be read."""

    file: str
    at: tuple = ()
    findings: list[Finding] = field(default_factory=list)

    @property
    def source(self) -> str:
        """The entry as errors name it: its file, then its place in the file."""
        return f"{self.file} {pointer(*self.at)}" if self.at else self.file

    @property
    def failed(self) -> bool:
        return any(finding.severity is Severity.ERROR for finding in self.findings)


def _shown(value: Any) -> str:
    """A value as a message quotes it: a scalar's JSON (at most 60 characters), a container by its type alone,
    so that a large or deeply nested one is never encoded."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    return json.dumps(value)[:60]


def _printable(value: Any) -> bool:
    """Whether ``value`` is text a name may be: printable, so without control characters or a lone surrogate
    (which no UTF-8 encoder can write)."""
    return isinstance(value, str) and value.isprintable()


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
    """Checks one entry (a file, or an element of a snapshot) and collects all its findings in ``report``."""

    def __init__(self, file: str, at: tuple = (), validate: DocumentCheck | None = None) -> None:
        self.report = EntryFindings(file, at)
        self.validate = validate

    @property
    def failed(self) -> bool:
        return self.report.failed

    def error(self, code: str, where: tuple, message: str) -> None:
        self.report.findings.append(Finding(code, Severity.ERROR, pointer(*where), message))

    def object(self, raw: Any, where: tuple, keys: tuple[str, ...], required: tuple[str, ...]) -> dict:
        """``raw`` if it is an object with only ``keys`` and all of ``required``; else {} (and findings)."""
        if not isinstance(raw, dict):
            self.error("S001", where, f"expected a JSON object, not {_shown(raw)}")
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
        match = form.fullmatch(value) if _printable(value) else None
        if match is None:
            self.error("S001", (*where, key), f"{key} must be {expected}, not {_shown(value)}")
        return match

    def texts(self, obj: dict, key: str, where: tuple) -> list[tuple[tuple, str]]:
        """The strings of the list ``obj[key]``, each with where it stands."""
        value = obj.get(key, [])
        if not isinstance(value, list):
            self.error("S001", (*where, key), f"{key} must be a list of strings")
            return []
        strings = []
        for i, item in enumerate(value):
            if _printable(item) and item:
                strings.append(((*where, key, i), item))
            else:
                self.error("S001", (*where, key, i), f"{key} must hold names (printable text), not {_shown(item)}")
        return strings

    def policy(self, document: Any, where: tuple, policy_type: PolicyType, name: str) -> Policy | None:
        """The document parsed as its type says, None when it does not parse; its findings (``validate``'s
        if given, else the parser's) are added, their pointers starting from the entry."""
        if not isinstance(document, dict):
            self.error("S001", where, "a policy document must be a JSON object")
            return None
        policy, findings = check_policy(document, kind=policy_type.kind, name=name)
        if self.validate is not None:
            findings = self.validate(document, policy_type)
        prefix = pointer(*where)
        self.report.findings += [replace(finding, pointer=prefix + finding.pointer) for finding in findings]
        return policy

    def inline_policies(self, obj: dict, owner: str) -> dict[str, Policy]:
        """The ``inline_policies`` object, each named ``owner:inline/PolicyName``."""
        documents = obj.get("inline_policies", {})
        if not isinstance(documents, dict):
            self.error("S001", ("inline_policies",), "inline_policies must map policy names to documents")
            return {}
        policies = {}
        for name, document in documents.items():
            if not _printable(name):
                self.error("S001", ("inline_policies", name), f"a policy name must be printable text, not {name!r}")
            policy = self.policy(document, ("inline_policies", name), PolicyType.IDENTITY, f"{owner}:inline/{name}")
            if policy is not None:
                policies[name] = policy
        return policies

    def tags(self, obj: dict) -> dict[str, str]:
        """Tag keys become context keys, which ignore case, so two may not differ only in case."""
        tags = obj.get("tags", {})
        if not isinstance(tags, dict) or not all(map(_printable, (*tags, *tags.values()))):
            self.error("S001", ("tags",), "tags must map tag keys to string values (printable text)")
            return {}
        folded: set[str] = set()
        for key in tags:
            if key.lower() in folded:
                self.error("S003", ("tags", key), f"tag {key!r} is given twice (tag keys ignore case)")
            folded.add(key.lower())
        return dict(tags)

    def managed_policy_arns(self, obj: dict, managed: set[str]) -> tuple[str, ...]:
        arns = []
        for where, arn in self.texts(obj, "managed_policies", ()):
            if arn not in managed:
                self.error("S002", where, f"no managed policy {arn} in the store")
            arns.append(arn)
        return tuple(arns)


class StoreBuilder:
    """Collects entries from any source, then checks and links them all: ``build`` makes the store, ``check``
    reports every finding of every entry.

    Entries are checked in the order their references need (managed policies
    and SCPs before the principals and nodes that name them), each entry fully
    and every entry, also after one with errors; an entry with errors still
    defines its name, so what refers to it is not reported as well. ``build``
    raises a ``StoreError`` for the first entry with an error, carrying all of
    that entry's findings; nothing half-built is returned. The builder keeps
    the entries it is given, for ``PolicyStore.to_json``.
    """

    def __init__(self) -> None:
        self._entries: dict[str, list[tuple[str, tuple, Any]]] = {section: [] for section in SECTIONS}
        self._unreadable: list[EntryFindings] = []
        self._checked: list[_Checker] = []
        self._validate: DocumentCheck | None = None

    def add(self, section: str, entry: Any, source: str, at: tuple = ()) -> None:
        """Add one entry of ``section``; ``source`` names it in errors (a file, or where in a document), and
        ``at`` is its place in that file when the file holds more (a snapshot's entries)."""
        self._entries[section].append((source, at, entry))

    def refuse(self, source: str, findings: Sequence[Finding]) -> None:
        """Keep what could not be read as an entry (a file, a folder, a snapshot's shape) with its findings."""
        self._unreadable.append(EntryFindings(source, (), list(findings)))

    def build(self) -> PolicyStore:
        store = self._read(None)
        problem = next((report for report in self._reports() if report.failed), None)
        if problem is not None:
            raise StoreError(problem.source, problem.findings)
        return PolicyStore(**store)

    def check(self, validate: DocumentCheck) -> list[EntryFindings]:
        """Every entry (and what could not be read) with its findings, nothing raised: its shape, its
        references, and ``validate``'s findings for each policy document, given the type of its place."""
        self._read(validate)
        return self._reports()

    def _reports(self) -> list[EntryFindings]:
        return [*self._unreadable, *(checker.report for checker in self._checked)]

    def _checker(self, source: str, at: tuple) -> _Checker:
        checker = _Checker(source, at, self._validate)
        self._checked.append(checker)
        return checker

    def _read(self, validate: DocumentCheck | None) -> dict[str, Any]:
        """Check every entry; the parts of the store, whole only when no entry has an error."""
        self._checked, self._validate = [], validate
        managed, managed_names = self._policies("managed_policies", "arn", _POLICY_ARN, "a managed policy ARN",
                                                self._boundaries_only())
        scps, scp_names = self._policies("scps", "name", _POLICY_NAME, "an SCP name")
        rcps, rcp_names = self._policies("rcps", "name", _POLICY_NAME, "an RCP name")
        organization = self._organization({"scps": (scps, scp_names), "rcps": (rcps, rcp_names)})
        groups, group_names = self._groups(managed_names)
        principals = self._principals(managed_names, group_names, organization)
        resource_policies, _ = self._policies("resource_policies", "resource", _RESOURCE_ARN, "an ARN")
        vpc_endpoints, _ = self._policies("vpc_endpoints", "id", _VPC_ENDPOINT_ID, "a VPC endpoint id (vpce-…)")
        snapshot: dict[str, Any] = {
            section: [raw for _, _, raw in entries] for section, entries in self._entries.items() if entries
        }
        if "organization" in snapshot:
            snapshot["organization"] = snapshot["organization"][0]
        return {"principals": principals, "groups": groups, "managed_policies": managed, "scps": scps,
                "rcps": rcps, "organization": organization, "resource_policies": resource_policies,
                "vpc_endpoints": vpc_endpoints, "snapshot": snapshot}

    def _boundaries_only(self) -> set[str]:
        """The managed policies that principals name as their permissions boundary and nothing attaches."""
        boundaries, attached = set(), set()
        for section in ("principals", "groups"):
            for _, _, raw in self._entries[section]:
                if not isinstance(raw, dict):
                    continue
                if isinstance(raw.get("permissions_boundary"), str):
                    boundaries.add(raw["permissions_boundary"])
                if isinstance(raw.get("managed_policies"), list):
                    attached.update(arn for arn in raw["managed_policies"] if isinstance(arn, str))
        return boundaries - attached

    def _policies(self, section: str, key: str, form: re.Pattern, expected: str,
                  boundaries: Collection[str] = ()) -> tuple[dict[str, Policy], set[str]]:
        """Entries ``{key: …, "document": …}``: the policies by key, and every key defined (also by an entry
        with errors); SCPs and RCPs are named ``scp/…`` and ``rcp/…``."""
        policies: dict[str, Policy] = {}
        first_source: dict[str, str] = {}
        prefix = {"scps": "scp/", "rcps": "rcp/"}.get(section, "")
        for source, at, raw in self._entries[section]:
            check = self._checker(source, at)
            entry = check.object(raw, (), (key, "document"), (key, "document"))
            match = check.text(entry, key, (), form, expected)
            if match is not None and match[0] in first_source:
                check.error("S003", (key,), f"{match[0]} is already defined in {first_source[match[0]]}")
            name = prefix + (match[0] if match else "?")
            policy_type = PolicyType.BOUNDARY if match and match[0] in boundaries else SECTION_TYPES[section]
            policy = check.policy(entry.get("document"), ("document",), policy_type, name)
            if match is not None:
                first_source.setdefault(match[0], check.report.source)
                if policy is not None and not check.failed:
                    policies[match[0]] = policy
        return policies, set(first_source)

    def _organization(self, layers: Mapping[str, tuple[Mapping[str, Policy], set[str]]]) -> Organization | None:
        """The organisation; ``layers`` holds the SCPs and the RCPs that nodes attach: the policies by name, and
        every name defined."""
        entries = self._entries["organization"]
        if not entries:
            return None
        for source, at, _ in entries[1:]:
            self._checker(source, at).error("S003", (), f"a store has one organization; {entries[0][0]} has it")
        source, at, raw = entries[0]
        check = self._checker(source, at)
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
                check.error("S004", (*where, "id"), f"unknown organisation target {_shown(target)}: "
                                                    f"expected {expected}")
                return
            if target in seen:
                check.error("S003", (*where, "id"), f"{target} appears twice in the organisation")
            seen.add(target)
            path = (*path, target)
            for layer, default in (("scps", ()), ("rcps", (RCP_FULL_AWS_ACCESS,))):
                named, defined = layers[layer]
                policies = []
                for at, name in check.texts(node, layer, where):
                    if name not in defined:
                        check.error("S002", at, f"no {layer[:-1].upper()} named {name!r} in the store")
                    elif name in named:
                        policies.append(named[name])
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
        if check.failed or organization_id is None:
            return None
        return Organization(organization_id[0], MappingProxyType(account_paths),
                            MappingProxyType(attached["scps"]), MappingProxyType(attached["rcps"]))

    def _groups(self, managed: set[str]) -> tuple[dict[str, GroupRecord], set[tuple[str, str]]]:
        """The groups by ARN, and the (account, name) of every group defined (also by an entry with errors)."""
        groups: dict[str, GroupRecord] = {}
        by_name: dict[tuple[str, str], str] = {}
        for source, at, raw in self._entries["groups"]:
            check = self._checker(source, at)
            entry = check.object(raw, (), ("arn", "managed_policies", "inline_policies"), ("arn",))
            match = check.text(entry, "arn", (), _GROUP_ARN, "an IAM group ARN")
            if match is not None and (match[1], match[2]) in by_name:
                check.error("S003", ("arn",), f"group {match[2]} of account {match[1]} is already defined in "
                                              f"{by_name[match[1], match[2]]} (group names are unique in an account)")
            name = match[2] if match else "?"
            inline = check.inline_policies(entry, f"group/{name}")
            arns = check.managed_policy_arns(entry, managed)
            if match is None:
                continue
            by_name.setdefault((match[1], name), check.report.source)
            if not check.failed:
                groups[match[0]] = GroupRecord(match[0], match[1], name, arns, MappingProxyType(inline))
        return groups, set(by_name)

    def _principals(self, managed: set[str], group_names: set[tuple[str, str]],
                    organization: Organization | None) -> dict[str, PrincipalRecord]:
        principals: dict[str, PrincipalRecord] = {}
        by_name: dict[tuple[str, str, str], str] = {}
        keys = ("arn", "managed_policies", "inline_policies", "groups", "permissions_boundary", "tags")
        for source, at, raw in self._entries["principals"]:
            check = self._checker(source, at)
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
            if match is None:
                continue
            by_name.setdefault((account, kind, name), check.report.source)
            if check.failed:
                continue
            org_path = organization.account_paths.get(account, ()) if organization else ()
            principals[match[0]] = PrincipalRecord(
                match[0], kind, account, name, arns, MappingProxyType(inline), tuple(g for _, g in member_of),
                boundary[0] if boundary else None, MappingProxyType(tags), org_path,
            )
        return principals


def _add_file(builder: StoreBuilder, section: str, path: Path) -> None:
    """The entry in the file, or its findings when it cannot be read: not UTF-8, not JSON, a key given twice."""
    try:
        builder.add(section, decode_json(path.read_bytes(), unique_keys=True), str(path))
    except OSError as exc:
        builder.refuse(str(path), [Finding("S001", Severity.ERROR, "", f"cannot read: {exc.strerror}")])
    except PolicyValidationError as exc:
        builder.refuse(str(path), exc.findings)


def read_directory(path: str | Path) -> StoreBuilder:
    """The entries of a store directory (the layout is in this module's docstring), for ``build`` or
    ``check``; a file or folder that cannot be read, or is not part of a store, is kept with its findings."""
    root = Path(path)
    builder = StoreBuilder()
    if not root.is_dir():
        builder.refuse(str(root), [Finding("S001", Severity.ERROR, "", "not a store directory")])
        return builder
    for child in sorted(root.iterdir()):
        unknown_folder = child.is_dir() and child.name not in _FOLDERS and not child.name.startswith(".")
        if unknown_folder or (child.suffix == ".json" and child.name != "organization.json"):
            builder.refuse(str(child), [Finding(
                "S001", Severity.ERROR, "",
                f"not part of a store, which holds organization.json and {', '.join(_FOLDERS)}")])
    for section in _FOLDERS:
        for file in sorted((root / section).glob("*.json")):
            _add_file(builder, section, file)
    organization = root / "organization.json"
    if organization.exists():
        _add_file(builder, "organization", organization)
    return builder


def read_store(path: str | Path) -> StoreBuilder:
    """A store directory or a snapshot file, whichever ``path`` is (``OSError`` when a file cannot be read)."""
    return read_directory(path) if Path(path).is_dir() else read_snapshot(Path(path).read_bytes(), str(path))


def read_snapshot(text: str | bytes, source: str = "snapshot") -> StoreBuilder:
    """The entries of a snapshot written by ``PolicyStore.to_json``, for ``build`` or ``check``; ``source``
    names it in errors. A snapshot that is not JSON, or a part of it that is not a section, is kept with its
    findings, and the sections that can be read are read."""
    builder = StoreBuilder()
    try:
        snapshot = decode_json(text, unique_keys=True)
    except PolicyValidationError as exc:
        builder.refuse(source, exc.findings)
        return builder
    check = _Checker(source)
    for section, entries in check.object(snapshot, (), SECTIONS, ()).items():
        if section == "organization":
            builder.add(section, entries, source, (section,))
        elif section in SECTIONS and not isinstance(entries, list):
            check.error("S001", (section,), f"{section} must be a list of entries")
        elif section in SECTIONS:
            for i, entry in enumerate(entries):
                builder.add(section, entry, source, (section, i))
    if check.report.findings:
        builder.refuse(source, check.report.findings)
    return builder


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
        return read_directory(path).build()

    @classmethod
    def load(cls, path: str | Path) -> PolicyStore:
        """Load a store directory or a snapshot file."""
        return read_store(path).build()

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "snapshot") -> PolicyStore:
        """Read a snapshot written by ``to_json``; ``source`` names it in errors."""
        return read_snapshot(text, source).build()

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
