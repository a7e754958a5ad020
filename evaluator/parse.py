"""Parse policy JSON into the model, collecting every structural error on the way.

The parser never stops at the first problem: it walks the whole document,
records a located finding for each one, and either returns a complete
``Policy`` or raises ``PolicyValidationError`` with all of them. Nothing
half-built escapes.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any

from .findings import Finding, PolicyValidationError, Severity, pointer
from .model import Condition, Effect, Policy, Principal, Statement
from .operators import POLICY_VALUE_READERS, UnknownOperator, parse_operator
from .variables import VARIABLE

VERSIONS = ("2012-10-17", "2008-10-17")
POLICY_KEYS = {"Version", "Id", "Statement"}
STATEMENT_KEYS = {
    "Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction",
    "Resource", "NotResource", "Condition",
}
PRINCIPAL_KEYS = {"AWS": "aws", "Service": "service", "Federated": "federated", "CanonicalUser": "canonical_user"}

_ACTION = r"[A-Za-z0-9*?_-]+:[A-Za-z0-9*?_-]+"
ACTION_SYNTAX = re.compile(_ACTION)  # service:Action, wildcards allowed
_ACTION_LINES = re.compile(rf"{_ACTION}(?:\n{_ACTION})*")  # entries joined by newlines, each service:Action
_ACCOUNT_ID = re.compile(r"\d{12}")


class PolicyKind(StrEnum):
    """Identity-like policies (identity, boundary, SCP, session) have no Principal;
    resource-based policies (and RCPs) must have one."""

    IDENTITY = "identity"
    RESOURCE = "resource"


class _DuplicateKeys(dict):
    """A JSON object that remembers keys it saw twice (json keeps only the last)."""

    duplicates: tuple[str, ...] = ()


def _object_with_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    obj = _DuplicateKeys(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


def decode_json(source: str | bytes, *, unique_keys: bool = False) -> Any:
    """Decode JSON text, keeping track of duplicate keys; raises ``PolicyValidationError``.

    Each object remembers the keys it was given twice (``json`` keeps only the last), for the parser and
    the store's checker to report. With ``unique_keys`` a key given twice anywhere is an error here (E002 at
    its pointer): for text whose objects are not all checked that way, or that is re-encoded before they
    are (``json.dumps`` writes each key once, and the duplicate is lost without a trace).
    """
    try:
        text = source.decode("utf-8") if isinstance(source, bytes) else source
        value = json.loads(text, object_pairs_hook=_object_with_duplicates)
    except UnicodeDecodeError as exc:
        raise PolicyValidationError(
            [Finding("E001", Severity.ERROR, "", f"policy is not UTF-8 text: {exc}")]
        ) from None
    except json.JSONDecodeError as exc:
        raise PolicyValidationError(
            [Finding("E001", Severity.ERROR, "", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]
        ) from None
    except RecursionError:
        raise PolicyValidationError(
            [Finding("E001", Severity.ERROR, "", f"JSON nested more than {MAX_DEPTH} levels deep")]
        ) from None
    if unique_keys:
        duplicates = list(_duplicate_keys(value, ()))
        if duplicates:
            raise PolicyValidationError(duplicates)
    return value


def _duplicate_keys(value: Any, where: tuple) -> Iterator[Finding]:
    if isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            yield Finding("E002", Severity.ERROR, pointer(*where, key), f"the key {key!r} is given more than once")
        for key, item in value.items():
            yield from _duplicate_keys(item, (*where, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _duplicate_keys(item, (*where, index))


MAX_DEPTH = 32
"""Nesting a policy may have: IAM's grammar needs six levels (Statement, a statement, Condition, an
operator, a key, its values); anything far deeper is an attack on the parser, refused before it runs."""


def _unreadable_text(doc: Any) -> list[Finding]:
    """E001 for text that is not Unicode (a lone surrogate, in a key or a value), for a key that is not text
    (a Python mapping may hold one; JSON cannot) and for nesting past MAX_DEPTH, each at its pointer; checked
    without recursion, before anything else reads the document. Documents are almost always readable: a
    first walk says so without building a pointer."""
    return [] if _readable(doc) else _located_unreadable(doc)


def _entry(where: tuple, index: int | None) -> str:
    """The pointer of an entry of an element (an action, a resource, a condition value): the element's, or
    its item's in a list (``index``)."""
    return pointer(*where) if index is None else pointer(*where, index)


