"""The server: build it from a configuration, run it until SIGTERM, drain, stop.

``create_server`` returns a started server whose health is NOT_SERVING; the
store is then loaded and compiled (``Service.load``), and only then does health
say SERVING and do the Authorizer and PolicyAdmin APIs answer (before: UNAVAILABLE).
"""
from __future__ import annotations

import errno
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field, replace
from multiprocessing.synchronize import Event
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from iam_evaluator.catalog import Catalog
from iam_evaluator.compile import set_spare_scratch_budget
from iam_evaluator.usage import ServedUsage

from .admin import PolicyAdminServicer
from .api import iam_evaluator_pb2 as pb
from .api import iam_evaluator_pb2_grpc as pb_grpc
from .authorizer import AuthorizerServicer
from .config import ConfigError, ServerConfig
from .interceptors import CallGuard, ServiceError
from .live_store import LiveStore, Serving, load_store
from .metrics import ServiceMetrics, serve_all_processes
from .store_versions import VersionedStore

log = logging.getLogger("iam_eval.server")
SEED_FILE = "seed.json"
"""In the state directory: which store seeded it, and its digest (``Service._compare_with_store``)."""
SERVICES = tuple(pb.DESCRIPTOR.services_by_name[name].full_name for name in ("Authorizer", "PolicyAdmin"))
USAGE_METRIC_SECONDS = 10.0
"""How often the statement metric catches up with the counts (``Service.count_statements``)."""
METRICS_DIR_PREFIX = "iam-eval-metrics-"
"""With several processes, their metrics are in ``TMP/iam-eval-metrics-<supervisor's pid>-…``."""


