"""Hostile and unlucky clients (issue 15): idle streams cannot starve the server, auth fails
closed, sessions belong to their creator, refused calls are not decoded, malformed messages are
INVALID_ARGUMENT, and no call answers OK with a non-finite action."""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from metarl.core.checkpoint import load_checkpoint, save_checkpoint
from metarl.core.inner_loop import InnerLoopConfig
from metarl_client.proto.metarl.v1 import admin_service_pb2 as admin_pb
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.tensors import to_tensor
from metarl_server.app import ServeConfig, build_registry, create_server
from tests.server_support import (
    admin_stub,
    create,
    episode_proto,
    make_checkpoint,
    serving,
    stub,
)

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


# A starved server answers nothing at all, so a deadline this long tells it from a slow machine.
ANSWERS_DEADLINE = 30.0


def _health(channel: grpc.Channel, timeout: float = ANSWERS_DEADLINE) -> int:
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
            _until(lambda: server.guard.active_streams == 8, "never 8 streams held", timeout=60)
            assert len([st for st in streams if st.call.done()]) == 4
            # everything else still answers (a starved server would answer nothing)
            for _ in range(3):
                assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
                create(s, CARTPOLE)
                s.Act(
                    pb.ActRequest(session_id=sid, observations=to_tensor(OBS)),
                    timeout=ANSWERS_DEADLINE,
                )
            # a slot freed is a slot usable again
            streams[0].close()
            _until(
                lambda: server.guard.active_streams <= 7, "never a freed stream slot", timeout=60
            )
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
            _wait_done([st.call for st in mine + theirs], 1, timeout=60)
            _until(lambda: server.guard.active_streams == 6, "never 6 streams held", timeout=60)
            refused = [c for c in (st.call for st in mine + theirs) if c.done()]
            assert len(refused) == 1 and refused[0] in [st.call for st in mine]
            assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-streams-per-client" in refused[0].details()
            assert server.guard.active_streams == 6
        finally:
            for st in mine + theirs:
                st.close()
            other_channel.close()


def test_a_named_client_has_one_stream_quota_over_all_its_connections(
    bundled_registry: Any, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice tok-alice\nbob tok-bob\n")
    with serving(
        bundled_registry, poll_interval=0, auth_token_file=tokens, max_streams_per_client=2
    ) as (server, channel):
        other = _separate_channel(server.port)
        alice = [
            IdleStream(ch, metadata=_md("tok-alice"), timeout=30) for ch in (channel, other, other)
        ]
        bob = IdleStream(channel, metadata=_md("tok-bob"), timeout=30)
        try:
            _wait_done([st.call for st in alice], 1, timeout=60)
            _until(lambda: server.guard.active_streams == 3, "never 3 streams held", timeout=60)
            refused = [st.call for st in [*alice, bob] if st.call.done()]
            assert len(refused) == 1 and refused[0] is not bob.call
            assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert server.guard.active_streams == 3
        finally:
            for st in [*alice, bob]:
                st.close()
            other.close()


def test_a_stream_that_sends_nothing_is_closed_cleanly(bundled_registry: Any) -> None:
    with serving(bundled_registry, poll_interval=0, stream_idle_timeout=0.5) as (_srv, channel):
        s = stub(channel)
        sid = create(s, CARTPOLE)
        step = pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS))
        # taken before the idle stream's only message: it cannot be closed sooner than 0.5 s later
        started = time.monotonic()
        idle = IdleStream(channel, step)
        assert next(idle.call).action.data  # answered, then the client goes quiet
        # a busy stream (a message every 0.1 s) outlives the idle one
        busy = IdleStream(channel, step)
        next(busy.call)
        try:
            while not idle.call.done() and time.monotonic() - started < 60:
                busy._requests.put(pb.StreamActRequest(observation=to_tensor(OBS)))
                next(busy.call)
                time.sleep(0.1)
            assert idle.call.code() == grpc.StatusCode.UNAVAILABLE
            assert "--stream-idle-timeout" in idle.call.details()
            assert time.monotonic() - started >= 0.5  # not closed before its idle timeout
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
    with pytest.raises(SystemExit, match=r"--admin-token-file .* holds no token"):
        create_server("[::]:0", bundled_registry, ServeConfig(admin_token_file=tokens))
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
                # as for an id that does not exist: a prober cannot tell it is a session's
                assert err.value.code() == grpc.StatusCode.NOT_FOUND, name
                assert "never existed" in err.value.details()
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


# -- 4. never OK with a non-finite or absurd action -------------------------------------------


def _nav_checkpoint(path: Path, log_std: float, inner_lr: float = 0.1) -> Path:
    """The navigation checkpoint of the server tests with its log standard deviation set."""
    make_checkpoint(path, inner=InnerLoopConfig(lr=inner_lr, steps=1))
    ckpt = load_checkpoint(path)
    params = {k: v.clone() for k, v in ckpt.params.items()}
    params["log_std"] = torch.full_like(params["log_std"], log_std)
    shutil.rmtree(path)
    return save_checkpoint(dataclasses.replace(ckpt, params=params), path)


