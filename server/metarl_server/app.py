"""Building and running the gRPC server."""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from metarl.checkpoint import bundled_checkpoints_dir
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_server.registry import PolicyRegistry
from metarl_server.service import Limits, PolicyService
from metarl_server.sessions import SessionStore

log = logging.getLogger("metarl_server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PolicyService"].full_name


@dataclass
class ServeConfig:
    """Serve meta-trained policies over gRPC (health and reflection included)."""

    checkpoint: list[Path] | None = None
    """Checkpoint directories to serve; with neither this nor --model-dir, the bundled policies."""
    model_dir: Path | None = None
    """A directory of ``<name>/<version>/`` checkpoints to serve."""
    host: str = "[::]"
    """Address to bind."""
    port: int = 50051
    """Port to bind; 0 picks a free one (printed at start)."""
    max_sessions: int = 10_000
    """Most live sessions; CreateSession answers RESOURCE_EXHAUSTED past it."""
    session_ttl: float = 3600.0
    """Seconds a session may stay idle before it expires."""
    max_batch_size: int = 1024
    """Most observations per Act call."""
    max_adapt_steps: int = 10
    """Most inner steps per Adapt call."""
    max_transitions: int = 100_000
    """Most transitions per Adapt call."""
    max_message_mb: int = 64
    """Largest request or response, in MiB."""
    workers: int = 16
    """Threads handling calls."""
    threads: int = 1
    """Torch intra-op threads (per call); 1 suits small policies and many clients."""
    grace: float = 10.0
    """Seconds in-flight calls get to finish after SIGTERM."""
    log_level: str = "INFO"
    """Logging level."""


def build_registry(cfg: ServeConfig) -> PolicyRegistry:
    registry = PolicyRegistry()
    if cfg.checkpoint:
        for path in cfg.checkpoint:
            registry.add_checkpoint(path)
    if cfg.model_dir:
        registry.load_model_dir(cfg.model_dir)
    if not cfg.checkpoint and not cfg.model_dir:
        registry.load_model_dir(bundled_checkpoints_dir())
    return registry


def create_server(
    address: str, registry: PolicyRegistry, cfg: ServeConfig | None = None
) -> tuple[grpc.Server, int]:
    """A started-to-be server on ``address`` (``[::]:0`` picks a free port) and its port."""
    cfg = cfg or ServeConfig()
    max_bytes = cfg.max_message_mb * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="metarl-rpc"),
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    limits = Limits(
        max_batch_size=cfg.max_batch_size,
        max_adapt_steps=cfg.max_adapt_steps,
        max_transitions=cfg.max_transitions,
    )
    service = PolicyService(registry, SessionStore(cfg.max_sessions, cfg.session_ttl), limits)
    pb_grpc.add_PolicyServiceServicer_to_server(service, server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if len(registry)
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, status)
    server.health_servicer = health_servicer

    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port


def serve(cfg: ServeConfig) -> None:
    """Runs until SIGTERM or SIGINT, then drains: health goes NOT_SERVING and in-flight calls
    get ``cfg.grace`` seconds to finish."""
    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(cfg.threads)
    registry = build_registry(cfg)
    if not len(registry):
        raise SystemExit("no policy could be loaded: check --checkpoint / --model-dir")
    server, port = create_server(f"{cfg.host}:{cfg.port}", registry, cfg)
    server.start()
    names = ", ".join(f"{v[-1].name}@{v[-1].version}" for v in registry.list())
    log.info("serving %s on %s:%d (pid %d)", names, cfg.host, port, os.getpid())
    print(f"metarl server listening on port {port}", flush=True)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.health_servicer.enter_graceful_shutdown()
    server.stop(cfg.grace).wait()
    log.info("stopped")
