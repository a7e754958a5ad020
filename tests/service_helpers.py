"""Helpers for the service tests: the example store and requests on it, the reference evaluator's answers,
a server in this process or as the real command, waiting for health, and TLS certificates."""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from iam_evaluator.decision import Decision, DecisionKind
from iam_evaluator.principals import RequestError
from iam_evaluator.request import Request
from iam_evaluator.server.api import iam_evaluator_pb2 as pb
from iam_evaluator.server.client import Client
from iam_evaluator.store import PolicyStore, reference_decision

from .conftest import REPO

EXAMPLE_STORE = REPO / "examples" / "store"
SERVING = health_pb2.HealthCheckResponse.SERVING
RPC_TIMEOUT = 10.0
"""Every call in these tests has a deadline, so that nothing can hang."""

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/ImageBuilderRole"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
INSTANCE_SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/ImageBuilderInstanceRole/i-0abc"
UNKNOWN = f"arn:aws:iam::{ACCOUNT}:role/NotInTheStore"
IMAGE = f"arn:aws:imagebuilder:us-east-1:{ACCOUNT}:image/demo/1.0.0/1"
LOG_OBJECT = "arn:aws:s3:::example-imagebuilder-logs/build/1.log"
FULL_ACCESS = "arn:aws:iam::aws:policy/AWSImageBuilderFullAccess"

DECISIONS = {DecisionKind.ALLOW: pb.ALLOW, DecisionKind.EXPLICIT_DENY: pb.EXPLICIT_DENY,
             DecisionKind.IMPLICIT_DENY: pb.IMPLICIT_DENY}


def copy_store(directory: Path) -> Path:
    """A private copy of the example store, so a test may change or break it."""
    target = directory / "store"
    shutil.copytree(EXAMPLE_STORE, target)
    return target


