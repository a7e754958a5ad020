"""The shared workloads that issue 14's targets are stated on, posed to this engine.

``../shared/bench/workload.py`` (read where it lies, never copied here) yields policy documents and
``Request(action, resource, context)`` tuples. Its README poses them as one role in account 123456789012
with every policy an identity policy and every resource owned by that account; this module turns them
into a ``PolicySet``, ``Request`` objects, the columns of ``evaluate_columns`` and the Arrow layout of
``evaluate_arrow``.
"""
from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from iam_evaluator import PolicySet, Request, parse_policy

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = REPO.parent / "shared" / "bench" / "workload.py"
ACCOUNT = "123456789012"
PRINCIPAL = f"arn:aws:iam::{ACCOUNT}:role/ImageBuilderRole"


@cache
def workload() -> ModuleType:
    """The shared workload module; a checkout without ``../shared`` fails here rather than skipping."""
    if not WORKLOAD.is_file():
        raise FileNotFoundError(f"the shared benchmark workload is missing: {WORKLOAD}")
    spec = importlib.util.spec_from_file_location("shared_bench_workload", WORKLOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def policy_set(documents: dict[str, dict]) -> PolicySet:
    """Every document as an identity policy of the one role, named as the workload names it."""
    return PolicySet(identity=tuple(parse_policy(document, name=name) for name, document in documents.items()))


def as_request(shared_request) -> Request:
    """One shared request as a library user poses it: the role asks about a resource its account owns."""
    action, resource, context = shared_request
    return Request.create(PRINCIPAL, action, resource, context, ACCOUNT)


class RequestColumns(NamedTuple):
    """The first five arguments of ``evaluate_columns``, in its order; contexts as one column per key."""

    principals: list[str]
    actions: list[str]
    resources: list[str]
    contexts: dict[str, list[Any]]
    resource_accounts: list[str]


def _text(value: str | bool | int) -> str:
    """A single context value as IAM reads it (as ``Request.create`` does): JSON booleans and numbers
    are compared as their JSON text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def request_columns(shared_requests) -> RequestColumns:
    """The requests as columns; context keys lower-cased (IAM ignores their case, and the workload spells
    ``ssm:ResourceTag/CreatedBy`` two ways), a list value as a tuple of strings, None where a request
    lacks the key."""
    n = len(shared_requests)
    contexts: dict[str, list[Any]] = {}
    for row, (_, _, context) in enumerate(shared_requests):
        for key, value in context.items():
            column = contexts.setdefault(key.lower(), [None] * n)
            column[row] = tuple(map(_text, value)) if isinstance(value, (list, tuple)) else _text(value)
    return RequestColumns([PRINCIPAL] * n, [r.action for r in shared_requests], [r.resource for r in shared_requests],
                          contexts, [ACCOUNT] * n)


def record_batch(columns: RequestColumns):
    """The columns in the layout ``evaluate_arrow`` reads: the context a struct of one string or
    list-of-strings field per key."""
    import pyarrow as pa

    fields = []
    for key, values in sorted(columns.contexts.items()):
        lists = {isinstance(value, tuple) for value in values if value is not None}
        if len(lists) > 1:
            raise ValueError(f"context key {key!r} is a list in some requests and one value in others: "
                             "an Arrow field holds one type")
        fields.append(pa.array(values, pa.list_(pa.string()) if True in lists else pa.string()))
    context = pa.StructArray.from_arrays(fields, names=sorted(columns.contexts))
    return pa.record_batch({"principal": pa.array(columns.principals, pa.string()),
                            "action": pa.array(columns.actions, pa.string()),
                            "resource": pa.array(columns.resources, pa.string()),
                            "resource_account": pa.array(columns.resource_accounts, pa.string()),
                            "context": context})
