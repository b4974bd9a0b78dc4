"""Meta-World ML1 as task families: one manipulation task, its 50 train and 50 test goals.

Needs ``metaworld`` (``pip install 'metarl-envs[metaworld]'``); ``metarl_envs`` registers
``metarl/ML1Reach-v3``, ``metarl/ML1Push-v3`` and ``metarl/ML1PickPlace-v3`` only when it
imports. Each env is Meta-World's own v3 env (``reach-v3``, ``push-v3``, ``pick-place-v3``) as
``metaworld.ML1(name, seed=BENCHMARK_SEED)`` configures it: goal hidden from the observation (its 3
slots are zero; the policy must infer the goal from rewards), Meta-World's default reward
(``reward_function_version="v2"``), observation (39,), 4 actions in [-1, 1], 500 steps.

A task is ``{"split": 0.0 or 1.0, "index": k}``: goal ``k`` (0..49) of ML1's train (0) or test (1)
goals, exactly ML1's split (its train goals come from ``seed``, its test goals from ``seed + 1``).
``sample_tasks`` draws train goals only and ``sample_test_tasks`` test goals only, without
replacement while a request fits in the 50 (with replacement beyond). Resets are deterministic
(ML1 fixes the goal and the object's start per task), so the ``rng`` is not drawn from.

The batched env reports Meta-World's ``info["success"]`` per step in ``success``
(:class:`metarl_envs.base.BatchedTaskEnv`). Its envs share one ``MjModel`` (Meta-World's model,
with meshes, is 20 MB; the state of each env is its own ``MjData`` and Python attributes):
``tests/test_envs_robots.py`` checks that rollouts equal those of Meta-World's own envs, one per
task, step for step.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import metaworld
import numpy as np
from metaworld.sawyer_xyz_env import SawyerXYZEnv
from numpy.typing import NDArray

from metarl_envs.base import BatchedTaskEnv, Task, TaskFamilyEnv

BENCHMARK_SEED = 0
"""``metaworld.ML1(name, seed=...)``: which 50 train and 50 test goals the families use."""
NUM_GOALS = 50
SPLITS = {0.0: "train", 1.0: "test"}
TASK_KEYS = ("split", "index")
MAX_PATH_LENGTH = 500


@functools.cache
def benchmark(env_name: str) -> Any:
    """ML1 for ``env_name`` with the families' fixed seed (built once per process: ~1 s)."""
    return metaworld.ML1(env_name, seed=BENCHMARK_SEED)


def ml1_task(env_name: str, task: Task) -> Any:
    """The ``metaworld.Task`` a task dict names."""
    ml1 = benchmark(env_name)
    goals = ml1.test_tasks if task["split"] == 1.0 else ml1.train_tasks
    return goals[int(task["index"])]


@functools.cache
def _template(env_name: str) -> SawyerXYZEnv:
    return benchmark(env_name).train_classes[env_name]()


def _clone(template: SawyerXYZEnv) -> SawyerXYZEnv:
    """A Meta-World env sharing ``template``'s model, with its own data and attributes."""
    env = object.__new__(type(template))
    data = copy.copy(template.data)  # MjData's copy keeps the model
    env.__dict__ = copy.deepcopy(template.__dict__, {id(template.model): template.model,
                                                     id(template.data): data})  # fmt: skip
    return env


def _obs_space() -> gym.spaces.Box:
    """Meta-World's partially observable observation space, as float32 (bounds of the hand,
    gripper -1..1, objects unbounded, goal 0)."""
    hand = SawyerXYZEnv._HAND_SPACE
    obj = np.full(14, np.inf)
    low = np.hstack([hand.low, -1.0, -obj, hand.low, -1.0, -obj, np.zeros(3)])
    high = np.hstack([hand.high, 1.0, obj, hand.high, 1.0, obj, np.zeros(3)])
    return gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)


class BatchedML1(BatchedTaskEnv):
    """``num_envs`` Meta-World envs of one ML1 task, each on its own goal."""

    env_name: ClassVar[str]
    observation_space = _obs_space()
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
    max_episode_steps = MAX_PATH_LENGTH
    reports_success = True
    expensive_step = True

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        template = _template(self.env_name)
        self._envs = [_clone(template) for _ in range(num_envs)]
        self._obs_buf = np.zeros((num_envs, 39), dtype=np.float32)

    @classmethod
    def _draw(cls, split: float, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        indices = rng.choice(NUM_GOALS, size=num_tasks, replace=num_tasks > NUM_GOALS)
        return [{"split": split, "index": float(k)} for k in indices]

    @classmethod
    def sample_tasks(cls, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        return cls._draw(0.0, num_tasks, rng)

    @classmethod
    def sample_test_tasks(cls, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        return cls._draw(1.0, num_tasks, rng)

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        self.validate_tasks(tasks, TASK_KEYS)
        for task in tasks:
            index = float(task["index"])
            if task["split"] not in SPLITS or not (index.is_integer() and 0 <= index < NUM_GOALS):
                raise ValueError(
                    f"task {task}: an ML1 task is {{'split': 0.0 (train) or 1.0 (test), "
                    f"'index': 0..{NUM_GOALS - 1}}}"
                )
        for env, task in zip(self._envs, tasks, strict=True):
            env.set_task(ml1_task(self.env_name, task))
        self.tasks = [dict(t) for t in tasks]

    def _reset_indices(self, indices: NDArray[np.intp]) -> NDArray[np.float32]:
        if not self.tasks:
            raise RuntimeError("set_tasks() before reset()")
        if self.max_episode_steps > MAX_PATH_LENGTH:  # Meta-World refuses to step past it
            raise ValueError(
                f"ML1 episodes last at most {MAX_PATH_LENGTH} steps (max_path_length), not "
                f"{self.max_episode_steps}"
            )
        for i in indices:
            obs, _ = self._envs[i].reset()
            self._obs_buf[i] = obs
        self.success[indices] = False
        return self._obs_buf.copy()

    def reset(self, rng: np.random.Generator) -> NDArray[np.float32]:
        return self._reset_indices(np.arange(self.num_envs))

    def reset_envs(self, mask: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.float32]:
        return self._reset_indices(np.flatnonzero(mask))

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        a = np.clip(np.asarray(actions, dtype=np.float64).reshape(self.num_envs, 4), -1.0, 1.0)
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        for i, env in enumerate(self._envs):
            obs, reward, _, _, info = env.step(a[i])
            self._obs_buf[i] = obs
            rewards[i] = reward
            self.success[i] = bool(info["success"])
        return self._obs_buf.copy(), rewards, np.zeros(self.num_envs, dtype=bool)


class BatchedML1Reach(BatchedML1):
    env_name = "reach-v3"


class BatchedML1Push(BatchedML1):
    env_name = "push-v3"


class BatchedML1PickPlace(BatchedML1):
    env_name = "pick-place-v3"


class ML1ReachEnv(TaskFamilyEnv):
    """``metarl/ML1Reach-v3``: Meta-World's reach-v3 on one ML1 goal (hidden)."""

    batched_cls = BatchedML1Reach


class ML1PushEnv(TaskFamilyEnv):
    """``metarl/ML1Push-v3``: Meta-World's push-v3 on one ML1 goal (hidden)."""

    batched_cls = BatchedML1Push


class ML1PickPlaceEnv(TaskFamilyEnv):
    """``metarl/ML1PickPlace-v3``: Meta-World's pick-place-v3 on one ML1 goal (hidden)."""

    batched_cls = BatchedML1PickPlace
