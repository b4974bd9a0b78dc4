"""Concurrency: many sessions acting while others adapt, atomic θ' swaps, batching of concurrent
Act calls, and adaptation off the request path."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import get_ident

import grpc
import numpy as np
import pytest

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_server.app import Server
from metarl_server.batching import ActBatcher, ActJob
from metarl_server.registry import PolicyRegistry
from tests.client_support import wait_until
from tests.server_support import (
    act,
    create,
    episode_proto,
    make_checkpoint,
    random_episodes,
    serving,
    stub,
)

PROBE = np.random.default_rng(3).normal(size=(4, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, grpc.Channel]]:
    registry = PolicyRegistry()
    registry.add_checkpoint(make_checkpoint(tmp_path_factory.mktemp("m") / "nav" / "1"))
    with serving(registry) as srv:
        yield srv


def eps_proto(n: int, length: int, seed: int) -> list[pb.Episode]:
    return [episode_proto(*e) for e in random_episodes(n, length, 2, 2, seed=seed)]


def test_many_sessions_act_while_others_adapt(server: tuple[Server, grpc.Channel]) -> None:
    _srv, channel = server
    s = stub(channel)
    actors = [create(s, "nav", seed=i) for i in range(6)]
    expected = {sid: act(s, sid, PROBE, deterministic=True)[0] for sid in actors}
    adapters = [create(s, "nav") for _ in range(4)]
    errors: list[BaseException] = []
    done = threading.Event()
    acts_done = [0]

    def actor(sid: str) -> None:
        try:
            while not done.is_set():
                a, _ = act(s, sid, PROBE, deterministic=True)
                # never touched by others (batched passes agree to float32 rounding)
                np.testing.assert_allclose(a, expected[sid], atol=1e-5, rtol=1e-6)
                act(s, sid, PROBE[0])
                acts_done[0] += 1
        except BaseException as exc:
            errors.append(exc)

    def adapter(i: int) -> None:
        try:
            for k in range(2):
                s.Adapt(
                    pb.AdaptRequest(session_id=adapters[i], episodes=eps_proto(10, 100, k), steps=3)
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=actor, args=(sid,)) for sid in actors]
    for t in threads:
        t.start()
    assert wait_until(lambda: acts_done[0] >= 10, timeout=60)  # the actors are going
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(adapter, range(4)))
    started = acts_done[0]
    assert wait_until(lambda: acts_done[0] >= started + 10, timeout=60)  # and still going
    done.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    # (that actions are answered while an adaptation is in flight, whatever the machine's
    # speed: test_act_is_not_stalled_by_a_long_adaptation)
    for sid in adapters:
        assert s.GetSession(pb.GetSessionRequest(session_id=sid)).session.adaptations == 2


def test_act_sees_the_old_or_the_new_parameters_never_a_mix(
    server: tuple[Server, grpc.Channel],
) -> None:
    srv, channel = server
    s = stub(channel)
    sid = create(s, "nav")
    pv = srv.sessions.get(sid).policy
    thetas = [srv.sessions.get(sid).params]
    seen: list[np.ndarray] = []
    stop = threading.Event()

    def actor() -> None:
        while not stop.is_set():
            seen.append(act(s, sid, PROBE, deterministic=True)[0])

    t = threading.Thread(target=actor)
    t.start()
    try:
        for k in range(8):
            s.Adapt(pb.AdaptRequest(session_id=sid, episodes=eps_proto(3, 30, k), steps=2))
            thetas.append(srv.sessions.get(sid).params)
            n = len(seen)  # the actor's second action from now was asked for after the swap
            assert wait_until(lambda n=n: len(seen) >= n + 2, timeout=60)
    finally:
        stop.set()
        t.join(10)
    outs = [pv.policy.forward(theta, PROBE) for theta in thetas]
    assert len({o.tobytes() for o in outs}) == len(outs)  # every θ' acts differently
    assert len(seen) >= 16
    used = set()
    for a in seen:
        match = [i for i, o in enumerate(outs) if np.allclose(a, o, atol=1e-6)]
        assert len(match) == 1, "an action matches no single parameter set"
        used.add(match[0])
    assert len(used) >= 8  # the actor saw every swap


def test_concurrent_adapts_of_one_session_never_lose_an_update(
    server: tuple[Server, grpc.Channel],
) -> None:
    _srv, channel = server
    s = stub(channel)
    sid = create(s, "nav")
    big = eps_proto(20, 200, 1)

    def adapt() -> grpc.StatusCode:
        try:
            s.Adapt(pb.AdaptRequest(session_id=sid, episodes=big, steps=5))
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: adapt(), range(4)))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}
    ok = codes.count(grpc.StatusCode.OK)
    assert ok >= 1
    info = s.GetSession(pb.GetSessionRequest(session_id=sid)).session
    assert info.adaptations == ok and info.adaptation_steps == 5 * ok


def test_reset_during_an_adaptation_wins(server: tuple[Server, grpc.Channel]) -> None:
    srv, channel = server
    s = stub(channel)
    sid = create(s, "nav")
    session = srv.sessions.get(sid)
    result: list[object] = []

    def adapt() -> None:
        try:
            result.append(
                s.Adapt(pb.AdaptRequest(session_id=sid, episodes=eps_proto(40, 250, 2), steps=10))
            )
        except grpc.RpcError as exc:
            result.append(exc.code())

    t = threading.Thread(target=adapt)
    t.start()
    deadline = time.monotonic() + 10
    while not session.adapting and time.monotonic() < deadline:
        time.sleep(0.001)
    s.ResetSession(pb.ResetSessionRequest(session_id=sid))
    t.join(60)
    if result == [grpc.StatusCode.ABORTED]:  # the usual case: the reset came first
        assert session.params is session.policy.params
    else:  # the adaptation finished before the reset got in: then the reset undid it
        assert session.params is session.policy.params and session.adaptations == 0


def test_act_is_not_stalled_by_a_long_adaptation(
    server: tuple[Server, grpc.Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, channel = server
    s = stub(channel)
    actor, busy = create(s, "nav"), create(s, "nav")
    # The adaptation is held in flight (its Adapt has claimed the session and handed the job
    # to the adapter) for as long as the test needs: no race with the machine's speed.
    in_flight, release = threading.Event(), threading.Event()
    real_adapt = srv.adapter.adapt

    def held_adapt(*args, **kwargs):  # type: ignore[no-untyped-def]
        in_flight.set()
        assert release.wait(60), "the test never released the adaptation"
        return real_adapt(*args, **kwargs)

    monkeypatch.setattr(srv.adapter, "adapt", held_adapt)
    result: list[pb.AdaptResponse] = []
    t = threading.Thread(
        target=lambda: result.append(
            s.Adapt(pb.AdaptRequest(session_id=busy, episodes=eps_proto(40, 250, 5), steps=10))
        )
    )
    t.start()
    try:
        assert in_flight.wait(60)
        actions = [act(s, actor, PROBE[0]) for _ in range(20)]  # each answered meanwhile
        assert srv.sessions.get(busy).adapting  # (still in flight: nothing waited for it)
    finally:
        release.set()
        t.join(120)
    assert len(actions) == 20 and all(np.isfinite(a).all() for a, _ in actions)
    assert result and result[0].stats.steps == 10


def test_batcher_computes_queued_calls_in_one_pass(tmp_path: Path) -> None:
    registry = PolicyRegistry()
    pv = registry.add_checkpoint(make_checkpoint(tmp_path / "nav" / "1"))
    rng = np.random.default_rng(0)
    thetas = [pv.params + rng.normal(size=pv.params.shape).astype(np.float32) * 0.05
              for _ in range(6)]  # fmt: skip
    sets = [pv.policy.params(t) for t in thetas] + [pv.param_set, pv.param_set]  # 2 share θ
    thetas += [pv.params, pv.params]
    obs = [rng.normal(size=(i % 3 + 1, 2)).astype(np.float32) for i in range(len(thetas))]
    expected = [pv.policy.forward(t, o) for t, o in zip(thetas, obs, strict=True)]
    passes: list[tuple[int, int]] = []
    first_pass = threading.Event()
    release = threading.Event()

    def on_batch(calls: int, param_sets: int) -> None:
        passes.append((calls, param_sets))
        if len(passes) == 1:
            first_pass.set()
            assert release.wait(60)  # hold the leader while the others queue up

    batcher = ActBatcher(on_batch=on_batch)
    blocker = ActJob(pv, pv.param_set, obs[0], True, np.random.default_rng(0))
    t0 = threading.Thread(target=batcher.run, args=(blocker,))
    t0.start()
    assert first_pass.wait(60)
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        job = ActJob(pv, sets[i], obs[i], True, np.random.default_rng(0))
        results[i] = batcher.run(job).result()[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(thetas))]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(batcher._queue) == len(thetas), timeout=60)
    release.set()
    for t in [t0, *threads]:
        t.join(60)
    assert passes[0] == (1, 1)
    assert passes[1] == (len(thetas), 7)  # one pass: 6 adapted θ' + the shared θ
    for i, e in enumerate(expected):
        np.testing.assert_allclose(results[i], e, atol=1e-6)


def test_a_lone_call_is_not_delayed(tmp_path: Path) -> None:
    registry = PolicyRegistry()
    pv = registry.add_checkpoint(make_checkpoint(tmp_path / "nav" / "1"))
    passes: list[tuple[int, int, int]] = []
    batcher = ActBatcher(on_batch=lambda calls, sets: passes.append((calls, sets, get_ident())))
    for _ in range(20):
        job = ActJob(
            pv, pv.param_set, np.zeros((1, 2), np.float32), False, np.random.default_rng(0)
        )
        batcher.run(job)
        assert job.event is None  # never queued: no timer, no wait for company
        assert np.isfinite(job.result_one()[1])
    assert passes == [(1, 1, get_ident())] * 20  # each computed at once, in the caller's thread