def document(*statements: Mapping[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def sample_requests() -> list[dict[str, Any]]:
    """Requests on the example store that reach every layer: identity, boundary, SCP, resource policy,
    an unknown principal; with and without the region the SCP guard rail needs."""
    requests = []
    regions = [{"aws:RequestedRegion": "us-east-1"}, {"aws:RequestedRegion": "ap-south-1"}, None]
    for principal in (ROLE, ALICE, INSTANCE_SESSION, UNKNOWN):
        for action, resource in (("imagebuilder:CreateImage", IMAGE), ("imagebuilder:GetImage", IMAGE),
                                 ("imagebuilder:DeleteImage", IMAGE), ("s3:PutObject", LOG_OBJECT),
                                 ("s3:GetObject", LOG_OBJECT), ("iam:ListRoles", "*")):
            for region in regions:
                context = dict(region or {})
                if resource == LOG_OBJECT:
                    context["aws:SecureTransport"] = "true" if region != regions[1] else "false"
                requests.append({"principal": principal, "action": action, "resource": resource,
                                 "context": context or None})
    return requests


def expected_decision(store: PolicyStore, item: Mapping[str, Any]) -> Decision:
    """What the pure-Python reference evaluator decides for ``item`` on ``store``: the oracle the service
    is held to. As in AWS, what the store knows of the principal (tags, ARN, account) replaces what the
    request says of it."""
    try:
        request = Request.create(item["principal"], item["action"], item["resource"], item.get("context"),
                                 item.get("resource_account"), session_tags=item.get("session_tags"))
    except RequestError as exc:
        return Decision(DecisionKind.IMPLICIT_DENY, "error", error=str(exc))
    return reference_decision(store, request)


def outcome(decision: Decision) -> tuple[int, bool]:
    """A reference decision as the wire says it without explanation: the decision, and whether it failed."""
    return DECISIONS[decision.decision], decision.error is not None


def result_outcome(result: pb.CheckResult) -> tuple[int, bool]:
    return result.decision, bool(result.error)


def statement_refs(decision: Decision) -> list[tuple[str, str, int]]:
    return sorted((s.policy, s.sid or "", s.index) for s in decision.statements)


def result_refs(result: pb.CheckResult) -> list[tuple[str, str, int]]:
    return sorted((s.policy, s.sid, s.index) for s in result.statements)


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The error a call ends with; fails the test if it succeeds."""
    try:
        response = call()
    except grpc.RpcError as exc:
        return exc
    pytest.fail(f"the call succeeded, but should have failed: {response}")


@contextlib.contextmanager
def running_service(store: Path, state_dir: Path, *, load: bool = True, metrics: bool = False,
                    **settings: Any) -> Iterator[Any]:
    """A server in this process on a free loopback port (with ``metrics``, /metrics on another), stopped on exit.
    (Metrics are off unless asked for: stopping their HTTP server takes half a second.)"""
    from iam_evaluator.server.app import create_server
    from iam_evaluator.server.config import load_config

    config = load_config(environ={}, store=str(store), state_dir=str(state_dir), listen="127.0.0.1:0",
                         metrics_listen="127.0.0.1:0" if metrics else "", **settings)
    service = create_server(config)
    try:
        if load:
            service.load()
        yield service
    finally:
        service.stop(0)


def health_status(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                     timeout=RPC_TIMEOUT).status


def wait_serving(target: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    """Poll health until the server says SERVING; fails if it does not within ``timeout`` (or ``process`` exits)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode} before serving")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    pytest.fail(f"{target} did not say SERVING within {timeout} s")


def refuses_new_calls(target: str) -> bool:
    """Whether a new connection's call gets UNAVAILABLE, as from a server that is stopping."""
    with Client(target, timeout=1) as newcomer:
        try:
            newcomer.check(ROLE, "s3:GetObject", "*")
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE
        return False


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def cli_environment(**variables: str) -> dict[str, str]:
    """The environment for the real command: ours without IAM_EVAL_* settings, plus ``variables``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IAM_EVAL_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    return {**environment, **variables}


class ServerProcess:
    """``iam-eval serve`` as a subprocess, its JSON log lines collected as they come."""

    def __init__(self, *args: str, environment: Mapping[str, str] | None = None) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "iam_evaluator", "serve", *args], cwd=REPO,
                                        env=cli_environment(**(environment or {})), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def records(self) -> list[dict[str, Any]]:
        """The log lines that are JSON objects."""
        parsed = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    parsed.append(record)
        return parsed

    def wait_for_log(self, message: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first JSON log record with this message; fails if none comes within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.records():
                    if record.get("message") == message:
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (not self._reader.is_alive() and self.process.poll() is not None):
                    pytest.fail(f"no {message!r} log line within {timeout} s; stderr:\n" + "\n".join(self.lines))
                self._changed.wait(min(remaining, 0.2))

    def start_serving(self, timeout: float = 30.0) -> str:
        """Wait for the "listening" line (the port chosen for port 0), then for health SERVING; the target."""
        port = self.wait_for_log("listening", timeout)["port"]
        target = f"127.0.0.1:{port}"
        wait_serving(target, timeout, self.process)
        return target

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        """Kill the process if it still runs (the tests end it on purpose when they mean to)."""
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA the server does not trust, with a client certificate of its own
    other_client_cert: Path
    other_client_key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1 and localhost, and client certificates from that CA and from
    another; with the ``cryptography`` package, else the ``openssl`` command, else the test is skipped."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("TLS tests need the cryptography package or the openssl command; neither is available")
        return _openssl_certificates(directory)
    return _cryptography_certificates(directory)


def _cryptography_certificates(directory: Path) -> Certificates:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def write(name: str, key, certificate) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def issue(subject: str, issuer, issuer_key, *, ca: bool = False, usage=None, names=()):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(subject))
                   .issuer_name(name(subject) if issuer is None else issuer.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=7))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, ca_cert = issue("iam-eval test CA", None, None, ca=True)
    other_key, other_cert = issue("untrusted test CA", None, None, ca=True)
    server = issue("127.0.0.1", ca_cert, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   names=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))))
    client = issue("test client", ca_cert, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    other_client = issue("stranger", other_cert, other_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path, _ = write("ca", ca_key, ca_cert)
    other_ca_path, _ = write("other-ca", other_key, other_cert)
    return Certificates(ca_path, *write("server", *server), *write("client", *client), other_ca_path,
                        *write("other-client", *other_client))


def _openssl_certificates(directory: Path) -> Certificates:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    def key(name: str) -> None:
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")

    def ca(name: str, subject: str) -> None:
        key(name)
        run("req", "-x509", "-new", "-key", f"{name}.key", "-subj", f"/CN={subject}", "-days", "7",
            "-addext", "basicConstraints=critical,CA:TRUE", "-out", f"{name}.pem")

    def issue(name: str, subject: str, issuer: str, extensions: str) -> None:
        key(name)
        run("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={subject}", "-out", f"{name}.csr")
        (directory / f"{name}.ext").write_text(extensions)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
            "-CAcreateserial", "-days", "7", "-extfile", f"{name}.ext", "-out", f"{name}.pem")

    ca("ca", "iam-eval test CA")
    ca("other-ca", "untrusted test CA")
    issue("server", "127.0.0.1", "ca", "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
          "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    issue("client", "test client", "ca", "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    issue("other-client", "stranger", "other-ca", "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    paths = [directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key",
                                           "other-ca.pem", "other-client.pem", "other-client.key")]
    return Certificates(*paths)


class LockstepStream:
    """A CheckStream driven one batch at a time: each ``send`` waits for that batch's response."""

    def __init__(self, method, timeout: float = RPC_TIMEOUT, metadata: tuple = ()) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._responses = method(iter(self._requests.get, None), timeout=timeout, metadata=metadata)

    def send(self, request: pb.CheckBatchRequest) -> pb.CheckBatchResponse:
        self._requests.put(request)
        return next(self._responses)

    def close(self) -> grpc.StatusCode:
        """End the request stream; the call's status once the server has ended it too."""
        self._requests.put(None)
        leftover = list(self._responses)
        assert not leftover, f"responses nobody asked for: {leftover}"
        return self._responses.code()
