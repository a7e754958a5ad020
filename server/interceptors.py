"""What happens around every call of our services: the caller's credential, decoding and
encoding, the latency metric, and the one mapping from evaluator errors to gRPC status codes.

Servicers raise; this module decides the status. Health and reflection pass through.
"""
from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Callable, Iterator

import grpc
from google.protobuf.message import DecodeError

from iam_evaluator.findings import PolicyValidationError, Severity
from iam_evaluator.principals import RequestError
from iam_evaluator.store import StoreError

from .config import ServerConfig
from .metrics import ServiceMetrics
from .store_versions import ChangeFailed, EntryNotFound, VersionConflict

PACKAGE = "/iam_evaluator.v1."
log = logging.getLogger("iam_eval.server")


class ServiceError(Exception):
    """A call the service refuses for a reason of its own, with the status to say so."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a call ends with when it raises ``exc``; the message is cut to fit
    (``_bounded``)."""
    code, message = _status(exc)
    return code, _bounded(message)


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if isinstance(exc, StoreError):  # a change that would leave the store inconsistent changes nothing
        references = all(f.code == "S002" for f in exc.findings if f.severity is Severity.ERROR)
        return (grpc.StatusCode.FAILED_PRECONDITION if references else grpc.StatusCode.INVALID_ARGUMENT), str(exc)
    if isinstance(exc, (RequestError, PolicyValidationError, ValueError, DecodeError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, EntryNotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc.args[0]) if exc.args else "not found"
    if isinstance(exc, VersionConflict):
        return grpc.StatusCode.ABORTED, str(exc)
    if isinstance(exc, ChangeFailed):  # nothing of the change was kept; serving goes on
        if exc.read_only:
            return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
        return (grpc.StatusCode.UNAVAILABLE if exc.disk else grpc.StatusCode.INTERNAL), str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the details"


ECHO_CHARACTERS = 200
"""The most of one echoed input (a run of characters without a space: an ARN, a name, a quoted value) a
status message keeps."""
MESSAGE_CHARACTERS = 2000
MESSAGE_WIRE_BYTES = 4000
"""A status message travels as the grpc-message trailer, every byte outside printable ASCII (and '%')
percent-encoded as three; the client refuses trailers over 8 KiB (RESOURCE_EXHAUSTED: Stream removed),
so the message keeps well inside that."""
_ECHOED_RUN = re.compile(r"\S{%d,}" % (ECHO_CHARACTERS + 1))
ELLIPSIS = "…"


def _wire_bytes(text: str) -> int:
    return sum(1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode()) for char in text)


def _bounded(message: str) -> str:
    """``message`` with each echoed input cut to ``ECHO_CHARACTERS``, any lone surrogate (which UTF-8
    cannot carry) written as its escape, and the whole cut to fit a status, each cut marked with "…"."""
    message = _ECHOED_RUN.sub(lambda run: run[0][:ECHO_CHARACTERS] + ELLIPSIS, message)
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message) <= MESSAGE_CHARACTERS and _wire_bytes(message) <= MESSAGE_WIRE_BYTES:
        return message
    budget, kept = MESSAGE_WIRE_BYTES - _wire_bytes(ELLIPSIS), 0
    for char in message[:MESSAGE_CHARACTERS - 1]:
        budget -= _wire_bytes(char)
        if budget < 0:
            break
        kept += 1
    return message[:kept] + ELLIPSIS


READ_METHODS = frozenset(PACKAGE + "PolicyAdmin/" + name for name in (
    "GetStoreVersion", "ListStoreVersions", "GetPolicy", "ListPolicies", "GetPrincipal", "ListPrincipals",
    "ValidatePolicy", "GetContextKeys", "GetStatementUsage"))
"""The PolicyAdmin calls that change nothing: ``read_token`` is enough for them."""


