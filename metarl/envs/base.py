"""The task API every task family implements.

A task family is a distribution over MDPs that share observation and action spaces. A *task* is a
plain ``dict[str, float]`` of the parameters that pick one MDP out of the family (JSON-friendly, so
it can be logged, sent over the wire and read back).

Each family provides two views of the same dynamics:

* a gymnasium env (``gymnasium.make("metarl/...")``) with ``sample_tasks``, ``set_task`` and
  ``get_task``, for users and for ``check_env``;
* a :class:`BatchedTaskEnv` that steps many envs (each on its own task) in one numpy call, for fast
  meta-training. The gymnasium env is a batch of one, so the two cannot drift apart.

To add your own family, subclass :class:`BatchedTaskEnv` (dynamics, rewards, task sampling) and
:class:`TaskFamilyEnv` (set ``batched_cls``), then call :func:`metarl.envs.register_family`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

Task = dict[str, float]


class BatchedTaskEnv(ABC):
    """``num_envs`` copies of a family's MDP, each on its own task, stepped together.

    There is no auto-reset: once an env's episode ends its later steps are meaningless and the
    caller masks them out (all episodes of a batch start together and last at most
    ``max_episode_steps``).
    """

    observation_space: ClassVar[gym.spaces.Box]
    action_space: ClassVar[gym.spaces.Space[Any]]
    max_episode_steps: ClassVar[int]

    def __init__(self, num_envs: int) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        self.num_envs = num_envs
        self.tasks: list[Task] = []

    @staticmethod
    @abstractmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        """Draws ``num_tasks`` tasks from the family's task distribution."""

    @abstractmethod
    def set_tasks(self, tasks: Sequence[Task]) -> None:
        """Puts env ``i`` on ``tasks[i]``; takes effect at the next :meth:`reset`."""

    @abstractmethod
    def reset(self, rng: np.random.Generator) -> NDArray[np.float32]:
        """Starts a new episode in every env; returns observations ``[num_envs, *obs_shape]``."""

    @abstractmethod
    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        """Applies ``actions`` (``[num_envs, *action_shape]``); returns observations, rewards and
        terminated flags, each with leading dimension ``num_envs``."""


class TaskFamilyEnv(gym.Env[NDArray[np.float32], Any]):
    """A gymnasium view of one env of a :class:`BatchedTaskEnv`.

    ``task`` may be given at construction (``gymnasium.make(id, task={...})``); otherwise the env
    starts on a task drawn at the first reset. Use ``env.unwrapped.set_task(task)`` to switch.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium declares it an instance attribute)
    batched_cls: ClassVar[type[BatchedTaskEnv]]

    def __init__(self, task: Task | None = None) -> None:
        self._batched = self.batched_cls(1)
        self.observation_space = self.batched_cls.observation_space  # type: ignore[assignment]
        self.action_space = self.batched_cls.action_space
        self._task: Task | None = None
        self._steps = 0
        if task is not None:
            self.set_task(task)

    def sample_tasks(self, num_tasks: int, seed: int | None = None) -> list[Task]:
        """Draws tasks; the same ``seed`` gives the same tasks."""
        return self.batched_cls.sample_tasks(num_tasks, np.random.default_rng(seed))

    def set_task(self, task: Task) -> None:
        self._batched.set_tasks([task])
        self._task = dict(task)

    def get_task(self) -> Task:
        if self._task is None:
            raise RuntimeError("no task set yet: call reset() or set_task(task) first")
        return dict(self._task)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        if self._task is None:
            self.set_task(self.batched_cls.sample_tasks(1, self.np_random)[0])
        self._steps = 0
        obs = self._batched.reset(self.np_random)
        return obs[0], {"task": self.get_task()}

    def step(self, action: Any) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        if self._task is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated = self._batched.step(np.asarray(action)[None])
        self._steps += 1
        truncated = self._steps >= self.batched_cls.max_episode_steps and not terminated[0]
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated), {}
