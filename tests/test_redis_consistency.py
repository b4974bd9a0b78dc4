"""Nothing acknowledged is lost on Redis: two replicas (two servers sharing one real Redis) and
concurrent Adapts, Resets and recorded steps; a failed write leaves no trace; a restarted replica
keeps the versions stored sessions use; corrupt stored data answers DATA_LOSS.

Concurrency is made deterministic with a gate in front of the adaptation pool (an Adapt waits at
it, after claiming its session, until the test lets it go) instead of sleeps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_server.app import ServeConfig, create_server, shared_adapter
from metarl_server.registry import PolicyRegistry
from metarl_server.sessions import log_id
from tests.redis_support import RedisServer
from tests.server_support import act, create, episode_proto, make_checkpoint, stub

POLICY = "cartpole-family"
PROBE = np.linspace(-0.2, 0.2, 40, dtype=np.float32).reshape(10, 4)
TIMEOUT = 30.0


class GatedAdapter:
    """The shared adaptation pool, with a gate each Adapt waits at until :meth:`open`."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.inner = shared_adapter(cfg)
        self.entered = threading.Semaphore(0)
        self._gate = threading.Event()
        self._gate.set()

    def close_gate(self) -> None:
        self._gate.clear()

    def open(self) -> None:
        self._gate.set()

    def adapt(self, job: Any, timeout: float | None, is_active: Any = None) -> Any:
        self.entered.release()
        assert self._gate.wait(TIMEOUT), "the test never opened the gate"
        return self.inner.adapt(job, timeout, is_active)

    def close(self) -> None:  # (the shared pool outlives the servers)
        self.open()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Replica:
    def __init__(self, registry: PolicyRegistry, url: str, **kw: Any) -> None:
        cfg = ServeConfig(session_store=url, poll_interval=0, **kw)
        self.adapter = GatedAdapter(cfg)
        self.server, port = create_server("127.0.0.1:0", registry, cfg, adapter=self.adapter)  # type: ignore[arg-type]
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = stub(self.channel)
        self.store: Any = self.server.sessions

    def adapt(self, sid: str, episodes: list[pb.Episode] | None = None) -> grpc.StatusCode:
        try:
            self.stub.Adapt(pb.AdaptRequest(session_id=sid, episodes=episodes or []), timeout=60)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    def info(self, sid: str) -> pb.Session:
        return self.stub.GetSession(pb.GetSessionRequest(session_id=sid)).session

    def probe(self, sid: str) -> np.ndarray:
        return act(self.stub, sid, PROBE, deterministic=True)[1]

    def stop(self) -> None:
        self.adapter.open()
        self.channel.close()
        self.server.stop(None).wait(10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def replicas(bundled_registry, redis_server) -> Iterator[Callable[..., Replica]]:  # type: ignore[no-untyped-def]
    made: list[Replica] = []

    def make(registry: PolicyRegistry | None = None, **kw: Any) -> Replica:
        r = Replica(registry or bundled_registry, redis_server.url, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def _episodes(seed: int) -> list[pb.Episode]:
    rng = np.random.default_rng(seed)
    return [
        episode_proto(
            rng.normal(0, 0.05, (30, 4)).astype(np.float32), rng.integers(0, 2, 30), np.ones(30)
        )
        for _ in range(4)
    ]


def _in_background(fn: Callable[[], Any]) -> Any:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def test_concurrent_adapts_on_two_replicas_one_ok_one_aborted(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas(), replicas()
    sid = create(a.stub, POLICY, seed=1)
    b.info(sid)  # cached on B too
    a.adapter.close_gate()
    first = _in_background(lambda: a.adapt(sid, _episodes(0)))
    assert a.adapter.entered.acquire(timeout=TIMEOUT)  # A holds the session's claim
    assert b.adapt(sid, _episodes(1)) == grpc.StatusCode.ABORTED
    a.adapter.open()
    assert first.result(TIMEOUT) == grpc.StatusCode.OK
    assert a.info(sid).adaptations == b.info(sid).adaptations == 1
    assert b.adapt(sid, _episodes(1)) == grpc.StatusCode.OK  # the claim ended with A's answer
    assert a.info(sid).adaptations == 2
    np.testing.assert_allclose(a.probe(sid), b.probe(sid), atol=1e-7)


def test_reset_on_one_replica_during_an_adapt_on_another_is_not_undone(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas(), replicas()
    sid = create(a.stub, POLICY, seed=2)
    fresh = b.probe(sid)
    a.adapter.close_gate()
    adapting = _in_background(lambda: a.adapt(sid, _episodes(2)))
    assert a.adapter.entered.acquire(timeout=TIMEOUT)
    b.stub.ResetSession(pb.ResetSessionRequest(session_id=sid))  # OK
    a.adapter.open()
    assert adapting.result(TIMEOUT) == grpc.StatusCode.ABORTED  # it saw the reset: not applied
    for r in (a, b):
        assert r.info(sid).adaptations == 0
        np.testing.assert_allclose(r.probe(sid), fresh, atol=1e-7)


def test_steps_recorded_on_one_replica_during_an_adapt_on_another_are_kept(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas(), replicas()
    sid = create(a.stub, POLICY, seed=3, record=True)
    obs = np.zeros(4, np.float32)
    fb = pb.StepFeedback(reward=1.0)
    act(a.stub, sid, obs)
    for _ in range(10):
        act(a.stub, sid, obs, feedback=fb)
    assert a.info(sid).recorded_transitions == 10  # (and one action awaiting its reward)
    a.adapter.close_gate()
    adapting = _in_background(lambda: a.adapt(sid))  # on what A recorded
    assert a.adapter.entered.acquire(timeout=TIMEOUT)
    for _ in range(20):  # the first reward goes to A's last action
        act(b.stub, sid, obs, feedback=fb)
    assert b.info(sid).recorded_transitions == 30
    a.adapter.open()
    assert adapting.result(TIMEOUT) == grpc.StatusCode.OK
    for r in (a, b):  # the 10 it used are consumed, the 20 recorded meanwhile kept
        info = r.info(sid)
        assert (info.adaptations, info.recorded_transitions) == (1, 20)
    act(a.stub, sid, obs, feedback=fb)  # and recording goes on, seen by both
    assert a.info(sid).recorded_transitions == b.info(sid).recorded_transitions == 21
    assert a.adapt(sid) == grpc.StatusCode.OK
    assert b.info(sid).recorded_transitions == 0


def test_two_adapts_on_one_replica_of_an_uncached_session_one_aborted(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas(), replicas()
    for seed in range(5):
        sid = create(b.stub, POLICY, seed=seed)  # not in A's cache
        a.adapter.close_gate()
        start = threading.Barrier(2)

        def call(i: int, sid: str = sid, start: threading.Barrier = start) -> grpc.StatusCode:
            start.wait(TIMEOUT)
            return a.adapt(sid, _episodes(i))

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(call, i) for i in range(2)]
            # one reaches the gate (it holds the claim); the other must answer without it
            assert a.adapter.entered.acquire(timeout=TIMEOUT)
            done = next(f for f in _first_done(futures))
            assert done.result() == grpc.StatusCode.ABORTED
            a.adapter.open()
            codes = sorted(f.result(TIMEOUT).name for f in futures)
        assert codes == ["ABORTED", "OK"]
        assert a.info(sid).adaptations == b.info(sid).adaptations == 1


def _first_done(futures: list[Any]) -> Iterator[Any]:
    from concurrent.futures import FIRST_COMPLETED, wait

    done, _ = wait(futures, timeout=TIMEOUT, return_when=FIRST_COMPLETED)
    assert done, "neither Adapt answered while the other waited"
    return iter(done)


def test_an_adapt_whose_write_fails_is_not_applied(replicas) -> None:  # type: ignore[no-untyped-def]
    a = replicas()
    sid = create(a.stub, POLICY, seed=4)
    fresh = a.probe(sid)

    def fail(session: Any) -> None:
        raise redis.exceptions.ConnectionError("injected: Redis went away")

    a.store.hooks["before_commit"] = fail
    assert a.adapt(sid, _episodes(4)) == grpc.StatusCode.UNAVAILABLE
    del a.store.hooks["before_commit"]
    assert a.info(sid).adaptations == 0  # neither in Redis nor in A's copy
    np.testing.assert_allclose(a.probe(sid), fresh, atol=1e-7)
    assert a.adapt(sid, _episodes(4)) == grpc.StatusCode.OK  # the client's retry: once
    assert a.info(sid).adaptations == 1


def test_a_reset_meanwhile_on_another_replica_aborts_the_commit(replicas) -> None:  # type: ignore[no-untyped-def]
    """The race at its narrowest: the Reset lands between the Adapt's last check and its
    write (a hook runs it there)."""
    a, b = replicas(), replicas()
    sid = create(a.stub, POLICY, seed=5)
    fresh = b.probe(sid)
    a.store.hooks["before_commit"] = lambda s: b.stub.ResetSession(
        pb.ResetSessionRequest(session_id=sid)
    )
    assert a.adapt(sid, _episodes(5)) == grpc.StatusCode.ABORTED
    del a.store.hooks["before_commit"]
    for r in (a, b):
        assert r.info(sid).adaptations == 0
        np.testing.assert_allclose(r.probe(sid), fresh, atol=1e-7)


def test_recording_appends_and_compacts(replicas, redis_server) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas(), replicas()
    a.store.compact_after = 25
    db = redis.Redis.from_url(redis_server.url)
    sid = create(a.stub, POLICY, seed=6, record=True)
    obs = np.zeros(4, np.float32)
    act(a.stub, sid, obs)
    rec_before = db.hget(f"metarl:session:{sid}", "rec")
    for _ in range(5):
        act(a.stub, sid, obs, feedback=pb.StepFeedback(reward=1.0))
    assert db.hget(f"metarl:session:{sid}", "rec") == rec_before  # not rewritten: appended
    assert db.llen(f"metarl:rec:{sid}") == 11  # 6 actions, 5 rewards
    for _ in range(30):
        act(a.stub, sid, obs, feedback=pb.StepFeedback(reward=1.0))
    assert db.llen(f"metarl:rec:{sid}") <= 26  # folded into the stored recording
    assert a.info(sid).recorded_transitions == b.info(sid).recorded_transitions == 35


def test_a_restarted_replica_keeps_the_versions_stored_sessions_use(
    tmp_path: Path, redis_server
) -> None:  # type: ignore[no-untyped-def]
    models = tmp_path / "models"
    make_checkpoint(models / "nav" / "1", seed=1)
    probe = np.full((3, 2), 0.25, np.float32)

    def replica() -> Replica:
        registry = PolicyRegistry()
        r = Replica(registry, redis_server.url)
        registry.load_model_dir(models)  # as `serve` does: the store is there before the scan
        return r

    r = replica()
    try:
        old = create(r.stub, "nav", seed=1)
        before = act(r.stub, old, probe, deterministic=True)[1]
    finally:
        r.stop()
    make_checkpoint(models / "nav" / "2", seed=2)
    r = replica()  # restarted, with a newer version in the model directory
    try:
        registry = r.server.registry
        assert registry.scan().unloaded == []
        info = r.info(old)
        assert info.version == "1"
        np.testing.assert_allclose(
            act(r.stub, old, probe, deterministic=True)[1], before, atol=1e-7
        )
        r.store._drop(old, "closed")  # out of this replica's cache: still stored, still kept
        assert registry.scan().unloaded == []
        new = create(r.stub, "nav")
        assert r.info(new).version == "2"
        r.stub.DeleteSession(pb.DeleteSessionRequest(session_id=old))
        registry.scan()
        assert [pv.version for pv in registry.list()[0]] == ["2"]  # v1 unused anywhere: unloaded
    finally:
        r.stop()


@pytest.mark.parametrize(
    ("field", "value"),
    [("meta", b"{not json"), ("rev", b"x"), ("params", b"\x00\x01\x02"), ("rec", b"[1, 2]")],
)
def test_corrupt_session_data_is_data_loss_logged_once(
    replicas, redis_server, caplog, field: str, value: bytes
) -> None:  # type: ignore[no-untyped-def]
    a = replicas()
    sid = create(a.stub, POLICY, seed=7, record=True)
    db = redis.Redis.from_url(redis_server.url)
    db.hset(f"metarl:session:{sid}", field, value)
    if field != "rev":
        db.hincrby(f"metarl:session:{sid}", "rev", 1)  # (as a write by another replica would)
    caplog.set_level(logging.ERROR, logger="metarl_server.redis_store")
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as err:
            act(a.stub, sid, PROBE[0])
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert log_id(sid) in err.value.details()
        assert sid not in err.value.details()
    lines = [r for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(lines) == 1 and log_id(sid) in lines[0].getMessage()


def test_nan_in_stored_parameters_is_data_loss(replicas, redis_server) -> None:  # type: ignore[no-untyped-def]
    a = replicas()
    sid = create(a.stub, POLICY, seed=9)
    n = a.server.registry.get(POLICY).params.size
    db = redis.Redis.from_url(redis_server.url)
    db.hset(f"metarl:session:{sid}", "params", np.full(n, np.nan, np.float32).tobytes())
    db.hincrby(f"metarl:session:{sid}", "rev", 1)  # (as a write by another replica would)
    with pytest.raises(grpc.RpcError) as err:
        act(a.stub, sid, PROBE[0])
    assert err.value.code() == grpc.StatusCode.DATA_LOSS  # not INVALID_ARGUMENT
    assert "observations" not in err.value.details()


def test_a_corrupt_recording_event_is_data_loss(replicas, redis_server) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas(), replicas()
    sid = create(a.stub, POLICY, seed=8, record=True)
    act(b.stub, sid, PROBE[0])  # cached on B
    redis.Redis.from_url(redis_server.url).rpush(f"metarl:rec:{sid}", b'["s", "nope"]')
    with pytest.raises(grpc.RpcError) as err:
        act(b.stub, sid, PROBE[0])
    assert err.value.code() == grpc.StatusCode.DATA_LOSS


def test_a_dead_replicas_adapt_claim_lapses(replicas, bundled_registry, redis_server) -> None:  # type: ignore[no-untyped-def]
    """A replica that died mid-Adapt (a store that claimed and never renews) blocks the
    session's Adapts only until its claim lapses."""
    from metarl_server.redis_store import RedisSessionStore

    b = replicas()
    sid = create(b.stub, POLICY, seed=9)
    dead = RedisSessionStore(redis_server.url, bundled_registry, adapt_lease_seconds=60)
    db = redis.Redis.from_url(redis_server.url)
    try:
        dead.claim_adaptation(dead.get(sid))  # (a 60 s lease: surely held for the next call)
        assert b.adapt(sid, _episodes(9)) == grpc.StatusCode.ABORTED
        # the lease runs out (on Redis's clock, which every replica reads): moved there at
        # once instead of waited for, so no race with the machine's speed
        seconds, micros = db.time()
        db.hset(f"metarl:session:{sid}", "adapt_until", seconds * 1000 + micros // 1000 - 1)
        assert b.adapt(sid, _episodes(9)) == grpc.StatusCode.OK
        assert b.info(sid).adaptations == 1
    finally:
        dead.close()


def test_no_ttl_expiry_while_an_adapt_holds_the_session(replicas, redis_server) -> None:  # type: ignore[no-untyped-def]
    a = replicas(session_ttl=1.0)
    sid = create(a.stub, POLICY, seed=10)
    a.adapter.close_gate()
    adapting = _in_background(lambda: a.adapt(sid, _episodes(10)))
    assert a.adapter.entered.acquire(timeout=TIMEOUT)
    time.sleep(1.5)  # past the TTL, the Adapt still running
    assert redis.Redis.from_url(redis_server.url).exists(f"metarl:session:{sid}")
    a.adapter.open()
    assert adapting.result(TIMEOUT) == grpc.StatusCode.OK
    assert a.info(sid).adaptations == 1