def _strings_only(items: list) -> bool:
    """Whether every item is a str, in one pass in C (joining them)."""
    try:
        "".join(items)
    except TypeError:
        return False
    return True


def _readable(doc: Any) -> bool:
    """Level by level: each level's keys and strings are checked as one text (a lone surrogate stays
    one when joined), and a level deeper than MAX_DEPTH means no. A list of strings (Action, Resource)
    goes to the next level already joined: one text there, as its strings would be."""
    level = [doc]
    for _ in range(MAX_DEPTH + 1):
        nested: list = []
        texts: list = []
        for value in level:
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, dict):
                texts.extend(value)
                nested.extend(value.values())
            elif isinstance(value, list) and value:
                try:
                    nested.append("".join(value))
                except TypeError:  # not only strings
                    nested.extend(value)
        try:
            joined = "".join(texts)
        except TypeError:  # a key that is not a string
            return False
        if not _encodable(joined):
            return False
        if not nested:
            return True
        level = nested
    return False


def _located_unreadable(doc: Any) -> list[Finding]:
    findings: list[Finding] = []
    stack: list[tuple[Any, tuple]] = [(doc, ())]
    while stack:
        value, where = stack.pop()
        if len(where) > MAX_DEPTH:
            findings.append(Finding("E001", Severity.ERROR, pointer(*where[:MAX_DEPTH]),
                                    f"the document is nested more than {MAX_DEPTH} levels deep"))
            break
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    findings.append(Finding("E001", Severity.ERROR, pointer(*where),
                                            f"a key is not a string: {type(key).__name__}"))
                    continue
                if not _encodable(key):
                    findings.append(Finding("E001", Severity.ERROR, pointer(*where),
                                            "a key is not valid Unicode text (a lone surrogate)"))
                stack.append((item, (*where, key)))
        elif isinstance(value, list):
            stack.extend((item, (*where, index)) for index, item in enumerate(value))
        elif isinstance(value, str) and not _encodable(value):
            findings.append(Finding("E001", Severity.ERROR, pointer(*where),
                                    "not valid Unicode text (a lone surrogate)"))
    return findings


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


