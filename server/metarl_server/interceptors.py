"""Server interceptors: Prometheus metrics of every call, bearer-token authentication (with
client names and admin tokens), and the concurrency guard that keeps streams from taking the
threads of other calls and health checks."""

from __future__ import annotations

import ctypes
import hmac
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from metarl_server.errors import InvalidArgument
from metarl_server.metrics import Metrics

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
Handler = Any


MAX_CACHED_HANDLERS = 256
"""Most wrapped handlers an interceptor keeps: the server's methods and its few refusals need a
few dozen; the bound holds whatever method names clients make up."""


class _CachingInterceptor(grpc.ServerInterceptor):
    """Builds the wrapped handler of a method once (the services' handlers never change), so the
    per-call cost is a dict lookup. Keyed by the handler's identity too, and bounded
    (:data:`MAX_CACHED_HANDLERS`): a method name is whatever the client sends."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    def _cached(self, key: str, handler: Handler, build: Callable[[], Handler]) -> Handler:
        slot = (key, id(handler))
        hit = self._cache.get(slot)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = build()
        if len(self._cache) >= MAX_CACHED_HANDLERS:
            self._cache.clear()  # (only refusals rebuilt per call could get here)
        self._cache[slot] = (handler, wrapped)
        return wrapped


def _code_name(context: Any, default: str) -> str:
    code = context.code()
    return code.name if code is not None else default


UNKNOWN_METHOD = "unknown"
"""The ``method`` label of calls to a method the server does not implement."""


class MetricsInterceptor(_CachingInterceptor):
    """Counts calls by method and status code and times them.

    The ``method`` label takes its values from a closed set: the short names of ``methods``
    (the full names the server implements, ``/package.Service/Method``) and
    :data:`UNKNOWN_METHOD` for any other name a client sends (refused calls carry whatever name
    their client made up; labelling by it would grow the metrics without bound)."""

    def __init__(self, metrics: Metrics, methods: Iterable[str]) -> None:
        super().__init__()
        self.metrics = metrics
        self._labels = {m: m.rsplit("/", 1)[-1] for m in methods}

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        label = self._labels.get(method, UNKNOWN_METHOD)
        return self._cached(label, handler, lambda: self._wrap(handler, label))

    def _wrap(self, handler: Handler, label: str) -> Handler:
        method = label.rsplit("/", 1)[-1]
        metrics = self.metrics
        observe = metrics.latency.labels(method).observe
        ok = metrics.request_counter(method, "OK")

        def record(start: float, code: str) -> None:
            observe(time.perf_counter() - start)
            (ok if code == "OK" else metrics.request_counter(method, code)).inc()

        def timed(fn: Any) -> Any:  # a handler that answers once (a request or a stream in)
            def call(request: Any, context: Any) -> Any:
                start = time.perf_counter()
                try:
                    response = fn(request, context)
                except BaseException:
                    record(start, _code_name(context, "UNKNOWN"))
                    raise
                record(start, _code_name(context, "OK"))
                return response

            _same_pool(fn, call)
            return call

        if not handler.request_streaming and not handler.response_streaming:
            return handler._replace(unary_unary=timed(handler.unary_unary))

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

            _same_pool(sfn, stream_stream)
            return handler._replace(stream_stream=stream_stream)
        if handler.request_streaming and not handler.response_streaming:
            # (the unary methods, as ReceiveGate serves them)
            return handler._replace(stream_unary=timed(handler.stream_unary))
        return handler  # (no unary-stream methods here)


def _same_pool(inner: Any, outer: Any) -> None:
    """Keeps the thread pool gRPC runs ``inner`` on (``experimental_thread_pool``, see
    :class:`ConcurrencyGuard`) for its wrapper ``outer``."""
    pool = getattr(inner, "experimental_thread_pool", None)
    if pool is not None:
        outer.experimental_thread_pool = pool


ADMIN_PREFIX = "/metarl.v1.ModelAdminService/"
POLICY_PREFIX = "/metarl.v1.PolicyService/"
OWN_PREFIX = "/metarl.v1."

CLIENT: ContextVar[str | None] = ContextVar("metarl_client", default=None)
"""The calling client's name, from its token (None: an unnamed token, or no auth). gRPC runs the
interceptors and then the handler of a call in that call's own ``contextvars.Context``, so the
value :class:`AuthInterceptor` sets is the one the handler reads."""


class AuthInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` metadata on every call but health checks.

    ``clients`` maps each accepted token to its client's name (None for an unnamed token); the
    name is published in :data:`CLIENT` for the handler. With ``admin_tokens``, only those call
    ``ModelAdminService`` (and they call nothing else); without, every client token may.

    A refused call is answered before its request is read: the refusal is a handler that never
    asks for the message, so an unauthenticated client cannot make the server receive and decode
    a large body (gRPC's flow control stops the sender after a window's worth of bytes).
    """

    def __init__(
        self,
        clients: Mapping[str, str | None] | Iterable[str],
        admin_tokens: Iterable[str] = (),
        exempt_prefixes: tuple[str, ...] = (HEALTH_PREFIX,),
    ):
        if not isinstance(clients, Mapping):
            clients = dict.fromkeys(clients)
        self._clients = [(t.encode(), name) for t, name in clients.items() if t]
        self._admins = [t.encode() for t in admin_tokens if t]
        if not self._clients and not self._admins:
            raise ValueError("AuthInterceptor needs at least one non-empty token")
        self._exempt = exempt_prefixes
        self._unauthenticated = _refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or invalid credentials: send metadata 'authorization: Bearer <token>'",
        )
        self._admin_only = _refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            "ModelAdminService needs an admin token (--admin-token-file); this token is a client's",
        )
        self._clients_only = _refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            "an admin token calls ModelAdminService only: use a client token for this service",
        )

    @staticmethod
    def _bearer(metadata: Any) -> bytes | None:
        for key, value in metadata or ():
            if key == "authorization":
                scheme, _, token = str(value).partition(" ")
                if scheme.lower() != "bearer":
                    return None
                return token.strip().encode()
        return None

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        method = details.method
        if method.startswith(self._exempt):
            return continuation(details)
        given = self._bearer(details.invocation_metadata)
        if given is None:
            return self._unauthenticated
        # compare with every token (constant time each) so timing tells nothing
        client: tuple[bytes, str | None] | None = None
        for entry in self._clients:
            if hmac.compare_digest(given, entry[0]):
                client = entry
        admin = any([hmac.compare_digest(given, t) for t in self._admins])
        if self._admins and method.startswith(ADMIN_PREFIX):
            if admin:
                return continuation(details)
            return self._admin_only if client is not None else self._unauthenticated
        if client is None:
            return self._clients_only if admin else self._unauthenticated
        if client[1] is not None:
            CLIENT.set(client[1])
        return continuation(details)


