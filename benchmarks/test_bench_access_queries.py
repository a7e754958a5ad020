"""Issue 15: who can and what can on the organisation store, beside the reference evaluator asked the same.

The store is ``../shared/corpus/make_store.py --copies 10`` (1,500 principals in 30 accounts; a trust
policy per role; 500 more resource policies), generated once into IAM_EVAL_STORE_CACHE. None of its
trust policies names a principal of the store (``ci-runner``, which 120 roles trust, is outside it), so
the chain scenario runs on a copy where those 120 roles trust their own account instead: every principal
of that account the identity policies let call sts:AssumeRole (admins, power users) reaches them.

Each scenario is checked first, then timed: the compiled query (``access_queries``, on a warm
``CompiledStore``) for ROUNDS rounds, and the reference evaluator (``store.reference_decision``, one
request at a time) deciding the same rows, on every SUBSET-th row only: its median is extrapolated to
all the rows (``extra_info["reference_extrapolated_s"]``, and the closing table). The check: on that
subset, the rows the reference allows are exactly the rows the query reports allowed.

Targets (issue 15): one who-can query < 50 ms, one what-can query over the catalog < 200 ms. The machine
may be shared, so CPU time (of this process, one thread) is reported beside wall-clock time; both are
medians. Nothing is asserted about time.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_workload import CACHE, MAKE_STORE

from iam_evaluator import Request
from iam_evaluator.access_queries import (  # the private helpers give the rows a query decides
    ASSUME_ROLE,
    _catalog_actions,
    _named_callers,
    _named_resources,
    _trusted_candidates,
    what_can,
    who_can,
)
from iam_evaluator.catalog import Catalog
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.service_rules import ANONYMOUS
from iam_evaluator.store import PolicyStore, reference_decision

ROUNDS = int(os.environ.get("IAM_EVAL_ACCESS_ROUNDS", "30"))
WHO_SUBSET, WHAT_SUBSET = 10, 20
"""The reference decides every 10th row of a who-can query and every 20th of a what-can query."""

REGION = {"aws:RequestedRegion": "us-east-1"}  # the store's SCP denies every other region (but for IAM, STS, …)
ADMIN = ("arn:aws:iam::842422688585:role/aws-reserved/sso.amazonaws.com/"
         "AWSReservedSSO_AdministratorAccess_ed8198a42c76f219")
DEPLOY = "arn:aws:iam::842422688585:role/github-actions-deploy"

WHO_QUERIES = {
    # the bucket policy lets the whole organisation read: every principal is allowed, and explained
    "every principal allowed": ("s3:GetObject", "arn:aws:s3:::assets-sync/reports/2026.csv", REGION),
    "few allowed": ("iam:PassRole", "arn:aws:iam::842422688585:role/x", REGION),
    "none allowed (SCP)": ("s3:GetObject", "arn:aws:s3:::assets-sync/reports/2026.csv", {}),
}
CHAIN_QUERY = ("iam:GetRole", "*", REGION)
"""Allowed to admins and the deploy roles (IAMReadOnlyAccess), not to power users (PowerUserAccess: NotAction
iam:*), who may sts:AssumeRole the deploy roles of their account once those trust the account."""
WHAT_QUERIES = {
    "whole catalog allowed, on *": (ADMIN, "*", REGION),
    "one resource": (DEPLOY, "arn:aws:dynamodb:us-east-1:842422688585:table/orders", REGION),
    "* and each resource its policies name": (DEPLOY, None, REGION),
}

FIGURES: dict[str, dict] = {}
"""Per scenario: the compiled query's medians and the reference's extrapolation, for the closing table."""


def _generated(name: str, arguments: list[str]) -> Path:
    generator = hashlib.sha256(MAKE_STORE.read_bytes()).hexdigest()[:12]
    path = CACHE / f"{name}-{generator}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(MAKE_STORE), *arguments, "--out", f"{path}.tmp"], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(f"{path}.tmp", path)
    return path


@pytest.fixture(scope="module")
def store() -> PolicyStore:
    return PolicyStore.from_json(_generated("copies-10", ["--copies", "10"]).read_bytes())


@pytest.fixture(scope="module")
def compiled(store) -> CompiledStore:
    return CompiledStore(store)


@pytest.fixture(scope="module")
def chain_store(store) -> PolicyStore:
    """The store with each trust policy that names ci-runner naming the role's own account instead."""
    snapshot = json.loads(store.to_json())
    for entry in snapshot["resource_policies"]:
        if ":role/" in entry["resource"] and "role/ci-runner" in json.dumps(entry["document"]):
            account = entry["resource"].split(":")[4]
            entry["document"] = {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": account}, "Action": "sts:AssumeRole"}]}
    return PolicyStore.from_json(json.dumps(snapshot))


class Clock:
    """Wall-clock and CPU seconds of each call."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, function, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*args, **kwargs)
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)
        return result

    def medians(self, scale: float = 1.0) -> dict[str, float]:
        return {"wall_ms": 1000 * scale * statistics.median(self.wall),
                "cpu_ms": 1000 * scale * statistics.median(self.cpu)}


def _who_rows(compiled: CompiledStore, answer) -> list[tuple[str, str, str]]:
    """(principal, action, resource) of every row the who-can query decides: each principal and anonymous,
    then the sts:AssumeRole pairs its trust-policy index leaves for the engine."""
    store = compiled.store
    rows = [(p, answer.action, answer.resource) for p in (*store.principals, ANONYMOUS)]
    allowed = {a.principal for a in answer.principals}
    named = _named_callers(store)
    for role in sorted(allowed & set(store.principals)):
        if store.principals[role].kind == "role":
            rows += [(caller, ASSUME_ROLE, role)
                     for caller in sorted(_trusted_candidates(store, store.principals[role], named) - allowed)]
    return rows


def _what_rows(compiled: CompiledStore, principal: str, resource: str | None, context) -> list[tuple[str, str, str]]:
    every = _catalog_actions(Catalog.shipped())
    asked = [(resource, every.actions)] if resource is not None else [
        ("*", every.actions),
        *_named_resources(compiled.store, Request.create(principal, "sts:GetCallerIdentity", "*", context),
                          every.actions, every)]
    return [(principal, action, name) for name, actions in asked for action in actions]


def _reference(benchmark, store: PolicyStore, rows, context, every: int, allowed_rows: set, figure: str) -> None:
    """The reference deciding every ``every``-th row, checked against the query's answer, then timed."""
    subset = [Request.create(*row, context=context) for row in rows[::every]]
    wrong = [(r.principal, r.action, r.resource) for r in subset
             if reference_decision(store, r).allowed != ((r.principal, r.action, r.resource) in allowed_rows)]
    benchmark.extra_info.update(rows=len(rows), reference_rows=len(subset), differ=wrong[:10], checks=len(subset))
    assert not wrong, f"{len(wrong)} rows where the query and the reference differ: {wrong[:10]}"
    clock = Clock()
    benchmark.pedantic(clock, args=(lambda: [reference_decision(store, r) for r in subset],), rounds=3)
    extrapolated = clock.medians(len(rows) / len(subset))
    benchmark.extra_info.update(reference_extrapolated_s=extrapolated["wall_ms"] / 1000)
    FIGURES.setdefault(figure, {})["reference"] = extrapolated


def _timed_query(benchmark, figure: str, rows: int, query, *args, **kwargs):
    clock = Clock()
    answer = benchmark.pedantic(clock, args=(query, *args), kwargs=kwargs, rounds=ROUNDS, warmup_rounds=2)
    benchmark.extra_info.update(checks=rows, **clock.medians())
    FIGURES.setdefault(figure, {})["compiled"] = clock.medians()
    return answer


# --- who can -------------------------------------------------------------------------------------------

def _who_allowed(answer) -> set[tuple[str, str, str]]:
    return {(a.principal, answer.action, answer.resource) for a in answer.principals} | \
        {(c.principal, ASSUME_ROLE, c.role) for c in answer.through_roles}


@pytest.mark.parametrize("name", list(WHO_QUERIES))
def test_who_can(benchmark, compiled, name):
    action, resource, context = WHO_QUERIES[name]
    benchmark.group = f"who-can: {name}"
    answer = who_can(compiled, action, resource, context)
    rows = _who_rows(compiled, answer)
    _timed_query(benchmark, f"who-can: {name}", len(rows), who_can, compiled, action, resource, context)
    benchmark.extra_info.update(allowed=len(answer.principals), chains=len(answer.through_roles))
    FIGURES[f"who-can: {name}"].update(rows=len(rows), allowed=len(answer.principals),
                                       chains=len(answer.through_roles))


@pytest.mark.parametrize("name", list(WHO_QUERIES))
def test_who_can_reference(benchmark, store, compiled, name):
    action, resource, context = WHO_QUERIES[name]
    benchmark.group = f"who-can: {name}"
    answer = who_can(compiled, action, resource, context)
    _reference(benchmark, store, _who_rows(compiled, answer), context, WHO_SUBSET, _who_allowed(answer),
               f"who-can: {name}")


def test_who_can_chains(benchmark, chain_store):
    compiled = CompiledStore(chain_store)
    benchmark.group = "who-can: roles reached by sts:AssumeRole"
    answer = who_can(compiled, *CHAIN_QUERY)
    rows = _who_rows(compiled, answer)
    assert answer.through_roles, "the scenario has chains"
    figure = "who-can: roles reached by sts:AssumeRole"
    _timed_query(benchmark, figure, len(rows), who_can, compiled, *CHAIN_QUERY)
    FIGURES[figure].update(rows=len(rows), allowed=len(answer.principals), chains=len(answer.through_roles))


def test_who_can_chains_reference(benchmark, chain_store):
    compiled = CompiledStore(chain_store)
    benchmark.group = "who-can: roles reached by sts:AssumeRole"
    answer = who_can(compiled, *CHAIN_QUERY)
    _reference(benchmark, chain_store, _who_rows(compiled, answer), CHAIN_QUERY[2], WHO_SUBSET,
               _who_allowed(answer), "who-can: roles reached by sts:AssumeRole")


# --- what can ------------------------------------------------------------------------------------------

def _what_allowed(answer) -> set[tuple[str, str, str]]:
    return {(answer.principal, action, access.resource) for access in answer.resources for group in access.groups
            for action in group.actions}


@pytest.mark.parametrize("name", list(WHAT_QUERIES))
def test_what_can(benchmark, compiled, name):
    principal, resource, context = WHAT_QUERIES[name]
    benchmark.group = f"what-can: {name}"
    rows = _what_rows(compiled, principal, resource, context)
    answer = _timed_query(benchmark, f"what-can: {name}", len(rows), what_can, compiled, principal, resource,
                          context=context)
    allowed = len(_what_allowed(answer))
    benchmark.extra_info.update(allowed=allowed, resources=len(answer.resources))
    FIGURES[f"what-can: {name}"].update(rows=len(rows), allowed=allowed)


@pytest.mark.parametrize("name", list(WHAT_QUERIES))
def test_what_can_reference(benchmark, store, compiled, name):
    principal, resource, context = WHAT_QUERIES[name]
    benchmark.group = f"what-can: {name}"
    answer = what_can(compiled, principal, resource, context=context)
    _reference(benchmark, store, _what_rows(compiled, principal, resource, context), context, WHAT_SUBSET,
               _what_allowed(answer), f"what-can: {name}")


# --- the closing table ---------------------------------------------------------------------------------

def _table() -> list[str]:
    header = ("query", "rows", "allowed", "compiled wall ms", "compiled CPU ms", "reference s (extrapolated)",
              "ratio")
    lines = []
    for figure, values in sorted(FIGURES.items()):
        compiled, reference = values.get("compiled"), values.get("reference")
        lines.append((figure, f"{values.get('rows', '-')}", f"{values.get('allowed', '-')}"
                      + (f" +{values['chains']} chains" if values.get("chains") else ""),
                      f"{compiled['wall_ms']:.1f}" if compiled else "-",
                      f"{compiled['cpu_ms']:.1f}" if compiled else "-",
                      f"{reference['wall_ms'] / 1000:.2f}" if reference else "-",
                      f"{reference['wall_ms'] / compiled['wall_ms']:,.0f}x" if compiled and reference else "-"))
    widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header))]
    return [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in (header, *lines)]


class _Report:
    def pytest_terminal_summary(self, terminalreporter):
        if FIGURES:
            terminalreporter.write_sep("-", "issue 15: who can / what can on make_store.py --copies 10 (medians)")
            for line in _table():
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def closing_table(request):
    if not request.config.pluginmanager.has_plugin("access-queries-bench-table"):
        request.config.pluginmanager.register(_Report(), "access-queries-bench-table")