class _Parser:
    def __init__(self, kind: PolicyKind) -> None:
        self.kind = kind
        self.findings: list[Finding] = []
        self.version: str | None = None

    def error(self, code: str, where: str, message: str) -> None:
        self.findings.append(Finding(code, Severity.ERROR, where, message))

    def warn(self, code: str, where: str, message: str) -> None:
        self.findings.append(Finding(code, Severity.WARNING, where, message))

    def check_keys(self, obj: dict, allowed: set[str], where: tuple, what: str) -> None:
        self.duplicate_keys(obj, where, what)
        if obj.keys() <= allowed:
            return  # the common case, at once
        for key in obj:
            if key not in allowed:
                close = next((a for a in allowed if a.lower() == key.lower()), None)
                hint = f"; did you mean {close!r}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
                self.error("E003", pointer(*where, key), f"unknown {what} element {key!r}{hint}")

    def duplicate_keys(self, obj: dict, where: tuple, what: str) -> None:
        for key in getattr(obj, "duplicates", ()):
            self.error("E002", pointer(*where, key), f"{what} has the key {key!r} more than once")

    # -- policy ----------------------------------------------------------

    def policy(self, doc: Any, name: str) -> Policy | None:
        if not isinstance(doc, dict):
            self.error("E004", "", f"a policy must be a JSON object, not a {_type_name(doc)}")
            return None
        self.check_keys(doc, POLICY_KEYS, (), "policy")
        self.version = self.read_version(doc)
        policy_id = doc.get("Id")
        if policy_id is not None and not isinstance(policy_id, str):
            self.error("E007", "/Id", f"Id must be a string, not a {_type_name(policy_id)}")
            policy_id = None
        statements = self.statements(doc)
        if any(f.severity is Severity.ERROR for f in self.findings):
            return None
        return Policy(name=name, version=self.version, statements=statements, id=policy_id)

    def read_version(self, doc: dict) -> str | None:
        if "Version" not in doc:
            self.warn(
                "W001", "",
                "no Version: IAM reads this as 2008-10-17, where policy variables are plain text; "
                "add \"Version\": \"2012-10-17\"",
            )
            return None
        version = doc["Version"]
        if version not in VERSIONS:
            self.error("E005", "/Version", f"Version must be one of {', '.join(VERSIONS)}, not {version!r}")
            return None
        return version

    def statements(self, doc: dict) -> tuple[Statement, ...]:
        if "Statement" not in doc:
            self.error("E006", "", "a policy needs a Statement element")
            return ()
        raw = doc["Statement"]
        if isinstance(raw, dict):
            items = [((("Statement",)), raw)]
        elif isinstance(raw, list):
            if not raw:
                self.error("E006", "/Statement", "Statement must not be empty")
            items = [(("Statement", i), item) for i, item in enumerate(raw)]
        else:
            self.error("E007", "/Statement", f"Statement must be an object or a list, not a {_type_name(raw)}")
            return ()
        statements = []
        sids: dict[str, tuple] = {}  # where each Sid was first used
        for index, (where, item) in enumerate(items):
            statement = self.statement(item, index, where)
            if statement is None:
                continue
            if statement.sid is not None:
                if statement.sid in sids:
                    self.error(
                        "E008", pointer(*where, "Sid"),
                        f"duplicate Sid {statement.sid!r} (first used at {pointer(*sids[statement.sid], 'Sid')})",
                    )
                else:
                    sids[statement.sid] = where
            statements.append(statement)
        return tuple(statements)

    # -- statement -------------------------------------------------------

    def statement(self, raw: Any, index: int, where: tuple) -> Statement | None:
        if not isinstance(raw, dict):
            self.error("E007", pointer(*where), f"a statement must be an object, not a {_type_name(raw)}")
            return None
        self.check_keys(raw, STATEMENT_KEYS, where, "statement")
        sid = raw.get("Sid")
        if sid is not None and not isinstance(sid, str):
            self.error("E007", pointer(*where, "Sid"), f"Sid must be a string, not a {_type_name(sid)}")
            sid = None
        effect = self.effect(raw, where)
        actions, not_actions = self.either(raw, where, "Action", "NotAction", self.actions, required=True)
        resources, not_resources = self.either(
            raw, where, "Resource", "NotResource", self.resources,
            required=self.kind is PolicyKind.IDENTITY,
        )
        principal, not_principal = self.principals(raw, where)
        conditions = self.conditions(raw, where)
        if effect is None:
            return None
        return Statement(index, sid, effect, actions, not_actions, resources, not_resources,  # by position: faster
                         principal, not_principal, conditions)

    def effect(self, raw: dict, where: tuple) -> Effect | None:
        if "Effect" not in raw:
            self.error("E009", pointer(*where), "statement has no Effect (Allow or Deny)")
            return None
        value = raw["Effect"]
        if isinstance(value, str):
            value = str.__str__(value)  # a subclass is read for what it holds, not through its own __eq__
        if type(value) is not str or value not in ("Allow", "Deny"):
            self.error("E010", pointer(*where, "Effect"), f"Effect must be \"Allow\" or \"Deny\", not {value!r}")
            return None
        return Effect(value)

    def either(self, raw: dict, where: tuple, positive: str, negative: str, check, required: bool):
        """Read exactly one of Action/NotAction (or Resource/NotResource)."""
        if positive in raw and negative in raw:
            self.error("E011", pointer(*where), f"statement has both {positive} and {negative}; use one")
        elif positive not in raw and negative not in raw:
            if required:
                self.error("E012", pointer(*where), f"statement needs {positive} or {negative}")
            return None, None
        return self.entries(raw, where, positive, check), self.entries(raw, where, negative, check)

    def entries(self, raw: dict, where: tuple, key: str, check) -> tuple[str, ...] | None:
        """One Action, NotAction, Resource or NotResource element (None if absent or invalid), its entries
        checked together by ``check``."""
        if key not in raw:
            return None
        value = raw[key]
        strings = self.string_list(value, (*where, key))
        if strings is not None:
            check(strings, (*where, key), not isinstance(value, str))
        return strings

    def string_list(self, value: Any, where: tuple) -> tuple[str, ...] | None:
        if isinstance(value, str):
            if not value:
                self.error("E014", pointer(*where), "must not be an empty string")
                return None
            return (value,)
        if not isinstance(value, list):
            self.error("E013", pointer(*where), f"must be a string or a list of strings, not a {_type_name(value)}")
            return None
        if not value:
            self.error("E014", pointer(*where), "must not be an empty list")
            return None
        if _strings_only(value) and all(value):  # the common case, at once: every item a non-empty string
            return tuple(value)
        ok = True
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.error("E013", pointer(*where, i), f"must be a string, not a {_type_name(item)}")
                ok = False
            elif not item:
                self.error("E014", pointer(*where, i), "must not be an empty string")
                ok = False
        return tuple(value) if ok else None

    # The checks of the entries of one Action or Resource element: ``where`` the key, ``listed`` whether they
    # were given as a list (a pointer then names an entry by its place); a pointer is made only for a finding.

    def actions(self, texts: tuple[str, ...], where: tuple, listed: bool) -> None:
        joined = "\n".join(texts)
        if _ACTION_LINES.fullmatch(joined) and joined.count("\n") == len(texts) - 1:
            return  # the common case, at once: every entry is service:Action (and none holds a newline)
        for i, text in enumerate(texts):
            if text != "*" and not ACTION_SYNTAX.fullmatch(text):
                self.error(
                    "E015", _entry(where, i if listed else None),
                    f"{text!r} is not an action: write service:Action (wildcards * and ? allowed) or \"*\"",
                )

    def resources(self, texts: tuple[str, ...], where: tuple, listed: bool) -> None:
        for i, text in enumerate(texts):
            if text == "*":
                continue
            index = i if listed else None
            if "${" in text and self.version == "2012-10-17":
                self.variables(text, where if index is None else (*where, index))
            masked = VARIABLE.sub("v", text)
            fields = masked.split(":", 5)
            if len(fields) < 6 or fields[0] != "arn":
                self.error(
                    "E016", _entry(where, index),
                    f"{text!r} is not an ARN pattern: expected \"*\" or arn:partition:service:region:account:resource",
                )
            elif not fields[2]:
                self.error("E016", _entry(where, index), f"{text!r} has an empty service field")

    def variables(self, text: str, where: tuple) -> None:
        unclosed = "${" in VARIABLE.sub("", text)
        if unclosed:
            self.error("E017", pointer(*where), f"{text!r} opens a policy variable with ${{ but never closes it")
        for match in VARIABLE.finditer(text):
            if not match.group(1).strip():
                self.error("E017", pointer(*where), f"{text!r} has an empty policy variable ${{}}")

    # -- principals ------------------------------------------------------

    def principals(self, raw: dict, where: tuple) -> tuple[Principal | None, Principal | None]:
        has = [key for key in ("Principal", "NotPrincipal") if key in raw]
        if self.kind is PolicyKind.IDENTITY:
            for key in has:
                self.error(
                    "E018", pointer(*where, key),
                    f"{key} is not allowed in an identity-based policy, permissions boundary, SCP or session policy: "
                    "only resource-based policies name principals",
                )
            return None, None
        if not has:
            self.error("E019", pointer(*where), "a resource-based policy statement needs Principal or NotPrincipal")
            return None, None
        if len(has) == 2:
            self.error("E011", pointer(*where), "statement has both Principal and NotPrincipal; use one")
            return None, None
        parsed = self.principal(raw[has[0]], (*where, has[0]))
        return (parsed, None) if has[0] == "Principal" else (None, parsed)

    def principal(self, value: Any, where: tuple) -> Principal | None:
        if value == "*":
            return Principal(everyone=True)
        if not isinstance(value, dict):
            self.error("E020", pointer(*where), "Principal must be \"*\" or an object such as {\"AWS\": [...]}")
            return None
        self.check_keys(value, set(PRINCIPAL_KEYS), where, "principal")
        fields: dict[str, tuple[str, ...]] = {}
        for key, field in PRINCIPAL_KEYS.items():
            if key not in value:
                continue
            names = self.string_list(value[key], (*where, key))
            if names is None:
                continue
            if key == "AWS":
                for i, name in enumerate(names):
                    self.aws_principal(name, (*where, key) if isinstance(value[key], str) else (*where, key, i))
            fields[field] = names
        if not value:
            self.error("E020", pointer(*where), "Principal must name at least one principal")
        return Principal(**fields)

    def aws_principal(self, name: str, where: tuple) -> None:
        if name == "*" or _ACCOUNT_ID.fullmatch(name):
            return
        parts = name.split(":", 5)
        if len(parts) == 6 and parts[0] == "arn" and parts[2] in ("iam", "sts") and _ACCOUNT_ID.fullmatch(parts[4]):
            return
        self.error(
            "E021", pointer(*where),
            f"{name!r} is not an AWS principal: use \"*\", a 12-digit account id, or an IAM/STS ARN",
        )

    # -- conditions ------------------------------------------------------

    def conditions(self, raw: dict, where: tuple) -> tuple[Condition, ...]:
        if "Condition" not in raw:
            return ()
        block = raw["Condition"]
        at = (*where, "Condition")
        if not isinstance(block, dict):
            self.error("E022", pointer(*at), f"Condition must be an object, not a {_type_name(block)}")
            return ()
        self.duplicate_keys(block, at, "Condition")
        parsed = []
        for operator, keys in block.items():
            op_at = (*at, operator)
            try:
                spec = parse_operator(operator)
            except UnknownOperator as exc:
                self.error("E023", pointer(*op_at), str(exc))
                continue
            if not isinstance(keys, dict) or not keys:
                self.error("E022", pointer(*op_at), f"{operator} must map condition keys to values")
                continue
            self.duplicate_keys(keys, op_at, operator)
            for key, raw_values in keys.items():
                values = self.condition_values(raw_values, (*op_at, key), spec.spec.family)
                if not key.strip():
                    self.error("E024", pointer(*op_at, key), "condition key must not be empty")
                elif values is not None:
                    parsed.append(Condition(operator, spec.base, spec.set_qualifier, spec.if_exists, key, values))
        return tuple(parsed)

    def condition_values(self, raw: Any, where: tuple, family) -> tuple[str, ...] | None:
        listed = isinstance(raw, list)
        items = raw if listed else [raw]
        if not items:
            self.error("E025", pointer(*where), "condition needs at least one value")
            return None
        reader = POLICY_VALUE_READERS.get(family)
        values = []
        for i, item in enumerate(items):
            if isinstance(item, bool):
                text = "true" if item else "false"
            elif isinstance(item, (int, float)):
                text = repr(item)
            elif isinstance(item, str):
                text = item
            else:
                self.error("E025", _entry(where, i if listed else None), f"condition value must be a string, "
                           f"number or boolean, not a {_type_name(item)}")
                continue
            values.append(text)
            if "${" in text:
                if self.version == "2012-10-17":
                    self.variables(text, (*where, i) if listed else where)
                continue
            if reader is not None:
                try:
                    reader(text)
                except ValueError as exc:
                    self.error("E026", _entry(where, i if listed else None),
                               f"bad value for a {family} condition: {exc}")
        return tuple(values) if len(values) == len(items) else None


