"""The service and batch jobs under abuse and faults: credentials sent twice, weak tokens, a read-only token,
errors that echo huge inputs, addresses in use, the metrics port's paths, a supervisor or batch runner
killed outright, workers that die, an output that cannot be written, and the validate command's exit code.
Each runs a real server on loopback or the real command in a subprocess."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.api import iam_evaluator_pb2_grpc as pb_grpc
from iam_evaluator.server.client import Client
from iam_evaluator.server.config import ConfigError, load_config
from iam_evaluator.server.interceptors import status

from .conftest import EXAMPLES, REPO
from .service_helpers import (
    EXAMPLE_STORE,
    FULL_ACCESS,
    IMAGE,
    ROLE,
    RPC_TIMEOUT,
    ServerProcess,
    cli_environment,
    copy_store,
    document,
    rpc_error,
    running_service,
    wait_until,
)

ADMIN_TOKEN = "hardening-admin-token-0001"
READ_TOKEN = "hardening-read-token-0002"
CHECK_TOKEN = "hardening-check-token-0003"
GOOD_DOCUMENT = document({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"})
BAD_DOCUMENT = document({"Effect": "Perhaps", "Action": "s3:GetObject", "Resource": "*"})
POLICIES = sorted(str(p) for p in EXAMPLES.glob("*.json"))


def bearer(*tokens: str) -> tuple:
    return tuple(("authorization", f"Bearer {token}") for token in tokens)


def run_command(*args: str, timeout: float = 60, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iam_evaluator", *args], cwd=REPO,
                          env=cli_environment(**environment), capture_output=True, text=True, timeout=timeout)


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, Z…) from /proc; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: psutil is not at hand)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


# ---------------------------------------------------------------- credentials


def test_several_authorization_headers_are_refused(tmp_path):
    """Which of several credentials counts would depend on who reads them (a proxy may add one): none does."""
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN,
                         check_token=CHECK_TOKEN) as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        admin, authorizer = pb_grpc.PolicyAdminStub(channel), pb_grpc.AuthorizerStub(channel)
        check = pb.CheckRequest(principal=ROLE, action="imagebuilder:GetImage", resource=IMAGE)
        calls = {
            "Check": (lambda m: authorizer.Check(check, timeout=RPC_TIMEOUT, metadata=m), CHECK_TOKEN),
            "CheckStream": (lambda m: list(authorizer.CheckStream(iter([pb.CheckBatchRequest(requests=[check])]),
                                                                  timeout=RPC_TIMEOUT, metadata=m)), CHECK_TOKEN),
            "GetStoreVersion": (lambda m: admin.GetStoreVersion(pb.GetStoreVersionRequest(), timeout=RPC_TIMEOUT,
                                                                metadata=m), ADMIN_TOKEN),
        }
        for name, (call, token) in calls.items():
            call(bearer(token))  # one credential: accepted
            for metadata in (bearer(token, "wrong"), bearer("wrong", token), bearer(token, token)):
                error = rpc_error(lambda c=call, m=metadata: c(m))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, error.details())
                assert "2 'authorization' headers" in error.details()


WEAK_TOKENS = {"blank": " " * 20, "short": "s3cr3t-t0ken", "fifteen": "a" * 15,
               "spaces": "correct horse battery staple", "tab": "\t" + "b" * 20, "non-ascii": "pässwörd" * 3}


@pytest.mark.parametrize("setting", ["admin_token", "read_token", "check_token"])
def test_a_blank_or_short_token_is_a_configuration_error(tmp_path, setting):
    for name, token in WEAK_TOKENS.items():
        with pytest.raises(ConfigError, match=f"^{setting}: .*at least 16 characters") as refused:
            load_config(environ={}, store=str(EXAMPLE_STORE), **{setting: token})
        assert not token.strip() or token.strip() not in str(refused.value), f"{name}: a secret is never echoed"
    assert getattr(load_config(environ={}, store=str(EXAMPLE_STORE), **{setting: "x" * 16}), setting) == "x" * 16
    assert getattr(load_config(environ={}, store=str(EXAMPLE_STORE), **{setting: ""}), setting) == ""


@pytest.mark.parametrize(("setting", "token", "source"), [("admin_token", "   ", "environment"),
                                                          ("read_token", "short-token", "file"),
                                                          ("check_token", "f" * 15, "environment")])
def test_the_server_refuses_to_start_with_a_weak_token(tmp_path, setting, token, source):
    arguments = ["serve", "--store", str(EXAMPLE_STORE), "--state-dir", str(tmp_path / "state"),
                 "--listen", "127.0.0.1:0", "--metrics-listen", ""]
    environment = {}
    if source == "file":
        (tmp_path / "server.toml").write_text(f"{setting} = {json.dumps(token)}\n")
        arguments += ["--config", str(tmp_path / "server.toml")]
    else:
        environment[f"IAM_EVAL_{setting.upper()}"] = token
    try:
        done = run_command(*arguments, timeout=30, **environment)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server started with {setting} = {token!r}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {setting}: ") and "at least 16 characters" in done.stderr
    assert not (tmp_path / "state").exists(), "nothing was started"


READS = {  # every PolicyAdmin call that changes nothing
    "GetStoreVersion": pb.GetStoreVersionRequest(),
    "ListStoreVersions": pb.ListStoreVersionsRequest(),
    "GetPolicy": pb.PolicyName(kind=pb.MANAGED, name=FULL_ACCESS),
    "ListPolicies": pb.ListPoliciesRequest(),
    "GetPrincipal": pb.PrincipalName(arn=ROLE),
    "ListPrincipals": pb.ListPrincipalsRequest(),
    "ValidatePolicy": pb.ValidatePolicyRequest(document=GOOD_DOCUMENT, kind=pb.MANAGED),
    "GetContextKeys": pb.GetContextKeysRequest(principal=ROLE),
    "GetStatementUsage": pb.GetStatementUsageRequest(),
}
CHANGES = {  # refused before they are read, so an empty request will do
    "PutPolicy": pb.PutPolicyRequest(), "DeletePolicy": pb.DeletePolicyRequest(),
    "PutPrincipal": pb.PutPrincipalRequest(), "DeletePrincipal": pb.DeletePrincipalRequest(),
    "Rollback": pb.RollbackRequest(),
}


def test_reads_and_changes_cover_the_admin_api():
    assert set(READS) | set(CHANGES) == set(pb.DESCRIPTOR.services_by_name["PolicyAdmin"].methods_by_name)


def test_the_read_token_reads_and_only_the_admin_token_changes(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN,
                         read_token=READ_TOKEN) as service, \
            grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        admin = pb_grpc.PolicyAdminStub(channel)
        for method, request in READS.items():
            for token in (READ_TOKEN, ADMIN_TOKEN):
                getattr(admin, method)(request, timeout=RPC_TIMEOUT, metadata=bearer(token))
            error = rpc_error(lambda m=method, r=request: getattr(admin, m)(r, timeout=RPC_TIMEOUT,
                                                                          metadata=bearer("x" * 20)))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, method
        for method, request in CHANGES.items():
            error = rpc_error(lambda m=method, r=request: getattr(admin, m)(r, timeout=RPC_TIMEOUT,
                                                                          metadata=bearer(READ_TOKEN)))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (method, error.details())
            assert "admin_token" in error.details()
        assert service.live.current.version.number == 1, "a refused change changed nothing"
        put = pb.PutPolicyRequest(policy=pb.StoredPolicy(kind=pb.SCP, name="NewSCP", document=GOOD_DOCUMENT))
        assert admin.PutPolicy(put, timeout=RPC_TIMEOUT, metadata=bearer(ADMIN_TOKEN)).version == 2


def test_with_only_a_read_token_the_store_can_be_read_but_not_changed(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state", read_token=READ_TOKEN) as service, \
            Client(f"127.0.0.1:{service.port}", token=READ_TOKEN, timeout=RPC_TIMEOUT) as client:
        assert client.call(client.admin.GetStoreVersion, pb.GetStoreVersionRequest()).version == 1
        error = rpc_error(lambda: client.call(client.admin.Rollback, pb.RollbackRequest(version=1)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "admin_token" in error.details()


def client_command(port: int, token: str, capsys, *args: str) -> tuple[int, str, str]:
    """``iam-eval client …`` against the server on ``port``: exit code, stdout, stderr."""
    from iam_evaluator.cli import main

    code = main(["client", "--target", f"127.0.0.1:{port}", "--token", token, "--timeout", str(RPC_TIMEOUT), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_client_command_reads_with_the_read_token(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(GOOD_DOCUMENT)
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN,
                         read_token=READ_TOKEN) as service:
        for args in (["version"], ["versions"], ["get-policy", "--kind", "managed", "--name", FULL_ACCESS],
                     ["list-policies"], ["get-principal", ROLE], ["list-principals"],
                     ["validate", str(good), "--format", "json"]):
            code, out, err = client_command(service.port, READ_TOKEN, capsys, *args)
            assert code == 0, (args, err)
            assert json.loads(out)
        code, out, err = client_command(service.port, READ_TOKEN, capsys, "put-policy", str(good), "--kind", "scp",
                                        "--name", "NewSCP")
        assert code == 2 and "PERMISSION_DENIED" in err
        assert service.live.current.version.number == 1


def test_the_client_validate_command_exits_1_for_a_policy_with_errors(tmp_path, capsys):
    good, warned, bad = tmp_path / "good.json", tmp_path / "warned.json", tmp_path / "bad.json"
    good.write_text(GOOD_DOCUMENT)
    warned.write_text(json.dumps({"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    bad.write_text(BAD_DOCUMENT)
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN) as service:
        code, out, _ = client_command(service.port, ADMIN_TOKEN, capsys, "validate", str(bad))
        assert code == 1, "a policy with errors fails, as iam-eval validate says"
        assert out.startswith(f"{bad}: 1 error(s)") and "E0" in out, out
        for path in (good, warned):
            code, out, _ = client_command(service.port, ADMIN_TOKEN, capsys, "validate", str(path), "--format",
                                          "json")
            assert code == 0 and not [f for f in json.loads(out)[str(path)] if f["severity"] == "error"], out
        assert "W001" in out, "warnings alone pass"
        assert main_validate(bad) == 1 and main_validate(good) == 0, "the same as the local command"


def main_validate(path: Path) -> int:
    from iam_evaluator.cli import main

    return main(["validate", "--json", str(path)])


# ---------------------------------------------------------------- errors that echo huge inputs


def test_an_error_echoing_a_huge_input_keeps_200_characters_of_it(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state", admin_token=ADMIN_TOKEN) as service, \
            Client(f"127.0.0.1:{service.port}", token=ADMIN_TOKEN, timeout=RPC_TIMEOUT) as client:
        error = rpc_error(lambda: client.check("arn:" + "x" * 100_000, "s3:GetObject", "*"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "'arn:" + "x" * 195 + "…" in error.details() and "x" * 196 not in error.details()

        error = rpc_error(lambda: client.call(client.admin.GetPolicy, pb.PolicyName(kind=pb.MANAGED,
                                                                                    name="y" * 100_000)))
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        assert "y" * 199 + "…" in error.details() and "y" * 200 not in error.details()

        spaced = "é " * 50_000  # short words, each percent-encoded as six bytes
        error = rpc_error(lambda: client.check(spaced, "s3:GetObject", "*"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert error.details().endswith("…") and len(error.details()) <= 2000

        many = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Sid": f"S{i}", "Effect": "Perhaps", "Action": "s3:GetObject", "Resource": "*"} for i in range(5000)]})
        put = pb.PutPolicyRequest(policy=pb.StoredPolicy(kind=pb.SCP, name="Many", document=many))
        error = rpc_error(lambda: client.call(client.admin.PutPolicy, put))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "E0" in error.details() and error.details().endswith("…") and len(error.details()) <= 2000
        assert client.check(ROLE, "imagebuilder:GetImage", IMAGE).store_version == 1, "the server goes on"


def test_a_status_message_never_carries_a_lone_surrogate():
    code, message = status(ValueError("bad key '\ud800x' in " + "\U0001F600" * 5000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    message.encode("utf-8")  # strict: would raise on a lone surrogate
    assert "\\ud800" in message and message.endswith("…")


# ---------------------------------------------------------------- addresses, the metrics port


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize("setting", ["listen", "metrics_listen"])
def test_an_address_in_use_exits_2_naming_the_setting(tmp_path, setting, processes):
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as another supervisor's process holds it
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        arguments = ["serve", "--store", str(EXAMPLE_STORE), "--state-dir", str(tmp_path / "state"),
                     "--listen", address if setting == "listen" else "127.0.0.1:0",
                     "--metrics-listen", address if setting == "metrics_listen" else ""]
        try:
            done = run_command(*arguments, timeout=30, IAM_EVAL_PROCESSES=processes)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server started on {address}, which was in use")
    assert (done.returncode, done.stderr) == (2, f"error: {setting}: {address} is already in use\n")
    assert not (tmp_path / "state").exists(), "nothing was started"


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=RPC_TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_metrics_port_serves_metrics_and_healthz_only(tmp_path):
    with running_service(copy_store(tmp_path), tmp_path / "state", load=False, metrics=True) as service:
        port = service.metrics_port
        assert http_get(port, "/healthz")[0] == 503, "not serving until the store is compiled"
        service.load()
        assert http_get(port, "/healthz") == (200, "ok\n")
        code, text = http_get(port, "/metrics")
        assert code == 200 and "iam_eval_store_version 1.0" in text
        assert http_get(port, "/metrics?name[]=iam_eval_store_version")[0] == 200
        for path in ("/", "/metrics/", "/favicon.ico", "/healthz/", "/health", "/debug/vars", "/metricsx"):
            assert http_get(port, path)[0] == 404, path


@needs_proc
def test_the_next_supervisor_removes_the_metrics_dir_of_one_killed_outright(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    store = copy_store(tmp_path)

    def supervisor() -> ServerProcess:
        return ServerProcess("--store", str(store), "--state-dir", str(tmp_path / "state"), "--listen",
                             "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                             environment={"IAM_EVAL_PROCESSES": "2", "TMPDIR": str(temp)})

    first = supervisor()
    servers: list[int] = []
    try:
        supervising = first.wait_for_log("supervising")
        servers = supervising["processes"]
        wait_until(lambda: http_get(supervising["metrics_port"], "/healthz") == (200, "ok\n"), 30,
                   "/healthz to say ok once both processes serve")
        left = list(temp.glob("iam-eval-metrics-*"))
        assert len(left) == 1 and left[0].name.startswith(f"iam-eval-metrics-{first.process.pid}-")
        first.process.kill()
        first.wait()
        wait_until(lambda: all(gone(pid) for pid in servers), 30, "the orphaned server processes to end")
        assert left[0].is_dir(), "a supervisor killed outright cannot clean up"
    finally:
        first.stop()
        for pid in servers:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    living = temp / f"iam-eval-metrics-{os.getpid()}-elsewhere"  # a running supervisor's: kept
    living.mkdir()
    second = supervisor()
    try:
        second.wait_for_log("supervising")
        assert not left[0].exists() and living.is_dir()
        wait_until(lambda: sum(r.get("message") == "serving" for r in second.records()) == 2, 30,
                   "both server processes to serve")
        assert len(list(temp.glob("iam-eval-metrics-*"))) == 2
        second.process.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
        assert list(temp.glob("iam-eval-metrics-*")) == [living], "a clean stop removes its own"
    finally:
        second.stop()


# ---------------------------------------------------------------- batch jobs


@pytest.fixture(scope="module")
def big_log(tmp_path_factory) -> Path:
    """A JSON Lines log the local runner takes a few seconds over."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from workloads import seed_requests

    lines = [json.dumps({"principal": r.principal, "action": r.action, "resource": r.resource,
                         "context": {k: list(v) if isinstance(v, tuple) else v for k, v in r.context.items()}})
             for r in seed_requests(2000, seed=5)]
    path = tmp_path_factory.mktemp("big") / "log.jsonl"
    path.write_text("\n".join(lines * 100) + "\n")
    return path


