"""Prometheus metrics of one server, served over HTTP at /metrics, beside /healthz.

Each server has its own registry, so that several servers in one process (as in
the tests) keep apart; with several server processes, the parent serves their sum.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from iam_evaluator.decision import Decision, DecisionKind, StatementRef
from iam_evaluator.usage import StatementCount

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000)


class _MetricsHandler(BaseHTTPRequestHandler):
    """GET /metrics (Prometheus text) and /healthz (200 "ok" while serving, else 503); any other path is 404."""

    server: _MetricsServer

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            encode, content_type = choose_encoder(self.headers.get("Accept"))
            self.server.before_scrape()
            self._reply(200, encode(self.server.registry), content_type)
        elif path == "/healthz":
            serving = self.server.serving()
            self._reply(200 if serving else 503, b"ok\n" if serving else b"not serving\n")
        else:
            self._reply(404, b"not found: this port serves /metrics and /healthz\n")

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        """Silent: the server's log is JSON lines, and scrapes are not news."""


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, registry: CollectorRegistry, serving: Callable[[], bool],
                 before_scrape: Callable[[], None]) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        self.address_family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                                 flags=socket.AI_PASSIVE)[0][0]
        self.registry, self.serving, self.before_scrape = registry, serving, before_scrape
        super().__init__((host, int(port)), _MetricsHandler)


def _serve(address: str, registry: CollectorRegistry, serving: Callable[[], bool],
           before_scrape: Callable[[], None] = lambda: None) -> _MetricsServer:
    """Serve on host:port (port 0: any free port) from a thread; raises ``OSError`` when it cannot listen.
    ``before_scrape`` brings counters kept elsewhere up to date first."""
    http = _MetricsServer(address, registry, serving, before_scrape)
    threading.Thread(target=http.serve_forever, name="metrics-http", daemon=True).start()
    return http


def serve_all_processes(address: str, directory: str, serving: Callable[[], bool]) -> _MetricsServer:
    """Serve the metrics that every server process writes to ``directory`` (prometheus_client's
    multiprocess mode, on when PROMETHEUS_MULTIPROC_DIR is set before the processes start), summed;
    /healthz says what ``serving`` says."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return _serve(address, registry, serving)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.checks = Counter("iam_eval_checks", "Requests decided, by decision (Allow, ExplicitDeny, ImplicitDeny)",
                              ["decision"], registry=self.registry)
        self.check_errors = Counter("iam_eval_check_errors", "Requests that could not be evaluated (each is "
                                    "counted as ImplicitDeny too)", registry=self.registry)
        self.latency = Histogram("iam_eval_rpc_duration_seconds", "Time to answer a call, by method",
                                 ["method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.rpc_errors = Counter("iam_eval_rpc_errors", "Calls that ended with an error status, by method and code",
                                  ["method", "code"], registry=self.registry)
        self.batch_size = Histogram("iam_eval_batch_size", "Requests in each CheckBatch or stream message",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.store_version = Gauge("iam_eval_store_version", "Store version being served",
                                   registry=self.registry, multiprocess_mode="livemax")
        self.compile_seconds = Gauge("iam_eval_store_compile_seconds", "Time the served version took to compile",
                                     registry=self.registry, multiprocess_mode="livemax")
        self.process_store_version = Gauge("iam_eval_process_store_version",
                                           "Store version each server process serves (label pid)",
                                           registry=self.registry, multiprocess_mode="liveall")
        self.watch_errors = Counter("iam_eval_store_watch_errors", "Failed looks for store versions other "
                                    "processes wrote (each is retried)", registry=self.registry)
        self.statement_applied = Counter(
            "iam_eval_statement_applied", "Requests each statement of the served store applied to (Check, CheckBatch, "
            "CheckStream), since the server started; a statement that never applied has no series",
            ["policy", "statement", "sid", "effect"], registry=self.registry)
        self._by_code = {kind.code: self.checks.labels(str(kind)) for kind in DecisionKind}
        self._statements_counted: dict[StatementRef, int] = {}  # what statement_applied has of each
        self._statements_lock = threading.Lock()
        self._http = None

    def count(self, codes: bytes, errors: int = 0) -> None:
        """Count decisions from their codes (``DecisionKind.code``), ``errors`` of them could not be evaluated."""
        for code, counter in self._by_code.items():
            found = codes.count(code)
            if found:
                counter.inc(found)
        if errors:
            self.check_errors.inc(errors)

    def count_decisions(self, decisions: Sequence[Decision]) -> None:
        self.count(bytes(d.decision.code for d in decisions), sum(d.error is not None for d in decisions))

    def count_statements(self, counts: Iterable[StatementCount]) -> None:
        """Bring ``statement_applied`` up to the counts (``usage.ServedUsage.report``): counters only grow."""
        with self._statements_lock:
            for count in counts:
                ref = count.statement
                added = count.applied - self._statements_counted.get(ref, 0)
                if added > 0:
                    self.statement_applied.labels(ref.policy, str(ref.index), ref.sid or "", str(ref.effect)).inc(added)
                    self._statements_counted[ref] = count.applied

    def serve(self, address: str, serving: Callable[[], bool],
              before_scrape: Callable[[], None] = lambda: None) -> int:
        """Serve /metrics and /healthz (``serving``) at host:port (port 0: any free port); returns the port."""
        self._http = _serve(address, self.registry, serving, before_scrape)
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
