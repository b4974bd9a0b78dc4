"""examples/ run against a real server (with short settings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.client_support import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        (
            "robot_control_loop.py",
            ["--episodes", "4", "--adapt-every", "2"],
            ["episode  4 (policy adapted 1x)", "adapted on 2 recorded episodes"],
        ),
        (
            "few_shot_cartpole.py",
            ["--episodes", "3"],
            ["meta-trained policy: mean return", "adapted policy:      mean return"],
        ),
        ("few_shot_cartpole.py", ["--episodes", "4", "--num-envs", "2"], ["adapt: 1 step(s)"]),
        ("async_many_sessions.py", ["--sessions", "4", "--episodes", "2"], ["4 sessions"]),
    ],
)
def test_example_runs(
    server_target: str, script: str, args: list[str], expected: list[str]
) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--target", server_target, *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    for text in expected:
        assert text in proc.stdout, proc.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_has_help_and_a_target_flag(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "--target" in proc.stdout and "localhost:50051" in proc.stdout


def test_examples_without_a_server_end_in_one_line() -> None:
    target = f"localhost:{free_port()}"  # nothing listens there
    scripts = sorted(EXAMPLES.glob("*.py"))
    procs = [  # at once: each rides out the SDK's retries (~8 s) before it gives up
        subprocess.Popen(
            [sys.executable, str(script), "--target", target],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in scripts
    ]
    for script, proc in zip(scripts, procs, strict=True):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (script.name, err)
        lines = err.splitlines()
        assert len(lines) == 1, err  # no traceback
        assert lines[0].startswith(f"{script}: no answer from the policy server: ")
        assert "metarl serve" in lines[0]
