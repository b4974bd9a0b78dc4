"""Building and running the gRPC server.

Every ``ServeConfig`` field (``metarl serve --help``) can also be set by an environment variable
``METARL_<FIELD>`` (``METARL_PORT=50052``, ``METARL_AUTH_TOKEN=…``, ``METARL_CHECKPOINT=a:b`` for a
list, ``METARL_TLS_CERT=/etc/tls/tls.crt``, ``METARL_LOG_FORMAT=json``); a command-line flag wins
over the variable, which wins over the built-in default.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import grpc
import numpy as np
import tyro
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from metarl.core.checkpoint_paths import (
    bundled_checkpoints_dir,
    bundled_policies,
    resolve_checkpoint,
)
from metarl.core.errors import NotFoundError, UsageError, UserError
from metarl_client.proto.metarl.v1 import admin_service_pb2 as admin_pb
from metarl_client.proto.metarl.v1 import admin_service_pb2_grpc as admin_grpc
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_server.adapter import Adapter
from metarl_server.admin import ModelAdminService
from metarl_server.interceptors import (
    STREAM_WINDOW_BYTES,
    AuthInterceptor,
    ConcurrencyGuard,
    MetricsInterceptor,
    ReceiveGate,
)
from metarl_server.logs import setup_logging
from metarl_server.metrics import Metrics
from metarl_server.redis_store import RedisSessionStore
from metarl_server.registry import Loader, PolicyRegistry, ScanResult
from metarl_server.service import Limits, PolicyService
from metarl_server.sessions import InMemorySessionStore, Session, SessionStore

log = logging.getLogger("metarl_server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PolicyService"].full_name
ADMIN_SERVICE_NAME = admin_pb.DESCRIPTOR.services_by_name["ModelAdminService"].full_name
ENV_PREFIX = "METARL_"
LOADING = (
    "loading policies: the server has just started and answers once they are loaded; retry "
    "shortly (the SDK's retry policy does)"
)
WAITING = (
    "no policy loaded yet: the server waits for a checkpoint in its model directory (as "
    "<name>/<version>/; `metarl publish CHECKPOINT --model-dir DIR` puts one there); retry then"
)
DRAINING = "the server is shutting down: retry (another replica, or this one once restarted)"


# -- configuration from flags and environment variables ----------------------------------------


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false, 1/0, yes/no or on/off")


def _parse_paths(raw: str) -> list[Path]:
    return [Path(p) for p in raw.split(os.pathsep) if p]


def _from_env(name: str, default: Any, parse: Callable[[str], Any]) -> Any:
    var = ENV_PREFIX + name.upper()
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SystemExit(f"environment variable {var}={raw!r} is invalid: {exc}") from None


def env(name: str, default: Any, parse: Callable[[str], Any] | None = None) -> Callable[[], Any]:
    """A ``default_factory`` that reads ``METARL_<NAME>`` (parsed by ``parse``, by default the
    type of ``default``) and falls back to ``default``."""
    if parse is None:
        kind = type(default)
        parse = _parse_bool if kind is bool else kind
    assert parse is not None
    return lambda: _from_env(name, default, parse)


@dataclass
class ServeConfig:
    """Serve meta-trained policies over gRPC (health, reflection and the admin service included).
    Every option can also be set by an environment variable METARL_<OPTION> (e.g. METARL_PORT)."""

    checkpoint: Annotated[list[Path], tyro.conf.UseAppendAction] = field(
        default_factory=lambda: list(_from_env("checkpoint", [], _parse_paths))
    )
    """A checkpoint to serve: a directory written by `metarl train`, or a bundled policy's
    <name>/<version> (cartpole-family/1); repeat the flag to serve several. With neither this
    nor --model-dir, the bundled policies. (METARL_CHECKPOINT: paths separated by ':')"""
    model_dir: Path | None = field(default_factory=env("model_dir", None, Path))
    """A directory of ``<name>/<version>/`` checkpoints, watched for new versions while serving;
    each is served under the name and version of its path (models/mine/1: policy 'mine' version
    '1'), whatever its manifest says. An empty one is waited on until a checkpoint appears."""
    poll_interval: float = field(default_factory=env("poll_interval", 5.0))
    """Seconds between scans of --model-dir for new versions (0: only on the ReloadModels RPC)."""
    host: str = field(default_factory=env("host", "[::]"))
    """Address to bind."""
    port: int = field(default_factory=env("port", 50051))
    """Port to bind; 0 picks a free one (printed at start)."""
    max_sessions: int = field(default_factory=env("max_sessions", 10_000))
    """Most live sessions; CreateSession answers RESOURCE_EXHAUSTED past it."""
    session_ttl: float = field(default_factory=env("session_ttl", 3600.0))
    """Seconds a session may stay idle before it expires."""
    session_store: str = field(default_factory=env("session_store", "memory"))
    """Where sessions live: 'memory' (this process), or 'redis://HOST:PORT/DB' to persist every
    change in Redis, so sessions survive restarts and every replica sharing it serves them."""
    max_batch_size: int = field(default_factory=env("max_batch_size", 1024))
    """Most observations per Act call."""
    max_adapt_steps: int = field(default_factory=env("max_adapt_steps", 10))
    """Most inner steps per Adapt call."""
    max_transitions: int = field(default_factory=env("max_transitions", 100_000))
    """Most transitions per Adapt call."""
    max_recorded_transitions: int = field(default_factory=env("max_recorded_transitions", 10_000))
    """Most transitions a recording session keeps (the oldest episodes are dropped)."""
    max_message_mb: int = field(default_factory=env("max_message_mb", 64))
    """Largest request or response, in MiB."""
    max_receiving_mb: int = field(default_factory=env("max_receiving_mb", 128))
    """Most MiB of unary request bodies received and decoded at once: bodies are received
    max(1, this / --max-message-mb) at a time (the rest wait with their clients, who are
    answered RESOURCE_EXHAUSTED after 5 s; a body that takes over 30 s to arrive is refused
    too); 0: no bound (every call's body at once, and gRPC's growing stream windows)."""
    max_streams: int = field(default_factory=env("max_streams", 256))
    """Most StreamAct streams open at once (each holds a thread of its own pool, apart from the
    threads of other calls and health checks); more answer RESOURCE_EXHAUSTED."""
    max_streams_per_client: int = field(default_factory=env("max_streams_per_client", 64))
    """Most StreamAct streams of one client (its name from a named token, else its connection)
    open at once; 0: only --max-streams."""
    stream_idle_timeout: float = field(default_factory=env("stream_idle_timeout", 300.0))
    """Seconds a StreamAct stream may wait for its client's next message before it is closed
    (UNAVAILABLE: open a new stream); 0 never closes them."""
    workers: int = field(default_factory=env("workers", 16))
    """Threads handling calls other than Adapt (Adapt calls waiting for the adaptation workers
    have --max-pending-adaptations threads of their own, so they never starve Act)."""
    batch_max_calls: int = field(default_factory=env("batch_max_calls", 64))
    """Most concurrent Act calls computed in one forward pass."""
    adapt_processes: int = field(default_factory=env("adapt_processes", 1))
    """Processes running adaptations (torch lives there); 0 runs them in a thread of the server."""
    threads: int = field(default_factory=env("threads", 1))
    """Torch intra-op threads of each adaptation process; 1 leaves the other cores to Act."""
    max_pending_adaptations: int = field(default_factory=env("max_pending_adaptations", 64))
    """Most Adapt calls queued or running; more get RESOURCE_EXHAUSTED."""
    metrics_port: int | None = field(default_factory=env("metrics_port", None, int))
    """Serve Prometheus metrics on this port (/metrics); none when unset."""
    auth_token: str | None = None
    """Require 'authorization: Bearer <token>' metadata on every call but health checks.
    Prefer METARL_AUTH_TOKEN (read when the server starts, never shown by --help) or
    --auth-token-file to keep it out of the process list."""
    auth_token_file: Path | None = field(default_factory=env("auth_token_file", None, Path))
    """A file of accepted tokens (for example a mounted secret), one per line: 'TOKEN', or
    'CLIENT TOKEN' to name the client (its sessions are then its own: to other clients they
    are NOT_FOUND). Lines starting with '#' are comments. A file without tokens is refused."""
    admin_token_file: Path | None = field(default_factory=env("admin_token_file", None, Path))
    """A file of admin tokens, one per line: only they call ModelAdminService (and they call
    nothing else). Without it, every client token may call ModelAdminService."""
    tls_cert: Path | None = field(default_factory=env("tls_cert", None, Path))
    """PEM certificate chain: serve TLS instead of plaintext (with --tls-key)."""
    tls_key: Path | None = field(default_factory=env("tls_key", None, Path))
    """PEM private key of --tls-cert."""
    tls_client_ca: Path | None = field(default_factory=env("tls_client_ca", None, Path))
    """PEM CA bundle: require client certificates signed by it (mutual TLS)."""
    keepalive_time: float = field(default_factory=env("keepalive_time", 60.0))
    """Seconds between the server's keepalive pings on idle connections."""
    keepalive_timeout: float = field(default_factory=env("keepalive_timeout", 20.0))
    """Seconds to wait for a keepalive ping's answer before closing the connection."""
    min_client_ping_interval: float = field(default_factory=env("min_client_ping_interval", 10.0))
    """Shortest interval between client keepalive pings the server accepts."""
    grace: float = field(default_factory=env("grace", 10.0))
    """Seconds in-flight calls get to finish after SIGTERM."""
    drain_delay: float = field(default_factory=env("drain_delay", 0.0))
    """Seconds to keep serving with health NOT_SERVING after SIGTERM, before refusing new calls
    (lets load balancers notice)."""
    log_level: str = field(default_factory=env("log_level", "INFO"))
    """Logging level."""
    log_format: Literal["text", "json"] = field(default_factory=env("log_format", "text"))
    """Log lines as text, or one JSON object per line."""

    def tokens(self) -> list[str]:
        """The accepted client bearer tokens: --auth-token (else METARL_AUTH_TOKEN) and the
        file's."""
        return list(self.clients())

    def clients(self) -> dict[str, str | None]:
        """Each accepted client token and its client's name (None: unnamed). Raises
        ``SystemExit`` for a token file that holds no token: auth was asked for, and an empty
        or unreadable file must not turn it off."""
        token = self.auth_token or os.environ.get(ENV_PREFIX + "AUTH_TOKEN")
        clients: dict[str, str | None] = {token.strip(): None} if token and token.strip() else {}
        if self.auth_token_file:
            for line in _token_lines(self.auth_token_file, "--auth-token-file", 2):
                clients[line[-1]] = line[0] if len(line) == 2 else None
        return clients

    def admin_tokens(self) -> list[str]:
        """The tokens of --admin-token-file (none without it); ``SystemExit`` for a file
        without tokens."""
        if not self.admin_token_file:
            return []
        return [line[0] for line in _token_lines(self.admin_token_file, "--admin-token-file", 1)]