def start_batch(log: Path, output: Path, *extra: str, limit: int | None = None) -> subprocess.Popen:
    """``iam-eval batch`` in its own process; with ``limit``, files it writes end at that many bytes (EFBIG, as
    a full disk ends them: ENOSPC)."""
    launcher = [sys.executable, "-c", LIMITED, str(limit)] if limit is not None else []
    return subprocess.Popen([*launcher, sys.executable, "-m", "iam_evaluator", "batch", "--policy", *POLICIES,
                             "--input", str(log), "--output", str(output), *extra], cwd=REPO, env=cli_environment(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def no_output_left(output: Path) -> bool:
    return not [p for p in output.parent.iterdir() if p.name.startswith((output.name, f".{output.name}"))]


@needs_proc
def test_a_batch_runner_killed_outright_takes_its_workers_with_it(big_log, tmp_path):
    runner = start_batch(big_log, tmp_path / "out.parquet", "--workers", "2")
    workers: list[int] = []
    try:
        workers = wait_until(lambda: len(children(runner.pid)) == 2 and children(runner.pid), 30, "two workers")
        assert runner.poll() is None, "the job is still running"
        runner.kill()
        runner.wait(30)
        wait_until(lambda: all(gone(pid) for pid in workers), 10, "the workers to end with their runner")
    finally:
        for pid in workers:  # first: they would hold stderr open
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        runner.kill()
        runner.communicate(timeout=30)


@needs_proc
def test_a_worker_that_dies_ends_the_job_with_an_error_and_exit_2(big_log, tmp_path):
    output = tmp_path / "out.parquet"
    runner = start_batch(big_log, output, "--workers", "2")
    workers: list[int] = []
    try:
        workers = wait_until(lambda: len(children(runner.pid)) == 2 and children(runner.pid), 30, "two workers")
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = runner.communicate(timeout=60)
        wait_until(lambda: all(gone(pid) for pid in workers), 10, "the other worker to end")
    finally:
        for pid in workers:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        runner.kill()
    assert runner.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "error: a worker process died (exit code -9)"
    assert no_output_left(output), list(tmp_path.iterdir())


LIMITED = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); " \
          "os.execv(sys.argv[2], sys.argv[2:])"
"""A launcher that sets the file size limit, then becomes the command: not preexec_fn, which runs in a fork
of this process, where gRPC (loaded by other tests) may abort before the exec."""


@pytest.mark.parametrize(("output", "limit", "writer"), [("out.parquet", 64 * 1024, "worker"),
                                                         ("out.jsonl", 64 * 1024, "worker"),
                                                         ("out.jsonl", 24 << 20, "joining")])
def test_an_output_that_cannot_be_written_ends_the_job_with_an_error_and_exit_2(big_log, tmp_path, output, limit,
                                                                                writer):
    runner = start_batch(big_log, tmp_path / output, "--workers", "2", limit=limit)
    try:
        _, stderr = runner.communicate(timeout=120)
    finally:
        runner.kill()
    assert runner.returncode == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.splitlines()[-1]
    assert last.startswith("error: ") and "File too large" in last, stderr
    assert ("worker" in last) == (writer == "worker"), last
    if writer == "joining":
        assert f"{output}.partial" in last, "the file it could not write"
    assert no_output_left(tmp_path / output), list(tmp_path.iterdir())