RETRY_PUSHBACK_MS = (500, 1000, 2000, 4000)
"""How long a client's gRPC retry policy waits before its next attempt at a call refused while
the server loads or drains (``grpc-retry-pushback-ms``), by the attempts it already made (the
``grpc-previous-rpc-attempts`` header): 7.5 s in all over gRPC's most of 5 attempts, where the
channel's own random backoff could spend them in a fraction of a second."""


def _unavailable(message: str) -> Handler:
    """Like :func:`_refusal` with UNAVAILABLE, and a retry pushback (:data:`RETRY_PUSHBACK_MS`)."""

    def refuse(request_iterator: Any, context: Any) -> Any:
        attempts = 0
        for key, value in context.invocation_metadata():
            if key == "grpc-previous-rpc-attempts":
                attempts = int(value) if str(value).isdigit() else 0
        pushback = RETRY_PUSHBACK_MS[min(attempts, len(RETRY_PUSHBACK_MS) - 1)]
        context.set_trailing_metadata((("grpc-retry-pushback-ms", str(pushback)),))
        context.abort(grpc.StatusCode.UNAVAILABLE, message)

    return grpc.stream_stream_rpc_method_handler(refuse)


def _refusal(code: grpc.StatusCode, message: str) -> Handler:
    """A handler that answers ``code`` without reading the request: a stream-request handler
    whose iterator is never advanced (whatever the method's own shape: on the wire the client
    cannot tell), with no deserializer."""

    def refuse(request_iterator: Any, context: Any) -> Any:
        context.abort(code, message)

    return grpc.stream_stream_rpc_method_handler(refuse)


