"""2D navigation, the MAML paper's point-robot family (Finn et al. 2017, section 5.2).

A point starts at the origin and must reach a goal drawn uniformly from [-0.5, 0.5]^2. The
observation is its position, the action a velocity that is clipped to [-0.1, 0.1] per axis and
added to the position, the reward the negative L2 distance to the goal after the move. Episodes
last 100 steps and end early (terminated) once the point is within 0.01 of the goal on both axes
(the box ``|dx|, |dy| < 0.01`` of the MAML authors' point env and of pytorch-maml-rl, not a disc).
The goal is not observed: a policy learns where it is from the rewards of a few episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from metarl_envs.base import BatchedTaskEnv, Task, TaskFamilyEnv

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_SPEED = 0.1
GOAL_TOLERANCE = 0.01  # per axis
TASK_KEYS = ("goal_x", "goal_y")


class BatchedNavigation2D(BatchedTaskEnv):
    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
    max_episode_steps = 100

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        self._goals = np.zeros((num_envs, 2))
        self._pos = np.zeros((num_envs, 2))

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        goals = rng.uniform(GOAL_LOW, GOAL_HIGH, size=(num_tasks, 2))
        return [{"goal_x": float(x), "goal_y": float(y)} for x, y in goals]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        self.validate_tasks(tasks, TASK_KEYS)
        self._goals = np.array([[t["goal_x"], t["goal_y"]] for t in tasks], dtype=np.float64)
        self.tasks = [dict(t) for t in tasks]

    def reset(self, rng: np.random.Generator) -> NDArray[np.float32]:
        if not self.tasks:
            raise RuntimeError("set_tasks() before reset()")
        self._pos = np.zeros((self.num_envs, 2))
        return self._pos.astype(np.float32)

    def reset_envs(self, mask: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.float32]:
        self._pos[np.asarray(mask, dtype=bool)] = 0.0
        return self._pos.astype(np.float32)

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        velocity = np.clip(
            np.asarray(actions, dtype=np.float64).reshape(self.num_envs, 2), -MAX_SPEED, MAX_SPEED
        )
        self._pos = self._pos + velocity
        offset = self._pos - self._goals
        distance = np.linalg.norm(offset, axis=1)
        reached = np.all(np.abs(offset) < GOAL_TOLERANCE, axis=1)
        return self._pos.astype(np.float32), (-distance).astype(np.float32), reached


class Navigation2DEnv(TaskFamilyEnv):
    """``metarl/Navigation2D-v0``: one 2D-navigation task (a goal) as a gymnasium env."""

    batched_cls = BatchedNavigation2D
