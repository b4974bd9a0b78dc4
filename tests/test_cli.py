"""The command line as users run it: train, serve (a real process), demo."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metarl.cli.demo import DemoConfig, run_demo
from metarl.core.checkpoint import load_checkpoint
from tests.process_support import spawn_server

METARL = [sys.executable, "-m", "metarl.cli"]


def test_train_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    proc = subprocess.run(
        [
            *METARL,
            "train",
            "--env",
            "metarl/CartPoleFamily-v0",
            "--iterations",
            "2",
            "--out",
            str(out),
            "--seed",
            "3",
            "--meta-batch-size",
            "2",
            "--episodes-per-task",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(out)
    assert ckpt.env_id == "metarl/CartPoleFamily-v0"
    assert ckpt.training["iterations"] == 2 and ckpt.training["seed"] == 3
    lines = (tmp_path / "ckpt.metrics.csv").read_text().splitlines()
    assert lines[0].startswith("iteration,pre_return,post_return") and len(lines) == 3


def test_serve_answers_health_and_drains_on_sigterm() -> None:
    proc, target = spawn_server()  # returns once health says SERVING
    try:
        with grpc.insecure_channel(target) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_shows_adaptation(capsys) -> None:  # type: ignore[no-untyped-def]
    before, after = run_demo(DemoConfig(tasks=2, episodes=6))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"adaptation: return {before:.1f} -> {after:.1f}"
    assert after > 1.5 * before


def test_version_comes_from_the_installed_distributions() -> None:
    from importlib.metadata import version

    proc = subprocess.run([*METARL, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = (
        f"metarl {version('metarl')} (metarl-client {version('metarl-client')}, "
        f"metarl-envs {version('metarl-envs')}; Python {sys.version.split()[0]})\n"
    )
    assert proc.stdout == expected