class _Watched:
    """A StreamAct request iterator that notes when it started waiting for the client's next
    message (``since``; None while the server works on one) and when it handed gRPC a
    response to send (``sending``; None once gRPC asks for the next one), for the idle-stream
    reaper: a client that stops reading its responses leaves the send blocked (HTTP/2 flow
    control) with ``sending`` set."""

    __slots__ = ("_it", "context", "key", "sending", "since")

    def __init__(self, it: Iterator[Any], context: Any) -> None:
        self._it = it
        self.context = context
        self.key: str | None = None
        self.since: float | None = time.monotonic()
        self.sending: float | None = None

    def responses(self, it: Iterator[Any]) -> Iterator[Any]:
        """``it``'s responses, noting how long gRPC takes to send each."""
        for response in it:
            self.sending = time.monotonic()
            yield response  # (gRPC sends it, then asks for the next)
            self.sending = None

    def __iter__(self) -> _Watched:
        return self

    def __next__(self) -> Any:
        self.since = time.monotonic()
        request = next(self._it)
        self.since = None
        return request


class ConcurrencyGuard(grpc.ServerInterceptor):
    """Keeps long calls from taking the threads that short ones and health checks need.

    gRPC's synchronous server runs every call on a thread of a pool for its whole life, and a
    ``StreamAct`` stream lives as long as its client wants: enough idle streams would hold every
    thread, and then nothing (health checks included) is answered. So:

    - ``StreamAct`` streams (and reflection's) run on a pool of their own (gRPC's per-method
      ``experimental_thread_pool``) of ``max_streams`` threads; a stream past that answers
      ``RESOURCE_EXHAUSTED`` at once (decided before the call is queued), as does a client's
      stream past ``max_streams_per_client`` (a client: its name from its token, else its
      connection);
    - a stream that sends nothing for ``idle_timeout`` seconds, or whose client reads none of
      its responses for that long (the send blocked by flow control), is closed with
      ``UNAVAILABLE`` (open a new one), so stuck clients give their threads back;
    - health checks run on a small pool of their own and always find a thread.
    """

    def __init__(
        self,
        max_streams: int,
        max_streams_per_client: int,
        idle_timeout: float,
        health_threads: int = 2,
        initializer: Callable[[], None] | None = None,
        receive_gate: ReceiveGate | None = None,
    ) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.max_streams = max_streams
        self.max_per_client = max_streams_per_client if max_streams_per_client > 0 else max_streams
        self.idle_timeout = idle_timeout
        self.receive_gate = receive_gate
        self.stream_pool = futures.ThreadPoolExecutor(
            max_streams, thread_name_prefix="metarl-stream", initializer=initializer
        )
        self.health_pool = futures.ThreadPoolExecutor(
            health_threads, thread_name_prefix="metarl-health"
        )
        self._lock = threading.Lock()
        self._active = 0
        self._per_client: dict[str, int] = {}
        self._streams: set[_Watched] = set()
        self._handlers: dict[str, tuple[Handler, Handler]] = {}
        self._full = _refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the server serves its maximum of {max_streams} streams (--max-streams): "
            "close streams you no longer use, use Act, or retry shortly",
        )
        self._unavailable: Handler | None = None
        self.reaped: Counter[str] = Counter()
        """Streams the reaper closed, by reason: ``silent`` (no message from the client),
        ``unread`` (the client read no response)."""
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None  # started with the first stream

    @property
    def active_streams(self) -> int:
        return self._active

    def refuse_calls(self, message: str | None) -> None:
        """Answers every ``PolicyService`` call with UNAVAILABLE ``message`` (None: serve them
        again): while the first policies load, and while the server drains. Health,
        reflection and the admin service (ReloadModels loads policies) stay open."""
        self._unavailable = _unavailable(message) if message is not None else None

    @property
    def refusing(self) -> bool:
        return self._unavailable is not None

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        method = details.method
        if self._unavailable is not None and method.startswith(POLICY_PREFIX):
            return self._unavailable
        handler = continuation(details)
        if handler is None:
            return None
        if handler.stream_stream is not None:  # StreamAct, and reflection's stream
            with self._lock:
                if self._active >= self.max_streams:
                    return self._full
                self._active += 1
                if self._reaper is None and self.idle_timeout > 0:
                    self._reaper = threading.Thread(
                        target=self._reap, name="metarl-stream-reaper", daemon=True
                    )
                    self._reaper.start()
            try:
                return self._wrapped(method, handler, self._stream)
            except BaseException:
                self._release(None)
                raise
        if method.startswith(HEALTH_PREFIX):
            return self._wrapped(method, handler, self._health)
        if method.startswith(OWN_PREFIX):
            gate = self.receive_gate
            if gate is None:
                return self._wrapped(method, handler, _lenient)
            return self._wrapped(method, handler, lambda h: gate.wrap(_lenient(h)))
        return handler

    def _wrapped(self, method: str, handler: Handler, wrap: Callable[[Handler], Handler]) -> Any:
        if handler is None:
            return None
        hit = self._handlers.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = wrap(handler)
        if len(self._handlers) >= MAX_CACHED_HANDLERS:
            self._handlers.clear()  # (bounded whatever names reach here)
        self._handlers[method] = (handler, wrapped)
        return wrapped

    def _health(self, handler: Handler) -> Handler:
        if handler.unary_unary is None:
            return handler  # Watch: non-blocking, it holds no thread
        fn = handler.unary_unary

        def check(request: Any, context: Any) -> Any:
            return fn(request, context)

        check.experimental_thread_pool = self.health_pool  # type: ignore[attr-defined]
        return handler._replace(unary_unary=check)

    def _stream(self, handler: Handler) -> Handler:
        handler = _lenient(handler)
        fn = handler.stream_stream

        def stream_stream(request_iterator: Any, context: Any) -> Any:
            watched = _Watched(request_iterator, context)
            if not context.add_callback(lambda: self._release(watched)):
                self._release(watched)  # (already over)
                return iter(())
            key = CLIENT.get() or context.peer()
            with self._lock:
                n = self._per_client.get(key, 0)
                if n < self.max_per_client:
                    self._per_client[key] = n + 1
                    watched.key = key
                    self._streams.add(watched)
            if watched.key is None:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this client already has its maximum of {self.max_per_client} StreamAct "
                    "streams (--max-streams-per-client): close streams it no longer uses",
                )
            return watched.responses(fn(watched, context))

        stream_stream.experimental_thread_pool = self.stream_pool  # type: ignore[attr-defined]
        return handler._replace(stream_stream=stream_stream)

    def _release(self, watched: _Watched | None) -> None:
        with self._lock:
            self._active -= 1
            if watched is not None and watched.key is not None:
                key, watched.key = watched.key, None
                n = self._per_client[key] - 1
                if n:
                    self._per_client[key] = n
                else:
                    del self._per_client[key]
                self._streams.discard(watched)

    def _reap(self) -> None:
        period = min(1.0, self.idle_timeout / 4)
        silent = (
            f"stream closed after {self.idle_timeout:g} s without a message from the client "
            "(--stream-idle-timeout): open a new stream"
        )
        unread = (
            f"stream closed after its client read no response for {self.idle_timeout:g} s "
            "(--stream-idle-timeout): read every response of a stream (its slot is held until "
            "then), and open a new stream"
        )
        while not self._closed.wait(period):
            now = time.monotonic()
            with self._lock:
                idle = [
                    (w, silent if w.sending is None else unread)
                    for w in self._streams
                    if (w.since is not None and now - w.since > self.idle_timeout)
                    or (w.sending is not None and now - w.sending > self.idle_timeout)
                ]
            for w, message in idle:
                reason = "silent" if message is silent else "unread"
                self.reaped[reason] += 1
                log.info(
                    "closed a StreamAct stream: %s",
                    "no message from its client"
                    if reason == "silent"
                    else "its client reads no response",
                    extra={"reason": reason},
                )
                _end_call(w.context, grpc.StatusCode.UNAVAILABLE, message)

    def close(self) -> None:
        self._closed.set()
        if self.receive_gate is not None:
            self.receive_gate.close()
        self.stream_pool.shutdown(wait=False)
        self.health_pool.shutdown(wait=False)


