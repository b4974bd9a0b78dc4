"""``metarl eval``: JSON schema, nothing else on stdout, determinism, the plot, the baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.cli import main as cli_main
from metarl.core import policies
from metarl.core.checkpoint import Checkpoint, bundled_checkpoints_dir, save_checkpoint
from metarl.core.inner_loop import InnerLoopConfig
from metarl.envs.navigation import BatchedNavigation2D
from metarl.evaluation.eval import EvalConfig, adaptation_curve, evaluate, resolve_checkpoint

TINY = [
    "--tasks", "3",
    "--adapt-steps", "2",
    "--episodes-per-task", "2",
    "--pretrain-iterations", "2",
    "--pretrain-tasks", "2",
    "--baseline-tasks", "2",
    "--baseline-lr-scales", "1", "10",
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
    table, grids = captured.out.split("\n\n")
    lines = table.splitlines()
    assert lines[1].split()[:2] == ["method", "0"]
    assert [line.split()[0] for line in lines[2:]] == ["maml", "pretrained", "random"]
    grid_lines = grids.splitlines()
    assert grid_lines[0].startswith("baselines' fine-tuning, chosen on 2 training tasks")
    assert grid_lines[1].split()[:4] == ["pretrained", "lr", "own", "std"]
    assert sum("*" in line for line in grid_lines) == 2  # one choice per baseline
    assert grid_lines[-1].startswith("maml minus the best fine-tuned baseline: ")
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
            baseline_tasks=3,
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


def test_baselines_fine_tuning_is_chosen_on_training_tasks_and_reported(
    nav_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid_flags = ["--baseline-lr-scales", "1", "10", "--baseline-stds", "0", "3"]
    out = _eval_json(nav_checkpoint, capsys, "--seed", "5", *grid_flags)
    ft = out["fine_tuning"]
    assert isinstance(ft, dict) and ft["selection_tasks"] == 2
    for method in ("pretrained", "random"):
        grid = ft[method]["grid"]
        # 2 learning rates (x the checkpoint's alpha 0.1) x 2 stds (own; 3 x the 0.1 half-width)
        assert [(g["lr"], g["std"]) for g in grid] == [
            (0.1, None), (1.0, None), (0.1, 0.3), (1.0, 0.3)
        ]  # fmt: skip
        best = max(grid, key=lambda g: g["score"])
        assert (ft[method]["lr"], ft[method]["std"]) == (best["lr"], best["std"])
    best_baseline = [max(p, r) for p, r in zip(out["returns"]["pretrained"],
                                                out["returns"]["random"], strict=True)]  # fmt: skip
    assert out["best_baseline"] == best_baseline
    assert out["maml_minus_best_baseline"] == pytest.approx(
        [m - b for m, b in zip(out["returns"]["maml"], best_baseline, strict=True)], abs=1e-3
    )
    # The choice depends on the training tasks only: the held-out seed's tasks are apart, and
    # one grid point alone reproduces the chosen baseline's held-out curve.
    chosen = ft["pretrained"]
    only = [
        "--baseline-lr-scales", str(chosen["lr"] / 0.1),
        "--baseline-stds", "0" if chosen["std"] is None else str(chosen["std"] / 0.1),
    ]  # fmt: skip
    again = _eval_json(nav_checkpoint, capsys, "--seed", "5", *only)
    assert again["returns"]["pretrained"] == out["returns"]["pretrained"]


def test_cartpole_baselines_tune_only_the_learning_rate(tmp_path: Path) -> None:
    from metarl.envs.cartpole_family import BatchedCartPoleFamily

    spec = policies.PolicySpec.for_spaces(
        BatchedCartPoleFamily.observation_space,
        BatchedCartPoleFamily.action_space,
        hidden_sizes=(4,),
    )
    ckpt = Checkpoint(
        name="cp-test", version="1", env_id="metarl/CartPoleFamily-v0", spec=spec,
        inner_loop=InnerLoopConfig(lr=0.5),
        params=policies.init_params(spec, torch.Generator().manual_seed(0)),
    )  # fmt: skip
    result = evaluate(
        EvalConfig(
            checkpoint=tmp_path, tasks=2, adapt_steps=1, episodes_per_task=2,
            pretrain_iterations=1, pretrain_tasks=2, baseline_tasks=2,
            baseline_lr_scales=(1.0, 2.0), quiet=True,
        ),
        ckpt,
    )  # fmt: skip
    for ft in result.fine_tuning.values():
        assert [(g["lr"], g["std"]) for g in ft.grid] == [(0.5, None), (1.0, None)]
        assert ft.std is None


def test_eval_of_maml_alone_gives_the_same_maml_curve(
    nav_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--methods maml skips the baselines (their training and tuning) and leaves maml's own
    numbers as they are with them."""
    every = _eval_json(nav_checkpoint, capsys, "--seed", "3")
    alone = _eval_json(nav_checkpoint, capsys, "--seed", "3", "--methods", "maml")
    assert alone["returns"] == {"maml": every["returns"]["maml"]}  # type: ignore[index]
    assert "best_baseline" not in alone
    with pytest.raises(SystemExit) as exc:
        cli_main(["eval", str(nav_checkpoint), *TINY, "--methods", "random"])
    assert exc.value.code == 2
