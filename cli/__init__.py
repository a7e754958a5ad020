"""``iam-eval``: check one request, validate policies, run policy test cases.

Exit codes: ``check`` 0 Allow, 1 deny, 2 bad input; ``validate`` 1 when a
finding at or above ``--fail-on`` (error by default) exists, else 0 (a note
never fails), 2 unreadable input (a store's unreadable files are findings);
``test`` 0 all passed, 1 any failed, 2 bad input; ``context-keys`` 0, 2 bad input; ``batch``
0 done, 2 bad input or a failed job (a worker died, the output could not be
written); ``diff`` 0, or 1 when ``--fail-on`` sees what it names, 2 bad input;
``who-can`` and ``what-can`` 0 answered (whatever the answer), 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from iam_evaluator import __version__
from iam_evaluator.access_queries import HOPS, WhatCan, WhoCan, what_can, who_can
from iam_evaluator.cases import DEFAULT_ENGINE, ENGINES, json_report, junit_report, print_report, run_files
from iam_evaluator.catalog import CATALOG_ENV, Catalog
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.context_keys import context_keys, store_context_keys
from iam_evaluator.decision import Decision, Miss, MissKind
from iam_evaluator.files import policy_files
from iam_evaluator.findings import FAILING, Finding, PolicyValidationError, Severity
from iam_evaluator.model import Policy
from iam_evaluator.parse import PolicyKind, decode_json, parse_policy
from iam_evaluator.policy_types import PolicyType
from iam_evaluator.principals import RequestError
from iam_evaluator.request import PolicySet, Request
from iam_evaluator.sarif import sarif_log
from iam_evaluator.service_rules import ANONYMOUS
from iam_evaluator.store import PolicyStore
from iam_evaluator.validate import validate_policy, validate_store

BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input: reported on stderr, exit code 2."""


def read_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def _load(path: str, kind: PolicyKind = PolicyKind.IDENTITY) -> Policy:
    return parse_policy(read_file(path), kind=kind, name=path)


