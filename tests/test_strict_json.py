"""A JSON object with a key given twice is refused wherever a policy, a store entry or a snapshot is read.

``json.loads`` keeps the last of two equal keys, so ``{"Effect": "Deny", …, "Effect": "Allow"}`` would be read
as an Allow: every reader goes through the parser's decoder, which finds the duplicate (E002, located by its
JSON pointer; the store's checker reports a duplicate in an entry's own keys as S001). The documents here are
written as text by hand, since ``json.dumps`` cannot write a key twice.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from iam_evaluator.account_export import load_account_export
from iam_evaluator.cli import main
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client
from iam_evaluator.server.live_store import load_store
from iam_evaluator.server.store_versions import VersionedStore
from iam_evaluator.store import PolicyStore, StoreError

from .service_helpers import (
    ACCOUNT,
    EXAMPLE_STORE,
    FULL_ACCESS,
    ROLE,
    RPC_TIMEOUT,
    copy_store,
    rpc_error,
    running_service,
)

ADMIN_TOKEN = "admin-secret-for-tests"
DENY_THEN_ALLOW = ('{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:*","Resource":"*",'
                   '"Effect":"Allow"}]}')
"""Read leniently, this is an Allow of every S3 action; it must be refused instead."""
NEW_ROLE = f"arn:aws:iam::{ACCOUNT}:role/New"
PAYROLL = "arn:aws:s3:::payroll"
US_EAST = {"aws:RequestedRegion": "us-east-1"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("strict")
    with running_service(copy_store(root), root / "state", admin_token=ADMIN_TOKEN) as running, \
            Client(f"127.0.0.1:{running.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as connected:
        yield running, connected


def store_state(connected: Client, state_dir: Path) -> dict[str, Any]:
    """The version, every policy and principal the admin API shows, and the state directory's files."""
    admin = connected.admin
    names = connected.call(admin.ListPolicies, pb.ListPoliciesRequest()).policies
    arns = connected.call(admin.ListPrincipals, pb.ListPrincipalsRequest()).arns
    return {
        "version": connected.call(admin.GetStoreVersion, pb.GetStoreVersionRequest()).version,
        "policies": {(n.kind, n.name): connected.call(admin.GetPolicy, n).document for n in names},
        "principals": {arn: connected.call(admin.GetPrincipal, pb.PrincipalName(arn=arn)) for arn in arns},
        "files": {path.name: path.read_bytes() for path in sorted(state_dir.iterdir())},
    }


def assert_refused_and_unchanged(service, connected: Client, change) -> str:
    """``change`` gets INVALID_ARGUMENT and the store is as it was; the status message."""
    running, _ = service
    before = store_state(connected, running.config.versions_dir)
    error = rpc_error(lambda: change(connected))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert store_state(connected, running.config.versions_dir) == before
    # ImageBuilderRole's policies grant no s3:DeleteBucket; the refused document would have granted s3:*.
    still = connected.check(ROLE, "s3:DeleteBucket", PAYROLL, US_EAST)
    assert (still.result.decision, still.store_version) == (pb.IMPLICIT_DENY, before["version"])
    return error.details()


def test_put_policy_with_a_key_given_twice_is_refused_and_changes_nothing(service):
    _, connected = service
    put = pb.PutPolicyRequest(policy=pb.StoredPolicy(kind=pb.MANAGED, name=FULL_ACCESS, document=DENY_THEN_ALLOW))
    details = assert_refused_and_unchanged(service, connected, lambda c: c.call(c.admin.PutPolicy, put))
    assert "E002" in details and "/Statement/0/Effect" in details


def test_put_principal_with_an_inline_policy_key_given_twice_is_refused_and_changes_nothing(service):
    _, connected = service
    put = pb.PutPrincipalRequest(principal=pb.Principal(arn=NEW_ROLE, inline_policies={"S3": DENY_THEN_ALLOW}))
    details = assert_refused_and_unchanged(service, connected, lambda c: c.call(c.admin.PutPrincipal, put))
    assert "E002" in details and "/Statement/0/Effect" in details
    assert "'S3'" in details  # which inline policy


DENY_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}'
ALLOW_S3 = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'
PRINCIPAL_FILES = {  # (text of a principals/*.json file, the pointer of the key given twice)
    "inline-policy-key": (f'{{"arn":"{NEW_ROLE}","inline_policies":{{"S3":{DENY_THEN_ALLOW}}}}}',
                          "/inline_policies/S3/Statement/0/Effect"),
    "entry-key": (f'{{"arn":"{NEW_ROLE}","inline_policies":{{"Guard":{DENY_ALL}}},'
                  f'"inline_policies":{{"S3":{ALLOW_S3}}}}}', "/inline_policies"),
}


@pytest.mark.parametrize("text, pointer", PRINCIPAL_FILES.values(), ids=PRINCIPAL_FILES.keys())
def test_client_put_principal_of_a_file_with_a_key_given_twice_exits_non_zero(service, tmp_path, capsys,
                                                                              text, pointer):
    running, connected = service
    before = store_state(connected, running.config.versions_dir)
    principal_file = tmp_path / "new.json"
    principal_file.write_text(text)
    code = main(["client", "--target", f"127.0.0.1:{running.port}", "--token", ADMIN_TOKEN,
                 "put-principal", str(principal_file)])
    _, err = capsys.readouterr()
    assert code == 2
    assert "E002" in err and pointer in err and str(principal_file) in err
    assert store_state(connected, running.config.versions_dir) == before


