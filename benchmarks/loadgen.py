"""Load generator for the gRPC service: calls/s, checks/s, latency and correctness under load.

    python3 benchmarks/loadgen.py --workload seed --clients 2 --batch-size 1000 --duration 20
    python3 benchmarks/loadgen.py --mix check=1 --rate 1000 --duration 20
    python3 benchmarks/loadgen.py --mix check=0.2,batch=0.7,stream=0.1 --duration 60 --update-every 1 --json out.json
    python3 benchmarks/loadgen.py --target 127.0.0.1:50051 ...   (a server that serves --write-store DIR)

Without ``--target`` the server is started here (``--serve``) on the seed store and stopped with SIGTERM at
the end. Each client process has its own channel and sends requests serialized before the timed phase:
``check`` is one Check a call, ``batch`` a CheckBatch of ``--batch-size`` requests as columns, ``stream`` one
batch a round trip on a long-lived CheckStream. Closed loop by default (one call in flight a client);
``--rate`` sends at a fixed total rate from a few threads a client and measures latency from each call's
scheduled time, so a stall counts against the calls queued behind it too (no coordinated omission).

Every answer is checked against the decision the in-process compiled engine (itself checked against the
reference evaluator on a sample) gave for the store version the response names; a batch answer that is byte
for byte the expected one is not parsed further.

``--update-every`` makes a PutPolicy every so often that swaps the guard-rails policy between two variants
(the second also approves ap-southeast-2, which flips those requests' decisions); each store version's variant
comes from the StoreChange replies, shared with the clients through shared memory. An answer for a version not
yet known is kept and checked once the updates are over.
"""
from __future__ import annotations

import argparse
import array
import itertools
import json
import multiprocessing as mp
import os
import queue
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from workloads import ACCOUNT, EXAMPLES, GUARD_RAILS, REPO, seed_requests

from iam_evaluator import Decision, DecisionKind, Request
from iam_evaluator.compile import BatchDecisions
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.principals import Caller
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.api import iam_evaluator_pb2_grpc as pb_grpc
from iam_evaluator.server.client import context_values, request_columns
from iam_evaluator.store import PolicyStore, reference_decision

WORKLOADS = ("check", "batch", "stream")
METHOD = "/iam_evaluator.v1.Authorizer/"
GUARD_RAILS_ARN = f"arn:aws:iam::{ACCOUNT}:policy/GuardRails"
FLIPPED_REGION = "ap-southeast-2"
UNEVALUABLE = 0
"""The expected code of a request that cannot be evaluated (answered ImplicitDeny with an error); the
other expected codes are ``DecisionKind.code``, the proto's numbers."""


def expected_code(decision: Decision) -> int:
    return UNEVALUABLE if decision.error else decision.decision.code


def expected_codes_of(decided: BatchDecisions) -> bytes:
    codes = bytearray(decided.codes)
    for i in decided.errors:
        codes[i] = UNEVALUABLE
    return bytes(codes)


def answered(code: int) -> int:
    """The decision a result carries for an expected code."""
    return code or DecisionKind.IMPLICIT_DENY.code
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
CALL_TIMEOUT = 30.0
OPEN_LOOP_SENDERS = 4
"""Threads per client process that send on schedule with --rate: calls in flight at once."""
REFERENCE_SAMPLE = 1000


# --- the seed workload: its store, its requests and their expected answers ---------------------------------

def guard_rails(variant: int) -> dict:
    """Variant 0 is the workload's guard rails; variant 1 also approves FLIPPED_REGION."""
    document = json.loads(json.dumps(GUARD_RAILS))
    if variant:
        condition = document["Statement"][0]["Condition"]["StringNotEquals"]
        condition["aws:RequestedRegion"] = [*condition["aws:RequestedRegion"], FLIPPED_REGION]
    return document


def request_dicts(requests: list[Request]) -> list[dict]:
    """Requests as the JSON objects clients send (the owner is the default one, so it is left out)."""
    return [{"principal": r.principal, "action": r.action, "resource": r.resource,
             "context": {key: list(value) if isinstance(value, tuple) else value for key, value in r.context.items()}}
            for r in requests]


