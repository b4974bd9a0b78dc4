"""Task families: gymnasium's env checker, determinism, batched == single, hand-computed steps."""

from __future__ import annotations

import math
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metarl import envs
from metarl.envs.base import BatchedTaskEnv, TaskFamilyEnv
from metarl.envs.navigation import BatchedNavigation2D
from metarl.envs.pendulum_family import BatchedPendulumFamily

FAMILIES = envs.registered_families()
# Meta-World's partially observable observation space bounds the hidden goal's slots by 0 and 0.
pytestmark = pytest.mark.filterwarnings("ignore:.*maximum and minimum values are equal")


def _unwrapped(env: gym.Env[Any, Any]) -> TaskFamilyEnv:
    inner = env.unwrapped
    assert isinstance(inner, TaskFamilyEnv)
    return inner


def _set_state(dst: BatchedTaskEnv, j: int, src: BatchedTaskEnv, i: int) -> None:
    """Copies env ``i`` of ``src`` into env ``j`` of ``dst`` (family-specific state layouts)."""
    if hasattr(src, "_envs"):  # Meta-World: a reset is a function of the task alone
        assert dst.tasks[j] == src.tasks[i]
    elif hasattr(src, "_data"):  # mujoco
        import mujoco

        d = dst._data[j]  # type: ignore[attr-defined]
        d.qpos[:] = src._data[i].qpos  # type: ignore[attr-defined]
        d.qvel[:] = src._data[i].qvel  # type: ignore[attr-defined]
        mujoco.mj_forward(dst._model, d)  # type: ignore[attr-defined]
    elif hasattr(src, "_pos"):
        dst._pos[j] = src._pos[i]  # type: ignore[attr-defined]
    else:
        dst._state[j] = src._state[i]  # type: ignore[attr-defined]


def _random_actions(space: gym.spaces.Space[Any], n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, int(space.n), size=n)
    assert isinstance(space, gym.spaces.Box)
    # Reach past the bounds too: the envs must clip.
    return rng.uniform(1.5 * space.low, 1.5 * space.high, size=(n, *space.shape))


def test_all_families_registered() -> None:
    assert {
        "metarl/CartPoleFamily-v0",
        "metarl/Navigation2D-v0",
        "metarl/PendulumFamily-v0",
    } <= set(FAMILIES)
    for env_id in FAMILIES:
        assert env_id in gym.registry


@pytest.mark.parametrize("env_id", FAMILIES)
def test_check_env(env_id: str) -> None:
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(infinity|symmetric and normalized).*")
        check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", FAMILIES)
def test_task_api_round_trip(env_id: str) -> None:
    env = _unwrapped(gym.make(env_id))
    tasks = env.sample_tasks(4, seed=11)
    assert tasks == env.sample_tasks(4, seed=11)
    assert tasks != env.sample_tasks(4, seed=12)
    env.set_task(tasks[2])
    assert env.get_task() == tasks[2]
    _, info = env.reset(seed=0, options={"task": tasks[3]})
    assert env.get_task() == info["task"] == tasks[3]
    made = _unwrapped(gym.make(env_id, task=tasks[1]))
    assert made.get_task() == tasks[1]
    with pytest.raises(ValueError, match="lacks"):
        env.set_task({"no_such_parameter": 1.0})


@pytest.mark.parametrize("env_id", FAMILIES)
def test_same_seed_same_rollout_gymnasium(env_id: str) -> None:
    def rollout(seed: int) -> list[tuple[Any, ...]]:
        env = gym.make(env_id)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        out: list[tuple[Any, ...]] = [(obs.tobytes(),)]
        for _ in range(30):
            obs, r, term, trunc, _ = env.step(env.action_space.sample())
            out.append((obs.tobytes(), r, term, trunc))
            if term or trunc:
                obs, _ = env.reset()
                out.append((obs.tobytes(),))
        return out

    assert rollout(3) == rollout(3)


@pytest.mark.parametrize("env_id", FAMILIES)
def test_same_seed_same_rollout_batched(env_id: str) -> None:
    cls = envs.family(env_id).batched_cls

    def rollout(seed: int) -> list[bytes]:
        rng = np.random.default_rng(seed)
        env = cls(6)
        env.set_tasks(cls.sample_tasks(6, rng))
        out = [env.reset(rng).tobytes()]
        for _ in range(20):
            obs, r, term = env.step(_random_actions(cls.action_space, 6, rng))
            out += [obs.tobytes(), r.tobytes(), term.tobytes()]
        return out

    assert rollout(5) == rollout(5)
    assert rollout(5) != rollout(6)


