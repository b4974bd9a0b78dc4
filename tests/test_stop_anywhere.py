"""Stop anywhere: a SIGINT or SIGTERM delivered from inside any phase of a training iteration
(sampling, the baseline fit, the inner loop inside its ``torch.func`` transform, the
meta-gradient, the outer update, the metrics, the checkpoint and trainer-state writes) stops
the run at the next safe point with a resumable state and a checkpoint that says it is partial;
the resumed run ends bit for bit as one that was never interrupted.

The signal is raised in this (the main) thread with :func:`signal.raise_signal`, which runs the
Python handler before it returns: it is handled exactly where the hook stands, not somewhere
later, so every case is deterministic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl.cli import main as cli_main
from metarl.core import inner_loop, policies
from metarl.core.checkpoint import Checkpoint, bundled_checkpoints_dir, load_checkpoint
from metarl.core.inner_loop import InnerLoopConfig
from metarl.core.policies import PolicySpec
from metarl.envs.cartpole_family import BatchedCartPoleFamily
from metarl.training import parallel_sampling, trainer_state
from metarl.training import train as train_module
from metarl.training.algorithms import maml, trpo
from metarl.training.train import TrainConfig, train
from tests.test_refresh import _wait_for_rows, assert_same_params, metric_rows

BUNDLED = bundled_checkpoints_dir() / "cartpole-family" / "1"
SPEC = PolicySpec(obs_dim=4, action_dim=2, hidden_sizes=(8,))
EVAL = ["--tasks", "2", "--adapt-steps", "1", "--episodes-per-task", "2", "--methods", "maml",
        "--quiet"]  # fmt: skip
ITERATIONS = 4
STOP_IN = 2
"""The signal comes during this iteration (the first is complete by then)."""


def tiny(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        env="metarl/CartPoleFamily-v0", iterations=ITERATIONS, out=out, seed=3,
        meta_batch_size=2, episodes_per_task=2, hidden_sizes=(8,), save_every=2, threads=1,
        progress=False, tensorboard=False, version="1",
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """The reference runs, never interrupted: Adam and TRPO outer loops."""
    root = tmp_path_factory.mktemp("uninterrupted")
    return {
        outer: (train(tiny(root / outer, outer=outer)), root / outer) for outer in ("adam", "trpo")
    }


class Injector:
    """Raises ``signum`` once, from inside the ``nth`` call (counted within iteration
    ``during``) of the function it wraps."""

    def __init__(self, signum: int, nth: int = 1, during: int = STOP_IN) -> None:
        self.signum, self.nth, self.during = signum, nth, during
        self.completed = 0  # iterations the run has completed, as the trainer reports them
        self.calls = 0
        self.fired = False
        self.inside_transform: bool | None = None

    def wrap(self, fn: Callable[..., Any], check: Callable[..., bool] | None = None) -> Any:
        def hooked(*args: Any, **kwargs: Any) -> Any:
            if self.completed == self.during - 1 and not self.fired:
                self.calls += 1
                if self.calls == self.nth:
                    self.fired = True
                    if check is not None:
                        self.inside_transform = check(*args, **kwargs)
                    signal.raise_signal(self.signum)
            return fn(*args, **kwargs)

        return hooked

    def follow(self, monkeypatch: pytest.MonkeyPatch) -> None:
        end = trainer_state.Run.end_iteration

        def counting(run: trainer_state.Run, iteration: int) -> None:
            end(run, iteration)  # (its saves belong to this iteration)
            self.completed = iteration

        monkeypatch.setattr(trainer_state.Run, "end_iteration", counting)


def _wrapped_tensor(spec: Any, params: dict[str, torch.Tensor], batch: Any) -> bool:
    return torch._C._functorch.is_functorch_wrapped_tensor(next(iter(params.values())))


# (phase, patch target, attribute, which call in the iteration, outer loop, iterations saved)
PHASES = [
    ("pre-update sampling", parallel_sampling, "sample", 1, "adam", STOP_IN - 1),
    ("baseline fit", inner_loop, "fit_linear_baseline", 1, "adam", STOP_IN - 1),
    ("inner loop, inside torch.func", inner_loop, "reinforce_loss", 1, "adam", STOP_IN - 1),
    ("post-update sampling", parallel_sampling, "sample", 2, "adam", STOP_IN - 1),
    ("post-update baseline fit", inner_loop, "fit_linear_baseline", 2, "adam", STOP_IN - 1),
    ("meta-gradient", maml.MetaObjective, "grad", 1, "adam", STOP_IN - 1),
    ("meta-gradient, TRPO", maml.MetaObjective, "grad", 1, "trpo", STOP_IN - 1),
    ("outer update, Adam", torch.optim.Adam, "step", 1, "adam", STOP_IN),
    ("outer update, TRPO step", trpo, "step", 1, "trpo", STOP_IN),
    ("metrics row", train_module._MetricsLog, "write", 1, "adam", STOP_IN),
    ("trainer-state write", trainer_state, "save_state", 1, "adam", STOP_IN),
    ("checkpoint write", trainer_state, "save_checkpoint", 1, "adam", STOP_IN),
]


@pytest.mark.parametrize("phase,target,attr,nth,outer,saved", PHASES, ids=[p[0] for p in PHASES])
def test_a_signal_in_any_phase_stops_at_the_next_safe_point_and_resumes_bit_for_bit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    uninterrupted: dict[str, tuple[Any, Path]],
    phase: str,
    target: Any,
    attr: str,
    nth: int,
    outer: str,
    saved: int,
) -> None:
    signum = signal.SIGTERM if "TRPO" in phase else signal.SIGINT
    handler_before = signal.getsignal(signum)
    inject = Injector(signum, nth)
    inject.follow(monkeypatch)
    check = _wrapped_tensor if attr == "reinforce_loss" else None
    monkeypatch.setattr(target, attr, inject.wrap(getattr(target, attr), check))
    run = tmp_path / "run"
    with pytest.raises(trainer_state.TrainingInterrupted) as stopped:
        train(tiny(run, outer=outer))
    monkeypatch.undo()
    assert inject.fired
    if check is not None:
        assert inject.inside_transform  # the hook really ran inside grad_and_value
    assert (stopped.value.iteration, stopped.value.exit_status) == (saved, 128 + signum)
    assert signal.getsignal(signum) is handler_before

    # What was saved: the last completed iteration, resumable, and a checkpoint that says it is
    # partial (iterations done of planned).
    assert trainer_state.load_state(run).iteration == saved
    manifest = json.loads((run / "manifest.json").read_text())
    training = manifest["training"]
    assert (training["iterations"], training["planned_iterations"]) == (saved, ITERATIONS)
    assert training["partial"] is True
    assert load_checkpoint(run).partial
    assert len(metric_rows(run)) == 1 + saved

    resumed = train(TrainConfig(resume=run))
    reference, reference_run = uninterrupted[outer]
    assert_same_params(reference.params, resumed.params)
    assert metric_rows(run) == metric_rows(reference_run)
    finished = json.loads((run / "manifest.json").read_text())["training"]
    assert (finished["iterations"], finished["partial"]) == (ITERATIONS, False)
    assert not load_checkpoint(run).partial


def test_a_signal_before_the_first_iteration_completes_saves_iteration_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict[str, tuple[Any, Path]]
) -> None:
    inject = Injector(signal.SIGINT, during=1)
    monkeypatch.setattr(maml, "adapt_in_shards", inject.wrap(maml.adapt_in_shards))
    run = tmp_path / "run"
    with pytest.raises(trainer_state.TrainingInterrupted) as stopped:
        train(tiny(run))
    monkeypatch.undo()
    assert stopped.value.iteration == 0
    assert trainer_state.load_state(run).iteration == 0
    training = load_checkpoint(run).training
    assert (training["iterations"], training["partial"]) == (0, True)
    resumed = train(TrainConfig(resume=run))
    assert_same_params(uninterrupted["adam"][0].params, resumed.params)


def test_a_signal_during_the_last_iteration_lets_the_run_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict[str, tuple[Any, Path]]
) -> None:
    """Once the last outer update has begun, nothing is left to save for later: the run ends
    complete (not partial) and returns its checkpoint."""
    inject = Injector(signal.SIGINT, during=ITERATIONS)
    inject.follow(monkeypatch)
    monkeypatch.setattr(torch.optim.Adam, "step", inject.wrap(torch.optim.Adam.step))
    ckpt = train(tiny(tmp_path / "run"))
    monkeypatch.undo()
    assert inject.fired
    assert_same_params(uninterrupted["adam"][0].params, ckpt.params)
    assert load_checkpoint(tmp_path / "run").training["partial"] is False


# -- an interrupted run's checkpoint says it is partial, everywhere ------------------------------


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped by SIGINT during iteration 2 of 4: its checkpoint holds iteration 1."""
    run = tmp_path_factory.mktemp("partial") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        inject = Injector(signal.SIGINT)
        inject.follow(monkeypatch)
        monkeypatch.setattr(maml.MetaObjective, "grad", inject.wrap(maml.MetaObjective.grad))
        with pytest.raises(trainer_state.TrainingInterrupted):
            train(tiny(run))
    return run