def seed_snapshot(requests: list[dict], variant: int = 0) -> dict:
    """The seed policies as managed policies, attached to a role or user for every principal of ``requests``
    (a role session's role)."""
    policies = [{"arn": f"arn:aws:iam::aws:policy/{path.stem}", "document": json.loads(path.read_text())}
                for path in sorted(EXAMPLES.glob("*.json"))]
    policies.append({"arn": GUARD_RAILS_ARN, "document": guard_rails(variant)})
    arns = set()
    for principal in {r["principal"] for r in requests}:
        caller = Caller.parse(principal)
        arns.add(f"arn:aws:iam::{caller.account}:role/{caller.role_name}" if caller.kind == "assumed-role"
                 else principal)
    return {"managed_policies": policies,
            "principals": [{"arn": arn, "managed_policies": [p["arn"] for p in policies]} for arn in sorted(arns)]}


def write_store(directory: Path, snapshot: dict) -> Path:
    """A store directory (the layout of ``evaluator/store.py``) holding ``snapshot``."""
    for section, entries in snapshot.items():
        folder = directory / section
        folder.mkdir(parents=True, exist_ok=True)
        for i, entry in enumerate(entries):
            (folder / f"{i:03d}-{entry['arn'].rsplit('/', 1)[-1]}.json").write_text(json.dumps(entry, indent=2))
    return directory


def expected_codes(snapshot: dict, requests: list[dict]) -> tuple[bytes, dict[int, str]]:
    """The compiled engine's decision code for each request against the store ``snapshot``, and the errors;
    a sample is checked against the reference evaluator first."""
    store = PolicyStore.from_json(json.dumps(snapshot))
    compiled = CompiledStore(store)
    decided = compiled.evaluate_columns([r["principal"] for r in requests], [r["action"] for r in requests],
                                        [r["resource"] for r in requests], [r["context"] for r in requests])
    codes = expected_codes_of(decided)
    for i, r in enumerate(requests[:REFERENCE_SAMPLE]):
        want = reference_decision(store, Request.create(r["principal"], r["action"], r["resource"], r["context"]))
        if expected_code(want) != codes[i]:
            raise AssertionError(f"request {i}: the compiled store says {codes[i]}, the reference "
                                 f"{want.decision} ({r})")
    return codes, dict(decided.errors)


def result_messages(codes: bytes, errors: dict[int, str]) -> list[pb.CheckResult]:
    return [pb.CheckResult(decision=answered(code), error=errors.get(i, "")) for i, code in enumerate(codes)]


@dataclass
class Prepared:
    """A client's calls, serialized, with each one's expected answer per guard-rails variant."""

    batch_sizes: list[int]
    batch_payloads: list[bytes]       # CheckBatchRequest
    stream_payloads: list[bytes]      # the same with batch_id = index + 1
    batch_codes: list[tuple[bytes, bytes]]
    batch_prefixes: list[tuple[bytes, bytes]]  # the response's serialized results: it starts with them
    check_payloads: list[bytes]       # CheckRequest
    check_codes: tuple[bytes, bytes]
    flipped: int                      # requests whose decision the variants change


def prepare(requests: list[dict], batch_size: int) -> Prepared:
    decided = [expected_codes(seed_snapshot(requests, variant), requests) for variant in (0, 1)]
    batches = [range(start, min(start + batch_size, len(requests))) for start in range(0, len(requests), batch_size)]
    payloads, stream_payloads, codes, prefixes = [], [], [], []
    for index, rows in enumerate(batches):
        columns = request_columns([requests[i] for i in rows])
        payloads.append(pb.CheckBatchRequest(columns=columns).SerializeToString())
        stream_payloads.append(pb.CheckBatchRequest(columns=columns, batch_id=index + 1).SerializeToString())
        per_variant = [(all_codes[rows.start:rows.stop], {i - rows.start: e for i, e in errors.items() if i in rows})
                       for all_codes, errors in decided]
        codes.append(tuple(c for c, _ in per_variant))
        prefixes.append(tuple(pb.CheckBatchResponse(results=result_messages(c, e)).SerializeToString()
                              for c, e in per_variant))
    checks = [pb.CheckRequest(principal=r["principal"], action=r["action"], resource=r["resource"],
                              context={key: context_values(value) for key, value in r["context"].items()})
              .SerializeToString() for r in requests]
    flipped = sum(a != b for a, b in zip(decided[0][0], decided[1][0], strict=True))
    return Prepared([len(rows) for rows in batches], payloads, stream_payloads, codes, prefixes, checks,
                    (decided[0][0], decided[1][0]), flipped)