@pytest.mark.parametrize("env_id", FAMILIES)
def test_batched_equals_single_envs(env_id: str) -> None:
    """N envs stepped in one batched call == N gymnasium envs (batches of one) stepped alone."""
    cls = envs.family(env_id).batched_cls
    n, rng = 5, np.random.default_rng(0)
    tasks = cls.sample_tasks(n, rng)
    batched = cls(n)
    batched.set_tasks(tasks)
    batched.reset(rng)
    singles = []
    for i in range(n):
        env = _unwrapped(gym.make(env_id, task=tasks[i]))
        env.reset(seed=i)
        _set_state(env._batched, 0, batched, i)
        singles.append(env)
    steps = min(cls.max_episode_steps, 60)
    for _ in range(steps):
        actions = _random_actions(cls.action_space, n, rng)
        obs, rewards, terminated = batched.step(actions)
        for i, env in enumerate(singles):
            o, r, term, _, _ = env.step(actions[i])
            np.testing.assert_allclose(o, obs[i], rtol=1e-6, atol=1e-7)
            assert r == pytest.approx(float(rewards[i]), rel=1e-6, abs=1e-7)
            assert term == bool(terminated[i])


@pytest.mark.parametrize("env_id", FAMILIES)
def test_vector_entry_point(env_id: str) -> None:
    vec = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(vec.unwrapped, envs.TaskFamilyVectorEnv)
    tasks = vec.unwrapped.sample_tasks(3, seed=1)
    obs, _ = vec.reset(seed=0, options={"tasks": tasks})
    assert obs.shape == (3, *vec.single_observation_space.shape)  # type: ignore[misc]
    assert vec.unwrapped.get_tasks() == tasks
    vec.action_space.seed(0)
    obs, rewards, term, trunc, _ = vec.step(vec.action_space.sample())
    assert obs.shape[0] == rewards.shape[0] == term.shape[0] == trunc.shape[0] == 3
    assert obs in vec.observation_space
    vec.close()


def test_vector_env_autoreset_and_truncation() -> None:
    # Env 0's goal is within 0.01 of the start: it terminates at once, then (next-step autoreset)
    # restarts at the origin with reward 0. Env 1's goal is far: it runs into the time limit.
    vec = gym.make_vec(
        "metarl/Navigation2D-v0", num_envs=2, vectorization_mode="vector_entry_point"
    )
    tasks = [{"goal_x": 0.005, "goal_y": 0.0}, {"goal_x": 0.5, "goal_y": 0.5}]
    vec.reset(seed=0, options={"tasks": tasks})
    zero = np.zeros((2, 2), dtype=np.float32)
    _, rewards, term, trunc, _ = vec.step(zero)
    assert term.tolist() == [True, False] and trunc.tolist() == [False, False]
    assert rewards[0] == pytest.approx(-0.005)
    obs, rewards, term, trunc, _ = vec.step(np.array([[0.1, 0.1], [0.0, 0.0]], np.float32))
    assert obs[0].tolist() == [0.0, 0.0] and rewards[0] == 0.0 and not term[0]
    for _ in range(97):  # steps 3..99
        _, _, term, trunc, _ = vec.step(zero)
    assert not trunc[1]
    _, _, term, trunc, _ = vec.step(zero)  # env 1's 100th step
    assert trunc[1] and not term[1]


# --- Navigation2D, by hand --------------------------------------------------------------------


def test_navigation_step_by_hand() -> None:
    env = gym.make("metarl/Navigation2D-v0", task={"goal_x": 0.3, "goal_y": -0.4})
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0]  # starts at the origin
    # (0.05, 0.5) is clipped to (0.05, 0.1): position (0.05, 0.1), 0.25 and 0.5 from the goal.
    obs, reward, term, trunc, _ = env.step(np.array([0.05, 0.5], np.float32))
    np.testing.assert_allclose(obs, [0.05, 0.1], rtol=1e-6)
    assert reward == pytest.approx(-math.sqrt(0.25**2 + 0.5**2), rel=1e-6)
    assert not term and not trunc
    # (-1, -1) is clipped to (-0.1, -0.1): position (-0.05, 0.0).
    obs, reward, *_ = env.step(np.array([-1.0, -1.0], np.float32))
    np.testing.assert_allclose(obs, [-0.05, 0.0], atol=1e-7)
    assert reward == pytest.approx(-math.sqrt(0.35**2 + 0.4**2), rel=1e-6)


def test_navigation_terminates_at_goal() -> None:
    env = gym.make("metarl/Navigation2D-v0", task={"goal_x": 0.3, "goal_y": -0.4})
    env.reset(seed=0)
    for _ in range(3):
        _, _, term, _, _ = env.step(np.array([0.1, -0.1], np.float32))  # (0.3, -0.3) after 3
        assert not term
    _, reward, term, trunc, _ = env.step(np.array([0.0, -0.1], np.float32))
    assert term and not trunc and reward == pytest.approx(0.0, abs=1e-6)


