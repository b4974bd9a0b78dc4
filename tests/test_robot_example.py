"""examples/robot_adaptation.py: the MuJoCo / Meta-World simulation on the client side (torch,
metarl and metarl_server blocked in its process), adapting through a real server that serves the
bundled half-cheetah-dir and ml1-reach checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_readme import TORCH_BLOCKED

pytest.importorskip("mujoco", reason="the mujoco extra is not installed")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "robot_adaptation.py"


@pytest.mark.parametrize(
    ("policy", "extra", "task"),
    [
        ("half-cheetah-dir", [], "held-out task: direction="),
        ("ml1-reach", ["--max-steps", "10"], "held-out task: split=1, index="),
    ],
)
def test_robot_example_adapts_without_torch(
    server_target: str, tmp_path: Path, policy: str, extra: list[str], task: str
) -> None:
    if policy == "ml1-reach":
        pytest.importorskip("metaworld", reason="the metaworld extra is not installed")
    blocker = tmp_path / "blocked.py"
    blocker.write_text(TORCH_BLOCKED)
    cmd = [sys.executable, str(blocker), str(EXAMPLE), "--target", server_target]
    cmd += ["--policy", policy, "--episodes", "2", "--max-steps", "20", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert task in out, out
    assert f"policy {policy} v1 on metarl/" in out, out
    # returns and the family's success rate (both families report one), before and after
    assert "meta-trained policy: mean return" in out and "success" in out, out
    assert "adapt: 1 step(s) on " in out and "adapted policy:      mean return" in out, out
    assert "n/a (no success flag)" not in out, out
