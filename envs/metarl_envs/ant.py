"""The Ant robot's families of the MAML paper: a direction, a goal position, a target velocity.

Needs ``mujoco`` (``pip install 'metarl-envs[mujoco]'``); ``metarl_envs`` registers
``metarl/AntDir-v0``, ``metarl/AntGoal-v0`` and ``metarl/AntVel-v0`` only when it imports. The
robot is gymnasium's ``Ant-v5`` model (8 torques in [-1, 1]; a step is 5 physics steps of
0.01 s) with gymnasium's v5 reset. The tasks and rewards are pytorch-maml-rl's
``maml_rl/envs/mujoco/ant.py`` (rllab's ``ant_env_rand*``, as the MAML paper used them). Every
step's reward is the task's term plus what all three share::

    + 0.05                                   survive bonus
    - 0.005  * |action / action_scale|^2     control (action_scale = half the control range: 1)
    - 0.0005 * |clip(cfrc_ext, -1, 1)|^2     contact forces of all bodies

with the task's term, ``v`` the torso's x velocity over the step and ``xy`` its position after it
(the torso body's position as MuJoCo leaves it after the step, as gymnasium's Ant-v5 and
pytorch-maml-rl read it):

* AntDir: ``direction * v``, the direction -1 or +1 with probability 1/2 each;
* AntGoal (pytorch-maml-rl's AntPos): ``4 - |xy - goal|_1``, the goal uniform in [-3, 3]^2;
* AntVel: ``1 - |v - velocity|``, the target velocity uniform in [0, 3].

An episode terminates when the state is not finite or the torso's height leaves [0.2, 1.0], and
lasts at most 200 steps. A terminated env is not simulated again until it is reset (its later
steps, which samplers mask out, keep the last observation, reward 0 and ``terminated``).

The observation (107 numbers) is all joint positions (15, the torso's x
and y included, which AntGoal needs), all joint velocities (14) and the clipped external contact
forces of the 13 bodies (78, the world body's always-zero row left out). pytorch-maml-rl's
observation (125) adds the world row, the torso's rotation matrix and its position again, which
the quaternion and the first three positions already carry.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from numpy.typing import NDArray

from metarl_envs.base import Task, TaskFamilyEnv
from metarl_envs.half_cheetah import check_directions
from metarl_envs.mujoco_base import BatchedMujocoEnv

SURVIVE_REWARD = 0.05
CTRL_COST = 0.005  # 0.5 * 1e-2
CONTACT_COST = 0.0005  # 0.5 * 1e-3
HEALTHY_Z = (0.2, 1.0)
GOAL_LOW, GOAL_HIGH = -3.0, 3.0
VELOCITY_LOW, VELOCITY_HIGH = 0.0, 3.0


class BatchedAnt(BatchedMujocoEnv):
    """The Ant robot; a family supplies ``task_reward`` of the torso's motion over a step."""

    model_file = "ant.xml"
    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(107,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(8,), dtype=np.float32)
    max_episode_steps = 200

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        self._torso = self._model.body("torso").id
        low, high = self._model.actuator_ctrlrange.T
        self._action_scale = 0.5 * (high - low)
        self._ended = np.zeros(num_envs, dtype=bool)  # terminated since the env's last reset

    def task_reward(
        self, xy_before: NDArray[np.float64], xy_after: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """The task's reward term from the torso's ``[num_envs, 2]`` positions around a step."""
        raise NotImplementedError

    def _obs(self) -> NDArray[np.float32]:
        return np.stack(
            [
                np.concatenate([d.qpos, d.qvel, np.clip(d.cfrc_ext[1:], -1.0, 1.0).ravel()])
                for d in self._data
            ]
        ).astype(np.float32)

    def _torso_xy(self) -> NDArray[np.float64]:
        return np.array([d.xpos[self._torso, :2] for d in self._data])

    def _reset_indices(self, indices: NDArray[np.intp], rng: np.random.Generator) -> None:
        super()._reset_indices(indices, rng)
        for i in indices:  # the contact forces of the first observation
            mujoco.mj_rnePostConstraint(self._model, self._data[i])
        self._ended[indices] = False

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        a = self._clip_actions(actions)
        ended = self._ended.copy()
        xy_before = self._torso_xy()
        # An episode that ended is not simulated until its env is reset: the caller masks its
        # later steps out (BatchedTaskEnv), and a fallen Ant would cost as much as a live one.
        self._simulate(a, contact_forces=True, skip=ended)
        xy_after = self._torso_xy()
        contact = np.array([(np.clip(d.cfrc_ext, -1.0, 1.0) ** 2).sum() for d in self._data])
        rewards = (
            self.task_reward(xy_before, xy_after)
            + SURVIVE_REWARD
            - CTRL_COST * ((a / self._action_scale) ** 2).sum(axis=1)
            - CONTACT_COST * contact
        )
        rewards[ended] = 0.0
        self._ended = ended | ~self._healthy()
        return self._obs(), rewards.astype(np.float32), self._ended.copy()

    def _healthy(self) -> NDArray[np.bool_]:
        """Per env: the state is finite and the torso's height within ``HEALTHY_Z``."""
        return np.array(
            [
                np.isfinite(d.qpos).all()
                and np.isfinite(d.qvel).all()
                and HEALTHY_Z[0] <= d.qpos[2] <= HEALTHY_Z[1]
                for d in self._data
            ]
        )


class BatchedAntDir(BatchedAnt):
    task_keys: ClassVar[tuple[str, ...]] = ("direction",)

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        return [{"direction": float(2 * b - 1)} for b in rng.integers(0, 2, num_tasks)]

    def _check_params(self, params: NDArray[np.float64]) -> None:
        check_directions(params[:, 0])

    def task_reward(
        self, xy_before: NDArray[np.float64], xy_after: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        return self._params[:, 0] * (xy_after[:, 0] - xy_before[:, 0]) / self._dt


class BatchedAntGoal(BatchedAnt):
    task_keys: ClassVar[tuple[str, ...]] = ("goal_x", "goal_y")

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        goals = rng.uniform(GOAL_LOW, GOAL_HIGH, size=(num_tasks, 2))
        return [{"goal_x": float(x), "goal_y": float(y)} for x, y in goals]

    def task_reward(
        self, xy_before: NDArray[np.float64], xy_after: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        return 4.0 - np.abs(xy_after - self._params).sum(axis=1)


class BatchedAntVel(BatchedAnt):
    task_keys: ClassVar[tuple[str, ...]] = ("velocity",)

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        return [{"velocity": float(v)} for v in rng.uniform(VELOCITY_LOW, VELOCITY_HIGH, num_tasks)]

    def task_reward(
        self, xy_before: NDArray[np.float64], xy_after: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        velocity = (xy_after[:, 0] - xy_before[:, 0]) / self._dt
        return 1.0 - np.abs(velocity - self._params[:, 0])


class AntDirEnv(TaskFamilyEnv):
    """``metarl/AntDir-v0``: the Ant rewarded for running one way along x (+1: forward)."""

    batched_cls = BatchedAntDir


class AntGoalEnv(TaskFamilyEnv):
    """``metarl/AntGoal-v0``: the Ant rewarded for closing in on a goal position."""

    batched_cls = BatchedAntGoal


class AntVelEnv(TaskFamilyEnv):
    """``metarl/AntVel-v0``: the Ant rewarded for running at a target velocity along x."""

    batched_cls = BatchedAntVel
