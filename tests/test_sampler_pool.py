"""metarl.training.parallel_sampling: the same episodes with 1 or N worker processes (per-task
random streams), the caller's generators advanced as if sampled in process, one torch thread
per worker, success flags carried."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl import envs
from metarl.core import policies
from metarl.core.checkpoint import load_checkpoint
from metarl.core.sampling import sample_episodes_and_successes
from metarl.training import config
from metarl.training.parallel_sampling import SamplerPool, _shares, training_pool
from metarl.training.train import train

pytest.importorskip("mujoco", reason="the mujoco extra is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:.*maximum and minimum values are equal")


def _setup(env_id: str, k: int) -> tuple[type, policies.PolicySpec, policies.Params, list]:
    cls = envs.family(env_id).batched_cls
    spec = policies.PolicySpec.for_spaces(
        cls.observation_space, cls.action_space, hidden_sizes=(16, 16)
    )
    theta = policies.init_params(spec, torch.Generator().manual_seed(0))
    return cls, spec, theta, cls.sample_tasks(k, np.random.default_rng(0))


def _rngs(k: int, call: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([7, call, i]) for i in range(k)]


def test_shares_are_contiguous_and_balanced() -> None:
    assert _shares(5, 2) == [slice(0, 2), slice(2, 5)]
    assert _shares(2, 4) == [slice(0, 1), slice(1, 2)]
    assert _shares(6, 1) == [slice(0, 6)]


def test_one_and_two_workers_sample_the_same_episodes() -> None:
    """AntDir (episodes that end early, at different steps in each worker): two worker processes
    and the in-process sampler give bit-identical batches, with theta shared by all tasks and
    with one stacked theta' per task; both advance the callers' generators alike."""
    k, e = 5, 2
    cls, spec, theta, tasks = _setup("metarl/AntDir-v0", k)
    noise = torch.Generator().manual_seed(1)
    stacked = {n: p.expand(k, *p.shape) + 0.01 * torch.randn(k, *p.shape, generator=noise)
               for n, p in theta.items()}  # fmt: skip
    outs: dict[int, list] = {}
    for workers in (1, 2):
        with SamplerPool(cls, workers, max_episode_steps=60) as pool:
            if workers == 2:
                assert pool.worker_torch_threads() == [1, 1]
                # Ctrl-C reaches the whole process group: the workers leave it to the trainer.
                for pid in pool._executor._processes:  # type: ignore[union-attr]
                    os.kill(pid, signal.SIGINT)
                    os.kill(pid, signal.SIGTERM)
            rngs = _rngs(k)
            outs[workers] = [pool.sample(spec, theta, tasks, e, rngs)]
            outs[workers].append(pool.sample(spec, stacked, tasks, e, rngs))  # advanced streams
            outs[workers].append([r.integers(2**32) for r in rngs])
    for (one, _), (two, _) in zip(outs[1][:2], outs[2][:2], strict=True):
        assert one.mask.shape == two.mask.shape and one.mask.shape[:2] == (k, e)
        for a, b in zip(one, two, strict=True):
            assert torch.equal(a, b)
        assert one.mask.shape[2] <= 60
        assert ((one.rewards != 0) <= (one.mask != 0)).all()  # zero where masked
    assert outs[1][2] == outs[2][2]
    assert not torch.equal(outs[1][0][0].observations, outs[1][1][0].observations)


@pytest.mark.parametrize("env_id", ["metarl/AntDir-v0", "metarl/ML1Reach-v3"])
def test_pool_episodes_are_the_in_process_samplers_per_task(env_id: str) -> None:
    """Each task's episodes are what ``sample_episodes_and_successes`` gives for that task alone
    (ML1 reach: success flags carried; AntDir: episodes that end early), zero where masked and
    padded to the longest."""
    if env_id not in envs.registered_families():
        pytest.skip(f"{env_id}'s extra is not installed")
    k, e = 3, 2
    cls, spec, theta, tasks = _setup(env_id, k)
    with SamplerPool(cls, 1, max_episode_steps=30) as pool:
        batch, successes = pool.sample(spec, theta, tasks, e, _rngs(k))
    assert (successes is not None) == cls.reports_success
    env = cls(e)
    env.max_episode_steps = 30  # type: ignore[misc]
    for i, (task, rng) in enumerate(zip(tasks, _rngs(k), strict=True)):
        alone, flags = sample_episodes_and_successes(env, spec, theta, [task], e, task_rngs=[rng])
        if successes is not None:
            assert flags is not None and (flags[0] == successes[i]).all()
        h = alone.mask.shape[2]
        assert (batch.mask[i, :, h:] == 0).all()
        keep = alone.mask[0] != 0
        for a, b in zip(alone, batch, strict=True):
            assert torch.equal(a[0][keep], b[i, :, :h][keep])


def test_a_training_run_is_the_same_with_one_or_two_sampler_workers(tmp_path: Path) -> None:
    """metarl train on AntDir (episodes ending early): --sampler-workers 1 (in process) and 2
    (worker processes) write bit-identical parameters; a cheap family gets no pool."""
    assert training_pool(envs.family("metarl/Navigation2D-v0").batched_cls, 2) is None
    params = []
    for workers in (1, 2):
        args = [
            "--env", "metarl/AntDir-v0", "--iterations", "2", "--meta-batch-size", "3",
            "--episodes-per-task", "2", "--max-episode-steps", "40", "--hidden-sizes", "8",
            "--threads", "1", "--sampler-workers", str(workers), "--no-progress",
            "--no-tensorboard", "--out", str(tmp_path / f"w{workers}"),
        ]  # fmt: skip
        params.append(train(config.resolve(args).config).params)
    assert params[0].keys() == params[1].keys()
    for name in params[0]:
        assert torch.equal(params[0][name], params[1][name]), name


@pytest.mark.slow
def test_torchrun_processes_with_their_own_sampler_workers(tmp_path: Path) -> None:
    """torchrun's 2 processes, each with 2 sampler workers for its share of AntDir's tasks,
    train bit-identically to the same 2 processes sampling in process, and sample the first
    meta-batch's episodes exactly as one process does (later iterations follow a theta that
    torchrun's all-reduce rounds differently, as tests/test_distributed.py allows)."""
    from tests.test_distributed import _train

    run = [
        "--env", "metarl/AntDir-v0", "--iterations", "2", "--seed", "3",
        "--meta-batch-size", "4", "--episodes-per-task", "2", "--max-episode-steps", "40",
        "--hidden-sizes", "8", "--threads", "1",
    ]  # fmt: skip
    one = _train(tmp_path / "one", 0, *run, "--sampler-workers", "1")
    two_in_process = _train(tmp_path / "two1", 2, *run, "--sampler-workers", "1")
    two_with_workers = _train(tmp_path / "two2", 2, *run, "--sampler-workers", "2")
    assert one[0]["pre_return"] == two_with_workers[0]["pre_return"]
    for key in ("pre_return", "post_return", "outer_loss"):
        assert [r[key] for r in two_in_process] == [r[key] for r in two_with_workers]
    a, b = load_checkpoint(tmp_path / "two1"), load_checkpoint(tmp_path / "two2")
    assert a.training["processes"] == b.training["processes"] == 2
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name]), name
