"""Who can: every principal of a store allowed one request, with its statements, and one hop of sts:AssumeRole.

The expected answers are worked out by hand from the store's policies (``access_store``'s docstring
says who is what); the reference evaluator is asked only to confirm why a principal is left out, and,
in one test, that the allowed set is exactly the principals it allows. Hostile inputs are refused
with ``RequestError`` (exit 2 on the command line); ``test_hostile_inputs_pass_under_the_debug_allocator``
runs them again under ``PYTHONMALLOC=debug``, with what-can's and the service's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from iam_evaluator import DecisionKind, Request, RequestError
from iam_evaluator.access_queries import who_can
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.service_rules import ANONYMOUS
from iam_evaluator.store import reference_decision

from .access_store import (
    ADMIN,
    ADMIN_POLICY,
    AUDITOR,
    BREAKGLASS,
    CONTRACTOR,
    DEV,
    EVERY_PRINCIPAL,
    INTERN,
    LEGACY,
    ONCALL,
    PARTNER,
    PAYROLL,
    PAYROLL_OBJECT,
    PUBLIC_OBJECT,
    READER,
    SANDBOX,
    STRANGER,
    TIMED,
    A,
    access_store,
    snapshot_file,
)
from .conftest import REPO, run_cli


@pytest.fixture(scope="module")
def store():
    return access_store()


@pytest.fixture(scope="module")
def compiled(store):
    return CompiledStore(store)


@pytest.fixture(scope="module")
def payroll(compiled):
    return who_can(compiled, "s3:GetObject", PAYROLL_OBJECT, resource_account=A)


def explained(answer) -> dict[str, tuple[str, list[tuple[str, int]]]]:
    """Each allowed principal: the layer that decided, and the statements (policy, index)."""
    return {a.principal: (a.decision.decided_by, [(s.policy, s.index) for s in a.decision.statements])
            for a in answer.principals}


def chains(answer) -> dict[tuple[str, str], list[tuple[str, int]]]:
    return {(c.principal, c.role): [(s.policy, s.index) for s in c.assume_role.statements]
            for c in answer.through_roles}


# ---------------------------------------------------------------- answers


def test_every_allowed_principal_with_the_statements_that_allow_it(payroll):
    assert explained(payroll) == {
        ADMIN: ("identity", [(ADMIN_POLICY, 0)]),
        AUDITOR: ("resource", [(PAYROLL, 1)]),
        BREAKGLASS: ("identity", [("role/breakglass:inline/S3", 0)]),
        LEGACY: ("identity", [("role/legacy:inline/ReadPayroll", 0)]),
        READER: ("identity", [("role/payroll-reader:inline/ReadPayroll", 0)]),
    }
    assert [a.principal for a in payroll.principals] == sorted(explained(payroll)), "listed by ARN"
    assert all(a.decision.decision is DecisionKind.ALLOW for a in payroll.principals)
    assert (payroll.action, payroll.resource, payroll.failures) == ("s3:GetObject", PAYROLL_OBJECT, ())


def test_a_principal_allowed_only_by_the_resource_policy(payroll):
    auditor = next(a for a in payroll.principals if a.principal == AUDITOR)
    assert auditor.decision.decided_by == "resource"
    assert [(s.policy, s.sid) for s in auditor.decision.statements] == [(PAYROLL, "AuditorRead")]


@pytest.mark.parametrize(("principal", "layer"), [
    pytest.param(SANDBOX, "scp[0]", id="blocked by its OU's SCP"),
    pytest.param(INTERN, "permissions_boundary", id="blocked by its permissions boundary"),
    pytest.param(PARTNER, "resource", id="cross-account, not named by the bucket policy"),
    pytest.param(TIMED, "identity", id="its condition's key is missing"),
])
def test_a_blocked_principal_is_left_out(store, payroll, principal, layer):
    assert principal not in explained(payroll)
    why = reference_decision(store, Request.create(principal, "s3:GetObject", PAYROLL_OBJECT, resource_account=A))
    assert (why.allowed, why.decided_by) == (False, layer)


def test_roles_reached_through_assume_role_one_hop(payroll):
    assert chains(payroll) == {
        # named by payroll-reader's trust policy, and its identity policy allows the call
        (DEV, READER): [("user/dev:inline/AssumeReader", 0), (READER, 0)],
        # breakglass's trust policy names the account: the identity policy decides
        (ONCALL, BREAKGLASS): [("user/oncall:inline/AssumeAny", 0), (BREAKGLASS, 0)],
        # legacy has no trust policy in the store: the generic rules decide, as `check` does
        (ONCALL, LEGACY): [("user/oncall:inline/AssumeAny", 0)],
    }
    assert [(c.principal, c.role) for c in payroll.through_roles] == sorted(chains(payroll))
    # contractor is named by the trust policy, but its boundary does not allow sts:AssumeRole; stranger is
    # allowed sts:AssumeRole on anything, but no trust policy names it or its account; admin may assume
    # breakglass, but is allowed itself
    assert not {CONTRACTOR, STRANGER, ADMIN} & {c.principal for c in payroll.through_roles}


def test_anonymous_is_listed_where_the_public_may_read(compiled):
    answer = who_can(compiled, "s3:GetObject", PUBLIC_OBJECT, resource_account=A)
    public = ("arn:aws:s3:::public-site", 0)
    assert explained(answer) == {
        ANONYMOUS: ("resource", [public]),
        ADMIN: ("identity", [(ADMIN_POLICY, 0), public]),
        BREAKGLASS: ("identity", [("role/breakglass:inline/S3", 0), public]),
        INTERN: ("resource", [("user/intern:inline/S3", 0), public]),  # "*" grants a user on its own
        PARTNER: ("identity", [("role/partner:inline/Read", 0), public]),  # cross-account: both allow
        **{p: ("resource", [public]) for p in (AUDITOR, CONTRACTOR, DEV, LEGACY, ONCALL, READER, TIMED)},
    }
    assert answer.through_roles == ()  # every principal that might assume a role is allowed itself


def test_the_context_applies_to_every_principal(compiled):
    insecure = who_can(compiled, "s3:GetObject", PAYROLL_OBJECT, {"aws:SecureTransport": "false"}, A)
    assert (insecure.principals, insecure.through_roles) == ((), ())
    before_2030 = who_can(compiled, "s3:GetObject", PAYROLL_OBJECT, {"aws:CurrentTime": "2026-12-01T00:00:00Z"}, A)
    assert set(explained(before_2030)) == {*explained(who_can(compiled, "s3:GetObject", PAYROLL_OBJECT,
                                                              resource_account=A)), TIMED}


def test_a_principal_whose_condition_cannot_read_the_context_is_a_failure(compiled):
    answer = who_can(compiled, "s3:GetObject", PAYROLL_OBJECT, {"aws:CurrentTime": "not a date"}, A)
    assert [(f.principal, f.action, f.resource) for f in answer.failures] == [(TIMED, "s3:GetObject",
                                                                              PAYROLL_OBJECT)]
    assert "aws:CurrentTime" in answer.failures[0].error
    assert TIMED not in explained(answer)


@pytest.mark.parametrize(("action", "resource"), [
    ("s3:GetObject", PAYROLL_OBJECT), ("s3:ListBucket", PAYROLL), ("s3:GetObject", PUBLIC_OBJECT),
    ("sts:AssumeRole", READER), ("sts:AssumeRole", BREAKGLASS), ("iam:CreateUser", "*"),
    ("sts:GetCallerIdentity", "*"),
])
def test_the_allowed_principals_are_those_the_reference_allows(store, compiled, action, resource):
    answer = who_can(compiled, action, resource)
    allowed = {p for p in (*EVERY_PRINCIPAL, ANONYMOUS)
               if reference_decision(store, Request.create(p, action, resource)).allowed}
    assert set(explained(answer)) == allowed
    for entry in answer.principals:
        want = reference_decision(store, Request.create(entry.principal, action, resource))
        assert (entry.decision.decided_by, entry.decision.statements) == (want.decided_by, want.statements)


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return snapshot_file(tmp_path_factory.mktemp("who-can"))


def test_cli_prints_principals_statements_and_chains(capsys, snapshot):
    code, out, err = run_cli(capsys, "who-can", "--store", snapshot, "--action", "s3:GetObject", "--resource",
                         PAYROLL_OBJECT, "--resource-account", A)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"5 principal(s) may s3:GetObject on {PAYROLL_OBJECT}"
    assert f"  {AUDITOR}  (decided by resource)" in lines
    assert lines[lines.index(f"  {AUDITOR}  (decided by resource)") + 1] == \
        f"    statement: Allow {PAYROLL}#1 (AuditorRead)"
    assert "3 more through sts:AssumeRole into an allowed role (1 hop followed; longer chains are not):" in lines
    assert f"  {DEV} -> {READER}" in lines


def test_cli_json_and_context(capsys, snapshot):
    code, out, _ = run_cli(capsys, "who-can", "--store", snapshot, "--action", "s3:GetObject", "--resource",
                       PAYROLL_OBJECT, "--resource-account", A, "--context", "aws:CurrentTime=2026-12-01T00:00:00Z",
                       "--format", "json")
    answer = json.loads(out)
    assert code == 0 and answer["hops"] == 1
    assert [p["principal"] for p in answer["principals"]] == sorted([ADMIN, AUDITOR, BREAKGLASS, LEGACY, READER, TIMED])
    timed = next(p for p in answer["principals"] if p["principal"] == TIMED)
    assert timed["decision"]["decision"] == "Allow"
    assert [(s["policy"], s["index"]) for s in timed["decision"]["statements"]] == [("role/timed:inline/Until2030", 0)]
    assert [(c["principal"], c["role"]) for c in answer["through_roles"]] == sorted(chains(
        who_can(CompiledStore(access_store()), "s3:GetObject", PAYROLL_OBJECT, resource_account=A)))
    assert answer["failures"] == []


# ---------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize(("field", "value", "message"), [
    ("action", 5, "request action must be a string"),
    ("action", None, "request action must be a string"),
    ("action", b"s3:GetObject", "request action must be a string"),
    ("action", "s3:Get\ud800Object", "lone surrogate"),
    ("action", "x" * 1_000_000, "is not service:Action"),
    ("action", "s3 GetObject", "is not service:Action"),
    ("resource", ["arn:aws:s3:::payroll"], "request resource must be a string"),
    ("resource", "arn:aws:s3:::payroll/\udcff", "lone surrogate"),
    ("resource", "not-an-arn", "neither an ARN"),
    ("resource", "", "neither an ARN"),
    ("context", ["aws:SecureTransport"], "context must be an object"),
    ("context", {"aws:SecureTransport": object()}, "values are strings, numbers, booleans"),
    ("context", {5: "x"}, "context key must be a string"),
    ("context", {"aws:Secure\ud800": "x"}, "lone surrogate"),
    ("resource_account", 111111111111, "resource account must be a string"),
])
def test_hostile_query_is_refused(compiled, field, value, message):
    query = {"action": "s3:GetObject", "resource": PAYROLL_OBJECT, "context": None, "resource_account": None}
    with pytest.raises(RequestError, match=message):
        who_can(compiled, **{**query, field: value})


def test_hostile_huge_strings_are_answered(store, compiled):
    action = "x" * 500_000 + ":" + "y" * 500_000  # a well-formed action no catalog knows: only "*" allows it
    assert set(explained(who_can(compiled, action, PAYROLL_OBJECT, resource_account=A))) == {ADMIN}
    resource = "arn:aws:s3:::payroll/" + "\U0001F600" * 250_000
    answer = who_can(compiled, "s3:GetObject", resource, {"team": "é" * 1_000_000}, A)
    assert set(explained(answer)) == {ADMIN, AUDITOR, BREAKGLASS, LEGACY, READER}
    assert answer.resource == resource


def test_hostile_str_subclasses_are_read_as_their_characters(compiled, payroll):
    class Lying(str):
        def __str__(self):
            return "iam:CreateUser"

        def lower(self):
            return "iam:createuser"

    answer = who_can(compiled, Lying("s3:GetObject"), Lying(PAYROLL_OBJECT), resource_account=Lying(A))
    assert (explained(answer), chains(answer)) == (explained(payroll), chains(payroll))


@pytest.mark.parametrize(("argv", "message"), [
    (["--action", "s3:GetObject", "--resource", "not-an-arn"], "neither an ARN"),
    (["--action", "GetObject", "--resource", PAYROLL_OBJECT], "is not service:Action"),
    (["--action", "s3:GetObject", "--resource", "arn:aws:s3:::payroll/\udcff"], "lone surrogate"),
    (["--action", "s3:GetObject", "--resource", PAYROLL_OBJECT, "--context", "nokey"], "write key=value"),
])
def test_hostile_cli_input_exits_2(capsys, snapshot, argv, message):
    code, out, err = run_cli(capsys, "who-can", "--store", snapshot, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_hostile_cli_store_that_cannot_be_read_exits_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "who-can", "--store", str(tmp_path / "missing.json"), "--action", "s3:GetObject",
                       "--resource", "*")
    assert code == 2 and err.startswith("error: cannot read the store")
    bad = tmp_path / "bad.json"
    bad.write_text('{"principals": [{"arn": 5}]}')
    code, _, err = run_cli(capsys, "who-can", "--store", str(bad), "--action", "s3:GetObject", "--resource", "*")
    assert code == 2 and "S001" in err


def test_hostile_inputs_pass_under_the_debug_allocator_subprocess():
    """The who-can and what-can paths hand request strings to the engine, which reads them without the GIL:
    under PYTHONMALLOC=debug (freed memory overwritten) a string read after it was freed gives a wrong answer."""
    env = {**os.environ, "PYTHONMALLOC": "debug", "PYTHONFAULTHANDLER": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_who_can.py", "tests/test_what_can.py",
         "tests/test_access_queries_service.py", "-k", "hostile and not subprocess", "-q", "-p", "no:cacheprovider"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert "Fatal Python error" not in output and "Segmentation fault" not in output, output[-5000:]
    assert result.returncode == 0, output[-5000:]
    assert " passed" in output and " deselected" in output, output[-2000:]
