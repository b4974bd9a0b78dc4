"""Sampling in worker processes: whole rollouts per worker, for families whose step is expensive.

A MuJoCo or Meta-World step costs 0.1-0.5 ms of physics in Python, so one process sampling a
meta-batch leaves the other cores idle. :class:`SamplerPool` splits a meta-batch's tasks into
contiguous shares, one per worker process; each worker steps its share's envs (every episode of
each of its tasks, batched as :func:`metarl.core.sampling.sample_episodes` does) from start to end
with the policy parameters it was sent once per call, and sends back the episodes. Per-step
messages (gymnasium's ``AsyncVectorEnv``) cost more than a step's physics; one message per share
and call does not (``benchmarks/sampler_speed.py`` measures both, in CPU time too).

The same per-task random streams (``task_rngs``) give the same episodes whatever the number of
workers: a task's resets and action noise come from its own stream, and each task's policy
forward pass is its own product on fresh tensors (a row's float result can depend on the batch's
shape and on where its operands sit in memory). Episodes are returned in one canonical form:
padded to the longest episode of the whole call and zero wherever the mask is zero (the
in-process sampler keeps stepping finished episodes and records what they do; nothing reads it,
but a share that ended early would not have it). So a run with ``--sampler-workers 1`` (which
samples in the calling process, no pool) and one with N workers are bit-identical
(``tests/test_sampler_pool.py``).

Workers are spawned (not forked: the parent's torch threads do not survive a fork) and run torch
with one thread each. Under ``torchrun`` each process has its own pool for its own share of the
meta-batch's tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import signal
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metarl.core import policies
from metarl.core.inner_loop import EpisodeBatch
from metarl.core.policies import Params, PolicySpec
from metarl.core.sampling import sample_episodes, sample_episodes_and_successes
from metarl.envs.base import BatchedTaskEnv, Task

_ENVS: dict[tuple[type[BatchedTaskEnv], int, int], BatchedTaskEnv] = {}
"""Each process's batched envs, kept across calls: (family, envs, horizon) -> env."""


def default_workers(processes_per_machine: int = 1) -> int:
    """The cores this process may use, shared among ``processes_per_machine`` (torchrun's local
    processes): at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes_per_machine))


@dataclass(frozen=True)
class _Share:
    """One worker's part of a call: what it needs to sample its tasks' episodes."""

    batched_cls: type[BatchedTaskEnv]
    horizon: int
    spec: PolicySpec
    params: dict[str, np.ndarray]
    stacked: bool
    tasks: list[Task]
    episodes_per_task: int
    task_rngs: list[np.random.Generator]
    deterministic: bool


@dataclass(frozen=True)
class _Result:
    arrays: dict[str, np.ndarray]  # EpisodeBatch fields, [K_share, E, H_share, ...]
    successes: np.ndarray | None
    rng_states: list[dict[str, Any]]


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _init_worker() -> None:
    torch.set_num_threads(1)
    # Ctrl-C and a process group's SIGTERM are the trainer's to handle (it stops at its next
    # safe point and then shuts the pool down); a worker that died of them would break the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Ctrl-C in a terminal (or a scheduler's SIGTERM to the job's process group) reaches the
    # workers too: the trainer alone decides when to stop (at its next safe point, saving), then
    # shuts the pool down; a worker that died of it would break the sampling the save waits for.
    # A worker starts with them blocked (_spawning), so none is lost to it before this point.
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def _spawning() -> Iterator[None]:
    """Submits to the pool, which starts its workers on demand: they inherit this thread's
    blocked SIGINT / SIGTERM until :func:`_init_worker` ignores them (one that arrives here in
    the meantime is handled right after)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _env(batched_cls: type[BatchedTaskEnv], num_envs: int, horizon: int) -> BatchedTaskEnv:
    key = (batched_cls, num_envs, horizon)
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = batched_cls(num_envs)
        if horizon != batched_cls.max_episode_steps:
            env.max_episode_steps = horizon  # type: ignore[misc]
    return env


