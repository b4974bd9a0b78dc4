"""Durable sessions on a real Redis: restarts, replicas, TTL, Redis outages, SIGKILL."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from metarl_client import Episode, PolicyClient, SessionNotFound, Unavailable
from metarl_server.app import ServeConfig, create_server
from tests.process_support import spawn_server
from tests.redis_support import RedisServer

POLICY = "cartpole-family"
PROBE = np.linspace(-0.2, 0.2, 40, dtype=np.float32).reshape(10, 4)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def _episodes(seed: int) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [
        Episode(
            rng.normal(0, 0.05, (30, 4)).astype(np.float32),
            rng.integers(0, 2, 30),
            np.ones(30, np.float32),
            terminated=True,
        )
        for _ in range(4)
    ]


def _server(bundled_registry, url: str, **kw):  # type: ignore[no-untyped-def]
    cfg = ServeConfig(session_store=url, poll_interval=0, **kw)
    server, port = create_server("127.0.0.1:0", bundled_registry, cfg)
    server.start()
    return server, f"127.0.0.1:{port}"


def test_sessions_survive_a_server_restart(bundled_registry, redis_server) -> None:  # type: ignore[no-untyped-def]
    server, target = _server(bundled_registry, redis_server.url)
    with PolicyClient(target) as client:
        session = client.create_session(POLICY, seed=1)
        session.adapt(_episodes(0), steps=2)
        before = session.act_batch(PROBE, deterministic=True)
        sid = session.id
    server.stop(None).wait()

    server, target = _server(bundled_registry, redis_server.url)
    try:
        with PolicyClient(target) as client:
            again = client.get_session(sid)
            info = again.info()
            after = again.act_batch(PROBE, deterministic=True)
        assert info.adaptations == 1 and info.adaptation_steps == 2
        np.testing.assert_array_equal(before.actions, after.actions)
        np.testing.assert_allclose(before.log_probs, after.log_probs, rtol=0, atol=1e-7)
    finally:
        server.stop(None)


def test_two_replicas_serve_any_session(bundled_registry, redis_server) -> None:  # type: ignore[no-untyped-def]
    a, target_a = _server(bundled_registry, redis_server.url)
    b, target_b = _server(bundled_registry, redis_server.url)
    try:
        with PolicyClient(target_a) as ca, PolicyClient(target_b) as cb:
            s_a = ca.create_session(POLICY, seed=2)
            s_b = cb.get_session(s_a.id)
            fresh = s_a.act_batch(PROBE, deterministic=True)
            s_b.adapt(_episodes(1))  # adapt on B ...
            adapted_a = s_a.act_batch(PROBE, deterministic=True)  # ... act on A
            adapted_b = s_b.act_batch(PROBE, deterministic=True)
            assert not np.allclose(fresh.log_probs, adapted_a.log_probs)
            np.testing.assert_array_equal(adapted_a.actions, adapted_b.actions)
            np.testing.assert_allclose(adapted_a.log_probs, adapted_b.log_probs, atol=1e-7)
            s_a.adapt(_episodes(2))  # and back: A adapts, B sees it
            np.testing.assert_allclose(
                s_a.act_batch(PROBE, deterministic=True).log_probs,
                s_b.act_batch(PROBE, deterministic=True).log_probs,
                atol=1e-7,
            )
            assert s_b.info().adaptations == 2
            s_b.close()  # deleted on B: gone on A too
            with pytest.raises(SessionNotFound):
                s_a.act(PROBE[0])
    finally:
        a.stop(None)
        b.stop(None)


def test_ttl_is_enforced_in_redis(bundled_registry, redis_server) -> None:  # type: ignore[no-untyped-def]
    import redis

    server, target = _server(bundled_registry, redis_server.url, session_ttl=1.0)
    try:
        with PolicyClient(target) as client:
            session = client.create_session(POLICY)
            key = f"metarl:session:{session.id}"
            ttl_ms = redis.Redis.from_url(redis_server.url).pttl(key)
            assert 0 < ttl_ms <= 1000
            time.sleep(1.3)
            assert not redis.Redis.from_url(redis_server.url).exists(key)
            with pytest.raises(SessionNotFound):
                session.act(PROBE[0])
    finally:
        server.stop(None)


def test_max_sessions_counts_every_replica(bundled_registry, redis_server) -> None:  # type: ignore[no-untyped-def]
    from metarl_client import ResourceExhausted

    a, target_a = _server(bundled_registry, redis_server.url, max_sessions=2)
    b, target_b = _server(bundled_registry, redis_server.url, max_sessions=2)
    try:
        with PolicyClient(target_a) as ca, PolicyClient(target_b) as cb:
            ca.create_session(POLICY)
            cb.create_session(POLICY)
            with pytest.raises(ResourceExhausted, match="maximum of 2"):
                ca.create_session(POLICY)
    finally:
        a.stop(None)
        b.stop(None)


def test_redis_outage_is_unavailable_then_recovers(bundled_registry, redis_server) -> None:  # type: ignore[no-untyped-def]
    server, target = _server(bundled_registry, redis_server.url)
    try:
        with PolicyClient(target, timeout=10) as client:
            session = client.create_session(POLICY)
            redis_server.stop()
            with pytest.raises(Unavailable, match="session store"):
                session.act(PROBE[0])
            with pytest.raises(Unavailable, match="session store"):
                client.create_session(POLICY)
            redis_server.start()  # same port, empty (no persistence in this test)
            again = client.create_session(POLICY)
            assert again.act(PROBE[0]) in (0, 1)
    finally:
        server.stop(None)


def test_sigkill_and_restart_loses_nothing(redis_server) -> None:  # type: ignore[no-untyped-def]
    proc, target = spawn_server("--session-store", redis_server.url)
    try:
        with PolicyClient(target) as client:
            session = client.create_session(POLICY, seed=5, record=True)
            session.adapt(_episodes(3))
            before = session.act_batch(PROBE, deterministic=True)
            sid = session.id
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc, target = spawn_server("--session-store", redis_server.url)
        with PolicyClient(target) as client:
            again = client.get_session(sid)
            after = again.act_batch(PROBE, deterministic=True)
            info = again.info()
        assert info.adaptations == 1 and info.recording
        np.testing.assert_array_equal(before.actions, after.actions)
        np.testing.assert_allclose(before.log_probs, after.log_probs, atol=1e-7)
    finally:
        proc.kill()
        proc.wait()