def _token_lines(path: Path, flag: str, max_fields: int) -> list[list[str]]:
    """The non-comment lines of a token file, split on whitespace; ``SystemExit`` (one line
    that says what to fix) when it cannot be read, holds no token, or a line has too many
    fields."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(
            f"{flag} {path}: cannot read it ({exc.strerror}): auth stays off"
        ) from None
    lines = [ln.split() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln[0].startswith("#")]
    for n, ln in enumerate(lines, 1):
        if len(ln) > max_fields:
            form = "'CLIENT TOKEN' or 'TOKEN'" if max_fields == 2 else "'TOKEN'"
            raise SystemExit(f"{flag} {path}: token line {n} has {len(ln)} fields; write {form}")
    if not lines:
        raise SystemExit(
            f"{flag} {path} holds no token (empty or only whitespace/comments): refusing to "
            "serve without the authentication it asks for; put at least one token in it"
        )
    return lines


# -- building ------------------------------------------------------------------------------------


class BindError(UserError, OSError):
    """The server's address cannot be bound (a port in use, an address not of this host)."""


def _bind_problem(host: str, port: int, flag: str = "--port") -> str | None:
    """Why ``host:port`` cannot be listened on, or None. A plain socket tries first, so a busy
    port is one line that says what to do rather than gRPC core's log and a traceback."""
    if port == 0:
        return None
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        return f"--host {host}: cannot resolve it ({exc.strerror}); pass an address of this host"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        try:
            probe.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} is already in use on {host} (another metarl serve?): stop "
                    f"that process, or pass another {flag} (0 picks a free one)"
                )
            return f"cannot listen on {host}:{port} ({exc.strerror}): pass another --host or {flag}"
    return None


