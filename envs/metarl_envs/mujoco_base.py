"""What the MuJoCo locomotion families share: gymnasium's v5 robot models, one ``MjData`` per env.

Needs ``mujoco`` (the extra ``metarl-envs[mujoco]``). A robot's base class (HalfCheetah, Ant)
subclasses :class:`BatchedMujocoEnv` with its model file and observation; each family of that
robot adds only its task parameters and the task's part of the reward.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from numpy.typing import NDArray

from metarl_envs.base import BatchedTaskEnv, Task

ASSETS = Path(gym.__file__).parent / "envs" / "mujoco" / "assets"


@functools.cache
def load_model(filename: str) -> mujoco.MjModel:
    """The model ``filename`` of gymnasium's MuJoCo assets, loaded once per process (read only:
    every env of every batch shares it and keeps its state in its own ``MjData``)."""
    return mujoco.MjModel.from_xml_path(str(ASSETS / filename))


class BatchedMujocoEnv(BatchedTaskEnv):
    """``num_envs`` copies of one MuJoCo robot, each with its own task parameters.

    Resets are gymnasium's v5 ones: ``qpos0 + U(-0.1, 0.1)`` and ``0.1 * N(0, 1)`` velocities,
    every env drawing from the ``rng`` passed in. Subclasses set ``model_file`` and
    ``task_keys`` and implement ``_obs`` and ``step``."""

    model_file: ClassVar[str]
    frame_skip: ClassVar[int] = 5
    reset_noise: ClassVar[float] = 0.1
    expensive_step: ClassVar[bool] = True
    task_keys: ClassVar[tuple[str, ...]]

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        self._model = load_model(self.model_file)
        self._data = [mujoco.MjData(self._model) for _ in range(num_envs)]
        self._dt = self._model.opt.timestep * self.frame_skip
        self._params = np.zeros((num_envs, len(self.task_keys)))

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        self.validate_tasks(tasks, self.task_keys)
        params = np.array([[float(t[k]) for k in self.task_keys] for t in tasks], np.float64)
        self._check_params(params)
        self._params = params
        self.tasks = [dict(t) for t in tasks]

    def _check_params(self, params: NDArray[np.float64]) -> None:
        """Raises ``ValueError`` for task parameters outside the family (optional)."""

    def _obs(self) -> NDArray[np.float32]:
        raise NotImplementedError

    def _reset_indices(self, indices: NDArray[np.intp], rng: np.random.Generator) -> None:
        m, noise = self._model, self.reset_noise
        qpos_noise = rng.uniform(-noise, noise, size=(len(indices), m.nq))
        qvel_noise = noise * rng.standard_normal(size=(len(indices), m.nv))
        for j, i in enumerate(indices):
            d = self._data[i]
            mujoco.mj_resetData(m, d)
            d.qpos[:] = m.qpos0 + qpos_noise[j]
            d.qvel[:] = qvel_noise[j]
            mujoco.mj_forward(m, d)
        self.success[indices] = False

    def reset(self, rng: np.random.Generator) -> NDArray[np.float32]:
        if not self.tasks:
            raise RuntimeError("set_tasks() before reset()")
        self._reset_indices(np.arange(self.num_envs), rng)
        return self._obs()

    def reset_envs(self, mask: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.float32]:
        self._reset_indices(np.flatnonzero(mask), rng)
        return self._obs()

    def _clip_actions(self, actions: NDArray[np.float64]) -> NDArray[np.float64]:
        shape = self.action_space.shape
        assert shape is not None
        a = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, *shape)
        return np.clip(a, self.action_space.low, self.action_space.high)  # type: ignore[attr-defined]

    def _simulate(
        self,
        actions: NDArray[np.float64],
        *,
        contact_forces: bool = False,
        skip: NDArray[np.bool_] | None = None,
    ) -> None:
        """``frame_skip`` physics steps of every env under ``actions`` (but the envs where
        ``skip`` is true); with ``contact_forces``, also ``cfrc_ext`` (MuJoCo computes it only on
        request, as gymnasium's v5 envs do)."""
        for i, (d, ctrl) in enumerate(zip(self._data, actions, strict=True)):
            if skip is not None and skip[i]:
                continue
            d.ctrl[:] = ctrl
            mujoco.mj_step(self._model, d, nstep=self.frame_skip)
            if contact_forces:
                mujoco.mj_rnePostConstraint(self._model, d)