def test_navigation_goal_box_and_time_limit() -> None:
    # The goal test is the box |dx|, |dy| < 0.01 (the MAML authors' and pytorch-maml-rl's), not a
    # disc: (0.009, 0.009) is 0.0127 away, outside a disc of radius 0.01, yet at the goal.
    near = BatchedNavigation2D(3)
    near.set_tasks(
        [
            {"goal_x": 0.0099, "goal_y": 0.0},
            {"goal_x": 0.0, "goal_y": -0.0101},
            {"goal_x": 0.009, "goal_y": 0.009},
        ]
    )
    near.reset(np.random.default_rng(0))
    _, rewards, term = near.step(np.zeros((3, 2)))
    assert term.tolist() == [True, False, True]
    np.testing.assert_allclose(rewards, [-0.0099, -0.0101, -math.hypot(0.009, 0.009)], rtol=1e-6)

    env = gym.make("metarl/Navigation2D-v0", task={"goal_x": 0.5, "goal_y": 0.5})
    env.reset(seed=0)
    total = 0.0
    for t in range(1, 101):
        _, reward, term, trunc, _ = env.step(np.zeros(2, np.float32))
        total += reward
        assert not term and trunc == (t == 100)
    assert total == pytest.approx(-100 * math.sqrt(0.5), rel=1e-6)


def test_navigation_goals_uniform_in_square() -> None:
    goals = np.array(
        [
            [t["goal_x"], t["goal_y"]]
            for t in BatchedNavigation2D.sample_tasks(4000, np.random.default_rng(0))
        ]
    )
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    np.testing.assert_allclose(goals.mean(0), [0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(goals.var(0), [1 / 12, 1 / 12], rtol=0.08)  # uniform on width 1


# --- PendulumFamily ----------------------------------------------------------------------------


def test_pendulum_default_task_matches_gymnasium() -> None:
    """mass 1, length 1, gravity 10 is gymnasium's Pendulum-v1, step for step."""
    ref = gym.make("Pendulum-v1").unwrapped
    ref.reset(seed=0)
    mine = BatchedPendulumFamily(1)
    mine.set_tasks([{"mass": 1.0, "length": 1.0, "gravity": 10.0}])
    mine.reset(np.random.default_rng(0))
    state = np.array([2.5, -0.7])
    ref.state = state.copy()  # type: ignore[attr-defined]
    mine._state[0] = state
    rng = np.random.default_rng(1)
    for _ in range(100):
        u = rng.uniform(-3, 3, size=1).astype(np.float32)
        ref_obs, ref_r, *_ = ref.step(u)
        obs, r, term = mine.step(u[None])
        np.testing.assert_allclose(obs[0], ref_obs, rtol=1e-5, atol=1e-6)
        assert float(r[0]) == pytest.approx(ref_r, rel=1e-5, abs=1e-6)
        assert not term[0]


def test_pendulum_physics_vary_with_task() -> None:
    env = BatchedPendulumFamily(2)
    env.set_tasks(
        [
            {"mass": 1.0, "length": 1.0, "gravity": 10.0},
            {"mass": 0.5, "length": 1.5, "gravity": 5.0},
        ]
    )
    env.reset(np.random.default_rng(0))
    env._state[:] = [[1.0, 0.0], [1.0, 0.0]]
    env.step(np.array([[1.0], [1.0]]))
    # theta_dot' = (3g/(2l) sin(theta) + 3/(m l^2) u) dt
    expected = [
        (15 * math.sin(1.0) + 3.0) * 0.05,
        (5.0 * math.sin(1.0) + 3 / (0.5 * 2.25)) * 0.05,
    ]
    np.testing.assert_allclose(env._state[:, 1], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        env.set_tasks([{"mass": 0.0, "length": 1.0, "gravity": 1.0}] * 2)


# --- HalfCheetahVel (optional extra) -----------------------------------------------------------


def test_half_cheetah_vel_reward() -> None:
    pytest.importorskip("mujoco")
    from metarl.envs.half_cheetah_vel import BatchedHalfCheetahVel

    assert "metarl/HalfCheetahVel-v0" in FAMILIES
    env = BatchedHalfCheetahVel(2)
    env.set_tasks([{"velocity": 0.0}, {"velocity": 2.0}])
    env.reset(np.random.default_rng(0))
    action = np.full((2, 6), 0.5)
    x0 = np.array([d.qpos[0] for d in env._data])
    _, rewards, term = env.step(action)
    velocity = (np.array([d.qpos[0] for d in env._data]) - x0) / 0.05
    expected = -np.abs(velocity - [0.0, 2.0]) - 0.05 * 6 * 0.25
    np.testing.assert_allclose(rewards, expected, rtol=1e-5)
    assert not term.any()
    tasks = BatchedHalfCheetahVel.sample_tasks(500, np.random.default_rng(0))
    velocities = np.array([t["velocity"] for t in tasks])
    assert velocities.min() >= 0.0 and velocities.max() <= 2.0 and velocities.std() > 0.5
