"""``iam-eval serve`` and ``iam-eval client …``: run the service, and talk to it.

Client exit codes: ``check`` 0 Allow, 1 deny, 2 bad input or a failed call; ``validate``
as ``iam-eval validate``: 1 when a finding at or above ``--fail-on`` (error by default) exists,
else 0; the other commands 0 on success; any failed call 2 (the status and message on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from iam_evaluator.findings import FAILING

DEFAULT_TARGET = "127.0.0.1:50051"


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import serve
    from .config import ConfigError, load_config
    try:
        config = load_config(args.config, store=args.store, listen=args.listen, metrics_listen=args.metrics_listen,
                             state_dir=args.state_dir, aws_managed_policies=args.aws_managed_policies,
                             reseed=args.reseed or None)
        return serve(config)
    except ConfigError as exc:  # a bad value, or an address that cannot be listened on
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _calling(command):
    """Report a failed call (its status and message) on stderr, with exit code 2."""
    def run(args: argparse.Namespace) -> int:
        import grpc
        try:
            return command(args)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
        except TimeoutError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run


def _client(args: argparse.Namespace):
    from .client import Client
    client = Client(args.target, token=args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                    timeout=args.timeout)
    if args.wait:
        try:
            client.wait_until_serving(args.wait)
        except TimeoutError:
            client.close()
            raise
    return client


def _print_message(message) -> None:
    """A response as JSON with every field, defaults too, and 64-bit numbers (store versions) as numbers, as
    in every other JSON output (protobuf's JSON mapping would quote them)."""
    from google.protobuf.json_format import MessageToDict
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                                   unquote_int64_if_possible=True), indent=2))


def cmd_client_check(args: argparse.Namespace) -> int:
    from iam_evaluator.cli import print_decision, read_context, read_session_tags
    from iam_evaluator.service_rules import ANONYMOUS

    from . import convert
    context, session_tags = read_context(args.context, args.context_file), read_session_tags(args.session_tag)
    principal = ANONYMOUS if args.anonymous else args.principal
    with _client(args) as client:
        response = client.check(principal, args.action, args.resource, context, args.resource_account,
                                explain=args.explain, session_tags=session_tags)
    decision = convert.decision(response.result)
    print_decision(decision, args.json, store_version=response.store_version, explain=args.explain)
    return 0 if decision.allowed else 1


