"""Hostile clients, round three (issue 21): made-up method names cannot grow the metrics or the
server's caches, streams whose client stops reading give their slot back, request bodies
decoded at once are bounded, a session's corrupt parameters are DATA_LOSS and another client's
session is NOT_FOUND, and a huge file in the model directory is refused from its header
without stalling adaptations."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.tensors import to_tensor
from metarl_server.app import ServeConfig, create_server
from metarl_server.interceptors import MAX_CACHED_HANDLERS
from metarl_server.registry import PolicyRegistry, in_process_loader
from tests.server_support import create, episode_proto, make_checkpoint, serving, stub

CARTPOLE = "cartpole-family"
OBS = np.zeros(4, np.float32)

OWN_TOKEN = "tok-alice"


def _md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _series(server: Any) -> int:
    """The number of samples (series) a /metrics scrape of ``server`` gives."""
    text = generate_latest(server.metrics.registry).decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _random_methods(rng: random.Random, n: int) -> list[str]:
    def word() -> str:
        return "".join(rng.choices(string.ascii_letters, k=12))

    # made-up methods of the server's own services, and made-up services
    own = ("metarl.v1.PolicyService", "metarl.v1.ModelAdminService", "grpc.health.v2.Health")
    return [f"/{rng.choice(own) if i % 2 else 'evil.v' + word()}/{word()}" for i in range(n)]


def _tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"alice {OWN_TOKEN}\nbob tok-bob\n")
    return path


# -- 1. made-up method names --------------------------------------------------------------------


def test_made_up_method_names_add_no_metric_series_and_no_cached_handlers(
    bundled_registry: Any, tmp_path: Path
) -> None:
    rng = random.Random(0)
    with serving(bundled_registry, poll_interval=0, auth_token_file=_tokens(tmp_path)) as (
        server,
        channel,
    ):

        def call_all(methods: list[str], metadata: list[tuple[str, str]]) -> set[str]:
            codes = set()
            for start in range(0, len(methods), 50):  # (50 at a time, as a client pipelines)
                batch = methods[start : start + 50]
                futures = [channel.unary_unary(m).future(b"", metadata=metadata) for m in batch]
                for f in futures:
                    try:
                        f.result(timeout=30)
                    except grpc.RpcError as exc:
                        codes.add(exc.code().name)
            return codes

        # one of each: the `unknown` label's series exist from then on
        assert call_all(_random_methods(rng, 2), []) == {"UNAUTHENTICATED"}
        assert call_all(_random_methods(rng, 2), _md(OWN_TOKEN)) == {"UNIMPLEMENTED"}
        before = _series(server)
        assert call_all(_random_methods(rng, 3000), []) == {"UNAUTHENTICATED"}
        assert call_all(_random_methods(rng, 200), _md("wrong")) == {"UNAUTHENTICATED"}
        assert call_all(_random_methods(rng, 200), _md(OWN_TOKEN)) == {"UNIMPLEMENTED"}
        assert _series(server) == before
        text = generate_latest(server.metrics.registry).decode()
        assert 'method="unknown"' in text and "evil" not in text
        # every interceptor's per-name cache stays bounded
        for interceptor in server.interceptors:
            for cache in ("_cache", "_handlers"):
                assert len(getattr(interceptor, cache, ())) <= MAX_CACHED_HANDLERS


# -- 2. a client that stops reading its responses ----------------------------------------------


class Unread:
    """A StreamAct call whose client sends steps as fast as gRPC takes them and never reads a
    response: once the responses fill the connection's flow-control window, the server's send
    blocks. The client's own window is kept small (no BDP growth) so that happens after a few
    thousand steps."""

    def __init__(self, port: int, sid: str) -> None:
        self.channel = grpc.insecure_channel(
            f"localhost:{port}",
            [
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", 16 * 1024),
            ],
        )
        self.sent = 0
        self._stop = threading.Event()
        first = pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS))
        step = pb.StreamActRequest(observation=to_tensor(OBS))

        def requests() -> Iterator[pb.StreamActRequest]:
            yield first
            while not self._stop.is_set():
                self.sent += 1
                yield step

        self.call = stub(self.channel).StreamAct(requests(), metadata=_md(OWN_TOKEN))

    def close(self) -> None:
        self._stop.set()
        self.call.cancel()
        self.channel.close()


def test_a_stream_whose_client_stops_reading_is_closed_and_its_slot_freed(
    bundled_registry: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metarl_server")
    with serving(
        bundled_registry,
        poll_interval=0,
        auth_token_file=_tokens(tmp_path),
        stream_idle_timeout=0.5,
        max_streams_per_client=1,
    ) as (server, channel):
        s = stub(channel)
        sid = s.CreateSession(
            pb.CreateSessionRequest(policy=CARTPOLE), metadata=_md(OWN_TOKEN)
        ).session.id
        unread = Unread(server.port, sid)
        try:
            # the server closes the unread stream once its send has been blocked 0.5 s (the
            # client sees the status only once it reads what it was sent: it never does)
            deadline = time.monotonic() + 30
            while not server.guard.reaped["unread"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.guard.reaped == {"unread": 1}, f"after {unread.sent} unread steps"
            assert unread.sent > 100  # it did send: blocked sending, not waiting for a message
            assert "its client reads no response" in caplog.text
            # and alice's next stream is served: her one slot is free again
            deadline = time.monotonic() + 10
            while True:
                step = pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS))
                try:
                    out = list(s.StreamAct(iter([step]), metadata=_md(OWN_TOKEN), timeout=5))
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "the slot was never freed"
                    time.sleep(0.05)
            assert len(out) == 1 and out[0].action.data
        finally:
            unread.close()


# -- 4. corrupt parameters, another client's session -------------------------------------------


def test_another_clients_session_is_not_found_exactly_as_an_unknown_id(
    bundled_registry: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metarl_server")
    with serving(bundled_registry, poll_interval=0, auth_token_file=_tokens(tmp_path)) as (
        _server,
        channel,
    ):
        s = stub(channel)
        alice, bob = _md(OWN_TOKEN), _md("tok-bob")
        sid = s.CreateSession(pb.CreateSessionRequest(policy=CARTPOLE), metadata=alice).session.id
        unknown = "0" * len(sid)
        obs = to_tensor(OBS)

        def answers(session_id: str) -> list[tuple[grpc.StatusCode, str]]:
            calls = [
                lambda: s.Act(pb.ActRequest(session_id=session_id, observations=obs), metadata=bob),
                lambda: list(
                    s.StreamAct(
                        iter([pb.StreamActRequest(session_id=session_id, observation=obs)]),
                        metadata=bob,
                    )
                ),
                lambda: s.Adapt(pb.AdaptRequest(session_id=session_id), metadata=bob),
                lambda: s.GetSession(pb.GetSessionRequest(session_id=session_id), metadata=bob),
                lambda: s.ResetSession(pb.ResetSessionRequest(session_id=session_id), metadata=bob),
                lambda: s.ReportFeedback(
                    pb.ReportFeedbackRequest(session_id=session_id), metadata=bob
                ),
                lambda: s.DeleteSession(
                    pb.DeleteSessionRequest(session_id=session_id), metadata=bob
                ),
            ]
            out = []
            for call in calls:
                with pytest.raises(grpc.RpcError) as err:
                    call()
                out.append((err.value.code(), err.value.details().replace(session_id, "<id>")))
            return out

        theirs, nobodys = answers(sid), answers(unknown)
        assert theirs == nobodys
        assert {code for code, _ in theirs} == {grpc.StatusCode.NOT_FOUND}
        # alice's session is untouched, and the refusals were logged without the id
        assert s.GetSession(pb.GetSessionRequest(session_id=sid), metadata=alice).session.id
    denials = [r for r in caplog.records if "belongs to another client" in r.getMessage()]
    assert len(denials) == 7 and all(r.levelno == logging.WARNING for r in denials)
    assert "'bob'" in denials[0].getMessage()
    assert sid not in caplog.text and OWN_TOKEN not in caplog.text and "tok-bob" not in caplog.text


@pytest.mark.parametrize("where", ["every parameter", "the last bias"])
def test_nan_in_a_sessions_parameters_is_data_loss(bundled_registry: Any, where: str) -> None:
    with serving(bundled_registry, poll_interval=0) as (server, channel):
        s = stub(channel)
        sid = s.CreateSession(pb.CreateSessionRequest(policy=CARTPOLE)).session.id
        session = server.sessions.get(sid)
        flat = session.policy.params.copy()
        if where == "every parameter":
            flat[:] = np.nan
        else:
            flat[-1] = np.nan
        session.param_set = session.policy.policy.params(flat)  # (as a corrupt store gives)
        for observations in (OBS, np.stack([OBS, OBS])):
            with pytest.raises(grpc.RpcError) as err:
                s.Act(pb.ActRequest(session_id=sid, observations=to_tensor(observations)))
            assert err.value.code() == grpc.StatusCode.DATA_LOSS
            assert "parameters hold NaN" in err.value.details()
            assert "observations" not in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(
                s.StreamAct(iter([pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS))]))
            )
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        # ResetSession is the way out
        s.ResetSession(pb.ResetSessionRequest(session_id=sid))
        assert s.Act(pb.ActRequest(session_id=sid, observations=to_tensor(OBS))).actions.data


# -- 3. request bodies received at once --------------------------------------------------------


def test_bodies_wait_for_a_receive_slot_and_are_refused_past_the_budget(
    bundled_registry: Any,
) -> None:
    with serving(bundled_registry, poll_interval=0, max_message_mb=4, max_receiving_mb=8) as (
        server,
        channel,
    ):
        gate = server.guard.receive_gate
        assert gate is not None and gate.slots == 2  # 8 MiB of 4 MiB bodies
        s = stub(channel)
        sid = create(s, CARTPOLE)
        big = np.zeros((200_000, 4), np.float32)  # a 3.2 MB Act body
        gate.wait = 0.3
        for _ in range(gate.slots):  # (every slot taken, as by bodies still arriving)
            assert gate._sem.acquire(timeout=5)
        try:
            with pytest.raises(grpc.RpcError) as err:
                s.Act(pb.ActRequest(session_id=sid, observations=to_tensor(big)), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-receiving-mb" in err.value.details()
            assert gate.refused == 1
        finally:
            for _ in range(gate.slots):
                gate._sem.release()
        # with a slot free the same call is received and answered (here: past the batch limit)
        with pytest.raises(grpc.RpcError) as err:
            s.Act(pb.ActRequest(session_id=sid, observations=to_tensor(big)), timeout=30)
        assert "max-batch-size" in err.value.details() or "1024" in err.value.details()
        assert s.Act(pb.ActRequest(session_id=sid, observations=to_tensor(OBS))).actions.data
        # a unary method called with no request message: INVALID_ARGUMENT, not INTERNAL
        raw = channel.stream_unary("/metarl.v1.PolicyService/GetSession")
        with pytest.raises(grpc.RpcError) as err:
            raw(iter(()), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # the methods are counted as before (unary, by their own names): the refused call and
        # the one past the batch limit
        text = generate_latest(server.metrics.registry).decode()
        assert 'metarl_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="Act"} 2.0' in text


# -- 5. a huge file in the model directory -----------------------------------------------------


def _spy_registry(calls: list[Path]) -> PolicyRegistry:
    def loader(path: Path) -> Any:
        calls.append(path)
        return in_process_loader(path)

    return PolicyRegistry(loader)


def test_a_huge_or_stray_params_file_is_refused_from_its_header_without_reading_it(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    make_checkpoint(models / "nav" / "1")
    make_checkpoint(models / "nav" / "5", version="5", learned_lr=True)  # (lr tensors too)
    huge = make_checkpoint(models / "nav" / "2", version="2")
    with (huge / "params.safetensors").open("r+b") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: its header and tensors, then zeros
    fifo = make_checkpoint(models / "nav" / "3", version="3")
    (fifo / "params.safetensors").unlink()
    os.mkfifo(fifo / "params.safetensors")  # reading it would block forever
    lying = make_checkpoint(models / "nav" / "4", version="4")
    manifest = json.loads((lying / "manifest.json").read_text())
    manifest["policy"]["hidden_sizes"] = [4096, 4096]  # declares tensors it does not hold
    (lying / "manifest.json").write_text(json.dumps(manifest))
    big_manifest = make_checkpoint(models / "nav" / "6", version="6")
    with (big_manifest / "manifest.json").open("r+b") as f:
        f.truncate(1 << 30)

    calls: list[Path] = []
    registry = _spy_registry(calls)
    registry.model_dirs.append(models)
    result = registry.scan()
    assert sorted(pv.version for pv in result.loaded) == ["1", "5"]
    refused = {p.name: reason for p, reason in result.refused}
    assert set(refused) == {"2", "3", "4", "6"}
    assert "1073741824 bytes" in refused["2"] and "refused without reading it" in refused["2"]
    assert "not a regular file" in refused["3"]
    assert "its manifest declares a float tensor of shape [4096]" in refused["4"]
    assert "more than the 1048576" in refused["6"]
    assert sorted(p.name for p in calls) == ["1", "5"]


def test_an_adapt_is_answered_while_a_slow_load_is_in_progress(tmp_path: Path) -> None:
    """A load held in progress (the loader reads a FIFO nobody writes yet) while an Adapt is
    asked: the Adapt is answered, then the load is let go."""
    from metarl_server.adapter import Adapter

    models = tmp_path / "models"
    make_checkpoint(models / "nav" / "1")
    adapter = Adapter(processes=1, warm_up=False)
    registry = PolicyRegistry(adapter.load)
    registry.load_model_dir(models)
    server, port = create_server("[::]:0", registry, ServeConfig(poll_interval=0), adapter=adapter)
    server.start()
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    loading = threading.Thread(
        target=lambda: adapter.call_loader(Path.read_bytes, gate), name="slow-load"
    )
    try:
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            s = stub(channel)
            sid = create(s, "nav")
            loading.start()  # the loader process blocks opening the FIFO
            short = [episode_proto(np.zeros((3, 2)), np.zeros((3, 2)), [1.0, 0.0, 1.0])]
            out = s.Adapt(pb.AdaptRequest(session_id=sid, episodes=short), timeout=120)
            assert out.stats.steps == 1
            assert loading.is_alive()  # the load is still held: nobody has written the FIFO
    finally:
        with gate.open("wb") as f:  # lets the load finish
            f.write(b"done")
        loading.join(60)
        server.stop(None).wait(30)
    assert not loading.is_alive()


class SlowProxy:
    """A TCP proxy that passes the client's bytes on at ~80 KB/s (the server's at full speed):
    a client whose request body dribbles in."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(4096 if slow else 65536):
                dst.sendall(data)
                if slow:
                    self._closed.wait(0.05)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


def test_a_body_that_arrives_too_slowly_gives_its_receive_slot_back(
    bundled_registry: Any,
) -> None:
    with serving(bundled_registry, poll_interval=0) as (server, channel):
        gate = server.guard.receive_gate
        assert gate is not None
        gate.receive_timeout = 0.5  # (before the first call starts its watchdog)
        proxy = SlowProxy(server.port)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as slow:
                body = b"\x0a\x80\x80\x80\x01" + b"a" * (2 << 20)  # a 2 MiB policy name
                with pytest.raises(grpc.RpcError) as err:
                    slow.unary_unary("/metarl.v1.PolicyService/CreateSession")(body, timeout=60)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "took more than 0.5 s to arrive" in err.value.details()
            assert gate.timed_out == 1
        finally:
            proxy.close()
        # its slot is free again: both slots serve other calls
        for _ in range(gate.slots + 1):
            create(stub(channel), CARTPOLE)
