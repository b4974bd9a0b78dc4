"""Vectorized rollouts: every episode of every task of a meta-batch in one batched env.

Randomness comes either from one ``rng``/``generator`` pair for the whole batch, or from one
``numpy`` generator per task (``task_rngs``): then a task's episodes depend only on its own
stream, not on which other tasks share the batch. The trainer uses per-task streams so that
splitting a meta-batch's tasks over ``torchrun`` processes samples exactly the episodes a single
process would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from metarl.core import policies
from metarl.core.inner_loop import EpisodeBatch
from metarl.core.policies import Params, PolicySpec
from metarl.envs.base import BatchedTaskEnv, Task

# Seeds resets of families that cannot restart single envs: its draws are all overwritten.
_PLACEHOLDER_SEED = 0


def sample_episodes(
    env: BatchedTaskEnv,
    spec: PolicySpec,
    params: Params,
    tasks: Sequence[Task],
    episodes_per_task: int,
    *,
    rng: np.random.Generator | None = None,
    generator: torch.Generator | None = None,
    task_rngs: Sequence[np.random.Generator] | None = None,
    deterministic: bool = False,
) -> EpisodeBatch:
    """Runs ``episodes_per_task`` episodes on each task, all at once (the episodes of
    :func:`sample_episodes_and_successes`, without the success flags)."""
    batch, _ = sample_episodes_and_successes(
        env, spec, params, tasks, episodes_per_task,
        rng=rng, generator=generator, task_rngs=task_rngs, deterministic=deterministic,
    )  # fmt: skip
    return batch


def sample_episodes_and_successes(
    env: BatchedTaskEnv,
    spec: PolicySpec,
    params: Params,
    tasks: Sequence[Task],
    episodes_per_task: int,
    *,
    rng: np.random.Generator | None = None,
    generator: torch.Generator | None = None,
    task_rngs: Sequence[np.random.Generator] | None = None,
    deterministic: bool = False,
) -> tuple[EpisodeBatch, np.ndarray | None]:
    """Runs ``episodes_per_task`` episodes on each task, all at once; returns them and, for a
    family that reports success (``reports_success``), whether each episode succeeded
    (``[K, E]`` bools: the env's success flag was set at some step of the episode, Meta-World's
    protocol), else None.

    ``params`` are shared by all tasks, or stacked one per task. ``env`` must hold
    ``len(tasks) * episodes_per_task`` envs. Give either ``rng`` and ``generator`` (env resets and
    actions of the whole batch) or ``task_rngs`` (one generator per task, for its resets and
    actions; the family must implement ``reset_envs`` for resets to be per task too). The same
    generator states give the same episodes.
    """
    k, e = len(tasks), episodes_per_task
    if env.num_envs != k * e:
        raise ValueError(f"env holds {env.num_envs} envs, need {k} tasks x {e} episodes = {k * e}")
    if (task_rngs is None) == (rng is None or generator is None):
        raise ValueError("pass either rng and generator, or task_rngs")
    horizon = env.max_episode_steps
    env.set_tasks([task for task in tasks for _ in range(e)])
    noise: Tensor | None = None
    if task_rngs is not None:
        if len(task_rngs) != k:
            raise ValueError(f"need one generator per task: {k} tasks, {len(task_rngs)} given")
        obs = _reset_per_task(env, task_rngs, e)
        if not deterministic:  # [H, K, E, ...]: each task's draws from its own stream
            gens = [torch.Generator().manual_seed(int(r.integers(2**63))) for r in task_rngs]
            noise = torch.stack([policies.action_noise(spec, (horizon, e), g) for g in gens], 1)
    else:
        assert rng is not None
        obs = env.reset(rng)
    obs_buf = np.zeros((horizon, k * e, *obs.shape[1:]), dtype=np.float32)
    rew_buf = np.zeros((horizon, k * e), dtype=np.float32)
    mask_buf = np.zeros((horizon, k * e), dtype=np.float32)
    act_list: list[Tensor] = []
    alive = np.ones(k * e, dtype=bool)
    succeeded = np.zeros(k * e, dtype=bool) if getattr(env, "reports_success", False) else None
    stacked = policies.stack(spec, params, k)
    with torch.no_grad():
        for t in range(horizon):
            obs_buf[t] = obs
            mask_buf[t] = alive
            obs_t = torch.from_numpy(obs).view(k, e, -1)
            actions, _ = policies.act(
                spec,
                stacked,
                obs_t,
                deterministic=deterministic,
                generator=generator,
                noise=None if noise is None else noise[t],
            )
            act_list.append(actions.reshape(k * e, *actions.shape[2:]))
            env_actions = actions.reshape(k * e, *actions.shape[2:]).numpy()
            if spec.distribution == "gaussian":
                space = env.action_space
                env_actions = np.clip(env_actions, space.low, space.high)  # type: ignore[attr-defined]
            obs, rewards, terminated = env.step(env_actions)
            rew_buf[t] = rewards * alive
            if succeeded is not None:
                succeeded |= np.asarray(env.success, dtype=bool) & alive
            alive = alive & ~terminated
            if not alive.any():
                horizon = t + 1
                break
    acts = torch.stack(act_list)  # [H, K*E, ...]

    def to_batch(x: Tensor) -> Tensor:  # [H, K*E, ...] -> [K, E, H, ...]
        x = x[:horizon]
        return x.reshape(horizon, k, e, *x.shape[2:]).movedim(0, 2).contiguous()

    batch = EpisodeBatch(
        observations=to_batch(torch.from_numpy(obs_buf)),
        actions=to_batch(acts),
        rewards=to_batch(torch.from_numpy(rew_buf)),
        mask=to_batch(torch.from_numpy(mask_buf)),
    )
    return batch, None if succeeded is None else succeeded.reshape(k, e)


def with_horizon(env: BatchedTaskEnv, max_episode_steps: int | None) -> BatchedTaskEnv:
    """``env`` with its episodes cut at ``max_episode_steps`` (None: the family's own length).
    A shorter horizon than the family's (Meta-World's 500 steps) is a training and evaluation
    choice: it is saved in the checkpoint's ``training`` section and ``metarl eval`` uses it."""
    if max_episode_steps is not None:
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be at least 1, got {max_episode_steps}")
        env.max_episode_steps = max_episode_steps  # type: ignore[misc]
    return env


def _reset_per_task(
    env: BatchedTaskEnv, task_rngs: Sequence[np.random.Generator], episodes_per_task: int
) -> np.ndarray:
    """Resets every env, drawing task ``i``'s initial states from ``task_rngs[i]``."""
    if not env.supports_partial_reset():
        # One stream for the batch, seeded by all tasks' streams: reproducible, but a task's
        # initial states then depend on the other tasks of the batch.
        seeds = [int(r.integers(2**63)) for r in task_rngs]
        return env.reset(np.random.default_rng(seeds))
    obs = env.reset(np.random.default_rng(_PLACEHOLDER_SEED))
    mask = np.zeros(env.num_envs, dtype=bool)
    for i, task_rng in enumerate(task_rngs):
        mask[:] = False
        mask[i * episodes_per_task : (i + 1) * episodes_per_task] = True
        obs = env.reset_envs(mask, task_rng)
    return obs


def episode_returns(batch: EpisodeBatch) -> Tensor:
    """Undiscounted return of each episode, ``[K, E]``."""
    return (batch.rewards * batch.mask).sum(-1)
