"""Task families, registered with gymnasium under the ``metarl/`` namespace on import."""

from __future__ import annotations

import gymnasium as gym

from metarl.envs.base import BatchedTaskEnv, Task, TaskFamilyEnv
from metarl.envs.cartpole_family import BatchedCartPoleFamily, CartPoleFamilyEnv

_FAMILIES: dict[str, type[TaskFamilyEnv]] = {}


def register_family(env_id: str, env_cls: type[TaskFamilyEnv]) -> None:
    """Registers a task family with gymnasium and with the trainer and server."""
    _FAMILIES[env_id] = env_cls
    if env_id not in gym.registry:
        gym.register(
            id=env_id,
            entry_point=f"{env_cls.__module__}:{env_cls.__qualname__}",
            max_episode_steps=env_cls.batched_cls.max_episode_steps,
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

__all__ = [
    "BatchedCartPoleFamily",
    "BatchedTaskEnv",
    "CartPoleFamilyEnv",
    "Task",
    "TaskFamilyEnv",
    "family",
    "register_family",
    "registered_families",
]
