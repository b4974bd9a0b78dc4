"""Ready means ready: from the instant its port opens, a starting ``metarl serve`` answers every
PolicyService call UNAVAILABLE ("loading policies", retryable) until its policies are loaded,
never an empty list or NOT_FOUND; health stays NOT_SERVING until then; the SDK rides it out."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metarl_client import PolicyClient
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
# The bundled policies a server without --checkpoint or --model-dir loads.
BUNDLED = ["cartpole-family", "half-cheetah-dir", "ml1-reach", "navigation-2d"]
# `python -m metarl_server` whose policies, once loaded, are held back (the server still
# refusing calls as loading) until the file $RELEASE exists; it touches $LOADED when loaded and
# appends the user agent of every call it refuses to $REFUSED. So the test calls while the
# server is loading, and releases it only once the SDK's first attempt was refused: whatever
# the machine's speed, the SDK meets a loading server and rides it out.
HELD_SERVER = """
import os, time
import grpc
import metarl_server.app as app
import metarl_server.interceptors as interceptors
from metarl_server.__main__ import main
build_into, unavailable = app.build_into, interceptors._unavailable
def held_build_into(registry, cfg):
    loaded = build_into(registry, cfg)
    open(os.environ["LOADED"], "w").close()
    while not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.01)
    return loaded
def recorded_unavailable(message):
    refuse = unavailable(message).stream_stream
    def recorded(request_iterator, context):
        agent = dict(context.invocation_metadata()).get("user-agent", "")
        with open(os.environ["REFUSED"], "a") as f:
            f.write(agent.split(" ")[0] + "\\n")
        return refuse(request_iterator, context)
    return grpc.stream_stream_rpc_method_handler(recorded)
app.build_into, interceptors._unavailable = held_build_into, recorded_unavailable
main()
"""
SDK_AGENT = "sdk-user"


def _free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("localhost", port), timeout=0.05).close()
            return
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the port never opened"
            time.sleep(0.002)


def test_calls_from_the_instant_the_port_opens_are_unavailable_until_loaded(
    tmp_path: Path,
) -> None:
    port = _free_port()
    release, loaded, refused_log = tmp_path / "release", tmp_path / "loaded", tmp_path / "refused"
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD_SERVER, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "METARL_GRACE": "1", "RELEASE": str(release),
             "LOADED": str(loaded), "REFUSED": str(refused_log)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    target = f"localhost:{port}"
    sdk_results: list[Any] = []

    # a client that meets the loading server (its first attempt refused): the SDK's retry
    # policy (with the server's pushback) rides it out
    def sdk_user() -> None:
        try:
            with PolicyClient(target, options=[("grpc.primary_user_agent", SDK_AGENT)]) as client:
                session = client.create_session("cartpole-family", seed=0)
                sdk_results.append((session.id, client.list_policies()))
        except Exception as exc:  # reported by the assertion below
            sdk_results.append(exc)

    try:
        _wait_for_port(port, proc)
        sdk = threading.Thread(target=sdk_user)
        # a raw channel without retries sees each answer
        with grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
            s = pb_grpc.PolicyServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            refused: list[tuple[str, grpc.StatusCode, str]] = []
            health_while_refusing = set()
            deadline = time.monotonic() + 120
            while True:
                assert time.monotonic() < deadline, "never served"
                if health_while_refusing and not release.exists():  # (raw calls refused)
                    if loaded.exists() and not sdk.is_alive() and not sdk_results:
                        sdk.start()  # the SDK's budget starts now, with the load done
                    if refused_log.exists() and SDK_AGENT in refused_log.read_text().split():
                        release.touch()  # the SDK's first attempt met the loading server
                try:
                    policies = s.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies
                    created = s.CreateSession(
                        pb.CreateSessionRequest(policy="cartpole-family"), timeout=5
                    )
                    break
                except grpc.RpcError as err:
                    refused.append(("call", err.code(), err.details()))
                # the other calls are refused the same way (no session exists yet: it would be
                # NOT_FOUND once serving)
                try:
                    list(s.StreamAct(iter([pb.StreamActRequest(session_id="x")]), timeout=5))
                except grpc.RpcError as err:
                    refused.append(("StreamAct", err.code(), err.details()))
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                health_while_refusing.add(status)
                time.sleep(0.02)
        assert refused, "the load was held: the first calls must have been refused"
        for what, code, details in refused:
            if what == "StreamAct" and code == grpc.StatusCode.NOT_FOUND:
                continue  # (loaded between the two calls)
            assert code == grpc.StatusCode.UNAVAILABLE, (what, code, details)
            assert details.startswith("loading policies"), details
        assert health_pb2.HealthCheckResponse.NOT_SERVING in health_while_refusing
        assert sorted(p.name for p in policies) == BUNDLED
        assert created.session.policy == "cartpole-family"
        status = health_pb2_grpc.HealthStub(grpc.insecure_channel(target)).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        sdk.join(30)
        assert len(sdk_results) == 1 and not isinstance(sdk_results[0], Exception), sdk_results
        sid, listed = sdk_results[0]
        assert sid and sorted(p.name for p in listed) == BUNDLED
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
