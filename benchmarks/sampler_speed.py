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
actually simulated (episodes ended early by termination count their real length). The samplers
are timed in interleaved rounds, so a shared machine's changing load falls on all alike; ratios
are against ``SamplerPool, 1 worker`` of the same run. Beside steps per second, the CPU seconds
per 1000 steps of all the sampler's processes (this one and its workers, from /proc): what the
sampler costs whatever the other load, where wall-clock speed-ups need idle cores.
"""

from __future__ import annotations

import argparse
import os
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


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process and of the processes ``pids`` so far."""
    total = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:  # Linux; fields 14, 15: utime, stime in ticks
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _steps(mask: torch.Tensor) -> int:
    return int(mask.sum().item())


class _VectorSampler:
    """gymnasium's vector env over ``len(tasks)`` envs, stepped with the policy's actions."""

    def __init__(self, env_id: str, tasks: list[dict[str, float]], asynchronous: bool,
                 horizon: int) -> None:  # fmt: skip
        fns = [(lambda t=t: gym.make(env_id, task=t, max_episode_steps=horizon)) for t in tasks]
        self.vec: gym.vector.VectorEnv = (
            gym.vector.AsyncVectorEnv(fns) if asynchronous else gym.vector.SyncVectorEnv(fns)
        )
        self.cls = envs.family(env_id).batched_cls
        self.spec, theta = _policy(self.cls)
        self.stacked = policies.stack(self.spec, theta, 1)
        self.gen = torch.Generator().manual_seed(0)
        self.obs, _ = self.vec.reset(seed=0)
        self.n = len(tasks)

    def run(self, steps: int) -> int:
        low, high = self.cls.action_space.low, self.cls.action_space.high
        rounds = max(1, steps // self.n)
        with torch.no_grad():
            for _ in range(rounds):
                obs_t = torch.as_tensor(np.asarray(self.obs, dtype=np.float32)).view(1, self.n, -1)
                actions, _ = policies.act(self.spec, self.stacked, obs_t, generator=self.gen)
                self.obs, *_ = self.vec.step(np.clip(actions[0].numpy(), low, high))
        return rounds * self.n


def measure(env_id: str, args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """Every sampler built first, then timed in interleaved rounds (one call each per round), so
    that a shared machine's changing load falls on all of them alike."""
    cls = envs.family(env_id).batched_cls
    horizon = args.horizon or cls.max_episode_steps
    spec, theta = _policy(cls)
    k, e = args.tasks, args.episodes
    tasks = cls.sample_tasks(k, np.random.default_rng(0))
    n = args.workers
    calls = [0]

    def rngs() -> list[np.random.Generator]:
        calls[0] += 1
        return [np.random.default_rng([calls[0], i]) for i in range(k)]

    env = cls(k * e)
    env.max_episode_steps = horizon
    pools = {w: SamplerPool(cls, w, horizon) for w in (1, n)}
    started = time.perf_counter()
    for pool in pools.values():
        pool.sample(spec, theta, tasks, e, rngs())  # start the workers, build their envs
    print(f"  ({env_id}: starting the pools and their envs took "
          f"{time.perf_counter() - started:.1f} s, once per run)")  # fmt: skip
    vec_tasks = cls.sample_tasks(n, np.random.default_rng(1))
    budget = k * e * min(horizon, 100)
    sync = _VectorSampler(env_id, vec_tasks, False, horizon)
    asyn = _VectorSampler(env_id, vec_tasks, True, horizon)
    samplers: dict[str, tuple[Any, list[int]]] = {  # name: (one call -> steps, worker pids)
        "metarl batched, 1 process": (
            lambda: _steps(sample_episodes(env, spec, theta, tasks, e, task_rngs=rngs()).mask),
            [],
        ),
        "metarl SamplerPool, 1 worker": (
            lambda: _steps(pools[1].sample(spec, theta, tasks, e, rngs())[0].mask),
            [],
        ),
        f"metarl SamplerPool, {n} workers": (
            lambda: _steps(pools[n].sample(spec, theta, tasks, e, rngs())[0].mask),
            list(pools[n]._executor._processes) if pools[n]._executor else [],  # type: ignore[union-attr]
        ),
        f"gymnasium SyncVectorEnv, {n} envs": (lambda: sync.run(budget), []),
        f"gymnasium AsyncVectorEnv, {n} envs/processes": (
            lambda: asyn.run(budget),
            [p.pid for p in asyn.vec.processes],  # type: ignore[attr-defined]
        ),
    }
    totals = {name: [0, 0.0, 0.0] for name in samplers}
    for _ in range(args.repeats):
        for name, (run, pids) in samplers.items():
            cpu, start = _cpu_seconds(pids), time.perf_counter()
            totals[name][0] += run()
            totals[name][1] += time.perf_counter() - start
            totals[name][2] += _cpu_seconds(pids) - cpu
    for pool in pools.values():
        pool.close()
    sync.vec.close()
    asyn.vec.close()
    return [(name, steps / wall, 1000 * cpu / steps) for name, (steps, wall, cpu) in totals.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["metarl/AntDir-v0", "metarl/ML1Reach-v3"])
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task")
    parser.add_argument("--horizon", type=int, default=0, help="0: the family's episode length")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.tasks} tasks x {args.episodes} episodes per call, {args.repeats} rounds timed, "
          f"N = {args.workers} workers; env steps per second (policy included):")  # fmt: skip
    for env_id in args.families:
        load = os.getloadavg()[0]
        rows = measure(env_id, args)
        base = next(rate for name, rate, _ in rows if name == "metarl SamplerPool, 1 worker")
        print(f"\n{env_id}  (load average before: {load:.1f} on {os.cpu_count()} cores)")
        header = f"  {'sampler':<44} {'steps/s':>9}  {'ratio':>5}"
        print(header + "  CPU s per 1000 steps (all its processes)")
        for name, rate, cpu in rows:
            print(f"  {name:<44} {rate:>9,.0f}  {rate / base:5.2f}x  {cpu:.3f}")


if __name__ == "__main__":
    main()