# --- which variant each store version serves -------------------------------------------------------------

class Versions:
    """The guard-rails variant of each store version. With updates, ``base`` is the version the run starts from
    and ``variants[v - base]`` is v's variant, or -1 while its StoreChange reply has not come back; without,
    every version serves variant 0."""

    def __init__(self, base: int | None, variants) -> None:
        self.base = base
        self.variants = variants  # shared memory (RawArray of signed bytes), or None

    def variant(self, version: int) -> int | None:
        if self.variants is None:
            return 0
        slot = version - self.base
        if 0 <= slot < len(self.variants) and self.variants[slot] >= 0:
            return self.variants[slot]
        return None


# --- a client process ----------------------------------------------------------------------------------------

@dataclass
class Plan:
    target: str
    client_id: int
    clients: int
    mix: dict[str, float]
    duration: float
    rate: float | None
    token: str | None
    prepared: Prepared


@dataclass
class Tally:
    calls: int = 0
    checks: int = 0
    wrong: int = 0
    errors: Counter = field(default_factory=Counter)
    latencies: array.array = field(default_factory=lambda: array.array("d"))


class Stream:
    """One long-lived CheckStream: send a batch, read its answer."""

    def __init__(self, channel: grpc.Channel, metadata: tuple, timeout: float) -> None:
        self._outbox: queue.Queue = queue.Queue()
        method = channel.stream_stream(METHOD + "CheckStream")  # no serializers: bytes in, bytes out
        self._responses = method(iter(self._outbox.get, None), timeout=timeout, metadata=metadata)

    def call(self, payload: bytes) -> bytes:
        self._outbox.put(payload)
        return next(self._responses)

    def close(self) -> None:
        self._outbox.put(None)
        for _ in self._responses:
            pass


