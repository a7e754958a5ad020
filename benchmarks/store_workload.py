"""The organisation-store workload of issue 10: a store snapshot and its request stream, and the requests
as the fast APIs take them.

The snapshot and stream come from ``../shared/corpus/make_store.py`` (every AWS managed policy held,
principals copied ``copies`` times into further accounts, resource policies on the stream's resources),
generated once per set of options and kept in IAM_EVAL_STORE_CACHE (default: a folder in the temp
directory); only the lines a benchmark needs are read. Nothing here imports ``evaluator``, so that the
previous main's measuring process (run against its own checkout) can use it too.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAKE_STORE = REPO.parent / "shared" / "corpus" / "make_store.py"
CACHE = Path(os.environ.get("IAM_EVAL_STORE_CACHE") or Path(tempfile.gettempdir()) / "iam-eval-store-bench")


@dataclass(frozen=True)
class StoreOptions:
    """``make_store.py --all-managed`` options."""

    copies: int = 10
    resource_policies: int = 2_000
    requests: int = 200_000
    requests_seed: int = 3

    def arguments(self) -> list[str]:
        return ["--copies", str(self.copies), "--resource-policies", str(self.resource_policies), "--all-managed",
                "--requests", str(self.requests), "--requests-seed", str(self.requests_seed)]


def store_files(options: StoreOptions) -> tuple[Path, Path]:
    """The snapshot and its request stream (JSON Lines), generated on first use (~40 s for 200,000 requests)."""
    generator = hashlib.sha256(MAKE_STORE.read_bytes()).hexdigest()[:12]  # a changed generator makes new files
    folder = CACHE / f"{'-'.join(options.arguments()).replace('--', '')}-{generator}"
    store, requests = folder / "store.json", folder / "requests.jsonl"
    if not (store.exists() and requests.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(MAKE_STORE), *options.arguments(), "--out", f"{store}.tmp",
                        "--requests-out", f"{requests}.tmp"], check=True, stdout=subprocess.DEVNULL)
        os.replace(f"{requests}.tmp", requests)
        os.replace(f"{store}.tmp", store)
    return store, requests


def with_more_principals(store: Path, count: int, account: str = "999900001111") -> Path:
    """The snapshot plus ``count`` roles in a new account of the organisation, each a copy of the first
    role with two to four managed policies (its managed policies, boundary and tags; not its inline
    policy, a document of its own): principals that share policies the store already has."""
    out = store.with_name(f"store-plus-{count}-{account}.json")
    if out.exists():
        return out
    snapshot = json.loads(store.read_text())
    model = next(p for p in snapshot["principals"] if 2 <= len(p["managed_policies"]) <= 4)
    for i in range(count):
        role = {**copy.deepcopy(model), "arn": f"arn:aws:iam::{account}:role/bench/extra-role-{i:05d}",
                "inline_policies": {}}
        snapshot["principals"].append(role)
    snapshot["organization"]["root"]["children"][0]["children"].append({"id": account})
    out.with_suffix(".tmp").write_text(json.dumps(snapshot, separators=(",", ":")))
    os.replace(out.with_suffix(".tmp"), out)
    return out


def read_requests(path: Path, n: int, every: int = 1) -> list[dict]:
    """Every ``every``-th of the first ``n`` requests of a stream, as decoded JSON."""
    with path.open() as lines:
        return [json.loads(line) for line in itertools.islice(lines, 0, n, every)]


def iter_requests(path: Path, n: int) -> Iterator[dict]:
    with path.open() as lines:
        yield from map(json.loads, itertools.islice(lines, n))


def _chunks(requests: Iterable[dict], size: int) -> Iterator[list[dict]]:
    requests = iter(requests)
    while chunk := list(itertools.islice(requests, size)):
        yield chunk


ColumnBatch = tuple[list[str], list[str], list[str], dict[str, list]]
"""principals, actions, resources, and the context as one column per key (None where a request lacks it)."""


def column_batches(requests: Iterable[dict], size: int, keys: frozenset[str] | None = None) -> list[ColumnBatch]:
    """The requests as ``evaluate_columns`` arguments, ``size`` a call. ``keys``: keep only these context
    keys (lower case), as a caller that knows which keys the store tests does; None keeps every key."""
    batches = []
    for chunk in _chunks(requests, size):
        names = sorted({key for r in chunk for key in r["context"] if keys is None or key.lower() in keys})
        batches.append(([r["principal"] for r in chunk], [r["action"] for r in chunk],
                        [r["resource"] for r in chunk], {key: [r["context"].get(key) for r in chunk] for key in names}))
    return batches


def arrow_batches(requests: Iterable[dict], size: int, keys: frozenset[str]):
    """The requests as RecordBatches of ``size`` rows with a ``context`` struct of the keys the store tests
    (as the batch runner reads them: each batch has the keys of its own rows; a key given as a list
    anywhere in the batch is a list column)."""
    import pyarrow as pa

    batches = []
    for chunk in _chunks(requests, size):
        contexts = [r["context"] for r in chunk]
        names = sorted({key for context in contexts for key in context if key.lower() in keys})
        fields = []
        for name in names:
            values = [context.get(name) for context in contexts]
            if any(isinstance(value, list) for value in values):
                fields.append(pa.array([[value] if isinstance(value, str) else value for value in values],
                                       pa.list_(pa.string())))
            else:
                fields.append(pa.array(values, pa.string()))
        context = (pa.StructArray.from_arrays(fields, names=names) if names
                   else pa.array([{}] * len(chunk), pa.struct([])))
        batches.append(pa.RecordBatch.from_arrays(
            [pa.array([r[column] for r in chunk], pa.string()) for column in ("principal", "action", "resource")]
            + [context], ["principal", "action", "resource", "context"]))
    return batches
