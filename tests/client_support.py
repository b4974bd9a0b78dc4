"""Shared helpers of the client SDK tests (tests/test_client_*.py): a stand-in PolicyService
that checks bearer tokens and can serve TLS, a client interceptor that records calls, a
self-signed certificate, a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.tensors import to_tensor

TOKEN = "s3cret-token"


class FakePolicyService(pb_grpc.PolicyServiceServicer):
    """A PolicyService stand-in (a 4-d observation, 2 discrete actions) that wants
    ``authorization: Bearer <token>`` when ``token`` is set and records the metadata and the
    deadline of every call. With ``silent_stream``, StreamAct reads but never answers; each
    call waits ``delay`` seconds before answering; the calls named in ``unavailable`` are
    answered UNAVAILABLE (recorded first, so a test can count the attempts)."""

    def __init__(
        self,
        token: str | None = None,
        silent_stream: bool = False,
        delay: float = 0.0,
        unavailable: tuple[str, ...] = (),
    ) -> None:
        self.token = token
        self.silent_stream = silent_stream
        self.delay = delay
        self.unavailable = unavailable
        self.calls: list[tuple[str, dict[str, str], float | None]] = []
        self.lock = threading.Lock()

    def _check(self, name: str, context: Any) -> None:
        md = dict(context.invocation_metadata())
        with self.lock:
            self.calls.append((name, md, context.time_remaining()))
        if self.token is not None and md.get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if name in self.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is unavailable (a test)")
        time.sleep(self.delay)

    def count(self, name: str) -> int:
        with self.lock:
            return sum(1 for call, _, _ in self.calls if call == name)

    def _session(self) -> pb.Session:
        return pb.Session(id="fake-session", policy="fake", version="1")

    def ListPolicies(self, request: Any, context: Any) -> pb.ListPoliciesResponse:
        self._check("ListPolicies", context)
        policy = pb.Policy(
            name="fake",
            versions=["1"],
            latest_version="1",
            env_id="fake/Env-v0",
            observation_space=pb.Space(
                box=pb.BoxSpace(shape=[4], low=[-1.0] * 4, high=[1.0] * 4, dtype=1)
            ),
            action_space=pb.Space(discrete=pb.DiscreteSpace(n=2)),
            inner_loop=pb.InnerLoopSettings(default_steps=1, max_steps=10, max_transitions=1000),
            max_batch_size=64,
        )
        return pb.ListPoliciesResponse(policies=[policy])

    def CreateSession(self, request: Any, context: Any) -> pb.CreateSessionResponse:
        self._check("CreateSession", context)
        return pb.CreateSessionResponse(session=self._session())

    def GetSession(self, request: Any, context: Any) -> pb.GetSessionResponse:
        self._check("GetSession", context)
        return pb.GetSessionResponse(session=self._session())

    def DeleteSession(self, request: Any, context: Any) -> pb.DeleteSessionResponse:
        self._check("DeleteSession", context)
        return pb.DeleteSessionResponse()

    def Act(self, request: Any, context: Any) -> pb.ActResponse:
        self._check("Act", context)
        return pb.ActResponse(actions=to_tensor(np.int64(1)), log_probs=to_tensor(np.float32(-0.5)))

    def StreamAct(self, request_iterator: Any, context: Any) -> Iterator[pb.StreamActResponse]:
        self._check("StreamAct", context)
        for req in request_iterator:
            if self.silent_stream or not req.HasField("observation"):
                continue
            yield pb.StreamActResponse(action=to_tensor(np.int64(1)), log_prob=-0.5)


def start_fake(
    servicer: FakePolicyService, cert: tuple[bytes, bytes] | None = None
) -> tuple[grpc.Server, int]:
    """Starts ``servicer`` on a free port (TLS with ``cert`` = (certificate, key) PEM)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_PolicyServiceServicer_to_server(servicer, server)
    if cert is None:
        port = server.add_insecure_port("[::]:0")
    else:
        creds = grpc.ssl_server_credentials([(cert[1], cert[0])])
        port = server.add_secure_port("[::]:0", creds)
    server.start()
    return server, port


def self_signed_cert(directory: Path) -> tuple[Path, Path] | None:
    """A certificate for ``localhost`` and its key (PEM files), or None without openssl."""
    if shutil.which("openssl") is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class CallRecorder(
    grpc.UnaryUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """A sync client interceptor that records (method, timeout) of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    def _record(self, details: grpc.ClientCallDetails) -> None:
        method = details.method
        name = method.decode() if isinstance(method, bytes) else method
        self.calls.append((name.rsplit("/", 1)[-1], details.timeout))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._record(details)
        return continuation(details, request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        self._record(details)
        return continuation(details, requests)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::", 0))
        return int(s.getsockname()[1])


def start_when_connecting_failed(
    channel: grpc.Channel, start: Any
) -> tuple[threading.Event, threading.Thread]:
    """Runs ``start()`` (which starts a server) on a thread once ``channel`` has reported
    TRANSIENT_FAILURE: a client call made on ``channel`` has met no server, whatever the
    machine's speed. Returns the event that fired and the thread (join it)."""
    failed = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            failed.set()

    channel.subscribe(watch)

    def run() -> None:
        try:
            if failed.wait(timeout=60):
                start()
        finally:
            channel.unsubscribe(watch)

    thread = threading.Thread(target=run)
    thread.start()
    return failed, thread


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
