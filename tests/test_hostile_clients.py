"""Hostile and unlucky clients (issue 15): idle streams cannot starve the server, auth fails
closed, sessions belong to their creator, refused calls are not decoded, malformed messages are
INVALID_ARGUMENT, and no call answers OK with a non-finite action."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metarl_client.proto.metarl.v1 import admin_service_pb2 as admin_pb
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.tensors import to_tensor
from metarl_server.app import ServeConfig, create_server
from tests.server_support import admin_stub, create, episode_proto, serving, stub

CARTPOLE = "cartpole-family"
OBS = np.zeros(4, np.float32)


class IdleStream:
    """A StreamAct call whose client sends ``first`` (if any) and then nothing until closed."""

    def __init__(self, channel: grpc.Channel, first: pb.StreamActRequest | None = None, **kw: Any):
        self._requests: queue.Queue[pb.StreamActRequest | None] = queue.Queue()
        if first is not None:
            self._requests.put(first)
        self.call = stub(channel).StreamAct(self._gen(), **kw)

    def _gen(self) -> Iterator[pb.StreamActRequest]:
        while (r := self._requests.get()) is not None:
            yield r

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()


def _separate_channel(port: int) -> grpc.Channel:
    """A channel with its own connection (gRPC shares connections between channels by default)."""
    return grpc.insecure_channel(f"localhost:{port}", [("grpc.use_local_subchannel_pool", 1)])


def _wait_done(calls: list[Any], n: int, timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [c for c in calls if c.done()]
        if len(done) >= n:
            return done
        time.sleep(0.02)
    return [c for c in calls if c.done()]


def _health(channel: grpc.Channel, timeout: float = 2.0) -> int:
    return int(
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        .status
    )


# -- 1. a server that cannot be starved -------------------------------------------------------


def test_idle_streams_past_the_limit_are_refused_and_the_rest_still_answers(
    bundled_registry: Any,
) -> None:
    # 4 + 2 threads for unary calls and Adapt: without their own pool, 8 idle streams would
    # hold all of them (the failure of issue 15: 80 streams with the defaults 16 + 64)
    cfg = dict(workers=4, max_pending_adaptations=2, max_streams=8, max_streams_per_client=0)
    with serving(bundled_registry, poll_interval=0, **cfg) as (server, channel):
        s = stub(channel)
        sid = create(s, CARTPOLE)
        streams = [IdleStream(channel) for _ in range(12)]
        try:
            refused = _wait_done([st.call for st in streams], 4)
            assert len(refused) == 4
            for call in refused:
                assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "--max-streams" in call.details()
            time.sleep(0.3)
            assert len(_wait_done([st.call for st in streams], 5, timeout=0.2)) == 4
            assert server.guard.active_streams == 8
            # everything else still answers at once
            for _ in range(3):
                started = time.monotonic()
                assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
                create(s, CARTPOLE)
                s.Act(pb.ActRequest(session_id=sid, observations=to_tensor(OBS)), timeout=2)
                assert time.monotonic() - started < 1.5
            # a slot freed is a slot usable again
            streams[0].close()
            deadline = time.monotonic() + 5
            while server.guard.active_streams > 7 and time.monotonic() < deadline:
                time.sleep(0.02)
            req = pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS))
            out = list(s.StreamAct(iter([req]), timeout=5))
            assert len(out) == 1
        finally:
            for st in streams:
                st.close()
        deadline = time.monotonic() + 5
        while server.guard.active_streams and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.guard.active_streams == 0


def test_one_client_cannot_take_every_stream(bundled_registry: Any) -> None:
    with serving(bundled_registry, poll_interval=0, max_streams=10, max_streams_per_client=3) as (
        server,
        channel,
    ):
        mine = [IdleStream(channel) for _ in range(4)]
        other_channel = _separate_channel(server.port)
        theirs = [IdleStream(other_channel) for _ in range(3)]
        try:
            refused = _wait_done([st.call for st in mine + theirs], 1)
            time.sleep(0.3)
            refused = [c for c in (st.call for st in mine + theirs) if c.done()]
            assert len(refused) == 1 and refused[0] in [st.call for st in mine]
            assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-streams-per-client" in refused[0].details()
            assert server.guard.active_streams == 6
        finally:
            for st in mine + theirs:
                st.close()
            other_channel.close()


def test_a_stream_that_sends_nothing_is_closed_cleanly(bundled_registry: Any) -> None:
    with serving(bundled_registry, poll_interval=0, stream_idle_timeout=0.5) as (_srv, channel):
        s = stub(channel)
        sid = create(s, CARTPOLE)
        step = pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS))
        idle = IdleStream(channel, step)
        assert next(idle.call).action.data  # answered, then the client goes quiet
        # a busy stream (a message every 0.1 s) outlives the idle one
        busy = IdleStream(channel, step)
        next(busy.call)
        started = time.monotonic()
        try:
            while not idle.call.done() and time.monotonic() - started < 5:
                busy._requests.put(pb.StreamActRequest(observation=to_tensor(OBS)))
                next(busy.call)
                time.sleep(0.1)
            waited = time.monotonic() - started
            assert idle.call.code() == grpc.StatusCode.UNAVAILABLE
            assert "--stream-idle-timeout" in idle.call.details()
            assert 0.4 < waited < 2.5
            assert not busy.call.done()
        finally:
            idle.close()
            busy.close()
        # the session is untouched
        s.GetSession(pb.GetSessionRequest(session_id=sid), timeout=5)


# -- 2. fail closed, identities, admin credential ----------------------------------------------


@pytest.mark.parametrize("content", ["", "  \n\t\n", "# only a comment\n"])
def test_an_empty_token_file_refuses_to_start(
    bundled_registry: Any, tmp_path: Path, content: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    with pytest.raises(SystemExit, match="holds no token"):
        create_server("[::]:0", bundled_registry, ServeConfig(auth_token_file=tokens))
    with pytest.raises(SystemExit, match="cannot read"):
        create_server("[::]:0", bundled_registry, ServeConfig(auth_token_file=tmp_path / "no"))


def _md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_sessions_belong_to_the_client_that_created_them(
    bundled_registry: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# client token\nalice tok-alice\nbob tok-bob\nold-style-token\n")
    admins = tmp_path / "admins"
    admins.write_text("tok-admin\n")
    caplog.set_level(logging.INFO)
    with serving(
        bundled_registry, poll_interval=0, auth_token_file=tokens, admin_token_file=admins
    ) as (_server, channel):
        s = stub(channel)
        alice, bob, anon = _md("tok-alice"), _md("tok-bob"), _md("old-style-token")
        sid = s.CreateSession(pb.CreateSessionRequest(policy=CARTPOLE), metadata=alice).session.id
        eps = [episode_proto(np.zeros((3, 4), np.float32), [0, 1, 0], [1.0, 0.0, 1.0])]
        calls = {
            "Act": lambda md: s.Act(
                pb.ActRequest(session_id=sid, observations=to_tensor(OBS)), metadata=md
            ),
            "StreamAct": lambda md: list(
                s.StreamAct(
                    iter([pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS))]),
                    metadata=md,
                )
            ),
            "Adapt": lambda md: s.Adapt(pb.AdaptRequest(session_id=sid, episodes=eps), metadata=md),
            "GetSession": lambda md: s.GetSession(
                pb.GetSessionRequest(session_id=sid), metadata=md
            ),
            "ResetSession": lambda md: s.ResetSession(
                pb.ResetSessionRequest(session_id=sid), metadata=md
            ),
            "DeleteSession": lambda md: s.DeleteSession(
                pb.DeleteSessionRequest(session_id=sid), metadata=md
            ),
        }
        for name, call in calls.items():
            for md in (bob, anon):
                with pytest.raises(grpc.RpcError) as err:
                    call(md)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
                assert "another client" in err.value.details()
        for call in calls.values():
            call(alice)  # the owner may do everything (DeleteSession last)
        # an unnamed token's sessions stay anyone's (the one-token format keeps working)
        anon_sid = s.CreateSession(pb.CreateSessionRequest(policy=CARTPOLE), metadata=anon)
        s.GetSession(pb.GetSessionRequest(session_id=anon_sid.session.id), metadata=bob)
        # the admin service takes the admin token only, which calls nothing else
        a = admin_stub(channel)
        with pytest.raises(grpc.RpcError) as err:
            a.ReloadModels(admin_pb.ReloadModelsRequest(), metadata=alice)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        a.ReloadModels(admin_pb.ReloadModelsRequest(), metadata=_md("tok-admin"))
        with pytest.raises(grpc.RpcError) as err:
            s.ListPolicies(pb.ListPoliciesRequest(), metadata=_md("tok-admin"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            a.ReloadModels(admin_pb.ReloadModelsRequest(), metadata=_md("nope"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    text = caplog.text
    assert "session" in text and sid not in text and sid[:12] not in text
