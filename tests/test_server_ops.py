"""Operations: token auth, TLS, the metrics endpoint, configuration from the environment, JSON
logs, and the real ``metarl serve`` process (torch-free, draining on SIGTERM)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.tensors import to_tensor
from metarl_server.app import ServeConfig, build_registry, create_server
from metarl_server.logs import setup_logging
from tests.server_support import act, create, episode_proto, random_episodes, serving, stub

ROOT = Path(__file__).resolve().parent.parent
CARTPOLE = "cartpole-family"
OBS = np.zeros(4, np.float32)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return build_registry(ServeConfig())


def test_token_auth(registry: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("second-token\n\n")
    with serving(registry, auth_token="s3cret", auth_token_file=token_file) as (_srv, channel):
        s = stub(channel)
        for metadata in [None, [("authorization", "Bearer wrong")], [("authorization", "s3cret")]]:
            with pytest.raises(grpc.RpcError) as err:
                s.ListPolicies(pb.ListPoliciesRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # streams too
            list(s.StreamAct(iter([pb.StreamActRequest(session_id="x")])))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for token in ("s3cret", "second-token"):
            md = [("authorization", f"Bearer {token}")]
            sid = s.CreateSession(pb.CreateSessionRequest(policy=CARTPOLE), metadata=md).session.id
            s.Act(pb.ActRequest(session_id=sid, observations=to_tensor(OBS)), metadata=md)
        # health checks need no token (load balancers, orchestrators)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == SERVING


def _self_signed(directory: Path) -> tuple[bytes, bytes]:
    """A certificate for localhost and its key (PEM), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert.read_bytes(), key.read_bytes()


def test_tls(registry: Any, tmp_path: Path) -> None:
    cert, _key = _self_signed(tmp_path)
    cfg = ServeConfig(tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem")
    server, port = create_server("[::]:0", registry, cfg)
    server.start()
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert)
        with grpc.secure_channel(f"localhost:{port}", creds) as channel:
            s = stub(channel)
            sid = create(s, CARTPOLE)
            assert act(s, sid, OBS)[0] in (0, 1)
        with grpc.insecure_channel(f"localhost:{port}") as plain:  # plaintext is refused
            with pytest.raises(grpc.RpcError) as err:
                stub(plain).ListPolicies(pb.ListPoliciesRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None).wait(10)
    with pytest.raises(ValueError, match="both"):
        create_server("[::]:0", registry, ServeConfig(tls_cert=tmp_path / "cert.pem"))


def test_metrics_endpoint(registry: Any) -> None:
    with serving(registry, metrics_port=0) as (srv, channel):
        s = stub(channel)
        sid = create(s, CARTPOLE)
        for _ in range(3):
            act(s, sid, OBS)
        s.Adapt(
            pb.AdaptRequest(
                session_id=sid, episodes=[episode_proto(*e) for e in random_episodes(2, 5, 4, None)]
            )
        )
        with pytest.raises(grpc.RpcError):
            s.GetSession(pb.GetSessionRequest(session_id="nope"))
        list(s.StreamAct(iter([pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS))])))
        assert srv.metrics_port
        url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['metarl_grpc_requests_total{code="OK",method="Act"}'] == 3
    assert samples['metarl_grpc_requests_total{code="NOT_FOUND",method="GetSession"}'] == 1
    assert samples['metarl_grpc_requests_total{code="OK",method="StreamAct"}'] == 1
    assert samples['metarl_grpc_request_duration_seconds_count{method="Act"}'] == 3
    assert samples["metarl_stream_steps_total"] == 1
    assert samples['metarl_adaptations_total{outcome="ok"}'] == 1
    assert samples["metarl_adaptation_seconds_count"] == 1
    assert samples["metarl_sessions"] == 1 and samples["metarl_sessions_created_total"] == 1
    assert samples["metarl_act_batch_calls_count"] == 4  # 3 Act + 1 StreamAct step
    bundled = list((ROOT / "metarl/data/checkpoints").glob("*/*/manifest.json"))  # the default
    assert samples["metarl_policy_versions_loaded"] == len(bundled) >= 1


def test_every_option_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    samples: dict[str, tuple[str, Any]] = {
        "int": ("7", 7), "float": ("2.5", 2.5), "str": ("debug", "debug"),
        "bool": ("true", True),
    }  # fmt: skip
    cfg_fields = dataclasses.fields(ServeConfig)
    for f in cfg_fields:
        var = "METARL_" + f.name.upper()
        kind = str(f.type)
        if "list[Path]" in kind:
            monkeypatch.setenv(var, f"/a{os.pathsep}/b")
        elif "Path" in kind:
            monkeypatch.setenv(var, "/some/where")
        elif f.name == "log_format":
            monkeypatch.setenv(var, "json")
        else:
            base = kind.split("|")[0].strip()
            monkeypatch.setenv(var, samples[base][0])
    cfg = ServeConfig()
    for f in cfg_fields:
        value = getattr(cfg, f.name)
        if f.name == "auth_token":  # a secret: read when serving, never shown by --help
            no_file = dataclasses.replace(cfg, auth_token_file=None)
            assert value is None and no_file.tokens() == [samples["str"][1]]
        elif f.name == "checkpoint":
            assert value == [Path("/a"), Path("/b")]
        elif "Path" in str(f.type):
            assert value == Path("/some/where"), f.name
        elif f.name == "log_format":
            assert value == "json"
        else:
            assert value == samples[str(f.type).split("|")[0].strip()][1], f.name
    # a command-line flag wins over the variable
    import tyro

    monkeypatch.setenv("METARL_PORT", "6000")
    parsed = tyro.cli(ServeConfig, args=["--port", "7000"])
    assert parsed.port == 7000 and parsed.max_sessions == 7
    monkeypatch.setenv("METARL_PORT", "not-a-port")
    with pytest.raises(SystemExit, match="METARL_PORT"):
        ServeConfig()


