"""HalfCheetah running at a target velocity or in a direction: the MAML paper's families.

Needs ``mujoco`` (``pip install 'metarl-envs[mujoco]'``); ``metarl_envs`` registers
``metarl/HalfCheetahVel-v0`` and ``metarl/HalfCheetahDir-v0`` only when it imports. The robot, its
actuators, its reset and its observation (joint positions without the root's x, then joint
velocities: 17 numbers) are gymnasium's ``HalfCheetah-v5`` (the model file ships with gymnasium);
a step is 5 physics steps of 0.01 s. The reward is the task's term of the forward velocity ``v``
(the torso's x displacement over the step's 0.05 s) minus ``0.05 * |action|^2``, as in the MAML
paper (rllab's ``half_cheetah_env_rand*``, pytorch-maml-rl's ``maml_rl/envs/mujoco``):

* HalfCheetahVel: ``-|v - velocity|``, the target velocity uniform in [0, 2];
* HalfCheetahDir: ``direction * v``, the direction -1 or +1 with probability 1/2 each. It
  reports success (``info["success"]``) once the torso is ``RUN_DISTANCE`` (3 m, three body
  lengths) or more from its start in the task's direction: with Meta-World's protocol (the flag
  set at any step) an episode's success says the cheetah ran the task's way. Uniformly random
  actions (N(0, 1), clipped) reached 3 m in 1% of 200 episodes of 100 steps and 10% of 200 steps
  (1 m: 32% and 46%); a cheetah running at 1 m/s reaches it in 60 steps.

Episodes last 200 steps and never terminate early. pytorch-maml-rl appends the torso's position
(3 numbers) to the observation; these families keep gymnasium's 17.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from metarl_envs.base import Task, TaskFamilyEnv
from metarl_envs.mujoco_base import BatchedMujocoEnv

VELOCITY_LOW, VELOCITY_HIGH = 0.0, 2.0
CTRL_COST = 0.05  # 0.5 * 0.1, rllab's half_cheetah_env_rand
RUN_DISTANCE = 3.0
"""HalfCheetahDir's success: metres run in the task's direction since the episode's start."""


class BatchedHalfCheetah(BatchedMujocoEnv):
    """The HalfCheetah robot; a family supplies ``task_reward`` of the forward velocities."""

    model_file = "half_cheetah.xml"
    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(17,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)
    max_episode_steps = 200

    def task_reward(self, velocity: NDArray[np.float64]) -> NDArray[np.float64]:
        """The task's reward term for each env's forward velocity."""
        raise NotImplementedError

    def _obs(self) -> NDArray[np.float32]:
        return np.stack([np.concatenate([d.qpos[1:], d.qvel]) for d in self._data]).astype(
            np.float32
        )

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        a = self._clip_actions(actions)
        x_before = np.array([d.qpos[0] for d in self._data])
        self._simulate(a)
        x_after = np.array([d.qpos[0] for d in self._data])
        velocity = (x_after - x_before) / self._dt
        rewards = self.task_reward(velocity) - CTRL_COST * (a**2).sum(axis=1)
        return self._obs(), rewards.astype(np.float32), np.zeros(self.num_envs, dtype=bool)


class BatchedHalfCheetahVel(BatchedHalfCheetah):
    task_keys: ClassVar[tuple[str, ...]] = ("velocity",)

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        return [{"velocity": float(v)} for v in rng.uniform(VELOCITY_LOW, VELOCITY_HIGH, num_tasks)]

    def task_reward(self, velocity: NDArray[np.float64]) -> NDArray[np.float64]:
        return -np.abs(velocity - self._params[:, 0])


class BatchedHalfCheetahDir(BatchedHalfCheetah):
    task_keys: ClassVar[tuple[str, ...]] = ("direction",)
    reports_success = True

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        self._start_x = np.zeros(num_envs)

    def _reset_indices(self, indices: NDArray[np.intp], rng: np.random.Generator) -> None:
        super()._reset_indices(indices, rng)
        self._start_x[indices] = [self._data[i].qpos[0] for i in indices]

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        out = super().step(actions)
        x = np.array([d.qpos[0] for d in self._data])
        self.success = self._params[:, 0] * (x - self._start_x) >= RUN_DISTANCE
        return out

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        return [{"direction": float(2 * b - 1)} for b in rng.integers(0, 2, num_tasks)]

    def _check_params(self, params: NDArray[np.float64]) -> None:
        check_directions(params[:, 0])

    def task_reward(self, velocity: NDArray[np.float64]) -> NDArray[np.float64]:
        return self._params[:, 0] * velocity


def check_directions(directions: NDArray[np.float64]) -> None:
    if not np.all(np.abs(directions) == 1.0):
        raise ValueError(f"direction must be -1.0 or 1.0, got {sorted(set(directions.tolist()))}")


class HalfCheetahVelEnv(TaskFamilyEnv):
    """``metarl/HalfCheetahVel-v0``: HalfCheetah with one target velocity as a gymnasium env."""

    batched_cls = BatchedHalfCheetahVel


class HalfCheetahDirEnv(TaskFamilyEnv):
    """``metarl/HalfCheetahDir-v0``: HalfCheetah rewarded for running one way (+1: forward)."""

    batched_cls = BatchedHalfCheetahDir