class Client:
    """A client process's channel and calls. Closed loop, one sender (this thread) makes each call when the
    last is answered; open loop, OPEN_LOOP_SENDERS threads take the scheduled send times in turn, so a slow
    answer delays no other call (blocking calls from a few threads cost the client less CPU than futures)."""

    def __init__(self, plan: Plan, versions: Versions) -> None:
        self.plan = plan
        self.prepared = plan.prepared
        self.versions = versions
        self.channel = grpc.insecure_channel(plan.target, CHANNEL_OPTIONS)
        self.metadata = (("authorization", f"Bearer {plan.token}"),) if plan.token else ()
        self.unary = {"check": self.channel.unary_unary(METHOD + "Check"),  # no serializers: bytes in, bytes out
                      "batch": self.channel.unary_unary(METHOD + "CheckBatch")}
        self.senders = [Sender(self, plan.client_id * OPEN_LOOP_SENDERS + i)
                        for i in range(OPEN_LOOP_SENDERS if plan.rate else 1)]
        self._slots = itertools.count()  # the next call's number, shared by the senders

    def warm_up(self) -> None:
        """A few unrecorded calls of each workload of the mix, from every sender."""
        for sender in self.senders:
            for kind in WORKLOADS:
                for i in range(3 if self.plan.mix.get(kind) else 0):
                    sender.call(kind, i)

    def run(self, start: float) -> None:
        if len(self.senders) == 1:
            self.senders[0].run(start, self._slots)
            return
        threads = [threading.Thread(target=sender.run, args=(start, self._slots)) for sender in self.senders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def close(self) -> None:
        for sender in self.senders:
            if sender.stream is not None:
                sender.stream.close()
        self.channel.close()


class Sender:
    """One thread's calls, each sent, awaited and judged in turn, with its own tallies."""

    def __init__(self, client: Client, seed: int) -> None:
        self.client = client
        self.prepared = client.prepared
        self.versions = client.versions
        self.stream: Stream | None = None
        self.tallies = {kind: Tally() for kind in WORKLOADS}
        self.pending: list[tuple[str, int, bytes]] = []  # answers from versions not yet known
        self.variants_seen: Counter = Counter()  # answers judged against each guard-rails variant
        self.rng = random.Random(seed)

    def run(self, start: float, slots: Iterator[int]) -> None:
        """Call until ``start + duration``: at each call's scheduled time with ``rate``, else as soon as the
        last call is answered. Latency counts from the scheduled time."""
        plan = self.client.plan
        kinds = [kind for kind in WORKLOADS if plan.mix.get(kind)]
        weights = [plan.mix[kind] for kind in kinds]
        first = start + plan.client_id / plan.rate if plan.rate else start
        end = start + plan.duration
        for n in slots:
            if plan.rate:
                scheduled = first + n * plan.clients / plan.rate
                if scheduled >= end:
                    return
                delay = scheduled - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            else:
                scheduled = time.monotonic()
                if scheduled >= end:
                    return
            kind = self.rng.choices(kinds, weights)[0]
            index = plan.client_id * 7919 + n  # clients start at different requests
            answer = self.call(kind, index)
            if answer is None:
                continue
            tally = self.tallies[kind]
            tally.calls += 1
            tally.latencies.append(time.monotonic() - scheduled)
            self.judge(kind, index % (len(self.prepared.check_payloads) if kind == "check" else
                                      len(self.prepared.batch_payloads)), answer)

    def call(self, kind: str, index: int) -> bytes | None:
        """One call of ``kind`` with the ``index``-th prepared request(s); None if it failed (counted)."""
        prepared, client = self.prepared, self.client
        try:
            if kind == "check":
                payload = prepared.check_payloads[index % len(prepared.check_payloads)]
                return client.unary["check"](payload, timeout=CALL_TIMEOUT, metadata=client.metadata)
            if kind == "batch":
                payload = prepared.batch_payloads[index % len(prepared.batch_payloads)]
                return client.unary["batch"](payload, timeout=CALL_TIMEOUT, metadata=client.metadata)
            if self.stream is None:
                self.stream = Stream(client.channel, client.metadata, client.plan.duration + 2 * CALL_TIMEOUT)
            return self.stream.call(prepared.stream_payloads[index % len(prepared.stream_payloads)])
        except (grpc.RpcError, StopIteration) as exc:
            self.tallies[kind].errors[exc.code().name if isinstance(exc, grpc.RpcError) else "STREAM_ENDED"] += 1
            if kind == "stream":
                self.stream = None  # that stream is over: the next stream call opens another
            return None

    def judge(self, kind: str, index: int, raw: bytes, final: bool = False) -> None:
        """Count the answer's checks, and the wrong ones; an answer from an unknown version waits (until
        ``final``, when it counts as wrong)."""
        tally = self.tallies[kind]
        if kind == "check":
            response = pb.CheckResponse.FromString(raw)
            variant = self.versions.variant(response.store_version)
            if variant is None and not final:
                self.pending.append((kind, index, raw))
                return
            tally.checks += 1
            self.variants_seen[variant] += 1
            expected = b"" if variant is None else self.prepared.check_codes[variant][index:index + 1]
            tally.wrong += _wrong([response.result], expected)
            return
        size = self.prepared.batch_sizes[index]
        batch_id = index + 1 if kind == "stream" else 0
        prefixes = self.prepared.batch_prefixes[index]
        for prefix in prefixes:  # fast path: the answer is byte for byte the expected one
            if raw.startswith(prefix):
                tail = pb.CheckBatchResponse.FromString(memoryview(raw)[len(prefix):])
                served = self.versions.variant(tail.store_version)
                if not tail.results and not tail.error and tail.batch_id == batch_id and served is not None \
                        and prefixes[served] == prefix:
                    tally.checks += size
                    self.variants_seen[served] += 1
                    return
                break
        response = pb.CheckBatchResponse.FromString(raw)
        if response.error:
            tally.errors["BATCH_ERROR"] += 1
            return
        served = self.versions.variant(response.store_version)
        if served is None and not final:
            self.pending.append((kind, index, raw))
            return
        tally.checks += len(response.results)
        self.variants_seen[served] += 1
        if served is None or response.batch_id != batch_id:
            tally.wrong += max(size, len(response.results))
        else:
            tally.wrong += _wrong(response.results, self.prepared.batch_codes[index][served])


def _wrong(results, codes: bytes) -> int:
    """How many results differ from the expected codes (in decision, or in having an error)."""
    wrong = abs(len(results) - len(codes))
    for result, code in zip(results, codes, strict=False):
        wrong += result.decision != answered(code) or bool(result.error) != (code == UNEVALUABLE)
    return wrong


def client_main(plan: Plan, base: int | None, variants, ready, go, start_at, updates_done, results) -> None:
    """A client process: warm up, wait for the start, run, judge what waited, report."""
    client = Client(plan, Versions(base, variants))
    try:
        client.warm_up()
    except Exception as exc:  # report, never hang the run
        ready.put((plan.client_id, repr(exc)))
        return
    ready.put((plan.client_id, None))
    go.wait()
    cpu = time.process_time()
    client.run(start_at.value)
    finished = time.monotonic()
    cpu = time.process_time() - cpu
    updates_done.wait()
    senders = client.senders
    waited = sum(len(sender.pending) for sender in senders)
    for sender in senders:
        for kind, index, raw in sender.pending:
            sender.judge(kind, index, raw, final=True)
    client.close()
    tallies = {}
    for kind in WORKLOADS:
        parts = [sender.tallies[kind] for sender in senders]
        latencies = array.array("d")
        for part in parts:
            latencies.extend(part.latencies)
        tallies[kind] = {"calls": sum(t.calls for t in parts), "checks": sum(t.checks for t in parts),
                         "wrong": sum(t.wrong for t in parts), "latencies": latencies.tobytes(),
                         "errors": dict(sum((t.errors for t in parts), Counter()))}
    results.put({"client": plan.client_id, "finished": finished, "cpu_seconds": cpu, "judged_late": waited,
                 "variants_seen": dict(sum((sender.variants_seen for sender in senders), Counter())),
                 "tallies": tallies})


# --- store updates -------------------------------------------------------------------------------------------

def put_guard_rails(admin, variant: int, token: str) -> int:
    policy = pb.StoredPolicy(kind=pb.MANAGED, name=GUARD_RAILS_ARN, document=json.dumps(guard_rails(variant)))
    change = admin.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=CALL_TIMEOUT,
                             metadata=(("authorization", f"Bearer {token}"),))
    return change.version


