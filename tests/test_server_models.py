"""The model registry while serving: new versions picked up under traffic with zero failed calls,
existing sessions keep their version, unused versions unloaded, bad checkpoints refused."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_server.app import ServeConfig, build_registry
from tests.client_support import wait_until
from tests.server_support import (
    act,
    create,
    episode_proto,
    make_checkpoint,
    random_episodes,
    reload,
    serving,
    stub,
)

PROBE = np.full((1, 2), 0.25, np.float32)


def versions(s: object) -> tuple[list[str], str]:
    (policy,) = s.ListPolicies(pb.ListPoliciesRequest()).policies  # type: ignore[attr-defined]
    return list(policy.versions), policy.latest_version


def test_hot_reload_under_traffic_with_zero_failed_calls(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_checkpoint(models / "nav" / "1", seed=1)
    registry = build_registry(ServeConfig(model_dir=models))
    with serving(registry, poll_interval=1.0) as (_srv, channel):
        s = stub(channel)
        old = create(s, "nav")
        old_action = act(s, old, PROBE, deterministic=True)[0]
        failures: list[BaseException] = []
        calls = [0]
        seen_versions: set[str] = set()
        stop = threading.Event()
        eps = [episode_proto(*e) for e in random_episodes(2, 10, 2, 2)]

        def traffic(i: int) -> None:
            while not stop.is_set():
                try:
                    resp = s.CreateSession(pb.CreateSessionRequest(policy="nav", seed=i))
                    sid = resp.session.id
                    seen_versions.add(resp.session.version)
                    for _ in range(5):
                        act(s, sid, PROBE)
                    s.Adapt(pb.AdaptRequest(session_id=sid, episodes=eps))
                    act(s, sid, PROBE, deterministic=True)
                    s.DeleteSession(pb.DeleteSessionRequest(session_id=sid))
                    calls[0] += 8
                except BaseException as exc:
                    failures.append(exc)
                    return

        threads = [threading.Thread(target=traffic, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        try:
            # each wait is for a condition (up to 60 s), not for a time: a loaded machine is slow
            assert wait_until(lambda: calls[0] >= 24 or bool(failures), timeout=60)
            make_checkpoint(models / "nav" / "2", version="2", seed=2)  # the trainer's new version
            assert wait_until(lambda: versions(s)[1] == "2", timeout=60)
            assert versions(s) == (["1", "2"], "2")  # 1 stays: a session still uses it
            new = s.CreateSession(pb.CreateSessionRequest(policy="nav")).session
            assert new.version == "2"
            before = calls[0]  # more traffic, now on version 2
            assert wait_until(lambda: calls[0] >= before + 24 or bool(failures), timeout=60)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not failures, failures[0]
        assert calls[0] >= 48 and seen_versions == {"1", "2"}
        # the old session kept version 1 and its parameters
        assert s.GetSession(pb.GetSessionRequest(session_id=old)).session.version == "1"
        np.testing.assert_array_equal(act(s, old, PROBE, deterministic=True)[0], old_action)
        s.DeleteSession(pb.DeleteSessionRequest(session_id=old))  # its last session
        assert versions(s) == (["2"], "2")
        with pytest.raises(grpc.RpcError) as err:
            s.CreateSession(pb.CreateSessionRequest(policy="nav", version="1"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_checkpoints_are_refused_and_serving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    make_checkpoint(models / "nav" / "1")
    registry = build_registry(ServeConfig(model_dir=models))
    with serving(registry, poll_interval=0) as (_srv, channel):
        s = stub(channel)
        sid = create(s, "nav")
        # corrupt: the tensors no longer match the manifest's SHA-256
        bad = make_checkpoint(models / "nav" / "2", version="2", seed=2)
        data = bytearray((bad / "params.safetensors").read_bytes())
        data[-10] ^= 0xFF
        (bad / "params.safetensors").write_bytes(bytes(data))
        # half-written: a manifest without its tensors
        half = models / "nav" / "3"
        half.mkdir()
        (half / "manifest.json").write_text((models / "nav" / "1" / "manifest.json").read_text())
        # a trainer's temporary directory (renamed into place when complete) is not looked at
        tmp = models / "nav" / ".4.partial"
        tmp.mkdir()
        (tmp / "manifest.json").write_text("{")
        with caplog.at_level(logging.ERROR, logger="metarl_server.registry"):
            out = reload(channel)
        refused = {Path(r.path).name: r.reason for r in out.refused}
        assert set(refused) == {"2", "3"}
        assert "SHA-256" in refused["2"] and "needs" in refused["3"]
        assert not out.loaded
        assert sum("refusing checkpoint" in r.message for r in caplog.records) == 2
        assert versions(s) == (["1"], "1")
        act(s, sid, PROBE)  # serving goes on
        # a refused checkpoint is not retried until it changes...
        assert not reload(channel).refused
        # ...and loads once it is whole
        make_checkpoint(models / "nav" / "2", version="2", seed=2)
        out = reload(channel)
        assert [(m.name, m.version) for m in out.loaded] == [("nav", "2")]
        assert versions(s) == (["1", "2"], "2")  # 1 keeps serving its session
        s.DeleteSession(pb.DeleteSessionRequest(session_id=sid))
        assert versions(s) == (["2"], "2")


def test_only_the_newest_and_the_used_versions_stay_loaded(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_checkpoint(models / "nav" / "1", seed=1)
    make_checkpoint(models / "nav" / "2", version="2", seed=2)
    registry = build_registry(ServeConfig(model_dir=models))
    with serving(registry, poll_interval=0) as (_srv, channel):
        s = stub(channel)
        assert versions(s) == (["2"], "2")  # 1: not the newest, and no session needs it
        pinned = s.CreateSession(pb.CreateSessionRequest(policy="nav", version="2")).session
        make_checkpoint(models / "nav" / "3", version="3", seed=3)
        make_checkpoint(models / "nav" / "10", version="10", seed=4)
        out = reload(channel)
        assert sorted(m.version for m in out.loaded) == ["10", "3"]
        assert [m.version for m in out.unloaded] == ["3"]
        assert {m.version: m.sessions for m in out.serving} == {"2": 1, "10": 0}
        s.DeleteSession(pb.DeleteSessionRequest(session_id=pinned.id))
        assert versions(s) == (["10"], "10")