@dataclass
class Service:
    """A running server and what it serves."""

    config: ServerConfig
    server: grpc.Server
    port: int
    health: health.HealthServicer
    metrics: ServiceMetrics
    metrics_port: int | None = None
    live: LiveStore | None = None
    draining: bool = False
    usage: ServedUsage = field(default_factory=ServedUsage)  # per statement, the requests it applied to
    stopped: threading.Event = field(default_factory=threading.Event)

    def serving(self) -> Serving:
        return self.live_store().current

    def ready(self) -> bool:
        """Whether the store is compiled and the server not draining: what /healthz says."""
        return self.live is not None and not self.draining

    def live_store(self) -> LiveStore:
        live = self.live
        if live is None:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the policy store is still loading; retry shortly")
        return live

    def load(self) -> None:
        """Load (or reopen) the store's versions, compile the newest, and start serving it."""
        config = self.config
        started = time.perf_counter()
        seeded = []
        versions = VersionedStore(config.versions_dir,
                                  lambda: seeded.append(load_store(config.store, config.aws_managed_policies or None))
                                  or seeded[0], seed_description=f"loaded from {config.store}")
        if seeded:
            _record_seed(config.versions_dir / SEED_FILE, config.store,
                         hashlib.sha256(seeded[0].to_json().encode()).hexdigest())
        else:
            self._compare_with_store(versions)
        self.live = LiveStore(versions, on_publish=self._published,
                              on_watch_error=lambda _: self.metrics.watch_errors.inc())
        self.live.watch(config.watch_seconds)
        threading.Thread(target=self._count_statements_every, args=(USAGE_METRIC_SECONDS,), name="statement-usage",
                         daemon=True).start()
        for name in ("", *SERVICES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"fields": {"store_version": self.live.current.version.number,
                                              "load_seconds": round(time.perf_counter() - started, 3)}})

    def _compare_with_store(self, versions: VersionedStore) -> None:
        """A restart serves the newest kept version, not ``--store``: say so when the store given changed
        since it seeded the state directory (its folder was edited), and with ``reseed`` serve it as a new
        version. Changes made through PolicyAdmin since are not a difference: the seed's digest is kept
        in the state directory (``SEED_FILE``) and compared."""
        config = self.config
        given = load_store(config.store, config.aws_managed_policies or None)
        digest = hashlib.sha256(given.to_json().encode()).hexdigest()
        seed_file = config.versions_dir / SEED_FILE
        try:
            recorded = json.loads(seed_file.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded == digest:
            return
        fields = {"store": config.store, "state_dir": str(config.versions_dir),
                  "served_version": versions.current.number}
        if recorded is not None and not config.reseed:
            log.warning("the store given changed since it seeded the state directory, whose newest version is "
                        "served; restart with --reseed to serve the store given as a new version",
                        extra={"fields": fields})
            return
        if config.reseed:
            snapshot = json.loads(given.to_json())
            versions.change(lambda current: (current.clear(), current.update(snapshot)),
                            f"reseeded from {config.store}")
            log.warning("reseeded: the store given is served as a new version",
                        extra={"fields": {**fields, "served_version": versions.current.number}})
        _record_seed(seed_file, config.store, digest)

    def count_statements(self) -> None:
        """Bring the statement metric up to the counts (before each scrape, and every little while: with
        several processes, the parent serves what each wrote)."""
        if self.live is not None:
            self.metrics.count_statements(self.usage.report(self.live.current.compiled))

    def _count_statements_every(self, seconds: float) -> None:
        while not self.stopped.wait(seconds):
            self.count_statements()

    def _published(self, serving: Serving) -> None:
        self.usage.serve(serving.compiled)
        # The served store lives until the next version: keep the cyclic garbage collector from walking it
        # again and again as calls come and go (a previous version is still freed when its last call ends).
        gc.freeze()
        self.metrics.store_version.set(serving.version.number)
        self.metrics.process_store_version.set(serving.version.number)
        self.metrics.compile_seconds.set(serving.compile_seconds)
        log.info("store version published", extra={"fields": {
            "store_version": serving.version.number, "description": serving.version.description,
            "compile_seconds": round(serving.compile_seconds, 3),
            "principals": len(serving.version.store.principals)}})

    def stop(self, grace: float | None = None) -> None:
        """Say NOT_SERVING, refuse new calls, let in-flight ones finish within the grace period."""
        self.draining = True
        self.health.enter_graceful_shutdown()
        self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.stopped.set()
        self.metrics.stop()
        if self.live is not None:
            self.live.stop()


def _record_seed(path: Path, store: str, digest: str) -> None:
    """Note which store seeded the state directory (written whole, or not at all; skipped when read-only)."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".seed.", suffix=".tmp")
        with os.fdopen(fd, "w") as file:
            json.dump({"store": store, "sha256": digest}, file)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("cannot note the seed store in the state directory: %s", exc)


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    pair = [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
    if config.tls_client_ca:
        return grpc.ssl_server_credentials(pair, root_certificates=Path(config.tls_client_ca).read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def _listen_error(setting: str, address: str, exc: OSError | None = None) -> ConfigError:
    if exc is not None and exc.errno == errno.EADDRINUSE:
        return ConfigError(f"{setting}: {address} is already in use")
    reason = f" ({exc.strerror or exc})" if exc is not None else ""
    return ConfigError(f"{setting}: cannot listen on {address}{reason}")


def _refuse_if_in_use(setting: str, address: str) -> None:
    """Raise ``ConfigError`` naming ``setting`` when something listens on ``address`` already. Checked
    before gRPC binds: with several processes it binds with SO_REUSEPORT and would share the port with
    whoever holds it too; and it says only that binding failed. Other errors are left to the bind."""
    host, _, port = address.rpartition(":")
    if not address or port == "0":
        return
    try:
        found = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return
    for family, kind, protocol, _, socket_address in found:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: past TIME_WAIT only
            try:
                probe.bind(socket_address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise _listen_error(setting, address, exc) from None


def create_server(config: ServerConfig) -> Service:
    """A started server on ``config.listen`` (port 0: a free port, in ``Service.port``), NOT_SERVING
    until ``load``. An address that cannot be listened on raises ``ConfigError`` naming its setting."""
    if config.processes == 1:  # else the supervisor checked, and the processes share the port on purpose
        _refuse_if_in_use("listen", config.listen)
        _refuse_if_in_use("metrics_listen", config.metrics_listen)
    metrics = ServiceMetrics()
    set_spare_scratch_budget(config.spare_scratch_bytes)
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes),
               ("grpc.so_reuseport", int(config.processes > 1))]  # else a second server fails to bind
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
                         interceptors=[CallGuard(config, metrics)], options=options,
                         maximum_concurrent_rpcs=None)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    service = Service(config, server, 0, health_servicer, metrics)
    catalog = Catalog.from_environment()
    pb_grpc.add_AuthorizerServicer_to_server(AuthorizerServicer(service.serving, config, metrics, catalog,
                                                                service.usage), server)
    pb_grpc.add_PolicyAdminServicer_to_server(PolicyAdminServicer(service.live_store, catalog, service.usage), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    credentials = _credentials(config)
    try:
        if credentials is None:
            service.port = server.add_insecure_port(config.listen)
        else:
            service.port = server.add_secure_port(config.listen, credentials)
    except RuntimeError:  # gRPC says only that it failed (and logs why)
        service.port = 0
    if service.port == 0:
        raise _listen_error("listen", config.listen)
    server.start()
    if config.metrics_listen:
        try:
            service.metrics_port = metrics.serve(config.metrics_listen, service.ready, service.count_statements)
        except OSError as exc:
            server.stop(0)
            raise _listen_error("metrics_listen", config.metrics_listen, exc) from None
    return service


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if hasattr(record, "method"):
            entry["method"] = record.method
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(config: ServerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        formatter = JsonLogFormatter()
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s %(fields)s",
                                               defaults={"fields": ""}))
    root = logging.getLogger("iam_eval")
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    root.propagate = False


class _StopSignal:
    """Set by SIGTERM or SIGINT. The handler only flips a flag: a handler that set an Event could
    deadlock on the Event's own lock if the signal landed while the main thread held it."""

    def __init__(self) -> None:
        self.received = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._receive)

    def _receive(self, signum, frame) -> None:
        self.received = True

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a stop signal came (True) or ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.received and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)
        return self.received