def test_partial_is_read_from_the_manifest_or_from_older_manifests_records() -> None:
    def ckpt(training: dict[str, Any]) -> Checkpoint:
        return Checkpoint("p", "1", "metarl/CartPoleFamily-v0", SPEC, InnerLoopConfig(), {}, None,
                          training)  # fmt: skip

    # written before the manifest said it: iterations done against the recipe's iterations
    assert ckpt({"iterations": 86, "config": {"iterations": 300}}).partial
    assert ckpt({"iterations": 86, "config": {"iterations": 300}}).progress() == (86, 300)
    assert not ckpt({"iterations": 300, "config": {"iterations": 300}}).partial
    assert not ckpt({}).partial and ckpt({}).progress() is None  # (a hand-made checkpoint)
    flagged = {"iterations": 86, "planned_iterations": 300, "partial": True}
    assert ckpt(flagged).partial and ckpt(flagged).progress() == (86, 300)


def test_eval_of_a_partial_checkpoint_says_so_in_its_table_and_its_json(
    partial_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(partial_run), *EVAL]
    cli_main(args)
    table = capsys.readouterr().out
    assert table.splitlines()[0] == (
        "PARTIAL checkpoint: its training stopped after iteration 1 of 4 "
        "(`metarl train --resume <its directory>` finishes it)"
    )
    cli_main([*args, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["partial"] is True
    assert result["training_iterations"] == {"done": 1, "planned": 4}

    cli_main(["eval", str(BUNDLED), *EVAL, "--json"])  # a finished run
    result = json.loads(capsys.readouterr().out)
    assert result["partial"] is False
    assert result["training_iterations"] == {"done": 300, "planned": 300}
    cli_main(["eval", str(BUNDLED), *EVAL])
    assert "PARTIAL" not in capsys.readouterr().out


def test_publish_refuses_a_partial_checkpoint_unless_allowed(
    partial_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    with pytest.raises(SystemExit) as refused:
        cli_main(["publish", str(partial_run), "--model-dir", str(models)])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"metarl publish: error: {partial_run}: a partial checkpoint (training stopped after "
        f"iteration 1 of 4); finish it with `metarl train --resume {partial_run}`, or pass "
        "--allow-partial to publish it as it is"
    ]
    assert not models.exists()

    cli_main(["publish", str(partial_run), "--model-dir", str(models), "--allow-partial"])
    published = load_checkpoint(models / "cartpole-family" / "1")
    assert published.partial and published.progress() == (1, 4)


def test_resume_prints_the_runs_own_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train(tiny(run, iterations=1, seed=7, hidden_sizes=(8, 8)))
    capsys.readouterr()
    cli_main(["train", "--resume", str(run), "--iterations", "2"])
    err = capsys.readouterr().err
    header = err.split("configuration (", 1)
    assert len(header) == 2 and "configuration (" not in header[1]  # printed once
    shown = header[1]
    assert shown.startswith(f"the run's own, {run}.trainer-state/state.json < flags --iterations):")
    body = [line for line in shown.splitlines()[1:] if line.startswith("  ")]
    values = dict(v.split("=", 1) for v in " ".join(body).split())
    assert (values["out"], values["seed"], values["hidden_sizes"]) == (str(run), "7", "8,8")
    assert (values["iterations"], values["save_every"], values["env"]) == (
        "2", "2", "metarl/CartPoleFamily-v0"
    )  # fmt: skip
    assert "out=runs/latest" not in err  # the command line's defaults are not shown


@pytest.mark.slow
def test_under_torchrun_a_sigterm_stops_every_process_after_the_same_iteration(
    tmp_path: Path,
) -> None:
    """``kill -TERM`` of the torchrun launcher: it passes SIGTERM on to its processes, which
    agree at the end of an iteration, so rank 0 saves the iteration every process completed,
    and it alone says so."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "metarl.train", "--env", "metarl/CartPoleFamily-v0", "--meta-batch-size", "2",
         "--episodes-per-task", "2", "--hidden-sizes", "8", "--threads", "1", "--no-progress",
         "--no-tensorboard", "--iterations", "100000", "--save-every", "100000",
         "--out", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_rows(run.with_name("run.metrics.csv"), 3, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [line for line in err.splitlines() if line.startswith("metarl train: SIGTERM")]
    done = trainer_state.load_state(run).iteration
    assert lines == [
        f"metarl train: SIGTERM: stopped after iteration {done} of 100000, state saved (a "
        f"partial checkpoint); resume with: metarl train --resume {run}"
    ], err[-3000:]
    assert done >= 3 and load_checkpoint(run).progress() == (done, 100000)
    assert len(metric_rows(run)) == 1 + done


def test_the_sampler_workers_leave_a_signal_to_the_trainer() -> None:
    """Ctrl-C in a terminal reaches the whole process group, the sampler's worker processes
    too (families with an expensive step): they ignore it, and sampling goes on until the
    trainer's next safe point."""
    tasks = BatchedCartPoleFamily.sample_tasks(2, np.random.default_rng(0))
    params = policies.init_params(SPEC, torch.Generator().manual_seed(0))

    def draw(pool: parallel_sampling.SamplerPool) -> Any:
        rngs = [np.random.default_rng(i) for i in range(2)]
        return pool.sample(SPEC, params, tasks, 2, rngs)[0]

    with parallel_sampling.SamplerPool(BatchedCartPoleFamily, 1) as here:
        expected = draw(here)
    with parallel_sampling.SamplerPool(BatchedCartPoleFamily, 2) as pool:
        assert pool.worker_torch_threads() == [1, 1]  # (the workers are up)
        assert pool._executor is not None
        workers = list(pool._executor._processes.values())
        for process in workers:
            assert process.pid is not None
            os.kill(process.pid, signal.SIGINT)
            os.kill(process.pid, signal.SIGTERM)
        got = draw(pool)
        assert all(process.is_alive() for process in workers)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
