"""Pendulum swing-up as a task family: gymnasium's ``Pendulum-v1`` with varying physics.

The dynamics, observation (cos θ, sin θ, θ̇), torque limit (2), speed limit (8), time step (0.05),
reward ``-(θ² + 0.1 θ̇² + 0.001 u²)`` (θ normalized to [-π, π]) and 200-step episodes are
gymnasium's; each task sets the pole's ``mass``, ``length`` and ``gravity`` (gymnasium's task is
mass 1, length 1, gravity 10). Heavy, long poles under strong gravity need a swing the light ones
do not, so the best torque schedule differs from task to task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from metarl_envs.base import BatchedTaskEnv, Task, TaskFamilyEnv

MAX_SPEED = 8.0
MAX_TORQUE = 2.0
DT = 0.05

# Task distribution: (low, high) per physics parameter, uniform.
TASK_RANGES: dict[str, tuple[float, float]] = {
    "mass": (0.5, 1.5),
    "length": (0.5, 1.5),
    "gravity": (5.0, 15.0),
}
TASK_KEYS = tuple(TASK_RANGES)
_HIGH = np.array([1.0, 1.0, MAX_SPEED], dtype=np.float32)


def _angle_normalize(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return ((x + np.pi) % (2 * np.pi)) - np.pi


class BatchedPendulumFamily(BatchedTaskEnv):
    observation_space = gym.spaces.Box(-_HIGH, _HIGH, dtype=np.float32)
    action_space = gym.spaces.Box(-MAX_TORQUE, MAX_TORQUE, shape=(1,), dtype=np.float32)
    max_episode_steps = 200

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        self._params = np.ones((len(TASK_KEYS), num_envs))
        self._state = np.zeros((num_envs, 2))  # theta, theta_dot

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        lows = np.array([lo for lo, _ in TASK_RANGES.values()])
        highs = np.array([hi for _, hi in TASK_RANGES.values()])
        draws = rng.uniform(lows, highs, size=(num_tasks, len(TASK_KEYS)))
        return [{k: float(v) for k, v in zip(TASK_KEYS, row, strict=True)} for row in draws]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        self.validate_tasks(tasks, TASK_KEYS)
        params = np.array([[t[k] for t in tasks] for k in TASK_KEYS], dtype=np.float64)
        if (params <= 0).any():
            raise ValueError(f"mass, length and gravity must be positive, got {list(tasks)}")
        self._params = params
        self.tasks = [dict(t) for t in tasks]

    def _obs(self) -> NDArray[np.float32]:
        theta, theta_dot = self._state.T
        return np.stack([np.cos(theta), np.sin(theta), theta_dot], axis=1).astype(np.float32)

    def _initial(self, n: int, rng: np.random.Generator) -> NDArray[np.float64]:
        return rng.uniform([-np.pi, -1.0], [np.pi, 1.0], size=(n, 2))  # gymnasium's reset

    def reset(self, rng: np.random.Generator) -> NDArray[np.float32]:
        if not self.tasks:
            raise RuntimeError("set_tasks() before reset()")
        self._state = self._initial(self.num_envs, rng)
        return self._obs()

    def reset_envs(self, mask: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.float32]:
        mask = np.asarray(mask, dtype=bool)
        self._state[mask] = self._initial(int(mask.sum()), rng)
        return self._obs()

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        mass, length, gravity = self._params
        theta, theta_dot = self._state.T
        u = np.clip(
            np.asarray(actions, dtype=np.float64).reshape(self.num_envs), -MAX_TORQUE, MAX_TORQUE
        )
        costs = _angle_normalize(theta) ** 2 + 0.1 * theta_dot**2 + 0.001 * u**2
        theta_dot = (
            theta_dot
            + (3 * gravity / (2 * length) * np.sin(theta) + 3.0 / (mass * length**2) * u) * DT
        )
        theta_dot = np.clip(theta_dot, -MAX_SPEED, MAX_SPEED)
        theta = theta + theta_dot * DT
        self._state = np.stack([theta, theta_dot], axis=1)
        return self._obs(), (-costs).astype(np.float32), np.zeros(self.num_envs, dtype=bool)


class PendulumFamilyEnv(TaskFamilyEnv):
    """``metarl/PendulumFamily-v0``: one pendulum (mass, length, gravity) as a gymnasium env."""

    batched_cls = BatchedPendulumFamily
