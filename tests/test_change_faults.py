"""A store change is served or never happened: faults at every step leave the state directory as it was.

Each fault is injected where it strikes in real life (compiling the new store, writing the version file, the
directory fsync after the rename, a full disk, a read-only state directory); the state directory must be
byte-identical to before, the old version still served, and the client told which step failed.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path

import grpc
import pytest

from iam_evaluator.server import live_store, store_versions
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.api import iam_evaluator_pb2_grpc as pb_grpc
from iam_evaluator.server.live_store import LiveStore
from iam_evaluator.server.store_versions import ChangeFailed, VersionedStore, put_entry
from iam_evaluator.store import PolicyStore

from .conftest import REPO
from .service_helpers import rpc_error, running_service

EXAMPLE_STORE = REPO / "examples" / "store"
POLICY_ARN = "arn:aws:iam::111122223333:policy/Extra"
DOCUMENT = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "*"}]}


def add_policy(snapshot: dict) -> None:
    put_entry(snapshot, "managed_policies", {"arn": POLICY_ARN, "document": DOCUMENT})


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.name != ".lock"}


@pytest.fixture
def live(tmp_path: Path) -> LiveStore:
    return LiveStore(VersionedStore(tmp_path / "state", lambda: PolicyStore.from_directory(EXAMPLE_STORE)))


def test_a_store_that_fails_to_compile_is_never_written(live: LiveStore, monkeypatch):
    before = files(live.versions.directory)

    def broken(store):
        raise RuntimeError("compiler defect")

    monkeypatch.setattr(live_store, "CompiledStore", broken)
    with pytest.raises(ChangeFailed, match="compiling the new store failed: RuntimeError: compiler defect"):
        live.change(add_policy, "add a policy")
    assert files(live.versions.directory) == before
    assert live.current.version.number == live.versions.current.number == 1
    monkeypatch.undo()
    assert live.change(add_policy, "add a policy").version.number == 2, "the next change takes the next number"


@pytest.mark.parametrize("fault", ["file fsync", "rename", "directory fsync"])
def test_a_write_that_fails_at_any_step_leaves_nothing(live: LiveStore, monkeypatch, fault):
    directory = live.versions.directory
    before = files(directory)
    real_fsync, real_replace = os.fsync, os.replace
    full = OSError(errno.ENOSPC, "No space left on device")

    def failing_fsync(fd):
        raise full

    def failing_replace(source, target):
        raise full

    def failing_directory_sync(path):  # strikes after the rename: the renamed file must go again
        raise OSError(errno.EIO, "Input/output error")

    if fault == "file fsync":
        monkeypatch.setattr(store_versions.os, "fsync", failing_fsync)
    elif fault == "rename":
        monkeypatch.setattr(store_versions.os, "replace", failing_replace)
    else:
        monkeypatch.setattr(store_versions, "_fsync_directory", failing_directory_sync)
    with pytest.raises(ChangeFailed) as raised:
        live.change(add_policy, "add a policy")
    assert raised.value.disk and not raised.value.read_only
    assert {"file fsync": "writing", "rename": "renaming", "directory fsync": "syncing"}[fault] in str(raised.value)
    assert files(directory) == before, "the state directory is byte-identical to before"
    assert live.current.version.number == 1
    monkeypatch.setattr(store_versions.os, "fsync", real_fsync)
    monkeypatch.setattr(store_versions.os, "replace", real_replace)
    monkeypatch.undo()
    reopened = VersionedStore(directory, lambda: pytest.fail("the directory still holds version 1"))
    assert reopened.current.number == 1 and POLICY_ARN not in reopened.current.store.managed_policies


def test_a_read_only_state_directory_is_served_and_refuses_changes(live: LiveStore, monkeypatch, caplog):
    directory = live.versions.directory
    live.change(add_policy, "add a policy")
    before = files(directory)
    real_access = os.access
    monkeypatch.setattr(store_versions.os, "access",
                        lambda path, mode: False if Path(path) == directory and mode == os.W_OK
                        else real_access(path, mode))
    with caplog.at_level(logging.WARNING, "iam_eval.store_versions"):
        reopened = LiveStore(VersionedStore(directory, lambda: pytest.fail("must not seed")))
    assert "read-only" in caplog.text
    assert reopened.current.version.number == 2 and POLICY_ARN in reopened.current.version.store.managed_policies
    with pytest.raises(ChangeFailed) as raised:
        reopened.change(lambda snapshot: None, "nothing")
    assert raised.value.read_only and "read-only" in str(raised.value)
    assert files(directory) == before


def test_the_watch_loop_survives_failures_and_counts_them(live: LiveStore, monkeypatch, caplog):
    """A process that cannot look for new versions for a while must not stop serving new ones for ever."""
    other = VersionedStore(live.versions.directory, lambda: pytest.fail("must not seed"))
    errors = []
    live._on_watch_error = errors.append
    real_refresh = live.versions.refresh
    calls = []

    def flaky_refresh():
        calls.append(1)
        if len(calls) <= 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_refresh()

    monkeypatch.setattr(live.versions, "refresh", flaky_refresh)
    with caplog.at_level(logging.ERROR, "iam_eval.store"):
        live.watch(0.01, longest_wait=0.05)
        other.change(add_policy, "written by another process")
        deadline = time.monotonic() + 10
        while live.current.version.number != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    live.stop()
    assert live.current.version.number == 2, "the loop went on after its failures and served the new version"
    assert len(errors) == 2 and "retrying" in caplog.text


def test_over_grpc_a_full_disk_is_unavailable_and_serving_goes_on(tmp_path: Path, monkeypatch):
    state = tmp_path / "state"
    with running_service(EXAMPLE_STORE, state, admin_token="a" * 32) as service:
        before = files(state)
        monkeypatch.setattr(store_versions.os, "fsync",
                            lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            admin = pb_grpc.PolicyAdminStub(channel)
            metadata = (("authorization", "Bearer " + "a" * 32),)
            error = rpc_error(lambda: admin.PutPolicy(pb.PutPolicyRequest(policy=pb.StoredPolicy(
                kind=pb.MANAGED, name=POLICY_ARN, document=json.dumps(DOCUMENT))), metadata=metadata, timeout=30))
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            assert "No space left on device" in error.details() and "not made" in error.details()
            monkeypatch.undo()
            assert files(state) == before
            version = admin.GetStoreVersion(pb.GetStoreVersionRequest(), metadata=metadata, timeout=30)
            assert version.version == 1
            answer = pb_grpc.AuthorizerStub(channel).Check(pb.CheckRequest(
                principal="arn:aws:iam::111122223333:role/ImageBuilderRole", action="imagebuilder:GetImage",
                resource="arn:aws:imagebuilder:us-east-1:111122223333:image/demo/1.0.0/1",
                context={"aws:RequestedRegion": pb.ContextValues(values=["us-east-1"])}), timeout=30)
            assert answer.result.decision == pb.ALLOW and answer.store_version == 1


def test_a_restart_after_the_store_folder_changed_says_so_and_reseed_serves_it(tmp_path: Path, caplog):
    """The state directory's newest version is served after a restart; an edited --store is named, not lost."""
    import shutil
    store = tmp_path / "store"
    shutil.copytree(EXAMPLE_STORE, store)
    state = tmp_path / "state"
    with running_service(store, state) as service:  # a change through the API is no difference to report
        service.live.change(lambda snapshot: put_entry(snapshot, "managed_policies", {
            "arn": "arn:aws:iam::111122223333:policy/ThroughTheApi", "document": DOCUMENT}), "put")
    with caplog.at_level(logging.WARNING, "iam_eval.server"), running_service(store, state) as service:
        assert service.serving().version.number == 2
    assert not any("changed since" in r.getMessage() for r in caplog.records)
    (store / "managed_policies" / "extra.json").write_text(json.dumps({"arn": POLICY_ARN, "document": DOCUMENT}))
    with caplog.at_level(logging.WARNING, "iam_eval.server"), running_service(store, state) as service:
        assert service.serving().version.number == 2
        assert POLICY_ARN not in service.serving().version.store.managed_policies
    warning = next(r for r in caplog.records if "changed since" in r.getMessage())
    assert warning.fields["store"] == str(store) and warning.fields["served_version"] == 2
    with running_service(store, state, reseed=True) as service:
        assert service.serving().version.number == 3
        assert POLICY_ARN in service.serving().version.store.managed_policies
        assert "reseeded" in service.serving().version.description
    caplog.clear()
    with caplog.at_level(logging.WARNING, "iam_eval.server"), running_service(store, state) as service:
        assert service.serving().version.number == 3
    assert not any("changed since" in r.getMessage() for r in caplog.records), "the same store: nothing to say"
