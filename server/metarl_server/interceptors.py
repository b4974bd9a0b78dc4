"""Server interceptors: Prometheus metrics of every call, and bearer-token authentication."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from metarl_server.metrics import Metrics

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
Handler = Any


class _CachingInterceptor(grpc.ServerInterceptor):
    """Builds the wrapped handler of a method once (the services' handlers never change), so the
    per-call cost is a dict lookup."""

    def __init__(self) -> None:
        self._cache: dict[Any, tuple[Handler, Handler]] = {}

    def _cached(self, key: Any, handler: Handler, build: Callable[[], Handler]) -> Handler:
        hit = self._cache.get(key)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = build()
        self._cache[key] = (handler, wrapped)
        return wrapped


def _code_name(context: Any, default: str) -> str:
    code = context.code()
    return code.name if code is not None else default


class MetricsInterceptor(_CachingInterceptor):
    """Counts calls by method and status code and times them."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        return self._cached(details.method, handler, lambda: self._wrap(handler, details.method))

    def _wrap(self, handler: Handler, full_method: str) -> Handler:
        method = full_method.rsplit("/", 1)[-1]
        metrics = self.metrics
        observe = metrics.latency.labels(method).observe
        ok = metrics.request_counter(method, "OK")

        def record(start: float, code: str) -> None:
            observe(time.perf_counter() - start)
            (ok if code == "OK" else metrics.request_counter(method, code)).inc()

        if not handler.request_streaming and not handler.response_streaming:
            fn = handler.unary_unary

            def unary_unary(request: Any, context: Any) -> Any:
                start = time.perf_counter()
                try:
                    response = fn(request, context)
                except BaseException:
                    record(start, _code_name(context, "UNKNOWN"))
                    raise
                record(start, _code_name(context, "OK"))
                return response

            return handler._replace(unary_unary=unary_unary)

        if handler.request_streaming and handler.response_streaming:
            sfn = handler.stream_stream

            def stream_stream(request_iterator: Any, context: Any) -> Iterator[Any]:
                start = time.perf_counter()
                code = "OK"
                try:
                    yield from sfn(request_iterator, context)
                except GeneratorExit:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code_name(context, "UNKNOWN")
                    raise
                finally:
                    record(start, code if code != "OK" else _code_name(context, "OK"))

            return handler._replace(stream_stream=stream_stream)
        return handler  # (no unary-stream or stream-unary methods here)


class AuthInterceptor(_CachingInterceptor):
    """Requires ``authorization: Bearer <token>`` metadata on every call but health checks;
    answers ``UNAUTHENTICATED`` otherwise."""

    def __init__(self, tokens: Iterable[str], exempt_prefixes: tuple[str, ...] = (HEALTH_PREFIX,)):
        super().__init__()
        self._tokens = [t.encode() for t in tokens if t]
        if not self._tokens:
            raise ValueError("AuthInterceptor needs at least one non-empty token")
        self._exempt = exempt_prefixes

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                scheme, _, token = str(value).partition(" ")
                if scheme.lower() != "bearer":
                    return False
                given = token.strip().encode()
                # compare with every token (constant time each) so timing tells nothing
                return any([hmac.compare_digest(given, t) for t in self._tokens])
        return False

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method.startswith(self._exempt) or self._authorized(details.invocation_metadata):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        return self._cached(details.method, handler, lambda: _denied(handler))


def _denied(handler: Handler) -> Handler:
    message = "missing or invalid credentials: send metadata 'authorization: Bearer <token>'"

    def deny(request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return handler._replace(stream_stream=deny)
    if handler.request_streaming:
        return handler._replace(stream_unary=deny)
    if handler.response_streaming:
        return handler._replace(unary_stream=deny)
    return handler._replace(unary_unary=deny)
