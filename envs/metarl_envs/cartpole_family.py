"""CartPole as a task family (the founding note's environment, made to need adaptation).

Tasks vary the physics (pole mass and length, cart mass, motor force) and the *motor polarity*:
on half the tasks action 1 pushes the cart left instead of right. A memoryless policy cannot see
the polarity, so no single policy balances the pole on every task: the meta-policy has to learn
from a few episodes which way its motor is wired. Reward is +1 per step the pole stays up, for at
most 200 steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from metarl_envs.base import BatchedTaskEnv, Task, TaskFamilyEnv

GRAVITY = 9.8
TAU = 0.02
THETA_LIMIT = 12 * 2 * math.pi / 360
X_LIMIT = 2.4
_HIGH = np.array([X_LIMIT * 2, np.inf, THETA_LIMIT * 2, np.inf], dtype=np.float32)

# Task distribution: (low, high) per physics parameter, uniform.
TASK_RANGES: dict[str, tuple[float, float]] = {
    "masscart": (0.5, 2.0),
    "masspole": (0.05, 0.5),
    "length": (0.25, 1.0),  # half the pole's length, as in gymnasium's CartPole
    "force_mag": (5.0, 15.0),
}
TASK_KEYS = (*TASK_RANGES, "polarity")


class BatchedCartPoleFamily(BatchedTaskEnv):
    observation_space = gym.spaces.Box(-_HIGH, _HIGH, dtype=np.float32)
    action_space = gym.spaces.Discrete(2)
    max_episode_steps = 200

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        self._params = np.zeros((len(TASK_KEYS), num_envs))
        self._state = np.zeros((num_envs, 4))

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        tasks = []
        for _ in range(num_tasks):
            task = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in TASK_RANGES.items()}
            task["polarity"] = float(rng.choice([-1.0, 1.0]))
            tasks.append(task)
        return tasks

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        for task in tasks:
            missing = set(TASK_KEYS) - set(task)
            if missing:
                raise ValueError(f"task {task} lacks {sorted(missing)}; tasks need {TASK_KEYS}")
            if task["polarity"] not in (-1.0, 1.0):
                raise ValueError(f"polarity must be -1 or 1, got {task['polarity']}")
        self._params = np.array([[t[k] for t in tasks] for k in TASK_KEYS], dtype=np.float64)
        self.tasks = [dict(t) for t in tasks]

    def reset(self, rng: np.random.Generator) -> NDArray[np.float32]:
        if not self.tasks:
            raise RuntimeError("set_tasks() before reset()")
        self._state = rng.uniform(-0.05, 0.05, size=(self.num_envs, 4))
        return self._state.astype(np.float32)

    def reset_envs(self, mask: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.float32]:
        mask = np.asarray(mask, dtype=bool)
        self._state[mask] = rng.uniform(-0.05, 0.05, size=(int(mask.sum()), 4))
        return self._state.astype(np.float32)

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        masscart, masspole, length, force_mag, polarity = self._params
        x, x_dot, theta, theta_dot = self._state.T
        push = np.where(np.asarray(actions).reshape(self.num_envs) == 1, 1.0, -1.0)
        force = polarity * force_mag * push
        cos, sin = np.cos(theta), np.sin(theta)
        total_mass = masscart + masspole
        polemass_length = masspole * length
        temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
        theta_acc = (GRAVITY * sin - cos * temp) / (
            length * (4.0 / 3.0 - masspole * cos**2 / total_mass)
        )
        x_acc = temp - polemass_length * theta_acc * cos / total_mass
        x = x + TAU * x_dot
        x_dot = x_dot + TAU * x_acc
        theta = theta + TAU * theta_dot
        theta_dot = theta_dot + TAU * theta_acc
        self._state = np.stack([x, x_dot, theta, theta_dot], axis=1)
        terminated = (np.abs(x) > X_LIMIT) | (np.abs(theta) > THETA_LIMIT)
        rewards = np.ones(self.num_envs, dtype=np.float32)
        return self._state.astype(np.float32), rewards, terminated


class CartPoleFamilyEnv(TaskFamilyEnv):
    """``metarl/CartPoleFamily-v0``: one CartPole-family task as a gymnasium env."""

    batched_cls = BatchedCartPoleFamily
