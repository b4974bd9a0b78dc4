"""Security and faults: auth on every RPC, pickles never run, clients vanishing mid-stream."""

from __future__ import annotations

import hashlib
import json
import pickle
import queue
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from metarl_client.proto.metarl.v1 import admin_service_pb2, policy_service_pb2
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.tensors import to_tensor
from metarl_server.app import ServeConfig, build_registry
from tests.client_support import wait_until
from tests.server_support import create, make_checkpoint, reload, serving, stub

OBS = np.zeros(4, np.float32)


def _methods() -> list[tuple[str, str, bool, bool]]:
    """(service, method, client streaming, server streaming) of every RPC we serve."""
    out = []
    for module in (policy_service_pb2, admin_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append((service.full_name, m.name, m.client_streaming, m.server_streaming))
    return out


@pytest.mark.parametrize("method", _methods(), ids=lambda m: f"{m[0].split('.')[-1]}.{m[1]}")
def test_every_rpc_requires_the_token(bundled_registry, method) -> None:  # type: ignore[no-untyped-def]
    service, name, client_streaming, server_streaming = method
    path = f"/{service}/{name}"
    with serving(bundled_registry, auth_token="s3cret", poll_interval=0) as (_srv, channel):
        ident = lambda b: b  # noqa: E731  (raw bytes: an empty message is valid for every type)
        if client_streaming and server_streaming:
            call = channel.stream_stream(
                path, request_serializer=ident, response_deserializer=ident
            )
            invoke = lambda md: list(call(iter([b""]), metadata=md, timeout=10))  # noqa: E731
        elif server_streaming:
            call = channel.unary_stream(path, request_serializer=ident, response_deserializer=ident)
            invoke = lambda md: list(call(b"", metadata=md, timeout=10))  # noqa: E731
        else:
            call = channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)
            invoke = lambda md: call(b"", metadata=md, timeout=10)  # noqa: E731
        for md in (None, [("authorization", "Bearer nope")]):
            with pytest.raises(grpc.RpcError) as err:
                invoke(md)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (path, err.value.details())
        # with the token the call gets past auth (to whatever the empty request deserves)
        try:
            invoke([("authorization", "Bearer s3cret")])
        except grpc.RpcError as exc:
            assert exc.code() not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNKNOWN,
            ), (path, exc.details())


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_a_pickle_planted_in_the_model_dir_is_refused_without_running(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_checkpoint(models / "nav" / "1")
    marker = tmp_path / "exploit-ran"
    registry = build_registry(ServeConfig(model_dir=models))
    with serving(registry, poll_interval=0) as (_srv, channel):
        s = stub(channel)
        sid = create(s, "nav")
        evil = models / "nav" / "2"
        evil.mkdir()
        payload = pickle.dumps(_Exploit(marker))
        manifest = json.loads((models / "nav" / "1" / "manifest.json").read_text())
        manifest.update(version="2", params_sha256=hashlib.sha256(payload).hexdigest())
        (evil / "manifest.json").write_text(json.dumps(manifest))
        (evil / "params.safetensors").write_bytes(payload)  # hash matches: only the format saves us
        (evil / "params.pt").write_bytes(payload)
        (evil / "model.pkl").write_bytes(payload)
        out = reload(channel)
        assert [Path(r.path).name for r in out.refused] == ["2"]
        assert not marker.exists()
        obs = to_tensor(np.zeros(2, np.float32))
        s.Act(pb.ActRequest(session_id=sid, observations=obs), timeout=10)  # serving goes on
    assert not marker.exists()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_clients_vanishing_mid_stream_leak_nothing(bundled_registry) -> None:  # type: ignore[no-untyped-def]
    with serving(bundled_registry, poll_interval=0) as (server, channel):
        s = stub(channel)
        sid = create(s, "cartpole-family", record=True)

        def vanish() -> None:
            """Opens a stream, gets an answer, then disappears while the server waits for more."""
            requests: queue.Queue[pb.StreamActRequest | None] = queue.Queue()
            requests.put(pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS)))

            def gen():  # type: ignore[no-untyped-def]
                while (r := requests.get()) is not None:
                    yield r

            call = s.StreamAct(gen(), timeout=30)
            next(call)
            requests.put(pb.StreamActRequest(observation=to_tensor(OBS)))
            call.cancel()  # the client goes away mid-stream
            requests.put(None)

        for _ in range(20):  # warm up pools and caches
            vanish()
        time.sleep(0.5)
        threads, rss = threading.active_count(), _rss_mb()
        sessions = len(server.sessions) if hasattr(server, "sessions") else None
        for _ in range(300):
            vanish()
        # the abandoned streams' threads wind down (awaited, not slept for: a loaded machine
        # takes its time)
        assert wait_until(lambda: threading.active_count() <= threads + 2, timeout=60), (
            threading.active_count(),
            threads,
        )
        assert _rss_mb() - rss < 30, "memory grew with abandoned streams"
        if sessions is not None:
            assert len(server.sessions) == sessions
        # the session still works, and its recording holds only rewarded steps
        info = s.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10).session
        assert info.recorded_transitions == 0
        out = list(
            s.StreamAct(
                iter([pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS))]), timeout=10
            )
        )
        assert len(out) == 1