def build_registry(cfg: ServeConfig, loader: Loader | None = None) -> PolicyRegistry:
    """The policies of ``cfg``. ``loader`` verifies and reads a checkpoint; by default in this
    process (the server passes its adaptation workers')."""
    registry = PolicyRegistry(loader)
    build_into(registry, cfg)
    return registry


_shared: dict[tuple[int, int, int], Adapter] = {}
_shared_lock = threading.Lock()


def shared_adapter(cfg: ServeConfig) -> Adapter:
    """One adaptation pool per configuration for all servers of this process that are not given
    their own (tests and the demo create many servers; each spawning workers would be slow)."""
    key = (cfg.adapt_processes, cfg.threads, cfg.max_pending_adaptations)
    with _shared_lock:
        adapter = _shared.get(key)
        if adapter is None:
            adapter = _shared[key] = Adapter(*key)
            atexit.register(adapter.close)
            # start the workers (and their torch.func warm-up) now, not on the first Adapt
            threading.Thread(target=adapter.start, name="metarl-adapt-start", daemon=True).start()
        return adapter


class Server:
    """A gRPC server with its services, sessions, model watcher and metrics endpoint.

    ``start``/``stop``/``wait_for_termination`` behave as ``grpc.Server``'s; ``stop`` also turns
    health NOT_SERVING first and, once the calls are done, ends the sessions and background work.
    """

    def __init__(
        self,
        grpc_server: grpc.Server,
        port: int,
        cfg: ServeConfig,
        service: PolicyService,
        health_servicer: health.HealthServicer,
        metrics: Metrics,
        adapter: Adapter,
        owns_adapter: bool,
    ) -> None:
        self.grpc_server = grpc_server
        self.port = port
        self.cfg = cfg
        self.service = service
        self.registry = service.registry
        self.sessions: SessionStore = service.sessions
        self.health_servicer = health_servicer
        self.metrics = metrics
        self.metrics_port: int | None = None
        self.adapter = adapter
        self._owns_adapter = owns_adapter
        self.guard: ConcurrencyGuard | None = None
        self.interceptors: list[grpc.ServerInterceptor] = []
        self._stopping = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._listener = self._on_scan
        self.registry.listeners.append(self._listener)

    def refuse_calls(self, message: str | None) -> None:
        """Answers every PolicyService call UNAVAILABLE ``message`` (retryable, with a retry
        pushback) until called with None: :data:`LOADING` until the first policies are loaded,
        :data:`DRAINING` once stopping."""
        if self.guard is not None:
            self.guard.refuse_calls(message)

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health_servicer.set(name, status)

    def start(self) -> None:
        if self.cfg.metrics_port is not None:
            host = self.cfg.host.strip("[]") or "::"
            self.metrics_port = self.metrics.serve_http(self.cfg.metrics_port, host)
            log.info("metrics on %s port %d (/metrics)", host, self.metrics_port)
        self.grpc_server.start()
        self._maintenance = threading.Thread(
            target=self._maintain, name="metarl-maintenance", daemon=True
        )
        self._maintenance.start()

    def _maintain(self) -> None:
        """Expires idle sessions every second; rescans the model directories every
        ``poll_interval`` seconds."""
        interval = self.cfg.poll_interval
        since_scan = 0.0
        while not self._stopping.wait(1.0):
            try:
                self.sessions.expire()
                since_scan += 1.0
                if interval > 0 and since_scan >= interval and self.registry.model_dirs:
                    since_scan = 0.0
                    self.registry.scan()
            except Exception:
                log.exception("maintenance failed")

    def _on_scan(self, result: ScanResult) -> None:
        m = self.metrics.checkpoints
        for label, items in (
            ("loaded", result.loaded),
            ("refused", result.refused),
            ("unloaded", result.unloaded),
        ):
            if items:
                m.labels(label).inc(len(items))

    def stop(self, grace: float | None) -> threading.Event:
        self.set_serving(False)
        self.refuse_calls(DRAINING)  # calls that slip in before gRPC itself refuses them
        self._stopping.set()
        stopped = self.grpc_server.stop(grace)
        done = threading.Event()

        def cleanup() -> None:
            stopped.wait()
            try:
                if self._listener in self.registry.listeners:
                    self.registry.listeners.remove(self._listener)
                if isinstance(self.sessions, InMemorySessionStore):
                    for s in self.sessions.sessions():
                        with contextlib.suppress(Exception):
                            self.sessions.delete(s.id)
                elif isinstance(self.sessions, RedisSessionStore):
                    self.sessions.close()  # the sessions themselves live on in Redis
                self.metrics.close()
                if self.guard is not None:
                    self.guard.close()
                if self._owns_adapter:
                    self.adapter.close()
            finally:
                done.set()

        threading.Thread(target=cleanup, name="metarl-stop", daemon=True).start()
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grpc_server, name)