def _nav_step(sid: str) -> pb.StreamActRequest:
    return pb.StreamActRequest(session_id=sid, observation=to_tensor(np.zeros(2, np.float32)))


def test_act_refuses_infinite_actions(tmp_path: Path) -> None:
    # exp(100) overflows float32: every sampled action is infinite, its log-probability -200
    registry = build_registry(ServeConfig(checkpoint=[_nav_checkpoint(tmp_path / "nav", 100.0)]))
    with serving(registry, poll_interval=0) as (_srv, channel):
        s = stub(channel)
        sid = create(s, "nav")
        obs = to_tensor(np.zeros(2, np.float32))
        for many in (False, True):
            req = pb.ActRequest(
                session_id=sid,
                observations=to_tensor(np.zeros((3, 2), np.float32)) if many else obs,
            )
            with pytest.raises(grpc.RpcError) as err:
                s.Act(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "ResetSession" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(s.StreamAct(iter([_nav_step(sid)]), timeout=10))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # the mean is finite: a deterministic action is still served
        s.Act(pb.ActRequest(session_id=sid, observations=obs, deterministic=True), timeout=10)


def test_an_adaptation_to_an_absurd_policy_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # θ's std is exp(9.9); one inner step on actions far from the mean whose rewards fall as
    # they get farther pushes log_std to ~16.4 (std ~1.4e7) while every parameter stays finite
    registry = build_registry(ServeConfig(checkpoint=[_nav_checkpoint(tmp_path / "nav", 9.9)]))
    with serving(registry, poll_interval=0) as (_srv, channel):
        s = stub(channel)
        sid = create(s, "nav")
        obs = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
        acts = np.repeat(np.linspace(0, 6e5, 10, dtype=np.float32)[:, None], 2, 1)
        rewards = np.linspace(1, -1, 10).astype(np.float32)
        before = s.Act(
            pb.ActRequest(session_id=sid, observations=to_tensor(obs), deterministic=True)
        )
        with pytest.raises(grpc.RpcError) as err:
            s.Adapt(
                pb.AdaptRequest(session_id=sid, episodes=[episode_proto(obs, acts, rewards)]),
                timeout=60,
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert "log standard deviation" in err.value.details()
        info = s.GetSession(pb.GetSessionRequest(session_id=sid)).session
        assert info.adaptations == 0
        after = s.Act(
            pb.ActRequest(session_id=sid, observations=to_tensor(obs), deterministic=True)
        )
        assert after.actions.data == before.actions.data


# -- 5. the smaller items ------------------------------------------------------------------------


def test_malformed_requests_are_invalid_argument_without_a_traceback(
    bundled_registry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    groups = b"\x7b" * 200 + b"\x7c" * 200  # unknown groups nested past protobuf's limit of 100
    bodies = [b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\xff\xff\xff\xff\x0f", groups]
    with serving(bundled_registry, poll_interval=0, auth_token="s3cret") as (_srv, channel):
        md = _md("s3cret")
        act = channel.unary_unary("/metarl.v1.PolicyService/Act")
        stream = channel.stream_stream("/metarl.v1.PolicyService/StreamAct")
        for body in bodies:
            for invoke in (
                lambda b, m: act(b, metadata=m, timeout=10),
                lambda b, m: list(stream(iter([b]), metadata=m, timeout=10)),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    invoke(body, md)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a valid protobuf message" in err.value.details()
                with pytest.raises(grpc.RpcError) as err:  # without the token: not even read
                    invoke(body, _md("wrong"))
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Traceback" not in caplog.text and "deserializ" not in caplog.text


def test_cancelled_adapts_are_not_computed_and_sessions_do_not_expire_while_adapting(
    tmp_path: Path,
) -> None:
    """The order is forced, not timed: the adaptation worker is held (it reads a FIFO nobody
    writes yet) while a session's Adapt waits for it past the session's TTL and an expiry pass,
    and while another Adapt is cancelled; then the worker is let go."""
    registry = build_registry(ServeConfig(checkpoint=[make_checkpoint(tmp_path / "nav")]))
    short = [episode_proto(np.zeros((3, 2)), np.zeros((3, 2)), [1.0, 0.0, 1.0])]
    ttl = 0.5
    with serving(registry, poll_interval=0, session_ttl=ttl) as (server, channel):
        s = stub(channel)
        first = create(s, "nav")
        s.Adapt(pb.AdaptRequest(session_id=first, episodes=short), timeout=60)  # warm
        adaptations = server.metrics.adaptations
        before = {k: adaptations.labels(k)._value.get() for k in ("ok", "skipped", "cancelled")}
        callers_there: list[Any] = []  # each queued Adapt's is_active, in order
        queue_adaptation = server.adapter.adapt

        def spied_adapt(job: Any, timeout: float | None, is_active: Any = None) -> Any:
            callers_there.append(is_active)
            return queue_adaptation(job, timeout, is_active)

        server.adapter.adapt = spied_adapt  # type: ignore[method-assign]
        gate = tmp_path / "gate"
        os.mkfifo(gate)
        held = threading.Thread(  # (the worker blocks opening the FIFO for reading)
            target=lambda: server.adapter._run(Path.read_bytes, gate, timeout=None, bounded=False)
        )
        held.start()
        _until(lambda: server.adapter._idle.qsize() == 0, "the worker was never held")
        try:
            session = server.sessions.get(first)
            idle = create(s, "nav")  # the control: idle as long, not adapting
            idle_session = server.sessions.get(idle)
            busy = s.Adapt.future(
                pb.AdaptRequest(session_id=first, episodes=short, steps=10), timeout=60
            )
            _until(lambda: session.adapting, "the Adapt never started")
            # both sessions idle past the TTL, then an expiry pass: only the control expires
            _until(
                lambda: (
                    min(
                        time.monotonic() - session.last_used,
                        time.monotonic() - idle_session.last_used,
                    )
                    > ttl
                ),
                "the clock never passed the TTL",
            )
            server.sessions.expire()
            with pytest.raises(grpc.RpcError) as err:
                s.GetSession(pb.GetSessionRequest(session_id=idle))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            # an Adapt waiting for the held worker, cancelled: never computed
            second = create(s, "nav")
            second_session = server.sessions.get(second)
            waiting = s.Adapt.future(pb.AdaptRequest(session_id=second, episodes=short), timeout=60)
            _until(lambda: second_session.adapting, "the second Adapt never started")
            _until(lambda: len(callers_there) == 2, "the second Adapt never queued")
            waiting.cancel()
            # the server must see the cancellation before the worker is let go
            _until(lambda: not callers_there[1](), "the server never saw the cancellation")
        finally:
            with gate.open("wb") as f:  # lets the worker go
                f.write(b"go")
            held.join(60)
        assert busy.result().stats.steps == 10
        assert s.GetSession(pb.GetSessionRequest(session_id=first)).session.adaptations == 2
        after = {k: adaptations.labels(k)._value.get() for k in ("ok", "skipped", "cancelled")}
        assert after["skipped"] - before["skipped"] == 1  # not computed
        assert after["cancelled"] == before["cancelled"]
        assert after["ok"] - before["ok"] == 1  # the held one


def _until(condition: Any, failure: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.01)


def test_metrics_bind_the_host_address(bundled_registry: Any) -> None:
    with serving(bundled_registry, poll_interval=0, host="127.0.0.1", metrics_port=0) as (
        server,
        _channel,
    ):
        assert server.metrics._http.server_address[0] == "127.0.0.1"


def test_symlinks_out_of_the_model_dir_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    make_checkpoint(models / "nav" / "1")
    make_checkpoint(elsewhere / "2", version="2")
    (models / "nav" / "2").symlink_to(elsewhere / "2")  # a version directory out of it
    make_checkpoint(elsewhere / "3", version="3")
    inside = models / "nav" / "3"
    inside.mkdir()
    for f in (elsewhere / "3").iterdir():  # a version whose files are links out of it
        (inside / f.name).symlink_to(f)
    (models / "nav" / "4").symlink_to(models / "nav" / "1")  # a link within it is fine
    caplog.set_level(logging.WARNING)
    registry = build_registry(ServeConfig(model_dir=models))
    assert [pv.version for pv in registry.list()[0]] == ["4"]  # the newest of 1 and 4
    refusals = [r.getMessage() for r in caplog.records if "symbolic link out of" in r.message]
    assert len(refusals) == 2
    assert any("nav/2" in m for m in refusals) and any("nav/3" in m for m in refusals)


def test_reflection_streams_count_as_streams(bundled_registry: Any) -> None:
    with serving(bundled_registry, poll_interval=0, max_streams=2) as (server, channel):
        held = [IdleStream(channel) for _ in range(2)]
        try:
            deadline = time.monotonic() + 5
            while server.guard.active_streams < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            reflect = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
            )
            with pytest.raises(grpc.RpcError) as err:
                list(reflect(iter([b""]), timeout=5))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for st in held:
                st.close()
        deadline = time.monotonic() + 5
        while server.guard.active_streams and time.monotonic() < deadline:
            time.sleep(0.02)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        out = list(
            reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([ask]), timeout=5
            )
        )
        names = [s.name for s in out[0].list_services_response.service]
        assert "metarl.v1.PolicyService" in names


def test_the_issue_case_80_idle_streams_with_the_default_limits(bundled_registry: Any) -> None:
    with serving(bundled_registry, poll_interval=0) as (server, channel):
        s = stub(channel)
        sid = create(s, CARTPOLE)
        channels = [_separate_channel(server.port) for _ in range(2)]
        streams = [IdleStream(channels[i % 2]) for i in range(80)]
        try:
            _until(lambda: server.guard.active_streams == 80, "never 80 streams held", timeout=60)
            # still answering with every default stream slot held (it answered nothing before)
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
            create(s, CARTPOLE)
            s.Act(
                pb.ActRequest(session_id=sid, observations=to_tensor(OBS)),
                timeout=ANSWERS_DEADLINE,
            )
        finally:
            for st in streams:
                st.close()
            for ch in channels:
                ch.close()
