"""Sessions: idle TTL, the maximum count, serializable state, and the recording's bound."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_server.registry import PolicyRegistry
from metarl_server.sessions import InMemorySessionStore, Recording, Session
from tests.client_support import wait_until
from tests.server_support import (
    act,
    create,
    episode_proto,
    make_checkpoint,
    random_episodes,
    serving,
)
from tests.server_support import stub as make_stub

PROBE = np.full((2, 2), 0.1, np.float32)


@pytest.fixture
def registry(tmp_path: Path) -> PolicyRegistry:
    registry = PolicyRegistry()
    registry.add_checkpoint(make_checkpoint(tmp_path / "nav" / "1"))
    return registry


class SkewedClock:
    """``time`` as :mod:`metarl_server.sessions` sees it, with ``monotonic()`` ahead of the real
    one by ``ahead`` seconds: a test moves the sessions' idle clocks forward at will instead of
    sleeping (and racing the machine's speed)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    def time(self) -> float:
        return time.time() + self.ahead


def test_idle_sessions_expire_and_use_keeps_them_alive(
    registry: PolicyRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import metarl_server.sessions

    clock = SkewedClock()
    monkeypatch.setattr(metarl_server.sessions, "time", clock)
    with serving(registry, session_ttl=100.0) as (srv, channel):
        s = make_stub(channel)
        idle, busy = create(s, "nav"), create(s, "nav")
        pv = registry.get("nav")
        assert pv.sessions == 2
        clock.ahead = 60.0
        act(s, busy, PROBE)  # used 60 s in: busy's idle clock restarts
        clock.ahead = 120.0  # idle: 120 s idle; busy: 60 s
        with pytest.raises(grpc.RpcError) as err:
            s.GetSession(pb.GetSessionRequest(session_id=idle))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "expired" in err.value.details()
        assert s.GetSession(pb.GetSessionRequest(session_id=busy)).session.id == busy
        assert len(srv.sessions) == 1 and pv.sessions == 1  # the version was released
        clock.ahead = 300.0  # no traffic: the maintenance thread (each second) expires it
        assert wait_until(lambda: len(srv.sessions) == 0 and pv.sessions == 0, timeout=60)


def test_session_limit(registry: PolicyRegistry) -> None:
    with serving(registry, max_sessions=3) as (_srv, channel):
        s = make_stub(channel)
        ids = [create(s, "nav") for _ in range(3)]
        with pytest.raises(grpc.RpcError) as err:
            create(s, "nav")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "maximum of 3 sessions" in err.value.details()
        assert registry.get("nav").sessions == 3  # the refused one was not counted
        s.DeleteSession(pb.DeleteSessionRequest(session_id=ids[0]))
        create(s, "nav")


def test_snapshot_restore_round_trip(registry: PolicyRegistry) -> None:
    with serving(registry) as (srv, channel):
        s = make_stub(channel)
        sid = create(s, "nav", seed=5, record=True)
        eps = [episode_proto(*e) for e in random_episodes(3, 10, 2, 2)]
        s.Adapt(pb.AdaptRequest(session_id=sid, episodes=eps, steps=2))
        act(s, sid, PROBE[0])
        act(s, sid, PROBE[0], feedback=pb.StepFeedback(reward=1.0))
        session = srv.sessions.get(sid)
        state = session.snapshot()
        # plain values only: what a shared store (Redis) can hold
        encoded = json.dumps({**state, "params": state["params"].hex()})
        decoded = json.loads(encoded)
        decoded["params"] = bytes.fromhex(decoded["params"])
        copy = Session.restore(decoded, session.policy)
        np.testing.assert_array_equal(copy.params, session.params)
        assert (copy.adaptations, copy.adaptation_steps) == (1, 2)
        assert copy.recording is not None and copy.recording.transitions == 1
        # the generators continue identically
        out = session.policy.policy.forward(session.params, PROBE)
        a1 = session.policy.policy.act(session.params, out, False, session.rng)[0]
        a2 = copy.policy.policy.act(copy.params, out, False, copy.rng)[0]
        np.testing.assert_array_equal(a1, a2)


def test_unadapted_sessions_share_theta(registry: PolicyRegistry) -> None:
    store = InMemorySessionStore()
    pv = registry.acquire("nav")
    a, b = store.create(pv, 1, False), store.create(pv, 2, False)
    assert a.params is b.params is pv.params and not a.adapted
    assert a.snapshot()["params"] is None  # nothing of its own to store


def test_recording_is_bounded() -> None:
    rec = Recording(max_transitions=10)
    for t in range(25):
        rec.step(np.zeros(2, np.float32), np.zeros(2, np.float32))
        rec.feedback(1.0, terminated=t % 4 == 3, truncated=False)
    assert rec.transitions <= 10
    assert sum(len(e.rewards) for e in rec.complete_episodes()) == rec.transitions
    endless = Recording(max_transitions=5)
    for _ in range(12):  # one episode that never ends
        endless.step(np.zeros(2, np.float32), np.zeros(2, np.float32))
        endless.feedback(1.0, False, False)
    assert endless.transitions <= 5