def readable_statements(doc: Any) -> Iterator[tuple[tuple, dict]]:
    """``(where, statement)`` for every statement of ``doc`` that is an object, whatever else is wrong with the
    policy: for the checks that report on all that can be read of a policy with errors."""
    raw = doc.get("Statement") if isinstance(doc, dict) else None
    if isinstance(raw, dict):
        yield ("Statement",), raw
    elif isinstance(raw, list):
        yield from ((("Statement", index), item) for index, item in enumerate(raw) if isinstance(item, dict))


def check_policy(
    source: str | bytes | Mapping, *, kind: PolicyKind = PolicyKind.IDENTITY, name: str = ""
) -> tuple[Policy | None, list[Finding]]:
    """Parse and return (policy or None, every structural finding)."""
    try:
        doc = decode_json(source) if isinstance(source, (str, bytes)) else source
    except PolicyValidationError as exc:
        return None, exc.findings
    unreadable = _unreadable_text(doc)
    if unreadable:
        return None, unreadable
    parser = _Parser(kind)
    policy = parser.policy(doc, name)
    return policy, parser.findings


def parse_policy(
    source: str | bytes | Mapping, *, kind: PolicyKind = PolicyKind.IDENTITY, name: str = ""
) -> Policy:
    """Parse a policy or raise ``PolicyValidationError`` carrying all its errors."""
    policy, findings = check_policy(source, kind=kind, name=name)
    if policy is None:
        raise PolicyValidationError(findings, source=name)
    return policy
