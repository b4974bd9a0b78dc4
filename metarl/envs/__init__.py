"""Task families, registered with gymnasium under the ``metarl/`` namespace on import.

See :mod:`metarl.envs.base` for the task API and how to add a family of your own.
"""

from __future__ import annotations

import importlib.util

import gymnasium as gym

from metarl.envs.base import BatchedTaskEnv, Task, TaskFamilyEnv, TaskFamilyVectorEnv
from metarl.envs.base import vector_entry_point as _vector_entry_point
from metarl.envs.cartpole_family import BatchedCartPoleFamily, CartPoleFamilyEnv
from metarl.envs.navigation import BatchedNavigation2D, Navigation2DEnv
from metarl.envs.pendulum_family import BatchedPendulumFamily, PendulumFamilyEnv

_FAMILIES: dict[str, type[TaskFamilyEnv]] = {}


def register_family(env_id: str, env_cls: type[TaskFamilyEnv]) -> None:
    """Registers a task family with gymnasium and with the trainer and server.

    Families whose batched env implements ``reset_envs`` also get a ``vector_entry_point``, so
    ``gymnasium.make_vec(env_id, num_envs=N)`` steps all N envs in one batched call.
    """
    _FAMILIES[env_id] = env_cls
    if env_id not in gym.registry:
        batched_cls = env_cls.batched_cls
        gym.register(
            id=env_id,
            entry_point=f"{env_cls.__module__}:{env_cls.__qualname__}",
            vector_entry_point=(
                _vector_entry_point(batched_cls) if batched_cls.supports_partial_reset() else None
            ),
            max_episode_steps=batched_cls.max_episode_steps,
        )


def family(env_id: str) -> type[TaskFamilyEnv]:
    """The task family registered as ``env_id``."""
    try:
        return _FAMILIES[env_id]
    except KeyError:
        raise KeyError(
            f"unknown task family {env_id!r}; registered families: {sorted(_FAMILIES)}"
        ) from None


def registered_families() -> list[str]:
    return sorted(_FAMILIES)


register_family("metarl/CartPoleFamily-v0", CartPoleFamilyEnv)
register_family("metarl/Navigation2D-v0", Navigation2DEnv)
register_family("metarl/PendulumFamily-v0", PendulumFamilyEnv)
if importlib.util.find_spec("mujoco") is not None:  # the optional extra metarl[mujoco]
    from metarl.envs.half_cheetah_vel import HalfCheetahVelEnv

    register_family("metarl/HalfCheetahVel-v0", HalfCheetahVelEnv)

__all__ = [
    "BatchedCartPoleFamily",
    "BatchedNavigation2D",
    "BatchedPendulumFamily",
    "BatchedTaskEnv",
    "CartPoleFamilyEnv",
    "Navigation2DEnv",
    "PendulumFamilyEnv",
    "Task",
    "TaskFamilyEnv",
    "TaskFamilyVectorEnv",
    "family",
    "register_family",
    "registered_families",
]
