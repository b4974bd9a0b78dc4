"""Sampling speed of the expensive families: env steps per second (policy forward passes included)
of metarl's samplers against gymnasium's SyncVectorEnv and AsyncVectorEnv, in the same run.

    .venv/bin/python benchmarks/sampler_speed.py                       # AntDir and ML1 reach
    .venv/bin/python benchmarks/sampler_speed.py --families metarl/HalfCheetahDir-v0 --workers 2

Per family, each sampler collects episodes with the same 64-64 tanh Gaussian policy (torch, one
thread per process), actions from its forward pass at every step:

* ``gymnasium SyncVectorEnv``: ``N`` gymnasium envs (``gym.make(id, task=...)``) in this process,
  one forward pass for all of them per step;
* ``gymnasium AsyncVectorEnv``: the same ``N`` envs, one process each (gymnasium's design: a
  pipe message per env and step);
* ``metarl batched, 1 process``: ``sample_episodes``, every task x episode of the meta-batch in one
  batched env;
* ``metarl SamplerPool, 1 worker`` / ``N workers``: ``metarl.training.parallel_sampling``, whole
  rollouts per worker process, one message per worker and call (the pool is started and warmed
  before timing; its start is printed apart).

``N`` is ``--workers`` (default: the cores this process may use). Steps counted are env steps
actually simulated (episodes ended early by termination count their real length). Ratios are
against ``SamplerPool, 1 worker`` of the same run.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl import envs
from metarl.core import policies
from metarl.core.sampling import sample_episodes
from metarl.training.parallel_sampling import SamplerPool, default_workers

warnings.filterwarnings("ignore", message=".*maximum and minimum values are equal")


def _policy(cls: Any) -> tuple[policies.PolicySpec, policies.Params]:
    spec = policies.PolicySpec.for_spaces(
        cls.observation_space, cls.action_space, hidden_sizes=(64, 64), activation="tanh"
    )
    return spec, policies.init_params(spec, torch.Generator().manual_seed(0))


def _vector_env_rate(
    env_id: str, tasks: list[dict[str, float]], steps: int, asynchronous: bool, horizon: int
) -> float:
    """Env steps per second of gymnasium's vector env over ``len(tasks)`` envs."""
    fns = [(lambda t=t: gym.make(env_id, task=t, max_episode_steps=horizon)) for t in tasks]
    vec: gym.vector.VectorEnv = (
        gym.vector.AsyncVectorEnv(fns) if asynchronous else gym.vector.SyncVectorEnv(fns)
    )
    cls = envs.family(env_id).batched_cls
    spec, theta = _policy(cls)
    stacked = policies.stack(spec, theta, 1)
    gen = torch.Generator().manual_seed(0)
    obs, _ = vec.reset(seed=0)
    low, high = cls.action_space.low, cls.action_space.high
    rounds = max(1, steps // len(tasks))
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(rounds):
            obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32)).view(1, len(tasks), -1)
            actions, _ = policies.act(spec, stacked, obs_t, generator=gen)
            obs, *_ = vec.step(np.clip(actions[0].numpy(), low, high))
    rate = rounds * len(tasks) / (time.perf_counter() - start)
    vec.close()
    return rate


def _steps(mask: torch.Tensor) -> int:
    return int(mask.sum().item())


def measure(env_id: str, args: argparse.Namespace) -> list[tuple[str, float]]:
    cls = envs.family(env_id).batched_cls
    horizon = args.horizon or cls.max_episode_steps
    spec, theta = _policy(cls)
    k, e = args.tasks, args.episodes
    tasks = cls.sample_tasks(k, np.random.default_rng(0))
    rows: list[tuple[str, float]] = []

    def rngs(call: int) -> list[np.random.Generator]:
        return [np.random.default_rng([call, i]) for i in range(k)]

    env = cls(k * e)
    env.max_episode_steps = horizon
    sample_episodes(env, spec, theta, tasks, e, task_rngs=rngs(0))  # warm-up
    start, steps = time.perf_counter(), 0
    for call in range(args.repeats):
        steps += _steps(sample_episodes(env, spec, theta, tasks, e, task_rngs=rngs(call)).mask)
    rows.append(("metarl batched, 1 process", steps / (time.perf_counter() - start)))

    for workers in (1, args.workers):
        started = time.perf_counter()
        with SamplerPool(cls, workers, horizon) as pool:
            pool.sample(spec, theta, tasks, e, rngs(0))  # start the workers, build their envs
            if workers > 1:
                print(f"  ({env_id}: starting {workers} workers and their envs took "
                      f"{time.perf_counter() - started:.1f} s, once per run)")  # fmt: skip
            start, steps = time.perf_counter(), 0
            for call in range(args.repeats):
                batch, _ = pool.sample(spec, theta, tasks, e, rngs(call))
                steps += _steps(batch.mask)
            rate = steps / (time.perf_counter() - start)
        rows.append((f"metarl SamplerPool, {workers} worker{'s' if workers > 1 else ''}", rate))

    n = args.workers
    vec_tasks = cls.sample_tasks(n, np.random.default_rng(1))
    budget = args.repeats * k * e * min(horizon, 100)
    rows.append((f"gymnasium SyncVectorEnv, {n} envs", _vector_env_rate(
        env_id, vec_tasks, budget, False, horizon)))  # fmt: skip
    rows.append((f"gymnasium AsyncVectorEnv, {n} envs/processes", _vector_env_rate(
        env_id, vec_tasks, budget, True, horizon)))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["metarl/AntDir-v0", "metarl/ML1Reach-v3"])
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task")
    parser.add_argument("--horizon", type=int, default=0, help="0: the family's episode length")
    parser.add_argument("--repeats", type=int, default=2, help="timed sampling calls")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.tasks} tasks x {args.episodes} episodes per call, {args.repeats} calls timed, "
          f"N = {args.workers} workers; env steps per second (policy included):")  # fmt: skip
    for env_id in args.families:
        rows = measure(env_id, args)
        base = dict(rows)["metarl SamplerPool, 1 worker"]
        print(f"\n{env_id}")
        for name, rate in rows:
            print(f"  {name:<44} {rate:>9,.0f} steps/s  {rate / base:5.2f}x")


if __name__ == "__main__":
    main()