def _server_options(cfg: ServeConfig) -> list[tuple[str, Any]]:
    max_bytes = cfg.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", int(cfg.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            int(cfg.min_client_ping_interval * 1000),
        ),
        ("grpc.http2.max_ping_strikes", 2),
    ] + (
        # a fixed stream window: a unary call's body stays with its client until the handler
        # asks for it (ReceiveGate); BDP probing would grow the window to megabytes per call
        [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES)]
        if cfg.max_receiving_mb > 0
        else []
    )


def _credentials(cfg: ServeConfig) -> grpc.ServerCredentials | None:
    if cfg.tls_cert is None and cfg.tls_key is None:
        if cfg.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cfg.tls_cert is None or cfg.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    client_ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def make_session_store(cfg: ServeConfig, registry: PolicyRegistry) -> SessionStore:
    """The store ``cfg.session_store`` names: in-memory, or Redis (``redis://`` / ``rediss://``)."""
    if cfg.session_store == "memory":
        return InMemorySessionStore(cfg.max_sessions, cfg.session_ttl, cfg.max_recorded_transitions)
    if cfg.session_store.startswith(("redis://", "rediss://", "unix://")):
        return RedisSessionStore(
            cfg.session_store,
            registry,
            cfg.max_sessions,
            cfg.session_ttl,
            cfg.max_recorded_transitions,
        )
    raise SystemExit(
        f"--session-store {cfg.session_store!r} is not understood: use 'memory' or "
        "'redis://HOST:PORT/DB'"
    )


