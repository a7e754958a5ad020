"""The service on a realistic organisation store: time to SERVING, CheckBatch throughput with mixed principals,
and how soon a changed managed policy is served.

    python3 ../shared/corpus/make_store.py --copies 10 --resource-policies 2000 --all-managed \\
        --requests 200000 --requests-seed 3 --out /tmp/org.json --requests-out /tmp/org-requests.jsonl
    python3 benchmarks/store_service.py --store /tmp/org.json --requests /tmp/org-requests.jsonl

It starts ``iam-eval serve`` on the store (``--server-processes``), sends CheckBatch calls of ``--batch-size``
requests as columns from ``--clients`` client processes for ``--duration`` seconds, checks every answer of the
first pass over the requests against the in-process compiled store, then puts a new version of the managed
policy attached to the most principals and times how long after the OK a Check shows it. Prints a table,
and writes JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc

from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.api import iam_evaluator_pb2_grpc as pb_grpc
from iam_evaluator.server.client import request_columns
from iam_evaluator.store import PolicyStore

TOKEN = "store-service-benchmark-admin-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_serving(metrics: str, process: subprocess.Popen, started: float, timeout: float = 120) -> float:
    """Seconds from ``started`` until /healthz says every server process serves."""
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://{metrics}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit("the server did not become SERVING")


def client(target: str, batches: list[bytes], duration: float, results) -> None:
    """Send the prepared CheckBatch messages round robin until ``duration`` passes; report checks and calls."""
    with grpc.insecure_channel(target, [("grpc.max_receive_message_length", 64 << 20)]) as channel:
        call = channel.unary_unary("/iam_evaluator.v1.Authorizer/CheckBatch")
        checks = calls = 0
        start = time.perf_counter()
        for payload in itertools.cycle(batches):
            if time.perf_counter() - start >= duration:
                break
            answer = pb.CheckBatchResponse.FromString(call(payload, timeout=60))
            checks += len(answer.results)
            calls += 1
        results.put((checks, calls, time.perf_counter() - start))


def most_attached(store: PolicyStore) -> tuple[str, int]:
    counts = Counter(arn for p in store.principals.values() for arn in p.managed_policy_arns)
    for group in store.groups.values():
        members = sum(1 for p in store.principals.values() if group.name in p.group_names)
        counts.update({arn: members for arn in group.managed_policy_arns})
    return counts.most_common(1)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="store snapshot (make_store.py --out)")
    parser.add_argument("--requests", required=True, help="its request stream (make_store.py --requests-out)")
    parser.add_argument("--count", type=int, default=20_000, help="requests sent (round robin)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--server-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)

    store = PolicyStore.from_json(Path(args.store).read_bytes())
    compiled = CompiledStore(store)
    with open(args.requests) as lines:
        requests = [json.loads(line) for line in itertools.islice(lines, args.count)]
    keys = compiled.key_ids
    for request in requests:  # the keys no policy tests would only weigh on the wire
        request["context"] = {k: v for k, v in (request.get("context") or {}).items() if k.lower() in keys}
    chunks = [requests[i:i + args.batch_size] for i in range(0, len(requests), args.batch_size)]
    batches = [pb.CheckBatchRequest(columns=request_columns(chunk)).SerializeToString() for chunk in chunks]
    expected = [compiled.evaluate_columns([r["principal"] for r in chunk], [r["action"] for r in chunk],
                                          [r["resource"] for r in chunk], [r["context"] for r in chunk]).codes
                for chunk in chunks]

    target, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as state:
        started = time.perf_counter()
        server = subprocess.Popen(
            [shutil.which("iam-eval") or "iam-eval", "serve", "--store", args.store, "--state-dir", state,
             "--listen", target, "--metrics-listen", metrics],
            env={**os.environ, "IAM_EVAL_PROCESSES": str(args.server_processes), "IAM_EVAL_ADMIN_TOKEN": TOKEN,
                 "IAM_EVAL_MAX_BATCH": str(max(args.batch_size, 10_000)), "IAM_EVAL_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            serving_seconds = wait_serving(metrics, server, started)
            wrong = 0
            with grpc.insecure_channel(target, [("grpc.max_receive_message_length", 64 << 20)]) as channel:
                call = channel.unary_unary("/iam_evaluator.v1.Authorizer/CheckBatch")
                for payload, codes in zip(batches, expected, strict=True):
                    answer = pb.CheckBatchResponse.FromString(call(payload, timeout=120))
                    got = bytes(r.decision for r in answer.results)  # the proto's numbers are the codes
                    wrong += sum(a != b for a, b in zip(got, codes, strict=True))
            results: multiprocessing.Queue = multiprocessing.Queue()
            workers = [multiprocessing.Process(target=client, args=(target, batches, args.duration, results))
                       for _ in range(args.clients)]
            for worker in workers:
                worker.start()
            measured = [results.get() for _ in workers]
            for worker in workers:
                worker.join()
            checks = sum(m[0] for m in measured)
            seconds = max(m[2] for m in measured)
            policy_arn, attached = most_attached(store)
            served_after = put_and_wait(target, store, policy_arn)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
    report = {"store": args.store, "principals": len(store.principals), "serving_seconds": round(serving_seconds, 2),
              "checks_per_second": round(checks / seconds), "wrong_answers": wrong, "clients": args.clients,
              "server_processes": args.server_processes, "batch_size": args.batch_size,
              "changed_policy": policy_arn, "principals_attached": attached,
              "served_seconds_after_ok": round(served_after, 3)}
    for name, value in report.items():
        print(f"{name:>22}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if wrong else 0


def put_and_wait(target: str, store: PolicyStore, policy_arn: str) -> float:
    """Put a new version of ``policy_arn`` that denies a probe action; the seconds from the OK until Check
    answers with that Deny from every server process (20 answers in a row; the time of the first of them)."""
    principal = next(p.arn for p in store.principals.values() if policy_arn in p.managed_policy_arns)
    entry = next(e for e in json.loads(store.to_json())["managed_policies"] if e["arn"] == policy_arn)
    changed = dict(entry["document"])
    changed["Statement"] = [*(changed["Statement"] if isinstance(changed["Statement"], list)
                              else [changed["Statement"]]),
                            {"Sid": "BenchmarkProbe", "Effect": "Deny", "Action": "benchmark:Probe", "Resource": "*"}]
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    probe = pb.CheckRequest(principal=principal, action="benchmark:Probe", resource="*", explain=True)
    with grpc.insecure_channel(target) as channel:
        admin, authorizer = pb_grpc.PolicyAdminStub(channel), pb_grpc.AuthorizerStub(channel)
        admin.PutPolicy(pb.PutPolicyRequest(policy=pb.StoredPolicy(kind=pb.MANAGED, name=policy_arn,
                                                                   document=json.dumps(changed))),
                        metadata=metadata, timeout=120)
        ok = time.perf_counter()
        seen, first = 0, ok
        while seen < 20:  # calls may reach any server process: see the change on 20 calls in a row
            answer = authorizer.Check(probe, timeout=30)
            if answer.result.decision == pb.EXPLICIT_DENY:
                first = time.perf_counter() if seen == 0 else first
                seen += 1
            else:
                seen = 0
            if time.perf_counter() - ok > 60:
                raise SystemExit("the change was not served within 60 s")
        return first - ok


if __name__ == "__main__":
    sys.exit(main())
