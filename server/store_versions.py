"""The policy store's version history, kept on disk so that a crash never loses or mixes a committed version.

Every change to the store (an admin edit, a rollback) makes a new version, numbered 1, 2, 3, … and never
reused; every version is kept, so any one can be rolled back to. Each version is one file in the state
directory, ``v{number:08d}.json``, holding ``{"version": n, "created": "…Z", "description": "…", "store":
snapshot}`` (the snapshot is ``PolicyStore.to_json``'s document).

Crash safety. A change is first built and checked as a whole store, then prepared (the server compiles it),
and only then written: to a temporary file in the same directory (``.v{number:08d}.*.tmp``), flushed and
fsynced, then renamed to its final name with ``os.replace`` (atomic), and then the directory is fsynced so the
rename itself is durable. A failure at any step (the store is invalid, compiling it fails, the disk is full,
the fsync fails) leaves the directory as it was: the renamed file is removed again, and the caller is told
which step failed (``ChangeFailed``); a change is either served or never happened. A version file therefore
exists whole or not at all, and the newest one is the current version: a restart after a crash at any point
finds the old version or the new one, never a mix. On opening, leftover temporary files are removed; a version
file that still cannot be read (only a filesystem that lost synced data, or a hand edit, could cause that) is
skipped with a warning, falling back to the next older one. A state directory this process cannot write is
served read-only: its newest version, with every change refused.

Several processes may share a state directory (the server's ``processes`` setting): a change holds an
exclusive lock on ``.lock`` there, first takes in any version another process wrote (``refresh``), and only
then applies; readers take ``current``, which is replaced (never mutated) on each change.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iam_evaluator.findings import PolicyValidationError
from iam_evaluator.parse import decode_json
from iam_evaluator.store import PolicyStore, StoreError

logger = logging.getLogger("iam_eval.store_versions")

KEYS = {"principals": "arn", "groups": "arn", "managed_policies": "arn", "scps": "name", "rcps": "name",
        "resource_policies": "resource", "vpc_endpoints": "id"}
"""The sections of a snapshot that are lists of entries, and the field that identifies an entry in each."""

_VERSION_FILE = re.compile(r"v(\d{8,})\.json")


class VersionConflict(Exception):
    """A change was made against a version that is no longer the current one."""

    def __init__(self, expected: int, current: int) -> None:
        self.expected = expected
        self.current = current
        super().__init__(f"expected version {expected}, but the current version is {current}")


class EntryNotFound(LookupError):
    """No entry (or version) with the key asked for."""


class ChangeFailed(Exception):
    """A change failed on its way to being served (compiling it, a full disk, a read-only state
    directory, a failed fsync); nothing of it was kept. ``step`` says where it failed."""

    def __init__(self, step: str, cause: Exception) -> None:
        self.step = step
        self.disk = isinstance(cause, OSError)
        self.read_only = self.disk and cause.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        reason = (cause.strerror or str(cause)) if isinstance(cause, OSError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"the change was not made: {step} failed: {reason}")


@dataclass(frozen=True)
class VersionInfo:
    """What ``history`` tells of a version, without its store."""

    number: int
    created: str  # RFC 3339, UTC
    description: str


@dataclass(frozen=True)
class StoreVersion:
    number: int  # 1, 2, 3, … never reused
    created: str  # RFC 3339, UTC: "2026-11-28T07:31:02Z"
    description: str  # what changed: "put managed policy arn:…", "rollback to 3"
    store: PolicyStore


class VersionedStore:
    """The current store and its history in ``directory``; each change is written durably before it is current."""

    def __init__(self, directory: str | Path, seed: Callable[[], PolicyStore], *,
                 seed_description: str = "initial store") -> None:
        """Open the versions in ``directory`` (created if missing); with none, ``seed()`` becomes version 1."""
        self.directory = Path(directory)
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _fsync_directory(self.directory.parent)  # so the new directory's own name survives a crash
        self.read_only = not os.access(self.directory, os.W_OK)
        """A state directory this process cannot write: its versions are served, changes refused."""
        if self.read_only:
            logger.warning("the state directory %s is read-only: serving its newest version, refusing changes",
                           self.directory)
        for leftover in () if self.read_only else self.directory.glob(".v*.tmp"):
            logger.info("removing %s, left by an interrupted write", leftover)
            leftover.unlink()
        self._lock = threading.Lock()
        self._history: list[VersionInfo] = []
        self._next_number = 1
        self._unreadable: list[int] = []
        with contextlib.nullcontext() if self.read_only else _exclusive(self.directory / ".lock"):
            found = self._take_in_new_versions()
            if found is None and self._next_number > 1:
                raise RuntimeError(f"{self.directory}: none of its {len(self._unreadable)} version files can be read; "
                                   f"restore one, or move them all aside to start again from the seed store")
            if found is None:
                store = seed()
                self._commit(json.loads(store.to_json()), store, seed_description)
            else:
                self.current = found

    def _take_in_new_versions(self) -> StoreVersion | None:
        """Read the versions on disk numbered past those known (all, at first): add them to the history
        and return the newest readable one, or None if there is none."""
        numbers = sorted(number for path in self.directory.iterdir()
                         if (match := _VERSION_FILE.fullmatch(path.name)) and (number := int(match[1]))
                         >= self._next_number)
        if not numbers:
            return None
        self._next_number = numbers[-1] + 1
        newest = None
        found: list[VersionInfo] = []
        for number in reversed(numbers):
            try:
                data = self._read(number)
                if newest is None:
                    store = PolicyStore.from_json(json.dumps(data["store"]), source=str(self._path(number)))
                    newest = StoreVersion(number, data["created"], data["description"], store)
            except (OSError, ValueError) as exc:  # a StoreError is a ValueError
                logger.warning("skipping version file %s: it cannot be read: %s", self._path(number), exc)
                self._unreadable.append(number)
                continue
            found.append(VersionInfo(number, data["created"], data["description"]))
        self._history += reversed(found)
        return newest

    def refresh(self) -> bool:
        """Take in the versions another process has written since; True when ``current`` changed."""
        with self._lock:
            newest = self._take_in_new_versions()
            if newest is None:
                return False
            self.current = newest
            return True

    def history(self) -> list[VersionInfo]:
        """Every kept version, oldest first."""
        with self._lock:
            return list(self._history)

    def change(self, edit: Callable[[dict], None], description: str, expected_version: int = 0,
               prepare: Callable[[PolicyStore], object] | None = None) -> StoreVersion:
        """Commit a new version: the current snapshot as ``edit`` changes it in place.

        ``expected_version`` (0: any) must be the current version, else ``VersionConflict``. An
        ``EntryNotFound`` from ``edit``, a ``StoreError`` for the edited snapshot, an error from
        ``prepare(store)`` (called before anything is written) or a ``ChangeFailed`` writes nothing.
        """
        with self._lock, self._writing():
            self.current = self._take_in_new_versions() or self.current
            self._check_expected(expected_version)
            snapshot = json.loads(self.current.store.to_json())
            edit(snapshot)
            store = PolicyStore.from_json(json.dumps(snapshot), source=description)
            return self._commit(snapshot, store, description, prepare)

    def rollback(self, number: int, expected_version: int = 0,
                 prepare: Callable[[PolicyStore], object] | None = None) -> StoreVersion:
        """Commit a new version whose store is version ``number``'s (``prepare`` as in ``change``)."""
        with self._lock, self._writing():
            self.current = self._take_in_new_versions() or self.current
            self._check_expected(expected_version)
            if number not in {info.number for info in self._history}:
                kept = _number_ranges([info.number for info in self._history])
                raise EntryNotFound(f"there is no version {number}; the kept versions are {kept}")
            snapshot = self._read(number)["store"]
            store = PolicyStore.from_json(json.dumps(snapshot), source=str(self._path(number)))
            return self._commit(snapshot, store, f"rollback to {number}", prepare)

    def _check_expected(self, expected_version: int) -> None:
        if expected_version and expected_version != self.current.number:
            raise VersionConflict(expected_version, self.current.number)

    def _writing(self):
        """The state directory's lock, for a change; a read-only state directory refuses changes."""
        if self.read_only:
            raise ChangeFailed("taking the state directory's lock", OSError(errno.EROFS, "the state directory "
                                                                            f"{self.directory} is read-only"))
        return _exclusive(self.directory / ".lock")

    def _commit(self, snapshot: dict, store: PolicyStore, description: str,
                prepare: Callable[[PolicyStore], object] | None = None) -> StoreVersion:
        """Prepare the new store, write it durably, then make it current."""
        if prepare is not None:
            try:
                prepare(store)
            except Exception as exc:
                logger.exception("preparing the new store failed; the change is not written")
                raise ChangeFailed("compiling the new store", exc) from exc
        number = self._next_number
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        content = json.dumps({"version": number, "created": created, "description": description,
                              "store": snapshot}, separators=(",", ":"))
        self._write(number, content.encode())
        self._next_number = number + 1
        self._history.append(VersionInfo(number, created, description))
        self.current = StoreVersion(number, created, description, store)
        return self.current

    def _write(self, number: int, content: bytes) -> None:
        """The protocol in the module docstring: temporary file, fsync, rename, fsync the directory; on
        any failure, nothing of it stays (``ChangeFailed`` for an OS error)."""
        step = "creating the version file"
        final = self._path(number)
        try:
            fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".v{number:08d}.", suffix=".tmp")
            try:
                step = "writing the version file"
                with os.fdopen(fd, "wb") as file:
                    file.write(content)
                    file.flush()
                    os.fsync(file.fileno())
                step = "renaming the version file into place"
                os.replace(temporary, final)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
            step = "syncing the state directory"
            try:
                _fsync_directory(self.directory)
            except BaseException:  # the rename may or may not be durable: undo it, so the change never happened
                with contextlib.suppress(OSError):
                    os.unlink(final)
                    _fsync_directory(self.directory)
                raise
        except OSError as exc:
            raise ChangeFailed(step, exc) from exc

    def _path(self, number: int) -> Path:
        return self.directory / f"v{number:08d}.json"

    def _read(self, number: int) -> dict[str, Any]:
        """A version file's content, checked for shape; ValueError (or OSError) when it cannot be used.

        The file is decoded strictly: its store is re-encoded before it is checked, which would lose a key
        given twice (in a file edited by hand) without a trace, so such a file is refused here (E002)."""
        path = self._path(number)
        try:
            data = decode_json(path.read_bytes(), unique_keys=True)
        except PolicyValidationError as exc:
            raise StoreError(str(path), exc.findings) from None
        if not (isinstance(data, dict) and data.get("version") == number and isinstance(data.get("created"), str)
                and isinstance(data.get("description"), str) and isinstance(data.get("store"), dict)):
            raise ValueError(f"not a version file of version {number}")
        return data