def update_loop(admin, token: str, versions: Versions, start: float, every: float, duration: float,
                report: dict) -> None:
    """Swap the guard-rails variant every ``every`` seconds of the run, recording each new version's variant."""
    latencies, failures, variant, n = [], Counter(), 0, 1
    while start + n * every < start + duration:
        time.sleep(max(0.0, start + n * every - time.monotonic()))
        variant, n = 1 - variant, n + 1
        sent = time.monotonic()
        try:
            version = put_guard_rails(admin, variant, token)
        except grpc.RpcError as exc:
            failures[exc.code().name] += 1
            variant = 1 - variant
            continue
        latencies.append(time.monotonic() - sent)
        slot = version - versions.base
        if not 0 <= slot < len(versions.variants):
            failures["VERSION_OUT_OF_RANGE"] += 1
            continue
        versions.variants[slot] = variant
    report.update(updates=len(latencies), failed=dict(failures), put_latency_ms=_percentiles(latencies))


# --- the server ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(store: Path, state_dir: Path, token: str, log: Path,
                 processes: int) -> tuple[subprocess.Popen, str]:
    """``iam-eval serve`` on the store, in a subprocess; returns once health says SERVING on enough fresh
    connections that every server process has answered (the kernel spreads connections over them)."""
    target = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "IAM_EVAL_ADMIN_TOKEN": token, "IAM_EVAL_LOG_LEVEL": "warning",
           "IAM_EVAL_PROCESSES": str(processes)}
    process = subprocess.Popen([sys.executable, "-m", "iam_evaluator", "serve", "--store", str(store), "--state-dir",
                                str(state_dir), "--listen", target, "--metrics-listen", ""],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 120
    serving_in_a_row = 0
    while time.monotonic() < deadline and process.poll() is None:
        with grpc.insecure_channel(target) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1,
                                                                   wait_for_ready=True).status
            except grpc.RpcError:
                status = None
        serving_in_a_row = serving_in_a_row + 1 if status == health_pb2.HealthCheckResponse.SERVING else 0
        if serving_in_a_row >= 10 * processes:
            return process, target
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"the server did not come up; its log:\n{log.read_text()[-4000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def machine_busy_seconds() -> float:
    """CPU time all processes of the machine have used so far (not idle, not waiting for I/O)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of a process and its children (the server's processes)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process has gone
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# --- the run -------------------------------------------------------------------------------------------------

def _percentiles(latencies) -> dict[str, float | None]:
    ordered = sorted(latencies)
    if not ordered:
        return {"p50": None, "p99": None, "p99.9": None, "max": None}

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))] * 1000, 3)
    return {"p50": rank(0.5), "p99": rank(0.99), "p99.9": rank(0.999), "max": round(ordered[-1] * 1000, 3)}


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind.strip() not in WORKLOADS:
            raise argparse.ArgumentTypeError(f"--mix: {kind!r} is not one of {', '.join(WORKLOADS)}")
        mix[kind.strip()] = float(weight or 1)
    if not any(mix.values()):
        raise argparse.ArgumentTypeError("--mix: give some workload a weight above 0")
    return mix


def run(args: argparse.Namespace, target: str, token: str | None, server_pid: int | None) -> dict:
    requests = request_dicts(seed_requests(args.requests))
    prepared = prepare(requests, args.batch_size)
    print(f"prepared {len(requests)} requests in {len(prepared.batch_payloads)} batches; "
          f"the guard-rails variants differ on {prepared.flipped}", file=sys.stderr)
    with grpc.insecure_channel(target, CHANNEL_OPTIONS) as channel:
        admin = pb_grpc.PolicyAdminStub(channel)
        if args.update_every:
            if not token:
                raise SystemExit("--update-every needs the admin token (--admin-token or IAM_EVAL_ADMIN_TOKEN)")
            base = put_guard_rails(admin, 0, token)  # the run starts from variant 0, whatever was served before
            variants = mp.get_context("spawn").RawArray("b", int(args.duration / args.update_every) + 2)
            variants[:] = [-1] * len(variants)
            variants[0] = 0
            versions = Versions(base, variants)
        else:
            base, variants, versions = None, None, Versions(None, None)
        context = mp.get_context("spawn")
        ready, results, go, updates_done = context.Queue(), context.Queue(), context.Event(), context.Event()
        start_at = context.RawValue("d", 0.0)
        processes = [context.Process(target=client_main, daemon=True, args=(
            Plan(target, i, args.clients, args.mix, args.duration, args.rate, args.check_token, prepared),
            base, variants, ready, go, start_at, updates_done, results)) for i in range(args.clients)]
        for process in processes:
            process.start()
        for _ in processes:
            client_id, failure = ready.get(timeout=300)
            if failure:
                raise SystemExit(f"client {client_id} failed to warm up: {failure}")
        start_at.value = start = time.monotonic() + 0.1
        server_cpu = cpu_seconds(server_pid) if server_pid else None
        machine_cpu = machine_busy_seconds()
        go.set()
        update_report: dict = {}
        if args.update_every:
            update_loop(admin, token, versions, start, args.update_every, args.duration, update_report)
        updates_done.set()
        reports = [results.get(timeout=args.duration + 600) for _ in processes]
        machine_cpu = machine_busy_seconds() - machine_cpu
        if server_cpu is not None:
            server_cpu = cpu_seconds(server_pid) - server_cpu
        for process in processes:
            process.join(30)
    elapsed = max(report["finished"] for report in reports) - start
    summary = {}
    for kind in WORKLOADS:
        tallies = [report["tallies"][kind] for report in reports]
        latencies = array.array("d")
        for tally in tallies:
            latencies.frombytes(tally["latencies"])
        calls = sum(t["calls"] for t in tallies)
        if not calls and not any(t["errors"] for t in tallies):
            continue
        checks = sum(t["checks"] for t in tallies)
        errors = sum((Counter(t["errors"]) for t in tallies), Counter())
        summary[kind] = {"calls": calls, "checks": checks, "checks_per_s": round(checks / elapsed),
                         "calls_per_s": round(calls / elapsed, 1), "latency_ms": _percentiles(latencies),
                         "errors": sum(errors.values()), "error_codes": dict(errors),
                         "wrong": sum(t["wrong"] for t in tallies)}
    return {
        "config": {"target": target, "serve": server_pid is not None, "workload": args.workload,
                   "clients": args.clients, "batch_size": args.batch_size, "duration": args.duration,
                   "mix": args.mix, "rate": args.rate, "update_every": args.update_every,
                   "requests": len(requests), "cpus": os.cpu_count(),
                   "server_processes": args.server_processes if server_pid else None},
        "elapsed_s": round(elapsed, 3),
        "workloads": summary,
        "total": {"checks": sum(s["checks"] for s in summary.values()),
                  "checks_per_s": round(sum(s["checks"] for s in summary.values()) / elapsed),
                  "errors": sum(s["errors"] for s in summary.values()),
                  "wrong": sum(s["wrong"] for s in summary.values())},
        "updates": update_report or None,
        "judged_late": sum(report["judged_late"] for report in reports),
        "answers_per_variant": {str(variant): count for variant, count in sorted(
            sum((Counter(report["variants_seen"]) for report in reports), Counter()).items(), key=str)},
        "cpu_seconds": {"server": None if server_cpu is None else round(server_cpu, 2),
                        "clients": round(sum(report["cpu_seconds"] for report in reports), 2),
                        "machine": round(machine_cpu, 2)},
    }


def print_table(report: dict) -> None:
    config = report["config"]
    print(f"{config['workload']} workload, {config['clients']} client(s), batch size {config['batch_size']}, "
          f"{report['elapsed_s']} s" + (f", {config['rate']} calls/s" if config["rate"] else ", closed loop")
          + (f", store update every {config['update_every']} s" if config["update_every"] else ""))
    print(f"{'workload':8} {'calls':>9} {'checks':>11} {'checks/s':>11} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'p99.9 ms':>9} {'errors':>7} {'wrong':>6}")
    for kind, s in report["workloads"].items():
        latency = s["latency_ms"]
        cells = [f"{latency[q]:8.3f}" if latency[q] is not None else f"{'-':>8}" for q in ("p50", "p99", "p99.9")]
        print(f"{kind:8} {s['calls']:9,} {s['checks']:11,} {s['checks_per_s']:11,} {s['calls_per_s']:9,.1f} "
              f"{cells[0]} {cells[1]} {cells[2]:>9} {s['errors']:7,} {s['wrong']:6,}")
    cpu = report["cpu_seconds"]
    print(f"cpu seconds: server {cpu['server']}, clients {cpu['clients']}, whole machine {cpu['machine']} "
          f"(of {report['elapsed_s']} s x {report['config']['cpus']} cpus; the rest is other processes)")
    if report["updates"]:
        updates = report["updates"]
        print(f"store updates: {updates['updates']} made, failed {updates['failed'] or 0}, PutPolicy latency ms "
              f"{updates['put_latency_ms']}; answers per guard-rails variant {report['answers_per_variant']} "
              f"({report['judged_late']} judged after the updates)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--target", metavar="HOST:PORT", help="a running server that serves the seed store")
    where.add_argument("--serve", action="store_true", help="start a server here (the default)")
    where.add_argument("--write-store", metavar="DIR", help="only write the seed store to DIR, for --target")
    parser.add_argument("--workload", choices=["seed"], default="seed")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--mix", type=parse_mix, default={"batch": 1.0}, help="check=W,batch=W,stream=W")
    parser.add_argument("--rate", type=float, help="total calls per second, open loop (default: closed loop)")
    parser.add_argument("--server-processes", type=int, default=os.cpu_count() or 1,
                        help="with --serve: server processes (the server's processes setting; default: all cores)")
    parser.add_argument("--update-every", type=float, metavar="SECONDS", help="swap the guard rails this often")
    parser.add_argument("--requests", type=int, default=16_000, help="distinct requests prepared")
    parser.add_argument("--admin-token", default=os.environ.get("IAM_EVAL_ADMIN_TOKEN"))
    parser.add_argument("--check-token", default=os.environ.get("IAM_EVAL_CHECK_TOKEN"))
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    if args.write_store:
        write_store(Path(args.write_store), seed_snapshot(request_dicts(seed_requests(args.requests))))
        return 0
    if args.target:
        report = run(args, args.target, args.admin_token, None)
    else:
        token = args.admin_token or secrets.token_hex(16)
        with tempfile.TemporaryDirectory(prefix="loadgen-") as scratch:
            root = Path(scratch)
            store = write_store(root / "store", seed_snapshot(request_dicts(seed_requests(args.requests))))
            process, target = start_server(store, root / "versions", token, root / "server.log",
                                           args.server_processes)
            try:
                report = run(args, target, token, process.pid)
            finally:
                stop_server(process)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["total"]["errors"] == 0 and report["total"]["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