def serve(config: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain; returns the exit status."""
    configure_logging(config)
    if config.processes > 1:
        return _supervise(config)
    return _serve_one(config)


def _serve_one(config: ServerConfig, serving: Event | None = None) -> int:
    """Serve until a stop signal; ``serving`` (from a supervisor) is set while the store is served."""
    service = create_server(config)
    log.info("listening", extra={"fields": {"address": config.listen, "port": service.port,
                                            "metrics_port": service.metrics_port, "tls": bool(config.tls_cert),
                                            "mutual_tls": bool(config.tls_client_ca), "pid": os.getpid()}})
    stop = _StopSignal()
    try:
        service.load()
    except Exception as exc:
        log.error("cannot load the policy store", extra={"fields": {"error": str(exc)}})
        service.stop(0)
        return 2
    if serving is not None:
        serving.set()
    stop.wait()
    log.info("draining", extra={"fields": {"grace_seconds": config.grace_seconds, "pid": os.getpid()}})
    if serving is not None:
        serving.clear()
    service.stop()
    log.info("stopped", extra={"fields": {"pid": os.getpid()}})
    return 0


def _process_main(config: ServerConfig, parent: int, serving: Event) -> None:
    """One of several server processes; it drains and ends when its parent is gone, too."""
    configure_logging(config)

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()
    try:
        sys.exit(_serve_one(config, serving))
    except ConfigError as exc:
        log.error("cannot serve", extra={"fields": {"error": str(exc)}})
        sys.exit(2)


def _supervise(config: ServerConfig) -> int:
    """Start ``processes`` servers on one port (the kernel spreads connections over them) and one
    state directory, each with its own GIL; forward SIGTERM to them and wait for them to drain.

    Version 1 is seeded here first, so the processes never race to create it; the parent serves
    their summed metrics, and /healthz says "ok" while every process serves.
    """
    _refuse_if_in_use("listen", config.listen)
    _refuse_if_in_use("metrics_listen", config.metrics_listen)
    try:
        VersionedStore(config.versions_dir, lambda: load_store(config.store, config.aws_managed_policies or None),
                       seed_description=f"loaded from {config.store}")
    except Exception as exc:
        log.error("cannot load the policy store", extra={"fields": {"error": str(exc)}})
        return 2
    host, _, port = config.listen.rpartition(":")
    if port == "0":  # every process must bind the same port: choose it here
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as probe:
            probe.bind((host.strip("[]"), 0))
            port = str(probe.getsockname()[1])
    _remove_stale_metrics_dirs()
    metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client in each process
    each = replace(config, listen=f"{host}:{port}", metrics_listen="")
    context = multiprocessing.get_context("spawn")  # grpc must not be forked
    serving = [context.Event() for _ in range(config.processes)]
    children = [context.Process(target=_process_main, args=(each, os.getpid(), serving[i]), name=f"server-{i}")
                for i in range(config.processes)]
    stop = _StopSignal()

    def all_serving() -> bool:
        return (not stop.received and all(event.is_set() for event in serving)
                and all(child.exitcode is None for child in children))

    metrics_http = None
    try:
        if config.metrics_listen:
            try:
                metrics_http = serve_all_processes(config.metrics_listen, metrics_dir, all_serving)
            except OSError as exc:
                raise _listen_error("metrics_listen", config.metrics_listen, exc) from None
        for child in children:
            child.start()
        log.info("supervising", extra={"fields": {"processes": [child.pid for child in children],
                                                  "address": each.listen, "metrics_port":
                                                  metrics_http.server_port if metrics_http else None}})
        while not stop.wait(0.5):
            if any(child.exitcode is not None for child in children):
                log.error("a server process ended on its own; stopping the others",
                          extra={"fields": {"exit_codes": [child.exitcode for child in children]}})
                break
        for child in children:
            if child.exitcode is None:
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join(config.grace_seconds + 10)
            if child.exitcode is None:
                child.kill()
                child.join()
    finally:
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = [child.exitcode for child in children]
    log.info("stopped", extra={"fields": {"exit_codes": codes}})
    return 0 if stop.received and all(code == 0 for code in codes) else 1


def _remove_stale_metrics_dirs() -> None:
    """Remove the metrics directories of supervisors that are gone: one killed (SIGKILL) could not."""
    for path in Path(tempfile.gettempdir()).glob(METRICS_DIR_PREFIX + "*"):
        pid = path.name[len(METRICS_DIR_PREFIX):].partition("-")[0]
        try:
            ours = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if ours and pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed the metrics directory of a supervisor that is gone",
                     extra={"fields": {"path": str(path), "pid": int(pid)}})


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # a number past any pid
        return False
    except PermissionError:  # another user's
        return True
    return True
