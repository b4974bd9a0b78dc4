"""The MuJoCo locomotion families and Meta-World ML1: rewards by hand on constructed states, the
Ant against gymnasium's Ant-v5, ML1 against Meta-World's own envs, and ML1's train/test split.

These families are optional extras; ``make test`` installs them (``make dev``), so a skip here
means the package could not be installed on this machine, and pytest prints which."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from metarl import envs

mujoco = pytest.importorskip("mujoco", reason="the mujoco extra is not installed")

from metarl.envs.ant import BatchedAnt, BatchedAntDir, BatchedAntGoal, BatchedAntVel  # noqa: E402
from metarl.envs.half_cheetah import BatchedHalfCheetahDir  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*maximum and minimum values are equal")

ROBOT_FAMILIES = [
    "metarl/HalfCheetahVel-v0",
    "metarl/HalfCheetahDir-v0",
    "metarl/AntDir-v0",
    "metarl/AntGoal-v0",
    "metarl/AntVel-v0",
]
ML1_FAMILIES = {
    "metarl/ML1Reach-v3": "reach-v3",
    "metarl/ML1Push-v3": "push-v3",
    "metarl/ML1PickPlace-v3": "pick-place-v3",
}


def test_robot_families_are_registered_with_their_policy_names() -> None:
    for env_id in ROBOT_FAMILIES:
        assert env_id in envs.registered_families() and env_id in gym.registry
    assert envs.policy_name("metarl/AntGoal-v0") == "ant-goal"
    assert envs.policy_name("metarl/HalfCheetahDir-v0") == "half-cheetah-dir"


def test_optional_family_hints_name_their_extra() -> None:
    assert "metarl[mujoco]" in envs.OPTIONAL_FAMILIES["metarl/AntDir-v0"]
    assert "metarl-envs[metaworld]" in envs.OPTIONAL_FAMILIES["metarl/ML1Reach-v3"]


# --- HalfCheetahDir ----------------------------------------------------------------------------


def test_half_cheetah_dir_reward_by_hand() -> None:
    env = BatchedHalfCheetahDir(2)
    env.set_tasks([{"direction": 1.0}, {"direction": -1.0}])
    env.reset(np.random.default_rng(0))
    for d in env._data:  # the same constructed state in both: moving forward at 1.5
        d.qpos[:] = 0.0
        d.qvel[:] = 0.0
        d.qvel[0] = 1.5
        mujoco.mj_forward(env._model, d)
    action = np.array([[0.5, -0.5, 0.2, 0.0, 1.0, -1.0]] * 2)
    _, rewards, term = env.step(action)
    velocity = np.array([d.qpos[0] for d in env._data]) / 0.05  # from x = 0
    assert velocity[0] == velocity[1] and velocity[0] > 0.5
    ctrl = 0.05 * (0.25 + 0.25 + 0.04 + 1 + 1)
    np.testing.assert_allclose(rewards, [velocity[0] - ctrl, -velocity[0] - ctrl], rtol=1e-5)
    assert not term.any()
    with pytest.raises(ValueError, match="direction"):
        env.set_tasks([{"direction": 0.5}, {"direction": 1.0}])
    directions = [t["direction"] for t in env.sample_tasks(400, np.random.default_rng(0))]
    assert set(directions) == {-1.0, 1.0} and abs(np.mean(directions)) < 0.15


# --- Ant ---------------------------------------------------------------------------------------


def _constructed_ant(cls: type[BatchedAnt], tasks: list[dict[str, float]]) -> BatchedAnt:
    """Ants standing on the floor at (0.3, -0.2) after 3 s of rest, then sliding at (1, 0.5): a
    known state whose next step has feet on the floor (contact forces)."""
    env = cls(len(tasks))
    env.set_tasks(tasks)
    env.reset(np.random.default_rng(0))
    for d in env._data:
        mujoco.mj_resetData(env._model, d)
        mujoco.mj_step(env._model, d, nstep=300)
        d.qpos[:2] = [0.3, -0.2]
        d.qvel[:] = 0.0
        d.qvel[:2] = [1.0, 0.5]
        mujoco.mj_forward(env._model, d)
    return env


def _shared_terms(env: BatchedAnt, action: np.ndarray) -> np.ndarray:
    """0.05 - 0.005 |a|^2 - 0.0005 |clip(cfrc_ext)|^2 after the step, per env."""
    contact = np.array([(np.clip(d.cfrc_ext, -1, 1) ** 2).sum() for d in env._data])
    return 0.05 - 0.005 * (np.clip(action, -1, 1) ** 2).sum(1) - 0.0005 * contact


@pytest.mark.parametrize(
    ("cls", "tasks", "task_term"),
    [
        (BatchedAntDir, [{"direction": 1.0}, {"direction": -1.0}], "dir"),
        (
            BatchedAntGoal,
            [{"goal_x": 2.0, "goal_y": -1.0}, {"goal_x": -3.0, "goal_y": 3.0}],
            "goal",
        ),
        (BatchedAntVel, [{"velocity": 0.5}, {"velocity": 2.5}], "vel"),
    ],
)
def test_ant_rewards_by_hand(
    cls: type[BatchedAnt], tasks: list[dict[str, float]], task_term: str
) -> None:
    env = _constructed_ant(cls, tasks)
    # The torso's position as MuJoCo leaves it after a step (body positions from the last
    # substep's kinematics), as gymnasium's Ant-v5 and pytorch-maml-rl read it.
    x0 = np.array([d.xpos[1, 0] for d in env._data])
    action = np.full((2, 8), 0.1)
    obs, rewards, term = env.step(action)
    xy = np.array([d.xpos[1, :2] for d in env._data])
    velocity = (xy[:, 0] - x0) / 0.05
    assert abs(velocity[0] - 1.0) < 0.5  # it kept moving forward at about 1
    if task_term == "dir":
        expected = np.array([velocity[0], -velocity[1]])
    elif task_term == "goal":
        goals = np.array([[2.0, -1.0], [-3.0, 3.0]])
        expected = 4.0 - np.abs(xy - goals).sum(1)
    else:
        expected = 1.0 - np.abs(velocity - [0.5, 2.5])
    shared = _shared_terms(env, action)
    # |a|^2 = 8 * 0.01
    assert 0.05 - shared[0] == pytest.approx(0.005 * 0.08 + 0.0005 * float(
        (np.clip(env._data[0].cfrc_ext, -1, 1) ** 2).sum()))  # fmt: skip
    assert float((env._data[0].cfrc_ext ** 2).sum()) > 0  # contact forces were computed
    np.testing.assert_allclose(rewards, expected + shared, rtol=1e-5, atol=1e-5)
    assert not term.any()
    assert obs.shape == (2, 107)
    np.testing.assert_allclose(obs[0, :15], env._data[0].qpos, rtol=1e-6)
    np.testing.assert_allclose(
        obs[0, 29:], np.clip(env._data[0].cfrc_ext[1:], -1, 1).ravel(), rtol=1e-6
    )


def test_ant_terminates_when_the_torso_leaves_02_to_1() -> None:
    env = BatchedAntDir(3)
    env.set_tasks([{"direction": 1.0}] * 3)
    env.reset(np.random.default_rng(0))
    for d, z in zip(env._data, [0.75, 0.75, 1.5], strict=True):
        d.qpos[2] = z
        d.qvel[:] = 0.0
    _, _, term = env.step(np.zeros((3, 8)))
    assert term.tolist() == [False, False, True]  # thrown above 1.0: still above after 0.05 s
    # The ended episode is not simulated again: same state, reward 0, still terminated.
    frozen = env._data[2].qpos.copy()
    obs, rewards, term = env.step(np.zeros((3, 8)))
    assert term.tolist() == [False, False, True] and rewards[2] == 0.0 and rewards[0] != 0.0
    np.testing.assert_array_equal(env._data[2].qpos, frozen)
    np.testing.assert_allclose(obs[2, :15], frozen, rtol=1e-6)
    for d, z in zip(env._data, [0.19, 0.2, 1.0], strict=True):
        d.qpos[2] = z
    assert env._healthy().tolist() == [False, True, True]  # the bounds belong to [0.2, 1]
    env._data[1].qvel[3] = math.nan
    assert env._healthy().tolist() == [False, False, True]
    obs = env.reset_envs(np.array([True, True, True]), np.random.default_rng(1))
    assert 0.6 < obs[0, 2] < 0.9 and np.isfinite(obs).all()  # restarted at 0.75 +- 0.1
    assert env._healthy().tolist() == [True, True, True]
    _, _, term = env.step(np.zeros((3, 8)))  # a reset env runs again
    assert term.tolist() == [False, False, False] and env._data[2].qpos[2] != frozen[2]


def test_ant_dir_is_gymnasium_ant_v5_with_the_maml_weights() -> None:
    """AntDir (+1) is gymnasium's Ant-v5 with pytorch-maml-rl's weights, step for step:
    observation (positions included, contact forces), reward while healthy, termination."""
    ref = gym.make(
        "Ant-v5",
        ctrl_cost_weight=0.005,
        contact_cost_weight=5e-4,
        healthy_reward=0.05,
        exclude_current_positions_from_observation=False,
        include_cfrc_ext_in_observation=True,
    ).unwrapped
    ref_obs, _ = ref.reset(seed=0)
    env = BatchedAntDir(1)
    env.set_tasks([{"direction": 1.0}])
    env.reset(np.random.default_rng(0))
    d = env._data[0]
    d.qpos[:] = ref.data.qpos  # type: ignore[attr-defined]
    d.qvel[:] = ref.data.qvel  # type: ignore[attr-defined]
    mujoco.mj_forward(env._model, d)
    mujoco.mj_rnePostConstraint(env._model, d)
    np.testing.assert_allclose(env._obs()[0], ref_obs, rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(1)
    steps = 0
    for _ in range(200):
        a = rng.uniform(-1, 1, size=8).astype(np.float32)
        ref_obs, ref_r, ref_term, _, _ = ref.step(a)
        obs, r, term = env.step(a[None])
        np.testing.assert_allclose(obs[0], ref_obs, rtol=1e-5, atol=1e-6)
        assert bool(term[0]) == ref_term
        if ref_term:  # Ant-v5 drops the survive bonus once unhealthy; the MAML reward keeps it
            assert float(r[0]) == pytest.approx(ref_r + 0.05, rel=1e-5, abs=1e-5)
            break
        assert float(r[0]) == pytest.approx(ref_r, rel=1e-5, abs=1e-5)
        steps += 1
    assert steps > 20


def test_ant_goals_uniform_in_the_square() -> None:
    tasks = BatchedAntGoal.sample_tasks(4000, np.random.default_rng(0))
    goals = np.array([[t["goal_x"], t["goal_y"]] for t in tasks])
    assert goals.min() >= -3 and goals.max() <= 3
    np.testing.assert_allclose(goals.var(0), [3.0, 3.0], rtol=0.08)  # 6^2 / 12
    velocities = [t["velocity"] for t in BatchedAntVel.sample_tasks(500, np.random.default_rng(0))]
    assert min(velocities) >= 0 and max(velocities) <= 3


# --- Meta-World ML1 ----------------------------------------------------------------------------

metaworld_required = pytest.mark.skipif(
    "metarl/ML1Reach-v3" not in envs.registered_families(),
    reason="the metaworld extra is not installed",
)


@metaworld_required
@pytest.mark.parametrize("env_id", list(ML1_FAMILIES))
def test_ml1_equals_metaworld_envs_step_for_step(env_id: str) -> None:
    """The batched family (envs sharing one model, restarted at different times) against
    Meta-World's own envs, a fresh one per task as ML1's README builds them."""
    import metaworld

    name = ML1_FAMILIES[env_id]
    ml1 = metaworld.ML1(name, seed=0)
    cls = envs.family(env_id).batched_cls
    tasks = [
        {"split": 0.0, "index": 3.0},
        {"split": 1.0, "index": 7.0},
        {"split": 0.0, "index": 49.0},
    ]
    refs = []
    for task in tasks:
        ref = ml1.train_classes[name]()
        ref.set_task((ml1.test_tasks if task["split"] else ml1.train_tasks)[int(task["index"])])
        refs.append(ref)
    env = cls(3)
    env.set_tasks(tasks)
    obs = env.reset(np.random.default_rng(0))
    for i, ref in enumerate(refs):
        np.testing.assert_array_equal(obs[i], ref.reset()[0].astype(np.float32))
    rng = np.random.default_rng(0)
    for t in range(120):
        actions = rng.uniform(-1, 1, size=(3, 4))
        obs, rewards, term = env.step(actions)
        for i, ref in enumerate(refs):
            o, r, _, _, info = ref.step(actions[i])
            np.testing.assert_array_equal(obs[i], o.astype(np.float32))
            assert float(rewards[i]) == np.float32(r)
            assert bool(env.success[i]) == bool(info["success"])
        assert not term.any()
        if t == 60:  # restart env 1 alone: the others must not notice
            obs = env.reset_envs(np.array([False, True, False]), np.random.default_rng(1))
            np.testing.assert_array_equal(obs[1], refs[1].reset()[0].astype(np.float32))


@metaworld_required
def test_ml1_train_and_test_goals_are_ml1s_and_kept_apart() -> None:
    import metaworld

    cls = envs.family("metarl/ML1Reach-v3").batched_cls
    train = cls.sample_tasks(50, np.random.default_rng(0))
    test = cls.sample_test_tasks(50, np.random.default_rng(0))
    assert {t["split"] for t in train} == {0.0} and {t["split"] for t in test} == {1.0}
    assert (
        sorted(t["index"] for t in train)
        == sorted(t["index"] for t in test)
        == list(map(float, range(50)))
    )  # a request of up to 50 draws without replacement: all 50 goals once
    assert len(cls.sample_tasks(120, np.random.default_rng(0))) == 120
    assert train == cls.sample_tasks(50, np.random.default_rng(0))
    gym_env = gym.make("metarl/ML1Reach-v3").unwrapped
    assert gym_env.sample_tasks(5, seed=1, split="test") == cls.sample_test_tasks(  # type: ignore[attr-defined]
        5, np.random.default_rng(1)
    )
    # The goals are ML1's (seed 0): train from seed 0, test from seed 1; no goal in both.
    env = cls(2)
    env.set_tasks([{"split": 0.0, "index": 5.0}, {"split": 1.0, "index": 5.0}])
    env.reset(np.random.default_rng(0))
    ml1 = metaworld.ML1("reach-v3", seed=0)
    import pickle

    rand_vec = [pickle.loads(t.data)["rand_vec"] for t in (ml1.train_tasks[5], ml1.test_tasks[5])]
    for i in range(2):
        np.testing.assert_array_equal(env._envs[i]._last_rand_vec, rand_vec[i])
    train_goals = {tuple(pickle.loads(t.data)["rand_vec"]) for t in ml1.train_tasks}
    test_goals = {tuple(pickle.loads(t.data)["rand_vec"]) for t in ml1.test_tasks}
    assert len(train_goals) == len(test_goals) == 50 and not train_goals & test_goals
    env.max_episode_steps = 501  # type: ignore[misc]
    with pytest.raises(ValueError, match="at most 500 steps"):
        env.reset(np.random.default_rng(0))
    env.max_episode_steps = 500  # type: ignore[misc]
    for bad in (
        {"split": 2.0, "index": 0.0},
        {"split": 0.0, "index": 50.0},
        {"split": 0.0, "index": 1.5},
    ):
        with pytest.raises(ValueError, match="ML1 task"):
            env.set_tasks([bad, bad])


@metaworld_required
def test_ml1_reach_success_flag_flows() -> None:
    """A hand-written controller that knows the (hidden) goal reaches it: ``success`` turns true
    in the batched env, ``info["success"]`` in the gymnasium env and the vector env."""
    env = gym.make("metarl/ML1Reach-v3", task={"split": 1.0, "index": 0.0})
    inner: Any = env.unwrapped
    obs, _ = env.reset(seed=0)
    target = inner._batched._envs[0]._target_pos
    assert obs[36:].tolist() == [0.0, 0.0, 0.0]  # the goal is hidden
    flags = []
    for _ in range(150):
        action = np.append(np.clip(20 * (target - obs[:3]), -1, 1), 0.0).astype(np.float32)
        obs, _, term, trunc, info = env.step(action)
        flags.append(info["success"])
        assert not term and not trunc
    assert not flags[0] and flags[-1]
    vec = gym.make_vec("metarl/ML1Reach-v3", num_envs=2, vectorization_mode="vector_entry_point")
    vec.reset(seed=0, options={"tasks": [{"split": 1.0, "index": 0.0}] * 2})
    _, _, _, _, info = vec.step(np.zeros((2, 4), np.float32))
    assert info["success"].tolist() == [False, False] and info["_success"].all()


def test_families_without_a_test_split_hold_out_fresh_draws() -> None:
    cls = envs.family("metarl/AntGoal-v0").batched_cls
    assert cls.sample_test_tasks(3, np.random.default_rng(4)) == cls.sample_tasks(
        3, np.random.default_rng(4)
    )
    assert not cls.reports_success
    env = gym.make("metarl/AntGoal-v0")
    env.reset(seed=0)
    assert "success" not in env.step(env.action_space.sample())[4]


def test_robot_families_run_without_torch() -> None:
    """A client machine (metarl-envs[mujoco,metaworld], no torch) runs every robot family."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys, warnings

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "metarl", "metarl_server", "metarl_client"):
                    raise ImportError(f"{name} is blocked in this test")
                return None

        sys.meta_path.insert(0, Block())
        warnings.filterwarnings("ignore")
        import gymnasium as gym
        import metarl_envs

        for env_id in sys.argv[1:]:
            env = gym.make(env_id)
            task = env.unwrapped.sample_tasks(1, seed=0, split="test")[0]
            env.reset(seed=0, options={"task": task})
            env.step(env.action_space.sample())
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    ids = [i for i in [*ROBOT_FAMILIES, *ML1_FAMILIES] if i in envs.registered_families()]
    proc = subprocess.run(
        [sys.executable, "-c", script, *ids], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
