"""The service as people run it: ``iam-eval serve`` as a process, ``iam-eval client`` against it, SIGTERM
draining, SIGKILL during changes followed by a restart on a whole version, and configuration errors."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest

from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client, request_columns
from iam_evaluator.store import PolicyStore

from .conftest import REPO
from .service_helpers import (
    ACCOUNT,
    ALICE,
    EXAMPLE_STORE,
    IMAGE,
    ROLE,
    RPC_TIMEOUT,
    UNKNOWN,
    LockstepStream,
    ServerProcess,
    cli_environment,
    copy_store,
    document,
    expected_decision,
    outcome,
    refuses_new_calls,
    result_outcome,
    sample_requests,
    wait_until,
)

ADMIN_TOKEN = "process-admin-secret"
COUNTER = f"arn:aws:iam::{ACCOUNT}:policy/Counter"


def serve(store: Path, state_dir: Path, *extra: str, environment: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess("--store", str(store), "--state-dir", str(state_dir), "--listen", "127.0.0.1:0",
                         "--metrics-listen", "127.0.0.1:0", *extra, environment=environment)


@pytest.fixture
def server_process(tmp_path):
    started: list[ServerProcess] = []

    def start(*extra: str, state_dir: Path | None = None, **environment: str) -> ServerProcess:
        store = tmp_path / "store" if (tmp_path / "store").exists() else copy_store(tmp_path)
        process = serve(store, state_dir or tmp_path / "state", *extra, environment=environment)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def run_client(target: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iam_evaluator", "client", "--target", target,
                           "--timeout", str(RPC_TIMEOUT), *args], cwd=REPO, env=cli_environment(),
                          capture_output=True, text=True, timeout=60)


def test_the_client_command_checks_against_the_served_store(server_process):
    process = server_process()
    target = process.start_serving()
    store = PolicyStore.from_directory(EXAMPLE_STORE)
    cases = [  # (principal, action, region): exit 0 for Allow, 1 for either deny
        (ROLE, "imagebuilder:CreateImage", "us-east-1", 0),
        (ROLE, "imagebuilder:CreateImage", "ap-south-1", 1),
        (ALICE, "imagebuilder:CreateImage", "us-east-1", 1),
        (UNKNOWN, "imagebuilder:GetImage", "us-east-1", 1),
    ]
    for principal, action, region, exit_code in cases:
        item = {"principal": principal, "action": action, "resource": IMAGE,
                "context": {"aws:RequestedRegion": region}}
        expected = expected_decision(store, item)
        assert (expected.allowed, exit_code) in ((True, 0), (False, 1)), "the oracle disagrees"
        done = run_client(target, "check", "--principal", principal, "--action", action, "--resource", IMAGE,
                          "--context", f"aws:RequestedRegion={region}", "--explain", "--json")
        assert done.returncode == exit_code, done.stderr
        response = json.loads(done.stdout)
        assert response["decision"] == str(expected.decision)
        assert response["statements"] == [{"policy": s.policy, "index": s.index, "sid": s.sid, "effect": str(s.effect)}
                                          for s in expected.statements]
        assert response["decided_by"] == expected.decided_by
        assert response["store_version"] == 1  # a number, as in every JSON output

    plain = run_client(target, "check", "--principal", ROLE, "--action", "imagebuilder:CreateImage",
                       "--resource", IMAGE, "--context", "aws:RequestedRegion=us-east-1")
    assert (plain.returncode, plain.stdout.splitlines()[0]) == (0, "Allow")
    bad = run_client(target, "check", "--principal", "alice", "--action", "s3:GetObject", "--resource", "*")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "'alice'" in bad.stderr

    metrics_port = process.wait_for_log("listening")["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=RPC_TIMEOUT) as response:
        text = response.read().decode()
    assert 'iam_eval_checks_total{decision="Allow"} 2.0' in text
    assert "iam_eval_store_version 1.0" in text


def test_sigterm_lets_the_in_flight_stream_finish_then_exits_0(server_process):
    process = server_process(IAM_EVAL_GRACE_SECONDS="20")
    target = process.start_serving()
    store = PolicyStore.from_directory(EXAMPLE_STORE)
    items = sample_requests()
    expected = [outcome(expected_decision(store, item)) for item in items]
    with Client(target, timeout=RPC_TIMEOUT) as client:
        stream = LockstepStream(client.authorizer.CheckStream, timeout=60)
        first = stream.send(pb.CheckBatchRequest(batch_id=1, columns=request_columns(items)))
        assert [result_outcome(r) for r in first.results] == expected

        process.process.send_signal(signal.SIGTERM)
        draining = process.wait_for_log("draining")
        assert draining["level"] == "info" and draining["grace_seconds"] == 20

        wait_until(lambda: refuses_new_calls(target), 10, "the draining server to refuse new calls")
        assert process.process.poll() is None, "the process waits for the in-flight stream"
        second = stream.send(pb.CheckBatchRequest(batch_id=2, columns=request_columns(items[::-1])))
        assert second.batch_id == 2 and [result_outcome(r) for r in second.results] == expected[::-1]
        assert stream.close() == grpc.StatusCode.OK
    assert process.wait(30) == 0
    messages = [record["message"] for record in process.records()]
    assert messages.index("draining") < messages.index("stopped")


def counter_document(turn: int) -> str:
    return document({"Sid": f"Put{turn}", "Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "*"})


def counter_sid(client: Client) -> str | None:
    """The Sid of the Counter policy being served; None when the version has none."""
    try:
        stored = client.call(client.admin.GetPolicy, pb.PolicyName(kind=pb.MANAGED, name=COUNTER))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
        return None
    return json.loads(stored.document)["Statement"][0]["Sid"]


def test_a_server_killed_during_changes_restarts_on_a_whole_version(server_process, tmp_path):
    state_dir = tmp_path / "state"
    process = server_process(IAM_EVAL_ADMIN_TOKEN=ADMIN_TOKEN)
    target = process.start_serving()
    acknowledged: dict[int, int] = {}  # version -> the put that made it
    ended: list[BaseException] = []

    def put_continuously():
        with Client(target, token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as client:
            try:
                for turn in range(1, 10_000):
                    change = client.call(client.admin.PutPolicy, pb.PutPolicyRequest(policy=pb.StoredPolicy(
                        kind=pb.MANAGED, name=COUNTER, document=counter_document(turn))))
                    acknowledged[change.version] = turn
            except grpc.RpcError as exc:
                ended.append(exc)

    putter = threading.Thread(target=put_continuously)
    putter.start()
    wait_until(lambda: len(acknowledged) >= 15 or ended, 30, "fifteen acknowledged changes")
    process.process.kill()
    putter.join(30)
    assert process.wait(30) == -signal.SIGKILL
    assert ended and ended[0].code() == grpc.StatusCode.UNAVAILABLE, "the puts went on until the kill"
    assert all(version == turn + 1 for version, turn in acknowledged.items()), "version 1 is the seed"

    restarted = server_process(state_dir=state_dir, IAM_EVAL_ADMIN_TOKEN=ADMIN_TOKEN)
    with Client(restarted.start_serving(), token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as client:
        current = client.call(client.admin.GetStoreVersion, pb.GetStoreVersionRequest()).version
        assert current >= max(acknowledged), "an acknowledged change survives the crash"
        assert current <= max(acknowledged) + 1, "at most the change in flight was committed"
        assert counter_sid(client) == f"Put{current - 1}", "the served content is that version's, whole"
        history = client.call(client.admin.ListStoreVersions, pb.ListStoreVersionsRequest())
        assert [v.version for v in history.versions] == list(range(1, current + 1)) and history.current == current
        for version in range(1, current + 1):  # every kept version loads, with its own content
            rolled = client.call(client.admin.Rollback, pb.RollbackRequest(version=version))
            assert rolled.version == current + version
            assert counter_sid(client) == (None if version == 1 else f"Put{version - 1}")
    assert not list(state_dir.glob(".v*.tmp")), "the restart removed the interrupted write"
    assert not [r for r in restarted.records() if r.get("level") in ("warning", "error")]
    assert len(restarted.records()) == len(restarted.lines), "every log line is JSON:\n" + "\n".join(restarted.lines)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CONFIG_ERRORS = {
    "listen": (["--listen", "nowhere"], {}, ["listen", "'nowhere'", "host:port"]),
    "metrics-listen": (["--metrics-listen", "127.0.0.1:99999"], {}, ["metrics_listen"]),
    "store-missing": (["--store", "/nonexistent/store"], {}, ["store", "/nonexistent/store", "does not exist"]),
    "environment-type": ([], {"IAM_EVAL_MAX_BATCH": "lots"}, ["max_batch", "IAM_EVAL_MAX_BATCH", "'lots'"]),
    "environment-range": ([], {"IAM_EVAL_WORKERS": "0"}, ["workers", "at least 1"]),
    "tls-half": ([], {"IAM_EVAL_TLS_CERT": "/nonexistent/cert.pem"}, ["tls_cert and tls_key"]),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_a_bad_setting_exits_2_naming_it(tmp_path, case):
    arguments, environment, fragments = case
    command = [sys.executable, "-m", "iam_evaluator", "serve", "--store", str(EXAMPLE_STORE), "--state-dir",
               str(tmp_path / "state"), "--listen", "127.0.0.1:0", "--metrics-listen", "", *arguments]
    done = subprocess.run(command, cwd=REPO, env=cli_environment(**environment), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr
    assert not (tmp_path / "state").exists(), "nothing was started"


def test_a_config_file_with_an_unknown_setting_exits_2(tmp_path):
    config = write(tmp_path / "server.toml", 'max_batch = 10\nmax_bach = 20\n')
    done = subprocess.run([sys.executable, "-m", "iam_evaluator", "serve", "--store", str(EXAMPLE_STORE),
                           "--config", str(config)], cwd=REPO, env=cli_environment(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert str(config) in done.stderr and "max_bach" in done.stderr


def test_a_store_that_cannot_load_exits_2_with_a_log_line(tmp_path):
    store = copy_store(tmp_path)
    broken = json.loads((store / "scps" / "FullAWSAccess.json").read_text())
    broken["document"]["Statement"][0]["Effect"] = "Perhaps"
    write(store / "scps" / "FullAWSAccess.json", json.dumps(broken))
    process = serve(store, tmp_path / "state")
    try:
        assert process.wait(60) == 2
    finally:
        process.stop()
    failure = next(r for r in process.records() if r["message"] == "cannot load the policy store")
    assert failure["level"] == "error" and "E010" in failure["error"] and "FullAWSAccess" in failure["error"]


def test_several_processes_share_the_port_and_each_change(server_process):
    """processes = 2: both processes answer on the one port, a change made through either is served
    by both, and SIGTERM drains both."""
    process = server_process(IAM_EVAL_PROCESSES="2", IAM_EVAL_ADMIN_TOKEN=ADMIN_TOKEN,
                             IAM_EVAL_WATCH_SECONDS="0.2")
    supervising = process.wait_for_log("supervising")
    target = supervising["address"]
    assert len(supervising["processes"]) == 2
    wait_until(lambda: sum(r.get("message") == "serving" for r in process.records()) == 2, 30,
               "both server processes to serve")
    store = PolicyStore.from_directory(EXAMPLE_STORE)
    item = {"principal": ROLE, "action": "imagebuilder:CreateImage", "resource": IMAGE,
            "context": {"aws:RequestedRegion": "us-east-1"}}
    assert expected_decision(store, item).allowed

    def fresh_answer():  # a new connection each time: the kernel spreads them over the processes
        with Client(target, token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as client:
            return client.check(ROLE, item["action"], IMAGE, item["context"], explain=True)

    assert all(fresh_answer().result.decision == pb.ALLOW for _ in range(10))
    with Client(target, token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as admin:
        change = admin.call(admin.admin.DeletePrincipal, pb.DeletePrincipalRequest(arn=ROLE))
    assert change.version == 2

    def every_process_serves_the_change():
        answers = [fresh_answer() for _ in range(10)]
        return all((a.store_version, a.result.decided_by) == (2, "principal") for a in answers)

    wait_until(every_process_serves_the_change, 10, "both processes to serve version 2")
    published = [r for r in process.records() if r.get("message") == "store version published"]
    assert sorted(r["store_version"] for r in published) == [1, 1, 2, 2]

    process.process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    messages = [record["message"] for record in process.records()]
    assert messages.count("draining") == 2 and messages[-1] == "stopped"
