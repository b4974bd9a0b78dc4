"""Task families, registered with gymnasium under the ``metarl/`` namespace on import.

The distribution ``metarl-envs``: gymnasium and numpy only (no torch), so a client machine can
run the families next to ``metarl-client``; the ``metarl`` package re-exports it as
``metarl.envs``. See :mod:`metarl_envs.base` for the task API and how to add a family of your
own.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from typing import Any

import gymnasium as gym

from metarl_envs.base import BatchedTaskEnv, Task, TaskFamilyEnv, TaskFamilyVectorEnv
from metarl_envs.base import vector_entry_point as _vector_entry_point
from metarl_envs.cartpole_family import BatchedCartPoleFamily, CartPoleFamilyEnv
from metarl_envs.navigation import BatchedNavigation2D, Navigation2DEnv
from metarl_envs.pendulum_family import BatchedPendulumFamily, PendulumFamilyEnv

_FAMILIES: dict[str, type[TaskFamilyEnv]] = {}
_POLICY_NAMES: dict[str, str] = {}
_LAZY: dict[str, tuple[str, str]] = {}
"""Installed optional families whose module is imported at first use (``import metaworld`` alone
takes a second): env id -> (module, class)."""
_MUJOCO_HINT = "pip install 'metarl[mujoco]' (or 'metarl-envs[mujoco]' without torch)"
_METAWORLD_HINT = "pip install 'metarl[metaworld]' (or 'metarl-envs[metaworld]' without torch)"
_MUJOCO_FAMILIES = {
    "metarl/HalfCheetahVel-v0": ("half_cheetah", "HalfCheetahVelEnv", "half-cheetah-vel"),
    "metarl/HalfCheetahDir-v0": ("half_cheetah", "HalfCheetahDirEnv", "half-cheetah-dir"),
    "metarl/AntDir-v0": ("ant", "AntDirEnv", "ant-dir"),
    "metarl/AntGoal-v0": ("ant", "AntGoalEnv", "ant-goal"),
    "metarl/AntVel-v0": ("ant", "AntVelEnv", "ant-vel"),
}
_METAWORLD_FAMILIES = {
    "metarl/ML1Reach-v3": ("metaworld_ml1", "ML1ReachEnv", "ml1-reach"),
    "metarl/ML1Push-v3": ("metaworld_ml1", "ML1PushEnv", "ml1-push"),
    "metarl/ML1PickPlace-v3": ("metaworld_ml1", "ML1PickPlaceEnv", "ml1-pick-place"),
}
OPTIONAL_FAMILIES = {
    **{env_id: _MUJOCO_HINT for env_id in _MUJOCO_FAMILIES},
    **{env_id: _METAWORLD_HINT for env_id in _METAWORLD_FAMILIES},
}
"""Families registered only when their extra is installed, and the command that installs it."""


class UnknownFamily(KeyError):
    """No task family is registered under that id (a ``KeyError``; ``metarl``'s command line
    reports it as a usage error, exit status 2)."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0]) if self.args else ""


def register_family(
    env_id: str, env_cls: type[TaskFamilyEnv], *, policy_name: str | None = None
) -> None:
    """Registers a task family with gymnasium and with the trainer and server.

    ``policy_name`` is the name ``metarl train`` gives the policies it meta-trains on this
    family when ``--name`` is not given (the bundled ones use the same: ``cartpole-family``,
    ``navigation-2d``); without it, :func:`derived_policy_name` of ``env_id``.

    Families whose batched env implements ``reset_envs`` also get a ``vector_entry_point``, so
    ``gymnasium.make_vec(env_id, num_envs=N)`` steps all N envs in one batched call.
    """
    _FAMILIES[env_id] = env_cls
    if policy_name is not None:
        _POLICY_NAMES[env_id] = policy_name
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
        pass
    if env_id in _LAZY:
        return _load(env_id)
    if env_id in OPTIONAL_FAMILIES:
        raise UnknownFamily(
            f"task family {env_id} needs "
            f"{'Meta-World' if env_id in _METAWORLD_FAMILIES else 'MuJoCo'}, which is not "
            f"installed: {OPTIONAL_FAMILIES[env_id]}"
        )
    raise UnknownFamily(
        f"unknown task family {env_id!r}; registered families: {', '.join(registered_families())}"
    )


def registered_families() -> list[str]:
    return sorted({*_FAMILIES, *_LAZY})


def policy_name(env_id: str) -> str:
    """The default name of a policy meta-trained on ``env_id``: the one its family declared
    with :func:`register_family`, else :func:`derived_policy_name`."""
    return _POLICY_NAMES.get(env_id) or derived_policy_name(env_id)


def derived_policy_name(env_id: str) -> str:
    """The fallback rule: the id without namespace and ``-vN``, in lower-case words joined by
    ``-``, a word starting at each capital after a lower-case letter, at each digit after a
    letter, and at the last capital of an acronym: ``acme/MyRobot2D-v3`` -> ``my-robot-2d``,
    ``acme/RLArm-v0`` -> ``rl-arm``, ``metarl/Navigation2D-v0`` -> ``navigation-2d``."""
    base = re.sub(r"-v\d+$", "", env_id.split("/")[-1])
    words = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=[A-Z])(?=[A-Z][a-z])", "-", base)
    return re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")


register_family("metarl/CartPoleFamily-v0", CartPoleFamilyEnv, policy_name="cartpole-family")
register_family("metarl/Navigation2D-v0", Navigation2DEnv, policy_name="navigation-2d")
register_family("metarl/PendulumFamily-v0", PendulumFamilyEnv, policy_name="pendulum-family")


def _load(env_id: str) -> type[TaskFamilyEnv]:
    module, cls = _LAZY.pop(env_id)
    env_cls: type[TaskFamilyEnv] = getattr(importlib.import_module(f"metarl_envs.{module}"), cls)
    register_family(env_id, env_cls, policy_name=_POLICY_NAMES.get(env_id))
    return env_cls


def _lazy_vector_env(env_id: str, **kwargs: Any) -> TaskFamilyVectorEnv:
    return TaskFamilyVectorEnv(family(env_id).batched_cls, **kwargs)


def _register_optional(
    families: dict[str, tuple[str, str, str]], max_episode_steps: int, *packages: str
) -> None:
    """Registers ``families`` (with gymnasium too) when all of ``packages`` are installed (their
    extra), without importing them: :func:`family` or ``gymnasium.make`` does at first use."""
    if any(importlib.util.find_spec(p) is None for p in packages):
        return
    for env_id, (module, cls, name) in families.items():
        _LAZY[env_id] = (module, cls)
        _POLICY_NAMES[env_id] = name
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=f"metarl_envs.{module}:{cls}",
                vector_entry_point=functools.partial(_lazy_vector_env, env_id),
                max_episode_steps=max_episode_steps,
            )


_register_optional(_MUJOCO_FAMILIES, 200, "mujoco")  # the extra metarl-envs[mujoco]
_register_optional(_METAWORLD_FAMILIES, 500, "mujoco", "metaworld")  # metarl-envs[metaworld]

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
    "UnknownFamily",
    "derived_policy_name",
    "family",
    "policy_name",
    "register_family",
    "registered_families",
]
