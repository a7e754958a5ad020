"""The store's version history: versions written durably, reopened as written, edits checked before they count,
rollback, the snapshot edit helpers, concurrent changes, and a writer killed mid-write."""
from __future__ import annotations

import json
import logging
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from iam_evaluator.server.store_versions import (
    KEYS,
    EntryNotFound,
    VersionConflict,
    VersionedStore,
    delete_entry,
    entry_keys,
    find_entry,
    put_entry,
)
from iam_evaluator.store import PolicyStore, StoreError

from .conftest import REPO

EXAMPLE_STORE = REPO / "examples" / "store"
ACCOUNT = "111122223333"
LOGS = "arn:aws:s3:::example-imagebuilder-logs"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def document(sid: str, principal: bool = False) -> dict:
    statement = {"Sid": sid, "Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "*"}
    if principal:
        statement["Principal"] = "*"
    return {"Version": "2012-10-17", "Statement": [statement]}


def managed_policy(name: str, sid: str = "Original") -> dict:
    return {"arn": f"arn:aws:iam::{ACCOUNT}:policy/{name}", "document": document(sid)}


def example_store() -> PolicyStore:
    return PolicyStore.from_directory(EXAMPLE_STORE)


def not_called() -> PolicyStore:
    raise AssertionError("seed() must not be called when the directory holds versions")


def files(directory: Path) -> dict[str, bytes]:
    """The directory's files but the writers' lock file, which holds nothing."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.name != ".lock"}


@pytest.fixture
def versions(tmp_path: Path) -> VersionedStore:
    return VersionedStore(tmp_path / "state", example_store)


def test_seed_is_version_1_and_reopening_gives_it_back(tmp_path: Path):
    calls = []

    def seed() -> PolicyStore:
        calls.append(1)
        return example_store()

    directory = tmp_path / "deep" / "state"
    first = VersionedStore(directory, seed, seed_description="loaded from examples/store")
    assert calls == [1]
    assert (first.current.number, first.current.description) == (1, "loaded from examples/store")
    assert RFC3339_UTC.fullmatch(first.current.created)
    assert first.current.store.to_json() == example_store().to_json()
    assert list(files(directory)) == ["v00000001.json"]

    reopened = VersionedStore(directory, not_called)
    assert reopened.current.number == 1
    assert reopened.current.created == first.current.created
    assert reopened.current.description == "loaded from examples/store"
    assert reopened.current.store.to_json() == first.current.store.to_json()
    assert reopened.history() == first.history()


def test_default_seed_description(versions: VersionedStore):
    assert [(v.number, v.description) for v in versions.history()] == [(1, "initial store")]


def test_change_is_persisted_and_survives_reopening(versions: VersionedStore):
    added = managed_policy("Added")
    version = versions.change(lambda s: put_entry(s, "managed_policies", added), "put managed policy Added")
    assert version is versions.current
    assert (version.number, version.description) == (2, "put managed policy Added")
    assert find_entry(version.store, "managed_policies", added["arn"]) == added
    assert added["arn"] in version.store.managed_policies

    on_disk = json.loads((versions.directory / "v00000002.json").read_text())
    assert on_disk == {"version": 2, "created": version.created, "description": "put managed policy Added",
                       "store": json.loads(version.store.to_json())}

    reopened = VersionedStore(versions.directory, not_called)
    assert reopened.current.number == 2
    assert reopened.current.store.to_json() == version.store.to_json()
    assert [(v.number, v.description) for v in reopened.history()] == [
        (1, "initial store"), (2, "put managed policy Added")]
    assert reopened.change(lambda s: None, "no-op").number == 3


def test_processes_sharing_a_directory_build_on_each_others_versions(versions: VersionedStore):
    """Two openers stand for two server processes: each change starts from the newest version on
    disk, whoever wrote it, and refresh() takes in the other's versions."""
    other = VersionedStore(versions.directory, not_called)
    first, second = managed_policy("First"), managed_policy("Second")
    versions.change(lambda s: put_entry(s, "managed_policies", first), "put First")
    assert other.current.number == 1
    with pytest.raises(VersionConflict):
        other.change(lambda s: None, "stale", expected_version=1)
    assert other.current.number == 2, "a refused change still takes in the newer version"
    other.change(lambda s: put_entry(s, "managed_policies", second), "put Second", expected_version=2)
    assert versions.refresh() is True
    assert versions.current.number == 3
    assert {first["arn"], second["arn"]} <= set(versions.current.store.managed_policies)
    assert [v.number for v in versions.history()] == [1, 2, 3]
    assert versions.refresh() is False


@pytest.mark.parametrize("edit, error", [
    (lambda s: put_entry(s, "managed_policies", {"arn": f"arn:aws:iam::{ACCOUNT}:policy/Bad",
                                                 "document": {"Statement": "not a statement"}}), StoreError),
    (lambda s: delete_entry(s, "managed_policies", f"arn:aws:iam::{ACCOUNT}:policy/Missing"), EntryNotFound),
], ids=["bad policy document", "deleting a missing entry"])
def test_a_failed_edit_writes_nothing(versions: VersionedStore, edit, error):
    before, history, on_disk = versions.current, versions.history(), files(versions.directory)
    with pytest.raises(error):
        versions.change(edit, "a failing edit")
    assert versions.current is before
    assert versions.history() == history
    assert files(versions.directory) == on_disk
    assert versions.change(lambda s: None, "next").number == 2


def test_an_edit_breaking_a_reference_is_refused(versions: VersionedStore):
    boundary = f"arn:aws:iam::{ACCOUNT}:policy/ImageBuilderReadOnlyBoundary"  # alice's permissions boundary
    with pytest.raises(StoreError) as raised:
        versions.change(lambda s: delete_entry(s, "managed_policies", boundary), "delete the boundary")
    assert any(finding.code == "S002" for finding in raised.value.findings)
    assert versions.current.number == 1


def test_expected_version(versions: VersionedStore):
    versions.change(lambda s: None, "second", expected_version=1)
    on_disk = files(versions.directory)
    with pytest.raises(VersionConflict, match=r"expected version 1\b.*current version is 2") as raised:
        versions.change(lambda s: None, "stale", expected_version=1)
    assert (raised.value.expected, raised.value.current) == (1, 2)
    with pytest.raises(VersionConflict):
        versions.rollback(1, expected_version=3)
    assert files(versions.directory) == on_disk
    assert versions.change(lambda s: None, "third", expected_version=2).number == 3


def test_rollback_is_a_new_version_with_the_old_content(versions: VersionedStore):
    original = versions.current.store.to_json()
    versions.change(lambda s: delete_entry(s, "resource_policies", LOGS), "delete the logs bucket policy")
    assert versions.current.store.resource_policy(LOGS) is None

    rolled_back = versions.rollback(1, expected_version=2)
    assert (rolled_back.number, rolled_back.description) == (3, "rollback to 1")
    assert rolled_back.store.to_json() == original
    assert rolled_back.store.resource_policy(LOGS) is not None
    assert VersionedStore(versions.directory, not_called).current.store.to_json() == original

    again = versions.rollback(2)
    assert again.number == 4
    assert again.store.resource_policy(LOGS) is None


def test_rollback_to_an_unknown_version(versions: VersionedStore):
    versions.change(lambda s: None, "second")
    with pytest.raises(EntryNotFound, match=r"no version 7; the kept versions are 1-2"):
        versions.rollback(7)
    assert versions.current.number == 2


def test_a_leftover_temporary_file_is_removed_and_ignored(versions: VersionedStore):
    leftover = versions.directory / ".v00000002.k3x9q.tmp"
    leftover.write_text('{"version": 2, "created": "2026-01-01T00:00:00Z", "desc')
    reopened = VersionedStore(versions.directory, not_called)
    assert not leftover.exists()
    assert reopened.current.number == 1
    assert list(files(versions.directory)) == ["v00000001.json"]
    assert reopened.change(lambda s: None, "second").number == 2


def test_a_corrupt_newest_version_falls_back_to_the_one_before(versions: VersionedStore, caplog):
    first = versions.current
    versions.change(lambda s: put_entry(s, "managed_policies", managed_policy("Added")), "second")
    newest = versions.directory / "v00000002.json"
    newest.write_bytes(newest.read_bytes()[:100])

    with caplog.at_level(logging.WARNING):
        reopened = VersionedStore(versions.directory, not_called)
    assert any(record.levelno == logging.WARNING and "v00000002.json" in record.getMessage()
               for record in caplog.records)
    assert reopened.current.number == 1
    assert reopened.current.store.to_json() == first.store.to_json()
    assert [v.number for v in reopened.history()] == [1]
    assert reopened.change(lambda s: None, "third").number == 3  # 2 is never reused
    assert newest.exists()


def test_no_readable_version_is_an_error(versions: VersionedStore):
    (versions.directory / "v00000001.json").write_text("{")
    with pytest.raises(RuntimeError, match="none of its 1 version files can be read"):
        VersionedStore(versions.directory, not_called)


NEW_ENTRIES = {
    "principals": ({"arn": f"arn:aws:iam::{ACCOUNT}:role/Extra"},
                   {"arn": f"arn:aws:iam::{ACCOUNT}:role/Extra", "tags": {"team": "new"}}),
    "groups": ({"arn": f"arn:aws:iam::{ACCOUNT}:group/extra"},
               {"arn": f"arn:aws:iam::{ACCOUNT}:group/extra",
                "inline_policies": {"NoDelete": document("Replaced")}}),
    "managed_policies": (managed_policy("Extra"), managed_policy("Extra", "Replaced")),
    "scps": ({"name": "Extra", "document": document("Original")},
             {"name": "Extra", "document": document("Replaced")}),
    "rcps": ({"name": "Extra", "document": document("Original", principal=True)},
             {"name": "Extra", "document": document("Replaced", principal=True)}),
    "resource_policies": ({"resource": "arn:aws:s3:::extra", "document": document("Original", principal=True)},
                          {"resource": "arn:aws:s3:::extra", "document": document("Replaced", principal=True)}),
    "vpc_endpoints": ({"id": "vpce-0123456789abcdef0", "document": document("Original", principal=True)},
                      {"id": "vpce-0123456789abcdef0", "document": document("Replaced", principal=True)}),
}


@pytest.mark.parametrize("section", KEYS)
def test_put_find_delete_and_keys(versions: VersionedStore, section: str):
    entry, replacement = NEW_ENTRIES[section]
    key = entry[KEYS[section]]
    keys_before = entry_keys(versions.current.store, section)
    assert key not in keys_before
    with pytest.raises(EntryNotFound, match=rf"{section} has no entry with {KEYS[section]} '{re.escape(key)}'"):
        find_entry(versions.current.store, section, key)

    added = versions.change(lambda s: put_entry(s, section, entry), f"put {key}").store
    assert entry_keys(added, section) == sorted([*keys_before, key])
    assert find_entry(added, section, key) == entry

    replaced = versions.change(lambda s: put_entry(s, section, replacement), f"put {key} again").store
    assert entry_keys(replaced, section) == sorted([*keys_before, key])
    assert find_entry(replaced, section, key) == replacement

    deleted = versions.change(lambda s: delete_entry(s, section, key), f"delete {key}").store
    assert entry_keys(deleted, section) == keys_before
    with pytest.raises(EntryNotFound, match=rf"{section} has no entry with {KEYS[section]}"):
        delete_entry(json.loads(deleted.to_json()), section, key)


def test_entry_keys_are_sorted_keys_of_the_section():
    store = example_store()
    assert entry_keys(store, "principals") == sorted(store.principals)
    assert entry_keys(store, "scps") == ["DenyOutsideApprovedRegions", "FullAWSAccess"]
    assert entry_keys(store, "rcps") == []
    with pytest.raises(ValueError, match="'organization' is not a section of keyed entries"):
        entry_keys(store, "organization")


def test_concurrent_changes_are_consecutive_and_none_is_lost(versions: VersionedStore):
    threads, changes_each = 6, 5
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        start.wait()
        try:
            for i in range(changes_each):
                policy = managed_policy(f"Thread{thread}Change{i}")
                versions.change(lambda s, p=policy: put_entry(s, "managed_policies", p), policy["arn"])
        except BaseException as exc:  # noqa: B036 - reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    total = 1 + threads * changes_each
    assert versions.current.number == total
    assert [v.number for v in versions.history()] == list(range(1, total + 1))
    assert sorted(path.name for path in versions.directory.iterdir() if path.name != ".lock") == [
        f"v{n:08d}.json" for n in range(1, total + 1)]
    names = {arn.rsplit("/", 1)[1] for arn in entry_keys(versions.current.store, "managed_policies")}
    assert {f"Thread{t}Change{i}" for t in range(threads) for i in range(changes_each)} <= names


PADDING = 250_000  # characters of description: a long write, likelier to be cut by the kill
KILLS = 8


def counter_policy(number: int) -> dict:
    """The managed policy the writer below puts in version ``number``."""
    return {"arn": f"arn:aws:iam::{ACCOUNT}:policy/Counter", "document": {"Version": "2012-10-17", "Statement": [
        {"Sid": f"Version{number}", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}}


WRITER = textwrap.dedent("""
    import json, sys
    from iam_evaluator.store import PolicyStore
    from iam_evaluator.server.store_versions import VersionedStore, put_entry

    directory, example_store, padding = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def counter_policy(number):
        return {"arn": "arn:aws:iam::111122223333:policy/Counter", "document": {"Version": "2012-10-17", "Statement": [
            {"Sid": f"Version{number}", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}}

    def seed():
        snapshot = json.loads(PolicyStore.from_directory(example_store).to_json())
        put_entry(snapshot, "managed_policies", counter_policy(1))
        return PolicyStore.from_json(json.dumps(snapshot))

    versions = VersionedStore(directory, seed)
    print("ready", flush=True)
    while True:
        number = versions.current.number + 1
        versions.change(lambda s: put_entry(s, "managed_policies", counter_policy(number)),
                        f"counter {number} " + "." * padding)
""")


def test_a_writer_killed_mid_write_restarts_on_a_whole_version(tmp_path: Path, caplog):
    """SIGKILL a process committing versions in a tight loop, several times; each restart finds a whole version."""
    directory = tmp_path / "state"
    rng = random.Random(20261128)
    for _ in range(KILLS):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(EXAMPLE_STORE), str(PADDING)],
                                  cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.02, 0.3))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer.stdout.close()

        caplog.clear()
        with caplog.at_level(logging.WARNING):
            current = VersionedStore(directory, not_called).current
        assert [r.getMessage()[:200] for r in caplog.records if r.levelno >= logging.WARNING] == []  # none torn
        assert sorted(path.name for path in directory.iterdir() if path.name != ".lock") == [
            f"v{n:08d}.json" for n in range(1, current.number + 1)]
        assert current.description == ("initial store" if current.number == 1
                                       else f"counter {current.number} " + "." * PADDING)
        expected = json.loads(example_store().to_json())
        put_entry(expected, "managed_policies", counter_policy(current.number))
        assert json.loads(current.store.to_json()) == expected
    assert current.number > KILLS  # the writer did commit between kills
    shutil.rmtree(directory)  # some 40 MB of versions