class ReceiveGate:
    """Bounds the request bodies of unary calls received and decoded at once.

    gRPC's Python server receives a unary call's whole body (and decodes it) before its
    handler runs, every call at once: 24 concurrent 60 MB calls held ~1.4 GB. Here a unary
    handler is served as a request-streaming one (the same on the wire) that asks for its one
    message only once it holds one of ``slots`` receive slots; until then its body stays
    with the client (HTTP/2 flow control: the server's stream window is a fixed
    :data:`STREAM_WINDOW_BYTES`, see ``app._server_options``). A small body's receive takes
    microseconds; a call that waits ``wait`` seconds for a slot answers RESOURCE_EXHAUSTED,
    and one whose body takes longer than ``receive_timeout`` seconds to arrive is ended
    (RESOURCE_EXHAUSTED) so that slow senders cannot keep the slots.
    """

    def __init__(
        self, slots: int, budget_mb: int, wait: float = 5.0, receive_timeout: float = 30.0
    ) -> None:
        self.slots = max(1, slots)
        self.wait = wait
        self.receive_timeout = receive_timeout
        self._sem = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self._receiving: dict[int, tuple[Any, float]] = {}
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._trim = False
        self.refused = 0
        """Calls answered RESOURCE_EXHAUSTED because no slot came free in ``wait`` seconds."""
        self.timed_out = 0
        """Calls ended because their body took more than ``receive_timeout`` s to arrive."""
        self._busy = (
            f"the server is receiving its maximum of {budget_mb} MiB of request bodies "
            "(--max-receiving-mb): retry shortly (with backoff)"
        )

    def wrap(self, handler: Handler) -> Handler:
        if handler.unary_unary is None:
            return handler
        fn = handler.unary_unary

        def stream_unary(request_iterator: Any, context: Any) -> Any:
            if not self._sem.acquire(timeout=self.wait):
                self.refused += 1
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._busy)
            key = id(context)
            with self._lock:
                self._receiving[key] = (context, time.monotonic())
                if self._watchdog is None and self.receive_timeout > 0:
                    self._watchdog = threading.Thread(
                        target=self._watch, name="metarl-receive-watchdog", daemon=True
                    )
                    self._watchdog.start()
            started = time.monotonic()
            try:
                request = next(request_iterator, None)
            except grpc.RpcError:
                request = None  # (the call ended: cancelled, or ended by the watchdog)
            finally:
                with self._lock:
                    self._receiving.pop(key, None)
                self._sem.release()
            if time.monotonic() - started > LARGE_RECEIVE_SECONDS:
                self._trim = True  # (a large body, most likely: see _watch)
            if request is None:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT
                    if context.is_active()
                    else grpc.StatusCode.CANCELLED,
                    "a unary call needs exactly one request message",
                )
            return fn(request, context)

        _same_pool(fn, stream_unary)
        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )

    def _watch(self) -> None:
        period = min(1.0, self.receive_timeout / 4)
        while not self._closed.wait(period):
            if self._trim:
                self._trim = False
                _return_free_memory()
            now = time.monotonic()
            with self._lock:
                slow = [c for c, t in self._receiving.values() if now - t > self.receive_timeout]
            message = (
                f"the request body took more than {self.receive_timeout:g} s to arrive: send "
                "it faster, or send less (the server's receive slots are few, "
                "--max-receiving-mb)"
            )
            for context in slow:
                self.timed_out += 1
                _end_call(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    def close(self) -> None:
        self._closed.set()


LARGE_RECEIVE_SECONDS = 0.01
"""A receive that takes longer than this was most likely a large body: once no body is being
received, the memory it freed is handed back to the operating system."""


def _return_free_memory() -> None:
    """glibc's ``malloc_trim(0)``: gRPC receives a body in many small pieces, which once freed
    stay in the process's heaps (RSS stays at its peak) unless trimmed. Nothing elsewhere."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


STREAM_WINDOW_BYTES = 64 * 1024
"""The server's HTTP/2 stream window (fixed: no BDP probing, which grows it to megabytes): the
most of a request body that arrives before the handler asks for it (see :class:`ReceiveGate`)."""


class _Malformed:
    """What a request that is not a valid protobuf message decodes to: any use of it raises
    ``InvalidArgument`` (the services map that to INVALID_ARGUMENT), where gRPC itself would log
    a traceback and answer INTERNAL."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        raise InvalidArgument(
            f"the request is not a valid protobuf message of this method ({self.error}): "
            "build it with the stubs generated from proto/metarl/v1"
        )


def _lenient(handler: Handler) -> Handler:
    """``handler`` with a request deserializer that turns a malformed message (bad wire data,
    nesting past protobuf's recursion limit) into a :class:`_Malformed`."""
    parse = handler.request_deserializer
    if parse is None:
        return handler

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Malformed(str(exc) or "undecodable")

    return handler._replace(request_deserializer=deserialize)


def _end_call(context: Any, code: grpc.StatusCode, message: str) -> None:
    """Ends a call from another thread than its handler's, with ``code`` and ``message`` (the
    handler's blocked read then fails and its thread is free). gRPC's public ``cancel()`` can only
    say CANCELLED; the call object underneath takes a status."""
    try:
        from grpc._cython import cygrpc

        context._rpc_event.call.cancel(getattr(cygrpc.StatusCode, code.name.lower()), message)
    except Exception:
        context.cancel()