def cmd_client_batch(args: argparse.Namespace) -> int:
    from . import convert

    def requests():
        with open(args.input, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{args.input}:{number}: not JSON: {exc}") from None

    counts: Counter[str] = Counter()
    errors = 0
    output = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        with _client(args) as client:
            for result, version in client.check_batch(requests(), args.batch_size, args.explain):
                decision = convert.decision(result)
                counts[str(decision.decision)] += 1
                errors += decision.error is not None
                output.write(json.dumps({**decision.to_json(), "store_version": version}) + "\n")
    finally:
        if output is not sys.stdout:
            output.close()
    summary = ", ".join(f"{count} {name}" for name, count in sorted(counts.items())) or "no requests"
    print(summary + (f" ({errors} could not be evaluated)" if errors else ""), file=sys.stderr)
    return 0


def cmd_client_who_can(args: argparse.Namespace) -> int:
    from iam_evaluator.cli import print_who_can, read_context

    from . import convert
    with _client(args) as client:
        response = client.who_can(args.action, args.resource, read_context(args.context, args.context_file),
                                  args.resource_account)
    print_who_can(convert.who_can(response, args.action, args.resource), args.format, response.store_version)
    return 0


def cmd_client_what_can(args: argparse.Namespace) -> int:
    from iam_evaluator.cli import print_what_can, read_context

    from . import convert
    with _client(args) as client:
        response = client.what_can(args.principal, args.resource, args.service,
                                   read_context(args.context, args.context_file), args.resource_account)
    print_what_can(convert.what_can(response, args.principal), args.format, response.store_version)
    return 0


def _policy_name(args: argparse.Namespace):
    from .api import iam_evaluator_pb2 as pb
    from .client import POLICY_KINDS
    return pb.PolicyName(kind=POLICY_KINDS[args.kind], name=args.name)


def _admin(build):
    """A command that sends one admin request (built from the arguments) and prints the response as JSON;
    ValidatePolicy's findings are printed as ``iam-eval validate`` prints them, with its exit codes."""
    def run(args: argparse.Namespace) -> int:
        method, request = build(args)
        with _client(args) as client:
            response = client.call(getattr(client.admin, method), request)
        if method != "ValidatePolicy":
            _print_message(response)
            return 0
        from iam_evaluator.cli import print_findings
        from iam_evaluator.findings import Finding, Severity
        findings = [Finding(f.code, Severity(f.severity), f.pointer, f.message) for f in response.findings]
        return print_findings({args.file: findings}, {args.file: request.document}, args.format, args.fail_on)
    return run


def _admin_commands():
    from iam_evaluator.findings import PolicyValidationError
    from iam_evaluator.parse import decode_json
    from iam_evaluator.store import StoreError

    from . import convert
    from .api import iam_evaluator_pb2 as pb
    from .client import POLICY_KINDS

    def principal(path: str) -> pb.Principal:
        """The principal in a store entry file. Its inline policies are sent re-encoded, which would lose a key
        given twice without a trace, so the file is decoded strictly: such a file is refused here (E002)."""
        try:
            entry = decode_json(Path(path).read_bytes(), unique_keys=True)
        except PolicyValidationError as exc:
            raise StoreError(path, exc.findings) from None
        return convert.principal(entry)

    return {
        "validate": lambda a: ("ValidatePolicy", pb.ValidatePolicyRequest(
            document=Path(a.file).read_text(encoding="utf-8"), kind=POLICY_KINDS[a.kind])),
        "put-policy": lambda a: ("PutPolicy", pb.PutPolicyRequest(policy=pb.StoredPolicy(
            kind=POLICY_KINDS[a.kind], name=a.name, document=Path(a.file).read_text(encoding="utf-8")),
            expected_version=a.expected_version)),
        "get-policy": lambda a: ("GetPolicy", _policy_name(a)),
        "list-policies": lambda a: ("ListPolicies", pb.ListPoliciesRequest(kind=POLICY_KINDS.get(a.kind, 0))),
        "delete-policy": lambda a: ("DeletePolicy", pb.DeletePolicyRequest(policy=_policy_name(a),
                                                                          expected_version=a.expected_version)),
        "put-principal": lambda a: ("PutPrincipal", pb.PutPrincipalRequest(principal=principal(a.file),
                                                                          expected_version=a.expected_version)),
        "get-principal": lambda a: ("GetPrincipal", pb.PrincipalName(arn=a.arn)),
        "list-principals": lambda a: ("ListPrincipals", pb.ListPrincipalsRequest()),
        "delete-principal": lambda a: ("DeletePrincipal", pb.DeletePrincipalRequest(
            arn=a.arn, expected_version=a.expected_version)),
        "version": lambda a: ("GetStoreVersion", pb.GetStoreVersionRequest()),
        "versions": lambda a: ("ListStoreVersions", pb.ListStoreVersionsRequest()),
        "rollback": lambda a: ("Rollback", pb.RollbackRequest(version=a.version, expected_version=a.expected_version)),
        "context-keys": lambda a: ("GetContextKeys", pb.GetContextKeysRequest(principal=a.principal or "",
                                                                              action=a.action or "")),
        "statement-usage": lambda a: ("GetStatementUsage", pb.GetStatementUsageRequest(
            never_applied=a.never_applied)),
    }


def add_commands(commands) -> None:
    """Add ``serve`` and ``client`` to the ``iam-eval`` parser."""
    serve = commands.add_parser("serve", help="run the gRPC service on a policy store (docs: README, Service)")
    serve.add_argument("--store", metavar="DIR|FILE",
                       help="store directory, store snapshot, or get-account-authorization-details JSON")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration (see server/config.py)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="gRPC address (default 127.0.0.1:50051)")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT", help="Prometheus address (default 127.0.0.1:9464)")
    serve.add_argument("--state-dir", metavar="DIR", help="where store versions are kept")
    serve.add_argument("--reseed", action="store_true",
                       help="serve --store as a new version when it differs from the newest version kept")
    serve.add_argument("--aws-managed-policies", metavar="PATH",
                       help="for an account export: AWS managed policies it attaches (JSON Lines of {arn, document}, "
                            "e.g. ../shared/corpus/aws_managed_policies.jsonl)")
    serve.set_defaults(run=cmd_serve)

    client = commands.add_parser("client", help="ask a running service")
    client.add_argument("--target", default=os.environ.get("IAM_EVAL_TARGET", DEFAULT_TARGET),
                        help=f"server HOST:PORT (default $IAM_EVAL_TARGET or {DEFAULT_TARGET})")
    client.add_argument("--token", default=os.environ.get("IAM_EVAL_TOKEN"),
                        help="bearer token (default $IAM_EVAL_TOKEN); the server's read_token is enough for "
                             "validate, version, versions, context-keys, statement-usage, get-* and list-*")
    client.add_argument("--tls-ca", metavar="PEM", help="connect over TLS, trusting this CA")
    client.add_argument("--tls-cert", metavar="PEM", help="client certificate, for mutual TLS")
    client.add_argument("--tls-key", metavar="PEM", help="client key, for mutual TLS")
    client.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, in seconds")
    client.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for the server to be serving (e.g. just after it starts)")
    calls = client.add_subparsers(dest="call", required=True)

    check = calls.add_parser("check", help="decide one request")
    caller = check.add_mutually_exclusive_group(required=True)
    caller.add_argument("--principal", help="caller ARN")
    caller.add_argument("--anonymous", action="store_true", help="an unauthenticated caller")
    check.add_argument("--action", required=True)
    check.add_argument("--resource", required=True)
    check.add_argument("--resource-account")
    check.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                       help="a context key; repeat a key for a list (aws:SourceVpce=ID: through that VPC "
                            "endpoint, whose policy in the store must allow too)")
    check.add_argument("--context-file", metavar="FILE", help="JSON object of context keys")
    check.add_argument("--session-tag", action="append", default=[], metavar="KEY=VALUE",
                       help="a tag of the assumed-role session given as --principal; repeat for more tags")
    check.add_argument("--explain", action="store_true",
                       help="deciding statements, missing keys with the statements that needed them, near misses")
    check.add_argument("--json", action="store_true")
    check.set_defaults(run=_calling(cmd_client_check))

    batch = calls.add_parser("batch", help="decide a JSON Lines file of requests, in batches")
    batch.add_argument("--input", required=True, metavar="FILE.jsonl",
                       help='one request a line: {"principal", "action", "resource", "context", '
                            '"session_tags"}')
    batch.add_argument("--output", metavar="FILE.jsonl", help="one result a line, in input order (default stdout)")
    batch.add_argument("--batch-size", type=int, default=1000)
    batch.add_argument("--explain", action="store_true")
    batch.set_defaults(run=_calling(cmd_client_batch))

    from iam_evaluator.cli import add_query_arguments
    who = calls.add_parser("who-can", help="every principal of the served store that may do an action on a resource")
    who.add_argument("--action", required=True)
    who.add_argument("--resource", required=True)
    add_query_arguments(who)
    who.set_defaults(run=_calling(cmd_client_who_can))

    what = calls.add_parser("what-can", help="every action of the IAM catalog a principal of the served store may do")
    what.add_argument("--principal", required=True)
    what.add_argument("--resource", help="default: * and each resource pattern the principal's Allow statements name")
    what.add_argument("--service", help="only this service's actions (its prefix)")
    add_query_arguments(what)
    what.set_defaults(run=_calling(cmd_client_what_can))

    kinds = ["managed", "scp", "rcp", "resource", "vpc-endpoint"]
    admin = _admin_commands
    specs = {
        "validate": [("file", {}), ("--kind", {"choices": kinds, "default": "managed"}),
                     ("--fail-on", {"choices": sorted(FAILING), "default": "error",
                                    "help": "exit 1 when a finding of this severity or worse exists (default error; "
                                            "a note never fails)"}),
                     ("--format", {"choices": ["text", "json", "sarif"], "default": "text",
                                   "help": "as iam-eval validate prints: text (default), JSON by file, or SARIF"})],
        "put-policy": [("file", {}), ("--kind", {"choices": kinds, "required": True}), ("--name", {"required": True})],
        "get-policy": [("--kind", {"choices": kinds, "required": True}), ("--name", {"required": True})],
        "list-policies": [("--kind", {"choices": kinds})],
        "delete-policy": [("--kind", {"choices": kinds, "required": True}), ("--name", {"required": True})],
        "put-principal": [("file", {"help": "a principal as in a store directory's principals/*.json"})],
        "get-principal": [("arn", {})],
        "list-principals": [],
        "delete-principal": [("arn", {})],
        "version": [],
        "versions": [],
        "rollback": [("version", {"type": int})],
        "context-keys": [("--principal", {"help": "only the policies that apply to this principal"}),
                         ("--action", {"help": "only the statements whose Action lets this action in"})],
        "statement-usage": [("--never-applied", {"action": "store_true",
                                                 "help": "only the statements that applied to no request"})],
    }
    for name, arguments in specs.items():
        command = calls.add_parser(name, help=f"admin: {name.replace('-', ' ')}")
        for flag, options in arguments:
            command.add_argument(flag, **options)
        if name.startswith(("put-", "delete-", "rollback")):
            command.add_argument("--expected-version", type=int, default=0,
                                 help="apply only if this is the current version")
        command.set_defaults(run=_calling(_admin(lambda a, name=name: admin()[name](a))))