def snapshot_with(section: str, entry_text: str) -> str:
    """The example store's snapshot with one more entry in ``section``, written as text."""
    snapshot = json.loads(PolicyStore.from_directory(EXAMPLE_STORE).to_json())
    entries = snapshot.pop(section, [])
    listed = ",".join([*(json.dumps(entry) for entry in entries), entry_text])
    rest = json.dumps(snapshot)[1:-1]
    return f'{{{rest},"{section}":[{listed}]}}'


SNAPSHOTS = {  # (snapshot text, the pointer of the key given twice)
    "in-a-policy": (snapshot_with("scps", f'{{"name":"Open","document":{DENY_THEN_ALLOW}}}'),
                    "/scps/2/document/Statement/0/Effect"),
    "in-an-entry": (snapshot_with("scps", f'{{"name":"Open","document":{DENY_ALL},"document":{ALLOW_S3}}}'),
                    "/scps/2/document"),
    "inline-policy-name": (snapshot_with("principals", f'{{"arn":"{NEW_ROLE}","inline_policies":'
                                                       f'{{"Guard":{DENY_ALL},"Guard":{ALLOW_S3}}}}}'),
                           "/principals/3/inline_policies/Guard"),
}


@pytest.mark.parametrize("text, pointer", SNAPSHOTS.values(), ids=SNAPSHOTS.keys())
def test_a_store_snapshot_with_a_key_given_twice_is_refused(tmp_path, text, pointer):
    """What ``iam-eval serve --store SNAPSHOT.json`` reads: refused whole, naming the file and the key."""
    path = tmp_path / "snapshot.json"
    path.write_text(text)
    with pytest.raises(StoreError) as raised:
        load_store(path)
    assert raised.value.source == str(path)
    assert [(f.code, f.pointer) for f in raised.value.findings] == [("E002", pointer)]


def test_a_hand_edited_version_file_with_a_key_given_twice_is_not_served(tmp_path, caplog):
    """A version file is ours, but one edited by hand must not lose a key: it is unreadable, so the newest
    readable version before it is served (as for any version file that cannot be read)."""
    directory = tmp_path / "versions"
    first = VersionedStore(directory, lambda: PolicyStore.from_directory(EXAMPLE_STORE)).current
    edited = snapshot_with("scps", f'{{"name":"Open","document":{DENY_THEN_ALLOW}}}')
    (directory / "v00000002.json").write_text(
        f'{{"version":2,"created":"2026-12-01T00:00:00Z","description":"edited by hand","store":{edited}}}')

    with caplog.at_level(logging.WARNING):
        reopened = VersionedStore(directory, lambda: pytest.fail("the directory holds versions"))
    assert reopened.current.number == 1
    assert reopened.current.store.to_json() == first.store.to_json()
    assert any("v00000002.json" in record.getMessage() and "E002" in record.getMessage()
               for record in caplog.records if record.levelno == logging.WARNING)


def test_an_account_export_with_a_key_given_twice_is_refused(tmp_path):
    """A role whose RolePolicyList is given twice: read leniently, its Deny-all inline policy would be lost."""
    role = (f'{{"RoleName":"Builder","Arn":"arn:aws:iam::{ACCOUNT}:role/Builder",'
            f'"RolePolicyList":[{{"PolicyName":"Guard","PolicyDocument":{DENY_ALL}}}],'
            f'"AttachedManagedPolicies":[],'
            f'"RolePolicyList":[{{"PolicyName":"S3","PolicyDocument":{ALLOW_S3}}}]}}')
    path = tmp_path / "export.json"
    path.write_text(f'{{"UserDetailList":[],"GroupDetailList":[],"RoleDetailList":[{role}],"Policies":[]}}')
    with pytest.raises(StoreError) as raised:
        load_account_export(path)
    assert [(f.code, f.pointer) for f in raised.value.findings] == [("E002", "/RoleDetailList/0/RolePolicyList")]


def test_a_test_case_with_a_key_given_twice_fails(tmp_path, capsys):
    """``iam-eval test`` reads policies from its case lines: a case whose policy has Effect twice is refused,
    not run as the Allow the last key says."""
    request = {"principal": ROLE, "action": "s3:DeleteBucket", "resource": PAYROLL, "resource_account": ACCOUNT}
    line = (f'{{"id":"twice","policies":{{"identity":[{DENY_THEN_ALLOW}]}},"request":{json.dumps(request)},'
            f'"expect":{{"decision":"Allow"}}}}')
    cases = tmp_path / "cases.jsonl"
    cases.write_text(line + "\n")
    code = main(["test", str(cases)])
    out, _ = capsys.readouterr()
    assert code == 1
    assert out.strip().splitlines()[-1] == "0 passed, 1 failed"
    assert "E002" in out and "/policies/identity/0/Statement/0/Effect" in out
