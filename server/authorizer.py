"""The Authorizer service: decode, decide with the evaluator, encode.

Every batch reads the served store version once, so all its results come from
that one version even if the store changes meanwhile.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

import grpc

from iam_evaluator.access_queries import what_can, who_can
from iam_evaluator.catalog import Catalog
from iam_evaluator.compile import BatchDecisions, CompiledPolicySet
from iam_evaluator.usage import ServedUsage

from . import convert
from .api import iam_evaluator_pb2 as pb
from .api import iam_evaluator_pb2_grpc as pb_grpc
from .config import ServerConfig
from .interceptors import ServiceError, status
from .live_store import Serving
from .metrics import ServiceMetrics

INLINE_CACHE = 64
"""Inline policy sets kept compiled, for clients that send the same ones again (also bounded in bytes)."""

PYTHON_BYTES_PER_SOURCE_BYTE = 6
"""Python objects a compiled set keeps (parsed policies, statement records), per byte of policy text:
about 1.1 MB for 20 policies of 10 KB, measured with tracemalloc."""


class AuthorizerServicer(pb_grpc.AuthorizerServicer):
    def __init__(self, serving: Callable[[], Serving], config: ServerConfig, metrics: ServiceMetrics,
                 catalog: Catalog, usage: ServedUsage) -> None:
        self._serving = serving  # raises ServiceError(UNAVAILABLE) until the store is compiled
        self._catalog = catalog  # the actions WhatCan asks about
        self._config = config
        self._metrics = metrics
        self._usage = usage  # the store's statements count the requests they apply to (inline policies' do not)
        self._inline: OrderedDict[bytes, tuple[CompiledPolicySet, int]] = OrderedDict()  # with its cost in bytes
        self._inline_bytes = 0
        self._inline_lock = threading.Lock()
        self._streams = threading.BoundedSemaphore(config.stream_limit)
        self._idle = _IdleStreams(config.stream_idle_seconds)

    def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> pb.CheckResponse:
        checked = convert.request(request)
        if request.HasField("policies"):
            decision = self._compiled_inline(request.policies).evaluate(checked, explain=request.explain)
            version = 0
        else:
            serving = self._serving()
            decision = serving.compiled.evaluate(checked, explain=request.explain,
                                                 usage=self._usage.counter(serving.compiled))  # and counted
            version = serving.version.number
        self._metrics.count_decisions([decision])
        return pb.CheckResponse(result=convert.result(decision, request.explain), store_version=version)

    def CheckBatch(self, request: pb.CheckBatchRequest, context: grpc.ServicerContext) -> pb.CheckBatchResponse | bytes:
        return self._decide(request, context)

    def CheckStream(self, requests: Iterator[pb.CheckBatchRequest],
                    context: grpc.ServicerContext) -> Iterator[pb.CheckBatchResponse | bytes]:
        """Each open stream holds a worker thread for its life (idle or not): at most ``stream_limit`` are
        open at once, so that Check, health and admin calls always find a thread, and one that sends nothing
        for ``stream_idle_seconds`` is cancelled."""
        if not self._streams.acquire(blocking=False):
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{self._config.stream_limit} streams are open, as many as max_streams allows; "
                               "retry later, or send CheckBatch calls")
        try:
            yield from self._stream(self._idle.watched(requests, context), context)
        finally:
            self._streams.release()

    def _stream(self, requests: Iterator[pb.CheckBatchRequest],
                context: grpc.ServicerContext) -> Iterator[pb.CheckBatchResponse | bytes]:
        for request in requests:
            try:
                yield self._decide(request, context)
            except ServiceError as exc:
                if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                yield pb.CheckBatchResponse(batch_id=request.batch_id, error=str(exc))
            except ValueError as exc:  # a malformed batch: say so, and go on with the next
                yield pb.CheckBatchResponse(batch_id=request.batch_id, error=status(exc)[1])

    def _decide(self, request: pb.CheckBatchRequest, context: grpc.ServicerContext) -> pb.CheckBatchResponse | bytes:
        """The response to one batch; unexplained ones come already encoded (see ``convert.encoded_response``)."""
        if request.requests and request.HasField("columns"):
            raise ValueError("give the batch's requests either as requests or as columns, not both")
        size = len(request.requests) or len(request.columns.principals)
        if size == 0:
            raise ValueError("the batch holds no requests")
        if size > self._config.max_batch:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the batch holds {size} requests, more than max_batch ({self._config.max_batch}); "
                               "split it")
        self._metrics.batch_size.observe(size)
        if request.requests:
            for i, item in enumerate(request.requests):
                if item.HasField("policies"):
                    raise ValueError(f"request {i}: inline policies go on the batch (CheckBatchRequest.policies), "
                                     "not on its requests")
            columns = convert.columns(request.requests)
        else:
            columns = convert.request_columns(request.columns)
        principals, actions, resources, contexts, owners, session_tags = columns
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the batch was decided")
        if request.HasField("policies"):
            compiled, version = self._compiled_inline(request.policies), 0
            decided = compiled.evaluate_columns(principals, actions, resources, contexts, owners,
                                                explain=request.explain, session_tags=session_tags)
        else:
            serving = self._serving()
            version = serving.version.number
            decided = serving.compiled.evaluate_columns(principals, actions, resources, contexts, owners,
                                                        explain=request.explain, session_tags=session_tags,
                                                        usage=self._usage.counter(serving.compiled))
        if isinstance(decided, BatchDecisions):
            self._metrics.count(decided.codes, len(decided.errors))
            return convert.encoded_response(decided, version, request.batch_id)
        self._metrics.count_decisions(decided)
        return pb.CheckBatchResponse(results=[convert.result(d, True) for d in decided], store_version=version,
                                     batch_id=request.batch_id)

    def WhoCan(self, request: pb.WhoCanRequest, context: grpc.ServicerContext) -> pb.WhoCanResponse:
        serving = self._serving()
        answer = who_can(serving.compiled, **convert.who_can_query(request))
        return convert.who_can_response(answer, serving.version.number)

    def WhatCan(self, request: pb.WhatCanRequest, context: grpc.ServicerContext) -> pb.WhatCanResponse:
        serving = self._serving()
        answer = what_can(serving.compiled, **convert.what_can_query(request), catalog=self._catalog)
        return convert.what_can_response(answer, serving.version.number)

    def _compiled_inline(self, policies: pb.InlinePolicies) -> CompiledPolicySet:
        """The compiled set of policies sent with a request; refused by size first, so that no caller can
        make the server spend long (under the GIL) or much memory compiling what it sent."""
        documents = [*policies.identity, *([policies.resource] if policies.resource else []),
                     *policies.permissions_boundary, *policies.session,
                     *(text for level in (*policies.scp, *policies.rcp) for text in level.documents),
                     *policies.vpc_endpoint]
        limit = self._config.max_inline_policies_per_request
        if len(documents) > limit:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"the request sends {len(documents)} policies, "
                               f"more than max_inline_policies_per_request ({limit})")
        limit = self._config.max_inline_policy_bytes
        for text in documents:
            if len(text.encode()) > limit:
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"an inline policy has {len(text.encode())} "
                                   f"bytes, more than max_inline_policy_bytes ({limit})")
        key = policies.SerializeToString(deterministic=True)
        with self._inline_lock:
            cached = self._inline.get(key)
            if cached is not None:
                self._inline.move_to_end(key)
                return cached[0]
        compiled = CompiledPolicySet(convert.inline_policies(policies))
        cost = compiled.nbytes + PYTHON_BYTES_PER_SOURCE_BYTE * sum(len(text) for text in documents)
        with self._inline_lock:
            if key not in self._inline:
                self._inline[key] = compiled, cost
                self._inline_bytes += cost
            while self._inline and (len(self._inline) > INLINE_CACHE
                                    or self._inline_bytes > self._config.inline_cache_bytes):
                self._inline_bytes -= self._inline.popitem(last=False)[1][1]
        return compiled

    def inline_cache(self) -> tuple[int, int]:
        """Inline policy sets kept compiled, and their estimated bytes."""
        with self._inline_lock:
            return len(self._inline), self._inline_bytes


class _IdleStreams:
    """Cancels the streams that have sent nothing for ``seconds``: one watcher thread for all of them."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._streams: dict[int, list] = {}  # id -> [last message time, context]
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def watched(self, requests: Iterator[pb.CheckBatchRequest],
                context: grpc.ServicerContext) -> Iterator[pb.CheckBatchRequest]:
        entry = [time.monotonic(), context]
        with self._lock:
            self._streams[id(entry)] = entry
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="idle-streams", daemon=True)
                self._watcher.start()
        try:
            for request in requests:
                entry[0] = time.monotonic()
                yield request
                entry[0] = time.monotonic()  # deciding is not idling
        finally:
            with self._lock:
                self._streams.pop(id(entry), None)

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self._seconds / 4))
            now = time.monotonic()
            with self._lock:
                idle = [entry[1] for entry in self._streams.values() if now - entry[0] > self._seconds]
            for context in idle:
                context.cancel()