def test_json_logs(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json")
        logging.getLogger("metarl_server.test").info(
            "session %s adapted", "abc", extra={"session": "abc"}
        )
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "session abc adapted" and record["session"] == "abc"
    assert record["level"] == "INFO" and record["logger"] == "metarl_server.test"


@pytest.fixture
def served_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    env = {**os.environ, "METARL_PORT": "0", "METARL_DRAIN_DELAY": "1.5", "METARL_GRACE": "60"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metarl_server", "--log-format", "json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on port" in line, proc.stderr.read() if proc.stderr else ""
        yield proc, int(line.rsplit(" ", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_serve_process_is_torch_free_and_drains_on_sigterm(
    served_process: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = served_process
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while health.Check(health_pb2.HealthCheckRequest()).status != SERVING:
            assert time.monotonic() < deadline, "never became SERVING"
            time.sleep(0.1)
        # the serving process acts in numpy; torch lives in the adaptation worker
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps
        s = stub(channel)
        sid = create(s, CARTPOLE, record=True)
        first = s.Adapt(
            pb.AdaptRequest(
                session_id=sid, episodes=[episode_proto(*e) for e in random_episodes(2, 5, 4, None)]
            )
        )
        assert first.stats.steps >= 1  # (warmed up before SERVING: the log's order, below)
        # a control loop in flight when SIGTERM arrives
        import queue

        outbox: queue.Queue[pb.StreamActRequest | None] = queue.Queue()

        def requests() -> Iterator[pb.StreamActRequest]:
            while (msg := outbox.get()) is not None:
                yield msg

        responses = s.StreamAct(requests())
        outbox.put(pb.StreamActRequest(session_id=sid, observation=to_tensor(OBS)))
        next(responses)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while health.Check(health_pb2.HealthCheckRequest()).status != NOT_SERVING:
            assert time.monotonic() < deadline, "health never turned NOT_SERVING"
            time.sleep(0.05)
        for _ in range(3):  # the stream keeps working while the server drains
            outbox.put(
                pb.StreamActRequest(
                    observation=to_tensor(OBS), feedback=pb.StepFeedback(reward=1.0)
                )
            )
            next(responses)
        # past the drain delay new calls are refused (polled: the delay runs on the server's
        # clock), while the stream in flight still works (within its 60 s grace)
        deadline = time.monotonic() + 60
        while True:
            try:
                s.GetSession(pb.GetSessionRequest(session_id=sid), timeout=2)
            except grpc.RpcError:
                break
            assert time.monotonic() < deadline, "new calls were never refused"
            time.sleep(0.1)
        outbox.put(pb.StreamActRequest(observation=to_tensor(OBS)))
        next(responses)
        outbox.put(None)
        assert list(responses) == []
    assert proc.wait(15) == 0
    err = proc.stderr.read() if proc.stderr else ""
    messages = [json.loads(line)["message"] for line in err.splitlines() if line.startswith("{")]
    assert any("draining" in m for m in messages) and messages[-1] == "stopped"
    # torch.func was warmed up (the adapter's start) before the server said it was serving
    ready = next(i for i, m in enumerate(messages) if m.startswith("adaptation workers ready"))
    assert ready < next(i for i, m in enumerate(messages) if m.startswith("serving "))


def test_oversized_messages_are_resource_exhausted(registry: Any) -> None:
    with serving(registry, max_message_mb=1) as (_srv, channel):
        s = stub(channel)
        sid = create(s, CARTPOLE)
        big = np.zeros((70_000, 4), np.float32)  # 1.1 MB
        with pytest.raises(grpc.RpcError) as err:
            act(s, sid, big)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        act(s, sid, OBS)  # the connection and the session are fine


def test_a_dead_adaptation_worker_is_replaced(registry: Any) -> None:
    from metarl_server.adapter import Adapter

    adapter = Adapter(processes=1, warm_up=False)
    server, port = create_server("[::]:0", registry, ServeConfig(), adapter=adapter)
    server.start()
    eps = [episode_proto(*e) for e in random_episodes(2, 5, 4, None)]
    try:
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            s = stub(channel)
            sid = create(s, CARTPOLE)
            s.Adapt(pb.AdaptRequest(session_id=sid, episodes=eps))
            (pid,) = adapter.worker_pids
            os.kill(pid, signal.SIGKILL)
            codes = []
            for _ in range(3):
                try:
                    s.Adapt(pb.AdaptRequest(session_id=sid, episodes=eps), timeout=120)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
            # at most the call that met the dead worker fails, with UNAVAILABLE (retryable)
            assert codes[-1] == grpc.StatusCode.OK
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
            info = s.GetSession(pb.GetSessionRequest(session_id=sid)).session
            assert info.adaptations == 1 + codes.count(grpc.StatusCode.OK)
    finally:
        server.stop(None).wait(30)


def test_adaptation_workers_exit_when_the_server_is_killed(
    served_process: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = served_process
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while health.Check(health_pb2.HealthCheckRequest()).status != SERVING:
            assert time.monotonic() < deadline, "never became SERVING"
            time.sleep(0.1)
    kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    workers = [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
    assert workers
    proc.kill()  # SIGKILL: the server cannot stop its workers itself
    proc.wait(10)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{k}").exists() for k in workers):
        assert time.monotonic() < deadline, "an adaptation worker outlived its server"
        time.sleep(0.1)