def served_methods() -> list[str]:
    """The full names (``/package.Service/Method``) of every method the server implements: the
    metrics label calls by these (any other name a client sends counts as ``unknown``)."""
    services = (
        pb.DESCRIPTOR.services_by_name["PolicyService"],
        admin_pb.DESCRIPTOR.services_by_name["ModelAdminService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    )
    return [f"/{service.full_name}/{m.name}" for service in services for m in service.methods]


def create_server(
    address: str,
    registry: PolicyRegistry,
    cfg: ServeConfig | None = None,
    *,
    adapter: Adapter | None = None,
    sessions: SessionStore | None = None,
) -> tuple[Server, int]:
    """A not-yet-started server on ``address`` (``[::]:0`` picks a free port) and its port.

    Without ``adapter`` the server uses this process's shared adaptation pool for ``cfg``."""
    cfg = cfg or ServeConfig()
    owns_adapter = adapter is not None
    adapter = adapter or shared_adapter(cfg)
    metrics = Metrics()
    interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor(metrics, served_methods())]
    clients, admins = cfg.clients(), cfg.admin_tokens()
    if clients or admins:
        interceptors.append(AuthInterceptor(clients, admins))
    guard = ConcurrencyGuard(
        cfg.max_streams,
        cfg.max_streams_per_client,
        cfg.stream_idle_timeout,
        initializer=_quiet_numpy,
        receive_gate=ReceiveGate(
            max(1, cfg.max_receiving_mb // max(1, cfg.max_message_mb)), cfg.max_receiving_mb
        )
        if cfg.max_receiving_mb > 0
        else None,
    )
    interceptors.append(guard)  # last: behind auth, so refused calls take no stream slot
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=cfg.workers + cfg.max_pending_adaptations,
            thread_name_prefix="metarl-rpc",
            initializer=_quiet_numpy,
        ),
        interceptors=interceptors,
        options=_server_options(cfg),
    )
    limits = Limits(
        max_batch_size=cfg.max_batch_size,
        max_adapt_steps=cfg.max_adapt_steps,
        max_transitions=cfg.max_transitions,
    )
    store = sessions or make_session_store(cfg, registry)
    store.on_remove.append(lambda s, reason: _on_session_removed(registry, metrics, s, reason))
    service = PolicyService(registry, store, limits, adapter, metrics, cfg.batch_max_calls)
    pb_grpc.add_PolicyServiceServicer_to_server(service, server)
    admin_grpc.add_ModelAdminServiceServicer_to_server(ModelAdminService(registry), server)
    metrics.sessions.set_function(lambda: len(store))
    metrics.policy_versions.set_function(lambda: len(registry))
    metrics.adapt_pending.set_function(lambda: adapter.pending)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            ADMIN_SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    creds = _credentials(cfg)
    try:
        port = (
            server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        )
    except RuntimeError:  # grpcio >= 1.6x raises where it used to return 0
        port = 0
    if port == 0:
        raise BindError(
            f"cannot listen on {address}: the port is in use or the address is not this host's; "
            "pass another --port (0 picks a free one) or --host"
        )
    wrapper = Server(server, port, cfg, service, health_servicer, metrics, adapter, owns_adapter)
    wrapper.guard = guard
    wrapper.interceptors = interceptors
    wrapper.set_serving(len(registry) > 0)
    return wrapper, port


