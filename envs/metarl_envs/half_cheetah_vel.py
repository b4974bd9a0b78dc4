"""HalfCheetah running at a target velocity, the MAML paper's locomotion family (optional extra).

Needs ``mujoco`` (``pip install 'metarl[mujoco]'``); ``metarl_envs`` registers
``metarl/HalfCheetahVel-v0`` only when it imports. The robot, its actuators and its observation
(joint positions without the root's x, then joint velocities: 17 numbers) are gymnasium's
``HalfCheetah-v5`` (the model file ships with gymnasium); each task is a target forward velocity
drawn uniformly from [0, 2], and the reward is, as in the MAML paper,
``-|forward velocity - target| - 0.05 * |action|^2``. Episodes last 200 steps (of 0.05 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from numpy.typing import NDArray

from metarl_envs.base import BatchedTaskEnv, Task, TaskFamilyEnv

MODEL_PATH = Path(gym.__file__).parent / "envs" / "mujoco" / "assets" / "half_cheetah.xml"
FRAME_SKIP = 5
VELOCITY_LOW, VELOCITY_HIGH = 0.0, 2.0
CTRL_COST = 0.05  # 0.5 * 0.1, rllab's half_cheetah_env_rand
RESET_NOISE = 0.1
TASK_KEYS = ("velocity",)

_MODEL: mujoco.MjModel | None = None


def _model() -> mujoco.MjModel:
    global _MODEL
    if _MODEL is None:
        _MODEL = mujoco.MjModel.from_xml_path(str(MODEL_PATH))
    return _MODEL


class BatchedHalfCheetahVel(BatchedTaskEnv):
    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(17,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)
    max_episode_steps = 200

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        self._model = _model()
        self._data = [mujoco.MjData(self._model) for _ in range(num_envs)]
        self._targets = np.zeros(num_envs)
        self._dt = self._model.opt.timestep * FRAME_SKIP

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        return [{"velocity": float(v)} for v in rng.uniform(VELOCITY_LOW, VELOCITY_HIGH, num_tasks)]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        self.validate_tasks(tasks, TASK_KEYS)
        self._targets = np.array([t["velocity"] for t in tasks], dtype=np.float64)
        self.tasks = [dict(t) for t in tasks]

    def _obs(self) -> NDArray[np.float32]:
        return np.stack([np.concatenate([d.qpos[1:], d.qvel]) for d in self._data]).astype(
            np.float32
        )

    def _reset_indices(self, indices: NDArray[np.intp], rng: np.random.Generator) -> None:
        m = self._model
        qpos_noise = rng.uniform(-RESET_NOISE, RESET_NOISE, size=(len(indices), m.nq))
        qvel_noise = RESET_NOISE * rng.standard_normal(size=(len(indices), m.nv))
        for j, i in enumerate(indices):
            d = self._data[i]
            mujoco.mj_resetData(m, d)
            d.qpos[:] = m.qpos0 + qpos_noise[j]
            d.qvel[:] = qvel_noise[j]
            mujoco.mj_forward(m, d)

    def reset(self, rng: np.random.Generator) -> NDArray[np.float32]:
        if not self.tasks:
            raise RuntimeError("set_tasks() before reset()")
        self._reset_indices(np.arange(self.num_envs), rng)
        return self._obs()

    def reset_envs(self, mask: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.float32]:
        self._reset_indices(np.flatnonzero(mask), rng)
        return self._obs()

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        a = np.clip(np.asarray(actions, dtype=np.float64).reshape(self.num_envs, 6), -1.0, 1.0)
        x_before = np.array([d.qpos[0] for d in self._data])
        for d, ctrl in zip(self._data, a, strict=True):
            d.ctrl[:] = ctrl
            mujoco.mj_step(self._model, d, nstep=FRAME_SKIP)
        x_after = np.array([d.qpos[0] for d in self._data])
        velocity = (x_after - x_before) / self._dt
        rewards = -np.abs(velocity - self._targets) - CTRL_COST * (a**2).sum(axis=1)
        return self._obs(), rewards.astype(np.float32), np.zeros(self.num_envs, dtype=bool)


class HalfCheetahVelEnv(TaskFamilyEnv):
    """``metarl/HalfCheetahVel-v0``: HalfCheetah with one target velocity as a gymnasium env."""

    batched_cls = BatchedHalfCheetahVel