def read_context(pairs: list[str], context_file: str | None) -> dict[str, Any]:
    """``key=value`` pairs; a repeated key becomes a list, ``key=[...]`` is a JSON list."""
    context: dict[str, Any] = {}
    if context_file:
        try:
            loaded = json.loads(read_file(context_file))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{context_file}: not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"{context_file}: the context must be a JSON object")
        context.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--context {pair!r}: write key=value")
        parsed: Any = value
        if value.startswith("["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise UsageError(f"--context {pair!r}: not a JSON list: {exc}") from None
        if key in context:
            previous = context[key]
            context[key] = (previous if isinstance(previous, list) else [previous]) + (
                parsed if isinstance(parsed, list) else [parsed])
        else:
            context[key] = parsed
    return context


def read_session_tags(pairs: list[str]) -> dict[str, str] | None:
    """``key=value`` pairs: the tags of an assumed-role session (None when there are none)."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--session-tag {pair!r}: write key=value")
        if key in tags:
            raise UsageError(f"--session-tag {key!r} is given twice (a tag has one value)")
        tags[key] = value
    return tags or None


def print_decision(decision: Decision, as_json: bool, store_version: int | None = None, explain: bool = False) -> None:
    """A decision as ``check`` prints it, here and from the service (which adds the store version
    that decided it); ``explain`` adds the statements that needed each missing key and the near misses."""
    if as_json:
        found = decision.to_json()
        if store_version is not None:
            found["store_version"] = store_version
        print(json.dumps(found, indent=2))
        return
    print(decision.decision if not decision.decided_by else
          f"{decision.decision}  (decided by {decision.decided_by}: {decision.reason})")
    if decision.error and decision.error not in decision.reason:
        print(f"  error: {decision.error}")
    for ref in decision.statements:
        print(f"  statement: {ref}")
    if decision.missing_keys:
        print(f"  missing context keys: {', '.join(decision.missing_keys)}")
    if explain:
        for missing in decision.missing_key_statements:
            print(f"    {missing.key}: needed by {', '.join(map(str, missing.statements))}")
        for near in decision.near_misses:
            print(f"  nearly applied in {near.layer}: {near}{_miss_details(near.miss)}")
        if decision.more_near_misses:
            print(f"  … and {decision.more_near_misses} more statement(s) that nearly applied")
    if store_version is not None:
        print(f"  store version {store_version}" if store_version else "  decided by the inline policies")


def _miss_details(miss: Miss) -> str:
    """What a near miss compared, beyond its reason."""
    if miss.kind is MissKind.RESOURCE:
        return f"; patterns {', '.join(miss.patterns)}"
    if miss.kind is MissKind.CONDITION:
        return f"; sent {json.dumps(list(miss.sent))}, wanted {json.dumps(list(miss.wanted))}"
    if miss.kind is MissKind.VARIABLE and miss.sent:
        return f"; sent {json.dumps(list(miss.sent))}"
    return ""


def cmd_check(args: argparse.Namespace) -> int:
    policies = PolicySet(
        identity=tuple(_load(p) for p in args.policy),
        resource=_load(args.resource_policy, PolicyKind.RESOURCE) if args.resource_policy else None,
        permissions_boundary=(_load(args.boundary),) if args.boundary else None,
        session=(_load(args.session_policy),) if args.session_policy else None,
        scp=tuple(tuple(_load(p) for p in level) for level in args.scp) if args.scp else None,
        rcp=tuple(tuple(_load(p, PolicyKind.RESOURCE) for p in level) for level in args.rcp) if args.rcp else None,
        vpc_endpoint=(_load(args.vpc_endpoint_policy, PolicyKind.RESOURCE),) if args.vpc_endpoint_policy else None,
    )
    request = Request.create(ANONYMOUS if args.anonymous else args.principal, args.action, args.resource,
                             read_context(args.context, args.context_file), args.resource_account,
                             read_session_tags(args.session_tag))
    decision = ENGINES[args.engine](policies, request)
    print_decision(decision, args.json, explain=args.explain)
    return 0 if decision.allowed else 1


def _located_text(path: str) -> str:
    """A store file's text, to place its findings on their lines ("" for a file that cannot be read: its
    findings say why)."""
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _print_escaped(line: str) -> None:
    """Print ``line``, writing what stdout cannot encode (a lone surrogate in a file's name or a policy's key)
    as its escape, so that the report is never cut short."""
    encoding = sys.stdout.encoding or "utf-8"
    print(line.encode(encoding, errors="backslashreplace").decode(encoding))


def _count(findings: list[Finding]) -> str:
    """Errors and warnings, and notes when there are any: a suggestion is counted apart from what fails."""
    counts = {severity: sum(f.severity is severity for f in findings) for severity in Severity}
    notes = f", {counts[Severity.NOTE]} note(s)" if counts[Severity.NOTE] else ""
    return f"{counts[Severity.ERROR]} error(s), {counts[Severity.WARNING]} warning(s){notes}"


def cmd_validate(args: argparse.Namespace) -> int:
    if not args.files and not args.store:
        raise UsageError("name policy files or folders, or a store with --store")
    catalog = Catalog.from_environment(args.catalog)
    texts = {path: read_file(path) for path in policy_files(args.files)}
    report = {path: validate_policy(text, kind=PolicyType(args.type), catalog=catalog) for path, text in texts.items()}
    if args.store:
        try:
            report.update(validate_store(args.store, catalog=catalog))
        except OSError as exc:
            raise UsageError(f"cannot read the store {args.store}: {exc.strerror}") from None
    return print_findings(report, texts, args.format, args.fail_on)


def print_findings(report: dict[str, list[Finding]], texts: dict[str, str], form: str, fail_on: str) -> int:
    """Findings by file as ``validate`` prints them (text, JSON or SARIF; ``texts`` place them on their
    lines, and a file missing from it is read), here and from the service; the exit code ``fail_on`` gives."""
    if form == "sarif":
        located = {path: (texts[path] if path in texts else _located_text(path), findings)
                   for path, findings in report.items()}
        print(json.dumps(sarif_log(located, __version__), indent=2))
    elif form == "json":
        print(json.dumps({path: [{"code": f.code, "severity": str(f.severity), "pointer": f.pointer,
                                  "message": f.message} for f in findings]
                          for path, findings in report.items()}, indent=2))
    else:
        for path, findings in report.items():
            _print_escaped(f"{path}: {_count(findings)}")
            for finding in findings:
                _print_escaped(f"  {finding}")
    failing = FAILING[fail_on]
    return 1 if any(f.severity in failing for findings in report.values() for f in findings) else 0


def cmd_test(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.cases]
    for path in paths:
        if not path.is_file():
            raise UsageError(f"no such case file: {path}")
    results = run_files(paths, ENGINES[args.engine])
    if args.format == "json":
        print(json.dumps(json_report(results), indent=2))
    else:
        print_report(results, sys.stdout)
    if args.junit:
        junit_report(results).write(args.junit, encoding="utf-8", xml_declaration=True)  # OSError: exit 2
    return 0 if all(result.passed for _, outcomes in results for _, result in outcomes) else 1


def _load_either(path: str) -> Policy:
    """A policy file read as resource-based when a statement names a Principal, else as identity-based."""
    document = decode_json(read_file(path), unique_keys=True)
    statements = document.get("Statement") if isinstance(document, dict) else None
    statements = [statements] if isinstance(statements, dict) else statements if isinstance(statements, list) else []
    named = any(isinstance(s, dict) and ("Principal" in s or "NotPrincipal" in s) for s in statements)
    return parse_policy(document, kind=PolicyKind.RESOURCE if named else PolicyKind.IDENTITY, name=path)


def cmd_context_keys(args: argparse.Namespace) -> int:
    if bool(args.files) == bool(args.store):
        raise UsageError("name policy files or folders, or a store with --store (one or the other)")
    if args.principal is not None and not args.store:
        raise UsageError("--principal names a principal of the store: give --store too")
    if args.store:
        try:
            store = PolicyStore.load(args.store)
        except OSError as exc:
            raise UsageError(f"cannot read the store {args.store}: {exc.strerror}") from None
        try:
            keys = store_context_keys(store, args.principal, args.action)
        except LookupError as exc:
            raise UsageError(str(exc)) from None
    else:
        keys = context_keys([_load_either(path) for path in policy_files(args.files)], args.action)
    if args.json:
        print(json.dumps([key.to_json() for key in keys], indent=2))
        return 0
    for key in keys:
        _print_escaped(key.key)
        for ref in key.statements:
            _print_escaped(f"  {ref}")
    if not keys:
        print("no context keys")
    return 0


def _batch_modules() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UsageError("batch jobs need pyarrow: pip install 'iam-evaluator[batch]'") from None


def cmd_batch(args: argparse.Namespace) -> int:
    _batch_modules()
    from iam_evaluator.batch.policies import PolicySource
    from iam_evaluator.batch.readers import MalformedRecord
    from iam_evaluator.batch.runner import WorkerFailed, run_local

    source = PolicySource.from_paths(args.policy, args.store)
    if args.engine == "spark":
        from iam_evaluator.batch.spark import run_spark

        if args.stats:
            raise UsageError("--stats runs with the local engine only")
        summary = run_spark(source, args.input, args.output, explain=args.explain)
        print(json.dumps(summary, indent=2))
        return 0
    try:
        summary, problems = run_local(source, args.input, args.output, workers=args.workers, explain=args.explain,
                                      stats=args.stats, batch_rows=args.batch_rows, strict=args.strict)
    except MalformedRecord as exc:
        raise UsageError(str(exc)) from None
    except WorkerFailed as exc:  # a worker died, or could not read or write its part (a full disk, say)
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    summary.render(sys.stdout, problems)
    if args.stats:
        _print_usage(summary.usage, Path(args.output).with_suffix(".stats.json"))
    return 0


def _print_usage(usage: dict, path: Path) -> None:
    """Statements (and their action patterns) the log never used, and all counts as JSON."""
    rows = [{"policy": policy, "index": index, "sid": sid, "effect": effect, "applied": applied,
             "decided": decided, "unused_actions": sorted(p for p, hits in patterns.items() if not hits)}
            for (policy, index, sid, effect), (applied, decided, patterns) in sorted(usage.items())]
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    unused = [row for row in rows if not row["applied"]]
    print(f"statements: {len(rows)}, never applied: {len(unused)} (all counts in {path})")
    for row in unused:
        sid = f" ({row['sid']})" if row["sid"] else ""
        print(f"  unused: {row['effect']} {row['policy']}#{row['index']}{sid}")
    for row in rows:
        if row["applied"] and row["unused_actions"]:
            print(f"  {row['policy']}#{row['index']}: unused action patterns {', '.join(row['unused_actions'])}")


def cmd_diff(args: argparse.Namespace) -> int:
    _batch_modules()
    from iam_evaluator.batch.diff import fails, run_diff
    from iam_evaluator.batch.policies import PolicySource

    before, after = PolicySource.read(args.before), PolicySource.read(args.after)
    _, groups, _ = run_diff(before, after, args.input, args.output, sys.stdout, batch_rows=args.batch_rows,
                            strict=args.strict)
    return 1 if fails(groups, args.fail_on) else 0


def _compiled_store(path: str) -> CompiledStore:
    """A store folder or snapshot file, compiled (a store that cannot be loaded: ``StoreError``, exit 2)."""
    try:
        return CompiledStore(PolicyStore.load(path))
    except OSError as exc:
        raise UsageError(f"cannot read the store {path}: {exc.strerror}") from None


def cmd_who_can(args: argparse.Namespace) -> int:
    answer = who_can(_compiled_store(args.store), args.action, args.resource,
                     read_context(args.context, args.context_file), args.resource_account)
    print_who_can(answer, args.format)
    return 0


def cmd_what_can(args: argparse.Namespace) -> int:
    answer = what_can(_compiled_store(args.store), args.principal, args.resource, args.service,
                      read_context(args.context, args.context_file), args.resource_account,
                      Catalog.from_environment(args.catalog))
    print_what_can(answer, args.format)
    return 0


def _print_json(found: dict, store_version: int | None) -> None:
    if store_version is not None:
        found["store_version"] = store_version
    print(json.dumps(found, indent=2))


def _print_failures(answer: WhoCan | WhatCan) -> None:
    if answer.failures:
        _print_escaped(f"could not be evaluated, so denied ({len(answer.failures)}):")
    for failure in answer.failures:
        _print_escaped(f"  {failure.principal}: {failure.action} on {failure.resource}: {failure.error}")


def print_who_can(answer: WhoCan, form: str, store_version: int | None = None) -> None:
    """A who-can answer as ``who-can`` prints it, here and from the service (which adds its store version)."""
    if form == "json":
        _print_json(answer.to_json(), store_version)
        return
    _print_escaped(f"{len(answer.principals)} principal(s) may {answer.action} on {answer.resource}")
    for allowed in answer.principals:
        _print_escaped(f"  {allowed.principal}  (decided by {allowed.decision.decided_by})")
        for ref in allowed.decision.statements:
            _print_escaped(f"    statement: {ref}")
    if answer.through_roles:
        _print_escaped(f"{len(answer.through_roles)} more through sts:AssumeRole into an allowed role "
                       f"({HOPS} hop followed; longer chains are not):")
    for chain in answer.through_roles:
        _print_escaped(f"  {chain.principal} -> {chain.role}")
        for ref in chain.assume_role.statements:
            _print_escaped(f"    statement: {ref}")
    _print_failures(answer)
    if store_version is not None:
        print(f"store version {store_version}")


def print_what_can(answer: WhatCan, form: str, store_version: int | None = None) -> None:
    """A what-can answer as ``what-can`` prints it, here and from the service (which adds its store version)."""
    if form == "json":
        _print_json(answer.to_json(), store_version)
        return
    for access in answer.resources:
        count = sum(len(group.actions) for group in access.groups)
        _print_escaped(f"{answer.principal} may perform {count} action(s) on {access.resource}")
        for group in access.groups:
            names = ", ".join(action.partition(":")[2] for action in group.actions)
            _print_escaped(f"  {group.service} {group.access_level} ({len(group.actions)}): {names}")
    _print_failures(answer)
    if store_version is not None:
        print(f"store version {store_version}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iam-eval", description="Evaluate AWS IAM policies as AWS does.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="decide one request against policies")
    check.add_argument("--policy", nargs="+", default=[], metavar="FILE", help="identity-based policies (pooled)")
    check.add_argument("--resource-policy", metavar="FILE", help="the resource's resource-based policy")
    check.add_argument("--boundary", metavar="FILE", help="the principal's permissions boundary")
    check.add_argument("--session-policy", metavar="FILE", help="the session policy of an assumed-role session")
    check.add_argument("--scp", nargs="+", action="append", metavar="FILE",
                       help="SCPs of one organisation level; repeat per level, root first")
    check.add_argument("--rcp", nargs="+", action="append", metavar="FILE",
                       help="RCPs of one organisation level; repeat per level, root first")
    check.add_argument("--vpc-endpoint-policy", metavar="FILE",
                       help="the policy of the VPC endpoint the request came through (it must allow too)")
    caller = check.add_mutually_exclusive_group(required=True)
    caller.add_argument("--principal", help="caller ARN (IAM user, role or assumed-role session)")
    caller.add_argument("--anonymous", action="store_true",
                        help="an unauthenticated caller, allowed only by a resource policy with Principal \"*\"")
    check.add_argument("--action", required=True, help="service:Action")
    check.add_argument("--resource", required=True, help="resource ARN, or * for actions without resources")
    check.add_argument("--resource-account", help="account owning the resource (default: from the ARN, "
                                                  "else the caller's account)")
    check.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                       help="a context key; repeat a key for a list, or give KEY=[\"a\",\"b\"]")
    check.add_argument("--context-file", metavar="FILE", help="JSON object of context keys")
    check.add_argument("--session-tag", action="append", default=[], metavar="KEY=VALUE",
                       help="a tag of the assumed-role session given as --principal (aws:PrincipalTag/KEY)")
    check.add_argument("--json", action="store_true", help="print the decision as JSON")
    check.add_argument("--explain", action="store_true",
                       help="also print the statements that needed each missing key and, for a deny, the Allow "
                            "statements that nearly applied (JSON always has them)")
    check.add_argument("--engine", choices=sorted(ENGINES), default=DEFAULT_ENGINE,
                       help="compiled (default) or the pure-Python reference evaluator")
    check.set_defaults(run=cmd_check)

    validate = commands.add_parser("validate", help="report errors, warnings and notes in policy files or a store")
    validate.add_argument("files", nargs="*", metavar="PATH", help="policy files, or folders: every *.json below")
    validate.add_argument("--store", metavar="DIR|SNAPSHOT",
                          help="a whole store: every policy with its type's rules, and every reference")
    validate.add_argument("--type", choices=[t.value for t in PolicyType], default="identity",
                          help="of the policy files: identity-based (default), resource-based, SCP, RCP, permissions "
                               "boundary or session policy")
    validate.add_argument("--catalog", metavar="DIR",
                          help=f"the IAM catalog: a folder with iam_actions.jsonl and condition_keys.jsonl "
                               f"(default ${CATALOG_ENV}, else the catalog shipped with iam-eval)")
    validate.add_argument("--fail-on", choices=sorted(FAILING), default="error",
                          help="exit 1 when a finding of this severity or worse exists (default error; a note "
                               "never fails)")
    validate.add_argument("--format", choices=["text", "json", "sarif"], default="text",
                          help="text (default), JSON by file, or a SARIF 2.1.0 log for code scanning")
    validate.add_argument("--json", dest="format", action="store_const", const="json", help="--format json")
    validate.set_defaults(run=cmd_validate)

    keys = commands.add_parser("context-keys", help="list the context keys policies test, with their statements")
    keys.add_argument("files", nargs="*", metavar="FILE", help="policy files, or folders: every *.json below")
    keys.add_argument("--store", metavar="DIR|SNAPSHOT", help="every policy a store uses, instead of files")
    keys.add_argument("--principal", metavar="ARN",
                      help="with --store: only the policies that apply to this principal (identity, groups, "
                           "boundary, SCPs)")
    keys.add_argument("--action", metavar="A", help="only the statements whose Action lets this action in")
    keys.add_argument("--json", action="store_true", help="print the keys as JSON")
    keys.set_defaults(run=cmd_context_keys)

    batch = commands.add_parser("batch", help="replay request logs (JSON Lines, Parquet, CloudTrail) against policies")
    policies = batch.add_mutually_exclusive_group(required=True)
    policies.add_argument("--store", metavar="DIR", help="a policy store directory (see evaluator/store.py)")
    policies.add_argument("--policy", nargs="+", metavar="PATH",
                          help="identity-based policies (pooled): files, or folders (every *.json below)")
    batch.add_argument("--input", nargs="+", required=True, metavar="PATH", help="log files or folders")
    batch.add_argument("--output", required=True, metavar="PATH", help="decisions: .jsonl or .parquet")
    batch.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    batch.add_argument("--explain", action="store_true", help="add deciding layer, statements and missing keys")
    batch.add_argument("--stats", action="store_true",
                       help="count statement use; list statements and action patterns no request used")
    batch.add_argument("--batch-rows", type=int, default=8192, help="requests per record batch")
    batch.add_argument("--strict", action="store_true", help="stop at the first malformed record")
    batch.add_argument("--engine", choices=["local", "spark"], default="local",
                       help="local worker processes, or Spark (pip install iam-evaluator[spark]; docs/spark.md)")
    batch.set_defaults(run=cmd_batch)

    diff = commands.add_parser("diff", help="requests whose decision changes between two policy versions")
    sides = "policy files, folders of them, or a store (a store folder or a snapshot file), told apart by content"
    diff.add_argument("--before", nargs="+", required=True, metavar="PATH", help=f"the policies now: {sides}")
    diff.add_argument("--after", nargs="+", required=True, metavar="PATH", help=f"the policies proposed: {sides}")
    diff.add_argument("--input", nargs="+", required=True, metavar="PATH")
    diff.add_argument("--output", default="changes.jsonl", metavar="PATH",
                      help="every changed request (.jsonl or .parquet; default changes.jsonl)")
    diff.add_argument("--batch-rows", type=int, default=8192)
    diff.add_argument("--strict", action="store_true")
    diff.add_argument("--fail-on", choices=["newly-allowed", "any-change"],
                      help="exit 1 when a request is newly allowed, or changes at all (a gate for CI)")
    diff.set_defaults(run=cmd_diff)

    who = commands.add_parser("who-can", help="every principal of a store that may do an action on a resource")
    who.add_argument("--store", required=True, metavar="DIR|SNAPSHOT", help="a store folder or snapshot file")
    who.add_argument("--action", required=True, help="service:Action")
    who.add_argument("--resource", required=True, help="resource ARN, or * for actions without resources")
    add_query_arguments(who)
    who.set_defaults(run=cmd_who_can)

    what = commands.add_parser("what-can", help="every action of the IAM catalog a principal of a store may do")
    what.add_argument("--store", required=True, metavar="DIR|SNAPSHOT", help="a store folder or snapshot file")
    what.add_argument("--principal", required=True, help="a principal of the store (role, user or role session ARN)")
    what.add_argument("--resource", help="resource ARN, or *; default: * and each resource pattern the "
                                         "principal's Allow statements name")
    what.add_argument("--service", help="only this service's actions (its prefix, e.g. s3)")
    what.add_argument("--catalog", metavar="DIR",
                      help=f"the IAM catalog (default ${CATALOG_ENV}, else the catalog shipped with iam-eval)")
    add_query_arguments(what)
    what.set_defaults(run=cmd_what_can)

    test = commands.add_parser("test", help="run policy test cases (conformance JSON Lines)")
    test.add_argument("cases", nargs="+", metavar="CASES.jsonl")
    test.add_argument("--engine", choices=sorted(ENGINES), default=DEFAULT_ENGINE)
    test.add_argument("--format", choices=["text", "json"], default="text",
                      help="text: each failure and the counts (default); json: every case and the totals")
    test.add_argument("--json", dest="format", action="store_const", const="json", help="--format json")
    test.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML, for CI")
    test.set_defaults(run=cmd_test)

    from iam_evaluator.server.cli import add_commands  # the service's commands; grpc is imported only when they run
    add_commands(commands)
    return parser


def add_query_arguments(command: argparse.ArgumentParser) -> None:
    """The arguments who-can and what-can share, here and in the service's client."""
    command.add_argument("--resource-account", help="account owning the resource (default: from the ARN, "
                                                    "else each caller's account)")
    command.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                         help="a context key of every request asked; repeat a key for a list")
    command.add_argument("--context-file", metavar="FILE", help="JSON object of context keys")
    command.add_argument("--format", choices=["text", "json"], default="text", help="text (default) or JSON")
    command.add_argument("--json", dest="format", action="store_const", const="json", help="--format json")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PolicyValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except (RequestError, UsageError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