def _quiet_numpy() -> None:
    """Handler threads: floating-point overflow is no warning (a non-finite policy output is
    answered with INVALID_ARGUMENT instead)."""
    np.seterr(all="ignore")


def _on_session_removed(
    registry: PolicyRegistry, metrics: Metrics, session: Session, reason: str
) -> None:
    metrics.sessions_removed.labels(reason).inc()
    registry.release(session.policy)


# -- running -------------------------------------------------------------------------------------


def serve(cfg: ServeConfig) -> None:
    """Runs until SIGTERM or SIGINT, then drains: health goes NOT_SERVING (for ``drain_delay``
    seconds while still serving), then new calls are refused and in-flight calls get ``grace``
    seconds to finish."""
    setup_logging(cfg.log_level, cfg.log_format)
    cfg.clients(), cfg.admin_tokens()  # fail closed (SystemExit) before anything starts
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    # A user's mistake is one line before anything starts: a missing checkpoint or model
    # directory, a busy port.
    _check_options(cfg)
    sources = _check_sources(cfg)
    if cfg.metrics_port and cfg.metrics_port == cfg.port:
        raise UsageError(f"--metrics-port {cfg.metrics_port} is --port's too; pass another one")
    for flag, port in (("--port", cfg.port), ("--metrics-port", cfg.metrics_port)):
        problem = None if port is None else _bind_problem(cfg.host, port, flag)
        if problem:
            raise BindError(problem)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log.info("loading %s", sources)
    adapter = Adapter(cfg.adapt_processes, cfg.threads, cfg.max_pending_adaptations)
    try:
        registry = PolicyRegistry(adapter.load)
        server, port = create_server(f"{cfg.host}:{cfg.port}", registry, cfg, adapter=adapter)
    except BaseException:
        adapter.close()
        raise
    # Health NOT_SERVING, and every PolicyService call UNAVAILABLE (retryable), until the
    # workers are up and the policies loaded: never an empty list or NOT_FOUND for a policy
    # that is about to be served.
    server.refuse_calls(LOADING)
    server.start()
    try:
        started = time.perf_counter()
        adapter.start()
        log.info("adaptation workers ready in %.1f s", time.perf_counter() - started)
        loaded = build_into(registry, cfg)
    except Exception as exc:
        server.stop(0).wait()
        raise UserError(f"could not load the policies: {exc}") from None
    if not loaded and cfg.model_dir is not None:
        # Watched: the maintenance thread (or ReloadModels) loads what appears.
        server.refuse_calls(WAITING)
        log.info(
            "waiting for checkpoints in %s (as <name>/<version>/ directories: %s); "
            "bound to %s:%d, answering UNAVAILABLE until then",
            cfg.model_dir,
            f"scanned every {cfg.poll_interval:g} s"
            if cfg.poll_interval > 0
            else "loaded on the admin ReloadModels call",
            cfg.host,
            port,
        )
        while not len(registry) and not stop.wait(0.2):
            pass
        loaded = len(registry)
    if not loaded:
        server.stop(0).wait()
        if stop.is_set():
            log.info("stopped before any policy was loaded")
            return
        raise UserError("no policy could be loaded: see the log lines above")
    server.refuse_calls(None)
    server.set_serving(True)
    print(f"metarl server listening on port {port}", flush=True)
    # every version of each policy (a session may pin any of them): "a@1,2; b@1"
    names = "; ".join(f"{v[-1].name}@{','.join(pv.version for pv in v)}" for v in registry.list())
    log.info(
        "serving %s on %s:%d (pid %d, %s, auth %s)",
        names,
        cfg.host,
        port,
        os.getpid(),
        "TLS" if cfg.tls_cert else "plaintext",
        _auth_summary(cfg),
    )
    while not stop.wait(0.5):
        pass
    server.set_serving(False)
    if cfg.drain_delay > 0:
        log.info("health NOT_SERVING; still serving for %.1f s", cfg.drain_delay)
        stop.clear()
        stop.wait(cfg.drain_delay)  # a second signal ends the delay
    log.info("refusing new calls; in-flight calls get %.1f s", cfg.grace)
    server.stop(cfg.grace).wait()
    log.info("stopped")
    sys.stdout.flush()