def _sample_share(share: _Share) -> list[_Result]:
    """The share's episodes, all its tasks' envs stepped together, each task's policy forward
    pass computed for that task alone: a row's float result in a batched product can depend on
    the batch's shape and on its operands' place in memory, so this keeps a task's actions the
    same whichever tasks share its worker (every expensive family restarts single envs; any
    other is sampled one task at a time)."""
    k, e = len(share.tasks), share.episodes_per_task
    if not share.batched_cls.supports_partial_reset():
        return [_sample_alone(_one_task(share, i)) for i in range(k)]
    env = _env(share.batched_cls, k * e, share.horizon)
    horizon = env.max_episode_steps
    env.set_tasks([task for task in share.tasks for _ in range(e)])
    obs = env.reset(np.random.default_rng(0))  # every env restarted below from its own stream
    restart = np.zeros(k * e, dtype=bool)
    for i, rng in enumerate(share.task_rngs):  # as sample_episodes draws: resets, then noise
        restart[:] = False
        restart[i * e : (i + 1) * e] = True
        obs = env.reset_envs(restart, rng)
    noise = [
        None
        if share.deterministic
        else policies.action_noise(
            share.spec, (horizon, e), torch.Generator().manual_seed(int(r.integers(2**63)))
        )
        for r in share.task_rngs
    ]
    # Each task's operands are fresh torch allocations (obs cloned below): a product's float
    # result can also depend on where its operands start in memory.
    params = [
        {n: torch.tensor(p[i : i + 1]) for n, p in share.params.items()}
        if share.stacked
        else policies.stack(
            share.spec, {n: torch.from_numpy(p) for n, p in share.params.items()}, 1
        )
        for i in range(k)
    ]
    obs_buf = np.zeros((horizon, k * e, *obs.shape[1:]), dtype=np.float32)
    rew_buf = np.zeros((horizon, k * e), dtype=np.float32)
    mask_buf = np.zeros((horizon, k * e), dtype=np.float32)
    act_list: list[torch.Tensor] = []
    alive = np.ones(k * e, dtype=bool)
    succeeded = np.zeros(k * e, dtype=bool) if env.reports_success else None
    steps = horizon
    with torch.no_grad():
        for t in range(horizon):
            obs_buf[t] = obs
            mask_buf[t] = alive
            obs_t = torch.from_numpy(obs).view(k, e, -1)
            actions = torch.cat(
                [
                    policies.act(
                        share.spec, params[i], obs_t[i : i + 1].clone(),
                        deterministic=share.deterministic,
                        noise=None if noise[i] is None else noise[i][t].unsqueeze(0),  # type: ignore[index]
                    )[0]
                    for i in range(k)
                ]
            )  # fmt: skip
            act_list.append(actions.reshape(k * e, *actions.shape[2:]))
            env_actions = actions.reshape(k * e, *actions.shape[2:]).numpy()
            if share.spec.distribution == "gaussian":
                space = env.action_space
                env_actions = np.clip(env_actions, space.low, space.high)  # type: ignore[attr-defined]
            obs, rewards, terminated = env.step(env_actions)
            rew_buf[t] = rewards * alive
            if succeeded is not None:
                succeeded |= env.success & alive
            alive = alive & ~terminated
            if not alive.any():
                steps = t + 1
                break
    acts = torch.stack(act_list).numpy()
    bufs = {"observations": obs_buf, "actions": acts, "rewards": rew_buf, "mask": mask_buf}
    results = []
    for i, rng in enumerate(share.task_rngs):
        rows = slice(i * e, (i + 1) * e)
        results.append(
            _Result(  # [H, E, ...] -> [1, E, H, ...]
                arrays={
                    name: np.moveaxis(buf[:steps, rows], 0, 1)[None].copy()
                    for name, buf in bufs.items()
                },
                successes=None if succeeded is None else succeeded[rows][None].copy(),
                rng_states=[dict(rng.bit_generator.state)],
            )
        )
    return results


def _one_task(share: _Share, i: int) -> _Share:
    params = {n: p[i : i + 1] for n, p in share.params.items()} if share.stacked else share.params
    return dataclasses.replace(
        share, params=params, tasks=share.tasks[i : i + 1], task_rngs=share.task_rngs[i : i + 1]
    )


def _sample_alone(share: _Share) -> _Result:
    """One task's episodes by ``sample_episodes_and_successes`` (families that cannot restart
    single envs, whose resets then come from the task's stream alone)."""
    env = _env(share.batched_cls, share.episodes_per_task, share.horizon)
    params = {n: torch.from_numpy(p) for n, p in share.params.items()}
    batch, successes = sample_episodes_and_successes(
        env, share.spec, params, share.tasks, share.episodes_per_task,
        task_rngs=share.task_rngs, deterministic=share.deterministic,
    )  # fmt: skip
    return _Result(
        arrays={name: getattr(batch, name).numpy() for name in EpisodeBatch._fields},
        successes=successes,
        rng_states=[dict(share.task_rngs[0].bit_generator.state)],
    )


