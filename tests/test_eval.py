"""``metarl eval``: JSON schema, nothing else on stdout, determinism, the plot, the baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl import policies
from metarl.checkpoint import Checkpoint, bundled_checkpoints_dir, save_checkpoint
from metarl.cli import main as cli_main
from metarl.envs.navigation import BatchedNavigation2D
from metarl.eval import EvalConfig, adaptation_curve, evaluate, resolve_checkpoint
from metarl.inner_loop import InnerLoopConfig

TINY = [
    "--tasks", "3",
    "--adapt-steps", "2",
    "--episodes-per-task", "2",
    "--pretrain-iterations", "2",
    "--pretrain-tasks", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def nav_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = policies.PolicySpec.for_spaces(
        BatchedNavigation2D.observation_space,
        BatchedNavigation2D.action_space,
        hidden_sizes=(8,),
    )
    ckpt = Checkpoint(
        name="nav-test",
        version="1",
        env_id="metarl/Navigation2D-v0",
        spec=spec,
        inner_loop=InnerLoopConfig(lr=0.1),
        params=policies.init_params(spec, torch.Generator().manual_seed(0)),
        training={"episodes_per_task": 2},
    )
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "nav")


def _eval_json(ckpt: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, object]:
    cli_main(["eval", str(ckpt), *TINY, "--json", *extra])
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is one JSON object


def test_eval_json_schema_and_determinism(
    nav_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _eval_json(nav_checkpoint, capsys, "--seed", "3")
    assert first["env_id"] == "metarl/Navigation2D-v0"
    assert first["num_tasks"] == 3 and first["seed"] == 3
    returns = first["returns"]
    assert isinstance(returns, dict) and set(returns) == {"maml", "pretrained", "random"}
    for curve in returns.values():
        assert len(curve) == 3  # after 0, 1 and 2 inner steps
        assert all(isinstance(r, float) and -100 * 1.5 <= r <= 0 for r in curve)
    assert _eval_json(nav_checkpoint, capsys, "--seed", "3") == first
    assert _eval_json(nav_checkpoint, capsys, "--seed", "4")["returns"] != returns


def test_eval_json_is_all_of_stdout(nav_checkpoint: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "eval", str(nav_checkpoint), *TINY, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert set(json.loads(proc.stdout)) >= {"env_id", "num_tasks", "seed", "returns"}
    assert proc.stdout.count("\n") == 1
    assert "maml" in proc.stderr  # progress goes to stderr


def test_eval_table_and_plot(
    nav_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "curves" / "nav.png"
    cli_main(["eval", str(nav_checkpoint), *TINY, "--plot", str(png), "--quiet"])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[1].split()[:2] == ["method", "0"]
    assert [line.split()[0] for line in lines[2:]] == ["maml", "pretrained", "random"]
    assert captured.err == ""
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_adaptation_curve_adapts_per_task() -> None:
    """Two tasks with goals in opposite corners: one inner step on each task's own episodes moves
    each task's policy towards its goal, from the same start."""
    spec = policies.PolicySpec.for_spaces(
        BatchedNavigation2D.observation_space,
        BatchedNavigation2D.action_space,
        hidden_sizes=(16,),
        init_log_std=np.log(0.1),
    )
    params = policies.init_params(spec, torch.Generator().manual_seed(0))
    tasks = [{"goal_x": 0.5, "goal_y": 0.5}, {"goal_x": -0.5, "goal_y": -0.5}]
    curve = adaptation_curve(
        BatchedNavigation2D(2 * 40),
        spec,
        params,
        tasks,
        InnerLoopConfig(lr=0.01),
        steps=2,
        episodes_per_task=40,
        lr=None,
        rng=np.random.default_rng(0),
        generator=torch.Generator().manual_seed(0),
    )
    assert curve.shape == (3, 2)
    assert (curve[2] > curve[0] + 10).all()


def test_bundled_navigation_checkpoint_adapts() -> None:
    path = resolve_checkpoint(Path("navigation-2d/1"))
    assert path == bundled_checkpoints_dir() / "navigation-2d" / "1"
    result = evaluate(
        EvalConfig(
            checkpoint=path,
            tasks=10,
            adapt_steps=1,
            seed=123,
            episodes_per_task=10,
            pretrain_iterations=1,
            quiet=True,
        )
    )
    assert result.env_id == "metarl/Navigation2D-v0"
    maml = result.returns["maml"]
    assert maml[1] > maml[0] + 10  # one inner step helps a lot
    assert maml[1] > result.returns["random"][1]


def test_missing_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metarl train"):
        resolve_checkpoint(tmp_path / "nope")
