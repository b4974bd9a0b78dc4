"""`metarl serve` as a real process: started on a free port, used once health says SERVING."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_until_serving(target: str, timeout: float = 60.0) -> None:
    """Polls the standard health service until it answers SERVING (policies loaded)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} did not become SERVING within {timeout} s")
            time.sleep(0.05)


def spawn_server(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Starts ``metarl serve --port 0 ARGS`` on 127.0.0.1; returns it once it serves."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "metarl.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on port" not in line:
        proc.kill()
        raise RuntimeError(
            f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    target = f"127.0.0.1:{int(line.rsplit(' ', 1)[1])}"
    try:
        wait_until_serving(target)
    except TimeoutError:
        proc.kill()
        raise
    return proc, target