def _shares(num_tasks: int, workers: int) -> list[slice]:
    """Contiguous shares of ``num_tasks`` for up to ``workers`` workers, sizes within one."""
    n = min(workers, num_tasks)
    bounds = [num_tasks * i // n for i in range(n + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _canonical(results: Sequence[_Result]) -> tuple[EpisodeBatch, np.ndarray | None]:
    """The shares' episodes as one batch: padded to the longest, zero where masked."""
    horizon = max(r.arrays["mask"].shape[2] for r in results)
    fields: dict[str, torch.Tensor] = {}
    for name in EpisodeBatch._fields:
        parts = []
        for r in results:
            x, mask = r.arrays[name], r.arrays["mask"]
            pad = [(0, 0)] * x.ndim
            pad[2] = (0, horizon - x.shape[2])
            keep = mask.reshape(*mask.shape, *([1] * (x.ndim - 3))) != 0
            parts.append(np.pad(np.where(keep, x, np.zeros((), x.dtype)), pad))
        fields[name] = torch.from_numpy(np.concatenate(parts))
    flags = [r.successes for r in results if r.successes is not None]
    successes = np.concatenate(flags) if len(flags) == len(results) else None
    return EpisodeBatch(**fields), successes


class SamplerPool:
    """Samples a call's episodes in ``workers`` processes (1: in this process, no pool).

    Use it as a context manager, or call :meth:`close`. ``max_episode_steps`` cuts every
    episode at that many steps (None: the family's own length)."""

    def __init__(
        self,
        batched_cls: type[BatchedTaskEnv],
        workers: int,
        max_episode_steps: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"--sampler-workers must be at least 1, got {workers}")
        self.batched_cls = batched_cls
        self.workers = workers
        self.horizon = max_episode_steps or batched_cls.max_episode_steps
        self._executor: ProcessPoolExecutor | None = None
        if workers > 1:
            self._executor = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
            )
            # Also when an owner forgets close(): the workers go with the pool object.
            weakref.finalize(self, self._executor.shutdown, cancel_futures=True)

    def sample(
        self,
        spec: PolicySpec,
        params: Params,
        tasks: Sequence[Task],
        episodes_per_task: int,
        task_rngs: Sequence[np.random.Generator],
        *,
        deterministic: bool = False,
    ) -> tuple[EpisodeBatch, np.ndarray | None]:
        """``episodes_per_task`` episodes on each task, and each episode's success flag (a family
        that reports success; else None), as :func:`sample_episodes_and_successes` with
        ``task_rngs`` samples them (masked entries zero). ``params`` are shared by all tasks or
        stacked one per task; the generators in ``task_rngs`` advance as if sampled here."""
        if len(task_rngs) != len(tasks):
            raise ValueError(f"need one generator per task: {len(tasks)} tasks, {len(task_rngs)}")
        stacked = policies.is_stacked(spec, params)
        arrays = {name: p.detach().contiguous().numpy() for name, p in params.items()}
        shares = [
            _Share(
                self.batched_cls,
                self.horizon,
                spec,
                {n: a[s] for n, a in arrays.items()} if stacked else arrays,
                stacked,
                list(tasks[s]),
                episodes_per_task,
                list(task_rngs[s]),
                deterministic,
            )
            for s in _shares(len(tasks), self.workers)
        ]
        if self._executor is None:
            per_share = [_sample_share(share) for share in shares]
        else:
            with _spawning():
                futures = [self._executor.submit(_sample_share, share) for share in shares]
            per_share = [future.result() for future in futures]
        results = [r for share_results in per_share for r in share_results]
        for rng, result in zip(task_rngs, results, strict=True):
            rng.bit_generator.state = result.rng_states[0]  # the caller's generators, advanced
        return _canonical(results)

    def worker_torch_threads(self) -> list[int]:
        """``torch.get_num_threads()`` as the workers see it (this process's with no pool)."""
        if self._executor is None:
            return [torch.get_num_threads()]
        with _spawning():
            futures = [self._executor.submit(torch.get_num_threads) for _ in range(self.workers)]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def __enter__(self) -> SamplerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def training_pool(
    batched_cls: type[BatchedTaskEnv],
    workers: int,
    local_processes: int = 1,
    max_episode_steps: int | None = None,
) -> SamplerPool | None:
    """The pool ``metarl train`` samples with: for a family whose step is expensive
    (``expensive_step``), ``workers`` processes (0: :func:`default_workers` for
    ``local_processes`` torchrun processes; 1: in this process); None for other families, which
    :func:`sample` then samples in this process as before."""
    if workers < 0:
        raise ValueError(f"--sampler-workers must be 0 (the cores) or more, got {workers}")
    if not batched_cls.expensive_step:
        return None
    return SamplerPool(batched_cls, workers or default_workers(local_processes), max_episode_steps)


def sample(
    pool: SamplerPool | None,
    env: BatchedTaskEnv,
    spec: PolicySpec,
    params: Params,
    tasks: Sequence[Task],
    episodes_per_task: int,
    task_rngs: Sequence[np.random.Generator],
) -> EpisodeBatch:
    """``sample_episodes(env, ...)`` with ``task_rngs``, or the pool's episodes if there is one."""
    if pool is None:
        return sample_episodes(env, spec, params, tasks, episodes_per_task, task_rngs=task_rngs)
    return pool.sample(spec, params, tasks, episodes_per_task, task_rngs)[0]
