"""The store being served: one compiled version, replaced whole when the store changes.

A change is validated, persisted (``store_versions``) and compiled beside the
version in service (so is a version another server process wrote, which
``watch`` notices), then published by rebinding one attribute: a call that has
read ``current`` finishes on that version and the next call sees the new one,
so no request ever sees half an update.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from iam_evaluator.account_export import load_account_export
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.findings import PolicyValidationError
from iam_evaluator.parse import decode_json
from iam_evaluator.store import PolicyStore, StoreError, is_snapshot, store_error

from .store_versions import StoreVersion, VersionedStore

log = logging.getLogger("iam_eval.store")


@dataclass(frozen=True)
class Serving:
    """A store version and its compiled form, published together."""

    version: StoreVersion
    compiled: CompiledStore
    compile_seconds: float


def load_store(path: str | Path, aws_managed_policies: str | None = None) -> PolicyStore:
    """A store directory, a store snapshot (``PolicyStore.to_json``), or the JSON that
    ``aws iam get-account-authorization-details`` prints (AWS managed policies it attaches
    but leaves out are read from ``aws_managed_policies``)."""
    path = Path(path)
    if path.is_dir():
        return PolicyStore.from_directory(path)
    try:
        # Strictly: a key given twice is never read as the last one, and the store's checker does not look
        # at every object (an inline policy's name given twice would pass it).
        head = decode_json(path.read_bytes(), unique_keys=True)
    except OSError as exc:
        raise store_error(str(path), (), "S001", f"cannot read a store from it: {exc.strerror}") from None
    except PolicyValidationError as exc:
        raise StoreError(str(path), exc.findings) from None
    if is_snapshot(head):
        return PolicyStore.from_json(path.read_bytes(), source=str(path))
    return load_account_export(path, aws_managed_policies)


class LiveStore:
    """Serves the newest version of a ``VersionedStore``; changes are serialised.

    A change is compiled before its version is written (``VersionedStore``'s ``prepare``), so a
    store that fails to compile is never written, and a version that is written is served at once.
    """

    def __init__(self, versions: VersionedStore,
                 on_publish: Callable[[Serving], None] | None = None,
                 on_watch_error: Callable[[Exception], None] | None = None) -> None:
        self.versions = versions
        self._on_publish = on_publish
        self._on_watch_error = on_watch_error
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.current = self._publish(versions.current, *_compiled(versions.current.store))

    def watch(self, every: float, longest_wait: float = 60.0) -> None:
        """Serve versions other processes write to the state directory, looking every ``every`` seconds.

        A failure (an unreadable directory, a version that does not compile) is logged and counted,
        and the next look comes later, doubling up to ``longest_wait``: the loop never dies."""
        def look() -> None:
            wait = every
            while not self._stopped.wait(wait):
                try:
                    with self._lock:
                        if self.versions.refresh():
                            self._publish(self.versions.current, *_compiled(self.versions.current.store))
                    wait = every
                except Exception as exc:  # noqa: BLE001 - the loop must outlive any failure, and say so
                    log.exception("looking for new store versions failed; retrying in %.1f s", wait * 2)
                    if self._on_watch_error:
                        self._on_watch_error(exc)
                    wait = min(max(wait, 0.1) * 2, longest_wait)
        threading.Thread(target=look, name="store-watch", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _publish(self, version: StoreVersion, compiled: CompiledStore, compile_seconds: float) -> Serving:
        serving = Serving(version, compiled, compile_seconds)
        self.current = serving
        if self._on_publish:
            self._on_publish(serving)
        return serving

    def change(self, edit: Callable[[dict], None], description: str, expected_version: int = 0) -> Serving:
        """Apply ``edit`` to a copy of the snapshot; raises (and changes nothing) if it fails, leaves an
        invalid store, does not compile, or cannot be written."""
        with self._lock:
            prepared: list = []
            version = self.versions.change(edit, description, expected_version,
                                           prepare=lambda store: prepared.extend(_compiled(store)))
            return self._publish(version, *prepared)

    def rollback(self, number: int, expected_version: int = 0) -> Serving:
        with self._lock:
            prepared: list = []
            version = self.versions.rollback(number, expected_version,
                                             prepare=lambda store: prepared.extend(_compiled(store)))
            return self._publish(version, *prepared)


def _compiled(store: PolicyStore) -> tuple[CompiledStore, float]:
    """The store compiled, and how long that took."""
    started = time.perf_counter()
    compiled = CompiledStore(store)
    return compiled, time.perf_counter() - started