class CallGuard(grpc.ServerInterceptor):
    """Checks the bearer token each service needs, decodes the request, times the call and turns
    exceptions into statuses."""

    def __init__(self, config: ServerConfig, metrics: ServiceMetrics) -> None:
        self._config = config
        self._metrics = metrics

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        method = details.method
        if handler is None or not method.startswith(PACKAGE):
            return handler
        refusal = self._refusal(method, details.invocation_metadata)
        encode = _encoder(handler.response_serializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, handler.request_deserializer, refusal),
                response_serializer=encode)
        return grpc.stream_stream_rpc_method_handler(
            self._stream(method, handler.stream_stream, handler.request_deserializer, refusal),
            response_serializer=encode)

    def _refusal(self, method: str, metadata: tuple) -> ServiceError | None:
        """Why the call may not go ahead, if it may not: the tokens its method accepts (none configured:
        an open Authorizer, a disabled PolicyAdmin) against the one bearer token sent."""
        config = self._config
        admin = method.startswith(PACKAGE + "PolicyAdmin/")
        if not admin:
            accepted = (config.check_token,) if config.check_token else ()
        elif method in READ_METHODS:
            accepted = tuple(token for token in (config.admin_token, config.read_token) if token)
            if not accepted:
                return ServiceError(grpc.StatusCode.PERMISSION_DENIED, "the admin API is disabled: the server "
                                    "has no admin_token (nor read_token) configured")
        elif not config.admin_token:
            return ServiceError(grpc.StatusCode.PERMISSION_DENIED, "changes are disabled: the server has no "
                                "admin_token configured")
        else:
            accepted = (config.admin_token,)
        if not accepted:
            return None
        sent = [value for key, value in metadata or () if key == "authorization"]
        if len(sent) > 1:  # which one counts would depend on who reads them: a proxy may have added one
            return ServiceError(grpc.StatusCode.UNAUTHENTICATED,
                                f"{len(sent)} 'authorization' headers: send exactly one credential")
        given = sent[0][len("Bearer "):] if sent and sent[0].startswith("Bearer ") else None
        if given is None:
            return ServiceError(grpc.StatusCode.UNAUTHENTICATED,
                                "this API needs a credential: send metadata 'authorization: Bearer <token>'")
        if _matches(given, accepted):
            return None
        if admin and config.read_token and _matches(given, (config.read_token,)):
            return ServiceError(grpc.StatusCode.PERMISSION_DENIED, "the read_token may only read; changes need "
                                "the admin_token")
        return ServiceError(grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid for this API")

    def _fail(self, method: str, context: grpc.ServicerContext, exc: Exception):
        code, message = status(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.error("call failed", exc_info=exc, extra={"method": method})
        self._metrics.rpc_errors.labels(method, code.name).inc()
        context.abort(code, message)

    def _unary(self, method: str, behavior: Callable, decode: Callable, refusal: ServiceError | None):
        def call(raw: bytes, context: grpc.ServicerContext):
            started = time.perf_counter()
            try:
                if refusal:
                    raise refusal
                return behavior(_decode(decode, raw), context)
            except Exception as exc:  # every failure becomes a status; none escapes as a crash
                if context.code() is not None:  # already aborted
                    raise
                self._fail(method, context, exc)
            finally:
                self._metrics.latency.labels(method).observe(time.perf_counter() - started)
        return call

    def _stream(self, method: str, behavior: Callable, decode: Callable, refusal: ServiceError | None):
        def call(raws: Iterator[bytes], context: grpc.ServicerContext):
            started = time.perf_counter()
            try:
                if refusal:
                    raise refusal
                yield from behavior((_decode(decode, raw) for raw in raws), context)
            except grpc.RpcError:  # reading the request stream failed: the client cancelled or its deadline passed
                return
            except Exception as exc:
                if context.code() is not None:
                    raise
                self._fail(method, context, exc)
            finally:
                self._metrics.latency.labels(method).observe(time.perf_counter() - started)
        return call


def _matches(given: str, tokens: tuple[str, ...]) -> bool:
    """Whether ``given`` is one of ``tokens``, compared in constant time (each compared, whichever matches)."""
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given.encode(), token.encode())
    return found


def _encoder(serialize: Callable) -> Callable:
    """A servicer may return its response already encoded (bytes), as the batch path does."""
    return lambda response: response if type(response) is bytes else serialize(response)


def _decode(decode: Callable, raw: bytes):
    try:
        return decode(raw)
    except DecodeError as exc:
        name = getattr(decode, "__self__", None)
        raise ValueError(f"the request is not a valid {getattr(name, '__name__', 'message')}: {exc}") from None
