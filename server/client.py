"""A Python client for the service: one check, batches of any size, and the admin API.

    with Client("127.0.0.1:50051") as client:
        client.check("arn:aws:iam::111122223333:role/Builder", "imagebuilder:GetImage", "arn:…").result.decision

Large inputs are cut into batches of ``batch_size`` and sent as columns (the
fastest form); results come back in input order.
"""
from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

from .api import iam_evaluator_pb2 as pb
from .api import iam_evaluator_pb2_grpc as pb_grpc

POLICY_KINDS = {"managed": pb.MANAGED, "scp": pb.SCP, "rcp": pb.RCP, "resource": pb.RESOURCE,
                "vpc-endpoint": pb.VPC_ENDPOINT}


def _text(item: Any) -> str:
    """A JSON context value as IAM reads it: booleans and numbers become their text."""
    if isinstance(item, str):
        return item
    return ("true" if item else "false") if isinstance(item, bool) else json.dumps(item)


def context_values(value: Any) -> pb.ContextValues:
    """A JSON context value (a string, a bool or number, or a list of them) as the message."""
    if isinstance(value, (list, tuple)):
        return pb.ContextValues(values=[_text(v) for v in value], is_list=True)
    return pb.ContextValues(values=[_text(value)])


def checked_session_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """An assumed-role session's tags as the message holds them; raises ``ValueError`` unless they map
    tag keys to strings (a tag's value is text, never a number or a list)."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValueError(f"session_tags must be an object of tag keys, not {type(tags).__name__}")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"session tag {key!r}: tag keys and values are strings, not {value!r}")
    return dict(tags)


def request_columns(requests: list[Mapping[str, Any]]) -> pb.RequestColumns:
    """Requests as JSON objects ({"principal", "action", "resource", "context", "resource_account",
    "session_tags"}) turned into columns; a context key or session tag only some requests have lists
    their positions."""
    columns = pb.RequestColumns(principals=[r.get("principal", "") for r in requests],
                                actions=[r.get("action", "") for r in requests],
                                resources=[r.get("resource", "") for r in requests])
    if any(r.get("resource_account") for r in requests):
        columns.resource_accounts.extend(r.get("resource_account") or "" for r in requests)
    by_key: dict[str, tuple[list[int], list[Any]]] = {}
    for i, request in enumerate(requests):
        for key, value in (request.get("context") or {}).items():
            if value is not None:
                rows, values = by_key.setdefault(key, ([], []))
                rows.append(i)
                values.append(value)
    for key, (rows, values) in by_key.items():
        column = columns.context.add(key=key)
        if len(rows) < len(requests):
            column.rows.extend(rows)
        if any(isinstance(value, (list, tuple)) for value in values):
            column.is_list = True
            lists = [value if isinstance(value, (list, tuple)) else [value] for value in values]
            column.lengths.extend(map(len, lists))
            column.values.extend(_text(item) for items in lists for item in items)
        else:
            column.values.extend(map(_text, values))
    by_tag: dict[str, tuple[list[int], list[str]]] = {}
    for i, request in enumerate(requests):
        for key, value in checked_session_tags(request.get("session_tags")).items():
            rows, values = by_tag.setdefault(key, ([], []))
            rows.append(i)
            values.append(value)
    for key, (rows, values) in by_tag.items():
        tag_column = columns.session_tags.add(key=key, values=values)
        if len(rows) < len(requests):
            tag_column.rows.extend(rows)
    return columns


class Client:
    """A connection to one server. ``token`` is sent as a bearer token on every call; give
    ``tls_ca`` (and for mutual TLS ``tls_cert`` and ``tls_key``) to connect over TLS."""

    def __init__(self, target: str, *, token: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, timeout: float = 30.0,
                 max_message_bytes: int = 64 * 1024 * 1024) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls_ca:
            read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
            credentials = grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))
            self.channel = grpc.secure_channel(target, credentials, options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.authorizer = pb_grpc.AuthorizerStub(self.channel)
        self.admin = pb_grpc.PolicyAdminStub(self.channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_until_serving(self, timeout: float) -> None:
        """Block until the server's health says SERVING; raises ``TimeoutError`` after ``timeout`` seconds."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        status = "not reachable"
        while time.monotonic() < deadline:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=max(0.1, deadline - time.monotonic()),
                                     wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                status = exc.code().name
            time.sleep(0.1)
        raise TimeoutError(f"the server was not serving within {timeout:g} s (last status: {status})")

    def call(self, method, request):
        """Call any stub method with this client's credential and deadline."""
        return method(request, timeout=self.timeout, metadata=self._metadata)

    def check(self, principal: str, action: str, resource: str, context: Mapping[str, Any] | None = None,
              resource_account: str | None = None, explain: bool = False,
              session_tags: Mapping[str, str] | None = None) -> pb.CheckResponse:
        """Decide one request. ``principal`` is an ARN, or ``"anonymous"`` for an unauthenticated caller;
        ``session_tags`` are the tags of an assumed-role session principal."""
        request = pb.CheckRequest(principal=principal, action=action, resource=resource,
                                  context={k: context_values(v) for k, v in (context or {}).items()},
                                  resource_account=resource_account or "", explain=explain,
                                  session_tags=checked_session_tags(session_tags))
        return self.call(self.authorizer.Check, request)

    def check_batch(self, requests: Iterable[Mapping[str, Any]], batch_size: int = 1000,
                    explain: bool = False) -> Iterator[tuple[pb.CheckResult, int]]:
        """Decide any number of requests (JSON objects), ``batch_size`` per call; yields each result
        with the store version that decided it, in input order."""
        iterator = iter(requests)
        while chunk := list(itertools.islice(iterator, batch_size)):
            response = self.call(self.authorizer.CheckBatch,
                                 pb.CheckBatchRequest(columns=request_columns(chunk), explain=explain))
            for result in response.results:
                yield result, response.store_version

    def who_can(self, action: str, resource: str, context: Mapping[str, Any] | None = None,
                resource_account: str | None = None) -> pb.WhoCanResponse:
        """Every principal of the served store that may do ``action`` on ``resource``, explained, and those
        that may assume an allowed role (one hop)."""
        request = pb.WhoCanRequest(action=action, resource=resource,
                                   context={k: context_values(v) for k, v in (context or {}).items()},
                                   resource_account=resource_account or "")
        return self.call(self.authorizer.WhoCan, request)

    def what_can(self, principal: str, resource: str | None = None, service: str | None = None,
                 context: Mapping[str, Any] | None = None, resource_account: str | None = None) -> pb.WhatCanResponse:
        """Every catalog action ``principal`` may perform on ``resource`` (None: on "*" and on each resource
        its policies name), grouped by service and access level."""
        request = pb.WhatCanRequest(principal=principal, resource=resource or "", service=service or "",
                                    context={k: context_values(v) for k, v in (context or {}).items()},
                                    resource_account=resource_account or "")
        return self.call(self.authorizer.WhatCan, request)