@contextlib.contextmanager
def _exclusive(lock_file: Path):
    """Hold the state directory's lock: one process writes versions at a time."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _number_ranges(numbers: list[int]) -> str:
    """Sorted version numbers, compactly: "1-4, 6, 8-9"."""
    ranges: list[list[int]] = []
    for number in numbers:
        if ranges and ranges[-1][1] == number - 1:
            ranges[-1][1] = number
        else:
            ranges.append([number, number])
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges) or "none"


def _key_field(section: str) -> str:
    if section not in KEYS:
        raise ValueError(f"{section!r} is not a section of keyed entries; expected one of {', '.join(KEYS)}")
    return KEYS[section]


def put_entry(snapshot: dict, section: str, entry: dict) -> None:
    """Replace the entry of ``section`` with ``entry``'s key, or append ``entry`` when there is none."""
    key_field = _key_field(section)
    entries = snapshot.setdefault(section, [])
    key = entry.get(key_field) if isinstance(entry, dict) else None  # a malformed entry is for the store to report
    for i, existing in enumerate(entries):
        if key is not None and existing.get(key_field) == key:
            entries[i] = entry
            return
    entries.append(entry)


def delete_entry(snapshot: dict, section: str, key: str) -> None:
    """Remove the entry of ``section`` whose key is ``key``; ``EntryNotFound`` if there is none."""
    key_field = _key_field(section)
    entries = snapshot.get(section, [])
    for i, existing in enumerate(entries):
        if existing.get(key_field) == key:
            del entries[i]
            return
    raise EntryNotFound(f"{section} has no entry with {key_field} {key!r}")


def find_entry(store: PolicyStore, section: str, key: str) -> dict:
    """The entry of ``section`` whose key is ``key``, as JSON data; ``EntryNotFound`` if there is none."""
    key_field = _key_field(section)
    for entry in json.loads(store.to_json()).get(section, []):
        if entry[key_field] == key:
            return entry
    raise EntryNotFound(f"{section} has no entry with {key_field} {key!r}")


def entry_keys(store: PolicyStore, section: str) -> list[str]:
    """The keys of ``section``'s entries, sorted."""
    key_field = _key_field(section)
    return sorted(entry[key_field] for entry in json.loads(store.to_json()).get(section, []))
