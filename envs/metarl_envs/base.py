"""The task API every task family implements.

A task family is a distribution over MDPs that share observation and action spaces. A *task* is a
plain ``dict[str, float]`` of the parameters that pick one MDP out of the family (JSON-friendly, so
it can be logged, sent over the wire and read back).

Each family provides three views of the same dynamics:

* a gymnasium env (``gymnasium.make("metarl/...")``) with ``sample_tasks``, ``set_task`` and
  ``get_task``, for users and for ``check_env``;
* a :class:`BatchedTaskEnv` that steps many envs (each on its own task) in one numpy call, for fast
  meta-training. The gymnasium env is a batch of one, so the two cannot drift apart;
* a gymnasium vector env (``gymnasium.make_vec("metarl/...", num_envs=N)``,
  :class:`TaskFamilyVectorEnv`) over the same batched dynamics, with gymnasium's next-step
  autoreset, for code written against gymnasium's vector API.

Using a family::

    import gymnasium as gym
    import metarl_envs  # registers the metarl/ ids (also metarl.envs)

    env = gym.make("metarl/Navigation2D-v0")
    tasks = env.unwrapped.sample_tasks(5, seed=0)   # the same seed gives the same tasks
    env.unwrapped.set_task(tasks[0])                # or gym.make(id, task=tasks[0]),
    obs, info = env.reset(seed=1)                   # or env.reset(options={"task": tasks[0]})
    assert env.unwrapped.get_task() == tasks[0] == info["task"]

    vec = gym.make_vec("metarl/Navigation2D-v0", num_envs=8)  # the batched vector env
    obs, info = vec.reset(seed=0, options={"tasks": vec.sample_tasks(8, seed=0)})

Implementing your own family::

    class BatchedMyFamily(BatchedTaskEnv):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)  # or gym.spaces.Discrete(n)
        max_episode_steps = 100

        @staticmethod
        def sample_tasks(num_tasks, rng):          # draw from rng only: seeded = reproducible
            return [{"stiffness": float(s)} for s in rng.uniform(1.0, 5.0, num_tasks)]

        def set_tasks(self, tasks):               # one task per env, kept as numpy arrays
            self.validate_tasks(tasks, ("stiffness",))
            self._k = np.array([t["stiffness"] for t in tasks])
            self.tasks = [dict(t) for t in tasks]

        def reset(self, rng): ...                 # state of every env from rng; observations
        def step(self, actions): ...              # vectorized over envs: obs, rewards, terminated
        def reset_envs(self, mask, rng): ...      # optional: restart some envs (vector env)

    class MyFamilyEnv(TaskFamilyEnv):
        batched_cls = BatchedMyFamily

    metarl_envs.register_family("metarl/MyFamily-v0", MyFamilyEnv)

after which ``metarl train --env metarl/MyFamily-v0`` and ``metarl eval`` work on it, and
``gymnasium.utils.env_checker.check_env(gym.make("metarl/MyFamily-v0").unwrapped)`` should pass.
All randomness must come from the ``rng`` passed in, so the same seed gives the same episodes.

Held-out tasks and success flags (both optional; the defaults suit families without them)::

    tasks = BatchedMyFamily.sample_test_tasks(40, rng)  # what `metarl eval` scores on

A family whose benchmark fixes a separate test split (Meta-World ML1: 50 train goals, 50 test
goals) overrides :meth:`BatchedTaskEnv.sample_test_tasks`; every other family's held-out tasks are
fresh draws of :meth:`BatchedTaskEnv.sample_tasks` from a stream of their own. The gymnasium view
takes ``split="test"``: ``env.unwrapped.sample_tasks(40, seed=0, split="test")``.

A family that knows when a task is solved sets ``reports_success = True`` and, in every
:meth:`BatchedTaskEnv.step`, fills ``self.success`` (``[num_envs]`` bools: solved at this step);
:meth:`BatchedTaskEnv.reset` and ``reset_envs`` clear it. The step signature stays
``(obs, rewards, terminated)``, so callers that ignore success are unchanged; the gymnasium env puts
the flag in ``info["success"]`` and the vector env in ``info["success"]`` (with gymnasium's
``info["_success"]`` mask). Meta-World's protocol scores an episode a success when the flag is set
at any step of it.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
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
    reports_success: ClassVar[bool] = False
    """Whether :meth:`step` sets :attr:`success` (Meta-World's ``info["success"]``)."""
    expensive_step: ClassVar[bool] = False
    """Whether a step costs enough (physics: MuJoCo, Meta-World) that ``metarl train`` samples
    whole episodes in worker processes (``--sampler-workers``); cheap numpy families sample in
    the training process, where a worker's messages would cost more than the steps."""

    def __init__(self, num_envs: int) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        self.num_envs = num_envs
        self.tasks: list[Task] = []
        self.success: NDArray[np.bool_] = np.zeros(num_envs, dtype=bool)
        """Per env: whether the task counted as solved at the latest :meth:`step` (always false
        unless ``reports_success``). Read it right after ``step``; an episode succeeds when it was
        true at any of its steps."""

    @staticmethod
    @abstractmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        """Draws ``num_tasks`` tasks from the family's task distribution."""

    @classmethod
    def sample_test_tasks(cls, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        """Draws ``num_tasks`` held-out tasks, for evaluation after meta-training.

        By default the training distribution (callers draw them from a stream of their own);
        families with a fixed test split (Meta-World ML1's test goals) override it, and their
        :meth:`sample_tasks` then never returns a test task."""
        return cls.sample_tasks(num_tasks, rng)

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

    def reset_envs(self, mask: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.float32]:
        """Starts a new episode in the envs where ``mask`` is true, leaving the others as they
        are; returns the observations of all envs.

        Optional: only :class:`TaskFamilyVectorEnv` (gymnasium's autoreset) needs it. The default
        handles an all-true mask and otherwise says to implement it."""
        if np.all(mask):
            return self.reset(rng)
        raise NotImplementedError(
            f"{type(self).__name__} cannot restart single envs: implement reset_envs(mask, rng)"
        )

    @classmethod
    def supports_partial_reset(cls) -> bool:
        """Whether the family overrides :meth:`reset_envs` (needed for the vector env)."""
        return cls.reset_envs is not BatchedTaskEnv.reset_envs

    @staticmethod
    def validate_tasks(tasks: Sequence[Task], keys: Sequence[str]) -> None:
        """Raises ``ValueError`` naming the missing keys or non-finite values of any task."""
        for task in tasks:
            missing = set(keys) - set(task)
            if missing:
                raise ValueError(
                    f"task {task} lacks {sorted(missing)}; tasks of this family need {list(keys)}"
                )
            if not all(np.isfinite(float(task[k])) for k in keys):
                raise ValueError(f"task {task} has a non-finite value")


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

    def sample_tasks(
        self, num_tasks: int, seed: int | None = None, split: str = "train"
    ) -> list[Task]:
        """Draws tasks; the same ``seed`` gives the same tasks. ``split="test"``: held-out tasks
        (:meth:`BatchedTaskEnv.sample_test_tasks`)."""
        return _sample(self.batched_cls, num_tasks, seed, split)

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
        info = (
            {"success": bool(self._batched.success[0])} if self.batched_cls.reports_success else {}
        )
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated), info


class TaskFamilyVectorEnv(VectorEnv[NDArray[np.float32], NDArray[Any], NDArray[Any]]):
    """``num_envs`` envs of a family as one gymnasium vector env, stepped by the batched dynamics.

    Made by ``gymnasium.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``.
    Every env has its own task: pass ``options={"tasks": [...]}`` (``num_envs`` tasks) to
    :meth:`reset`, or let the first reset draw them from the seeded generator; an env that is
    auto-reset (gymnasium's next-step mode) keeps its task. ``tasks`` may also be given at
    construction (``make_vec(id, num_envs=N, tasks=[...])``).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(
        self,
        batched_cls: type[BatchedTaskEnv],
        num_envs: int = 1,
        max_episode_steps: int | None = None,
        tasks: Sequence[Task] | None = None,
    ) -> None:
        if not batched_cls.supports_partial_reset():
            raise TypeError(f"{batched_cls.__name__} must implement reset_envs for a vector env")
        self.batched_cls = batched_cls
        self._batched = batched_cls(num_envs)
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps or batched_cls.max_episode_steps
        self.single_observation_space = batched_cls.observation_space
        self.single_action_space = batched_cls.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._has_tasks = False
        if tasks is not None:
            self.set_tasks(tasks)

    def sample_tasks(
        self, num_tasks: int, seed: int | None = None, split: str = "train"
    ) -> list[Task]:
        """Draws tasks; the same ``seed`` gives the same tasks (``split="test"``: held out)."""
        return _sample(self.batched_cls, num_tasks, seed, split)

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        """Puts env ``i`` on ``tasks[i]`` from the next :meth:`reset`."""
        self._batched.set_tasks(list(tasks))
        self._has_tasks = True

    def get_tasks(self) -> list[Task]:
        if not self._has_tasks:
            raise RuntimeError("no tasks set yet: call reset() or set_tasks(tasks) first")
        return [dict(t) for t in self._batched.tasks]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        if seed is not None or self._np_random is None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        if options and "tasks" in options:
            self.set_tasks(options["tasks"])
        if not self._has_tasks:
            self.set_tasks(self.batched_cls.sample_tasks(self.num_envs, self.np_random))
        self._steps[:] = 0
        self._autoreset[:] = False
        return self._batched.reset(self.np_random), {}

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[
        NDArray[np.float32],
        NDArray[np.float64],
        NDArray[np.bool_],
        NDArray[np.bool_],
        dict[str, Any],
    ]:
        if not self._has_tasks:
            raise RuntimeError("call reset() before step()")
        obs, rewards32, terminated = self._batched.step(np.asarray(actions))
        info: dict[str, Any] = {}
        if self.batched_cls.reports_success:
            success = self._batched.success.copy()
            info = {"success": success, "_success": ~self._autoreset}
        rewards = rewards32.astype(np.float64)
        terminated = np.asarray(terminated, dtype=bool).copy()
        self._steps += 1
        truncated = (self._steps >= self.max_episode_steps) & ~terminated
        restart = self._autoreset
        if restart.any():  # next-step autoreset: these envs ended last step; this step restarts
            obs = self._batched.reset_envs(restart, self.np_random)
            rewards[restart] = 0.0
            terminated[restart] = False
            truncated[restart] = False
            self._steps[restart] = 0
            if info:
                info["success"][restart] = False
        self._autoreset = terminated | truncated
        return obs, rewards, terminated, truncated, info


def _sample(
    batched_cls: type[BatchedTaskEnv], num_tasks: int, seed: int | None, split: str
) -> list[Task]:
    rng = np.random.default_rng(seed)
    if split == "train":
        return batched_cls.sample_tasks(num_tasks, rng)
    if split == "test":
        return batched_cls.sample_test_tasks(num_tasks, rng)
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def vector_entry_point(batched_cls: type[BatchedTaskEnv]) -> functools.partial[TaskFamilyVectorEnv]:
    """The ``vector_entry_point`` gymnasium's ``make_vec`` calls for a family."""
    return functools.partial(TaskFamilyVectorEnv, batched_cls)
