"""Vectorized rollouts: every episode of every task of a meta-batch in one batched env."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from metarl import policies
from metarl.envs.base import BatchedTaskEnv, Task
from metarl.inner_loop import EpisodeBatch
from metarl.policies import Params, PolicySpec


def sample_episodes(
    env: BatchedTaskEnv,
    spec: PolicySpec,
    params: Params,
    tasks: Sequence[Task],
    episodes_per_task: int,
    *,
    rng: np.random.Generator,
    generator: torch.Generator,
    deterministic: bool = False,
) -> EpisodeBatch:
    """Runs ``episodes_per_task`` episodes on each task, all at once.

    ``params`` are shared by all tasks, or stacked one per task. ``env`` must hold
    ``len(tasks) * episodes_per_task`` envs. The same ``rng`` and ``generator`` states give the
    same episodes.
    """
    k, e = len(tasks), episodes_per_task
    if env.num_envs != k * e:
        raise ValueError(f"env holds {env.num_envs} envs, need {k} tasks x {e} episodes = {k * e}")
    horizon = env.max_episode_steps
    env.set_tasks([task for task in tasks for _ in range(e)])
    obs = env.reset(rng)
    obs_buf = np.zeros((horizon, k * e, *obs.shape[1:]), dtype=np.float32)
    rew_buf = np.zeros((horizon, k * e), dtype=np.float32)
    mask_buf = np.zeros((horizon, k * e), dtype=np.float32)
    act_list: list[Tensor] = []
    alive = np.ones(k * e, dtype=bool)
    stacked = policies.stack(spec, params, k)
    with torch.no_grad():
        for t in range(horizon):
            obs_buf[t] = obs
            mask_buf[t] = alive
            obs_t = torch.from_numpy(obs).view(k, e, -1)
            actions, _ = policies.act(
                spec, stacked, obs_t, deterministic=deterministic, generator=generator
            )
            act_list.append(actions.reshape(k * e, *actions.shape[2:]))
            env_actions = actions.reshape(k * e, *actions.shape[2:]).numpy()
            if spec.distribution == "gaussian":
                space = env.action_space
                env_actions = np.clip(env_actions, space.low, space.high)  # type: ignore[attr-defined]
            obs, rewards, terminated = env.step(env_actions)
            rew_buf[t] = rewards * alive
            alive = alive & ~terminated
            if not alive.any():
                horizon = t + 1
                break
    acts = torch.stack(act_list)  # [H, K*E, ...]

    def to_batch(x: Tensor) -> Tensor:  # [H, K*E, ...] -> [K, E, H, ...]
        x = x[:horizon]
        return x.reshape(horizon, k, e, *x.shape[2:]).movedim(0, 2).contiguous()

    return EpisodeBatch(
        observations=to_batch(torch.from_numpy(obs_buf)),
        actions=to_batch(acts),
        rewards=to_batch(torch.from_numpy(rew_buf)),
        mask=to_batch(torch.from_numpy(mask_buf)),
    )


def episode_returns(batch: EpisodeBatch) -> Tensor:
    """Undiscounted return of each episode, ``[K, E]``."""
    return (batch.rewards * batch.mask).sum(-1)