def _auth_summary(cfg: ServeConfig) -> str:
    clients, admins = cfg.clients(), cfg.admin_tokens()
    if not clients and not admins:
        return "off"
    named = sum(name is not None for name in clients.values())
    return f"on: {len(clients)} client token(s), {named} named" + (
        f", {len(admins)} admin token(s)"
        if admins
        else "; client tokens may call the admin service"
    )


def _check_options(cfg: ServeConfig) -> None:
    """Raises a :class:`UsageError` (one line) for a port out of range or TLS files that are
    missing or incomplete, before anything starts."""
    for flag, port in (("--port", cfg.port), ("--metrics-port", cfg.metrics_port)):
        if port is not None and not 0 <= port <= 65535:
            raise UsageError(f"{flag} {port}: not a port; pass 0 to 65535 (0 picks a free one)")
    tls = (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key))
    for flag, path in (*tls, ("--tls-client-ca", cfg.tls_client_ca)):
        if path is not None and not path.is_file():
            raise NotFoundError(f"{flag} {path}: does not exist or is not a file; pass a PEM file")
    if (cfg.tls_cert is None) != (cfg.tls_key is None) or (
        cfg.tls_client_ca is not None and cfg.tls_cert is None
    ):
        raise UsageError("TLS needs both --tls-cert and --tls-key (and --tls-client-ca needs them)")


def _check_sources(cfg: ServeConfig) -> str:
    """What ``cfg`` serves, in words for the log; raises a :class:`NotFoundError` (one line)
    for a ``--checkpoint`` or ``--model-dir`` that does not exist."""
    parts = []
    for given in cfg.checkpoint or ():
        path = resolve_checkpoint(given)
        if not (path / "manifest.json").is_file():
            raise UsageError(
                f"--checkpoint {given}: is not a checkpoint (no manifest.json in it); pass a "
                "directory written by `metarl train` (a directory of <name>/<version>/ "
                "checkpoints is --model-dir)"
            )
        parts.append(f"checkpoint {path}")
    if cfg.model_dir is not None:
        if not cfg.model_dir.exists():
            raise NotFoundError(
                f"--model-dir {cfg.model_dir}: does not exist; create it (an empty one is "
                "watched until checkpoints appear) or fix the path"
            )
        if not cfg.model_dir.is_dir():
            raise UsageError(
                f"--model-dir {cfg.model_dir}: is not a directory; pass a directory of "
                "<name>/<version>/ checkpoints (a single checkpoint: --checkpoint)"
            )
        if (cfg.model_dir / "manifest.json").is_file():
            raise UsageError(
                f"--model-dir {cfg.model_dir}: is a checkpoint itself; serve it with --checkpoint "
                f"{cfg.model_dir}, or move it to <model-dir>/<name>/<version>/"
            )
        parts.append(f"model directory {cfg.model_dir}")
    if not parts:
        return f"the bundled policies ({', '.join(bundled_policies())})"
    return ", ".join(parts)


def build_into(registry: PolicyRegistry, cfg: ServeConfig) -> int:
    """Loads ``cfg``'s policies into ``registry``; returns how many versions are loaded. A
    ``--checkpoint`` may be a bundled ``<name>/<version>``
    (:func:`metarl.checkpoint_paths.resolve_checkpoint`)."""
    if cfg.checkpoint:
        for path in cfg.checkpoint:
            registry.add_checkpoint(resolve_checkpoint(path))
    if cfg.model_dir:
        registry.load_model_dir(cfg.model_dir)
    if not cfg.checkpoint and not cfg.model_dir:
        registry.load_model_dir(bundled_checkpoints_dir())
    return len(registry)
