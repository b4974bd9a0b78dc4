"""HalfCheetahDir's success flag: the torso 3 m or more from its start in the task's direction
(``RUN_DISTANCE``), in the batched env, the gymnasium env's info and the vector env's."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the mujoco extra is not installed")

import metarl_envs  # noqa: F401  (registers the families)
from metarl_envs.half_cheetah import RUN_DISTANCE, BatchedHalfCheetahDir


def test_success_once_the_torso_is_run_distance_along_the_direction() -> None:
    env = BatchedHalfCheetahDir(3)
    env.set_tasks([{"direction": 1.0}, {"direction": -1.0}, {"direction": -1.0}])
    env.reset(np.random.default_rng(0))
    assert RUN_DISTANCE == 3.0 and not env.success.any()
    start = np.array([d.qpos[0] for d in env._data])
    # Put each torso where a run would have taken it: +3.2 m, +3.2 m, -3.2 m from its start.
    for d, shift in zip(env._data, (3.2, 3.2, -3.2), strict=True):
        d.qpos[0] += shift
        d.qvel[:] = 0.0
    env.step(np.zeros((3, 6)))  # one 0.05 s step at rest moves a torso by millimetres
    moved = np.array([d.qpos[0] for d in env._data]) - start
    np.testing.assert_allclose(moved, [3.2, 3.2, -3.2], atol=0.05)
    assert env.success.tolist() == [True, False, True]  # forward for +1; backward for -1
    env.reset_envs(np.array([True, False, False]), np.random.default_rng(1))
    assert env.success.tolist() == [False, False, True]  # a restart clears the flag


def test_gymnasium_and_vector_envs_report_it() -> None:
    env = gym.make("metarl/HalfCheetahDir-v0", task={"direction": 1.0})
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(6, np.float32))
    assert info == {"success": False}
    vec = gym.make_vec(
        "metarl/HalfCheetahDir-v0", num_envs=2, vectorization_mode="vector_entry_point"
    )
    vec.reset(seed=0, options={"tasks": [{"direction": 1.0}, {"direction": -1.0}]})
    _, _, _, _, info = vec.step(np.zeros((2, 6), np.float32))
    assert info["success"].tolist() == [False, False] and info["_success"].all()
    env.close()
    vec.close()
