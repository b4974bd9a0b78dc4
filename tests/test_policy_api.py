"""metarl.Policy, the in-process API: load (directory or bundled name/version), act, adapt,
evaluate; and parity with the server's Adapt (same episodes -> same θ' -> same actions)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import metarl
from metarl.core.checkpoint import load_checkpoint
from metarl.core.checkpoint_paths import CheckpointNotFound, bundled_checkpoints_dir
from metarl_client import Episode, PolicyClient
from metarl_server.app import create_server

pytestmark = pytest.mark.timeout(120)


def flat(params: dict[str, torch.Tensor], names: list[str]) -> np.ndarray:
    return torch.cat([params[k].reshape(-1) for k in names]).numpy()


@pytest.fixture
def server(bundled_registry) -> Iterator[tuple[object, str]]:  # type: ignore[no-untyped-def]
    server, port = create_server("[::]:0", bundled_registry)
    server.start()
    try:
        yield server, f"localhost:{port}"
    finally:
        server.stop(None)


@pytest.mark.parametrize("name", ["navigation-2d/1", "cartpole-family/1"])
def test_adapt_in_process_equals_the_servers_adapt(server, name: str) -> None:  # type: ignore[no-untyped-def]
    grpc_server, target = server
    policy = metarl.Policy.load(name, seed=0)
    env = policy.make_env()
    env.unwrapped.set_task(env.unwrapped.sample_tasks(1, seed=5)[0])
    first = policy.rollout(env, episodes=6, seed=0)
    second = policy.rollout(env, episodes=4, seed=50)
    spec = policy.checkpoint.spec
    probe = np.random.default_rng(7).normal(size=(32, spec.obs_dim)).astype(np.float32)

    once = policy.adapt(first)
    twice = once.adapt(second, steps=2)  # later steps: a session's step count sets their rates
    assert (once.inner_steps, twice.inner_steps) == (1, 3)

    names = list(spec.param_shapes())
    with PolicyClient(target) as client, client.create_session(policy.name, seed=0) as session:
        session.adapt(first)
        served_once = grpc_server.sessions.get(session.id).params.copy()
        served_once_act = session.act_batch(probe, deterministic=True)
        session.adapt(second, steps=2)
        served_twice = grpc_server.sessions.get(session.id).params.copy()
        served_twice_act = session.act_batch(probe, deterministic=True)

    np.testing.assert_allclose(flat(once.params, names), served_once, atol=1e-6, rtol=0)
    np.testing.assert_allclose(flat(twice.params, names), served_twice, atol=1e-6, rtol=0)
    for local, served in ((once, served_once_act), (twice, served_twice_act)):
        mine = local.act_batch(probe, deterministic=True)
        np.testing.assert_allclose(mine.actions, served.actions, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(mine.log_probs, served.log_probs, atol=1e-5, rtol=1e-5)
    assert not np.allclose(flat(once.params, names), flat(policy.params, names))


def test_theta_is_untouched_and_adaptation_helps_on_cartpole() -> None:
    policy = metarl.Policy.load("cartpole-family", seed=1)  # the newest bundled version
    theta = load_checkpoint(bundled_checkpoints_dir() / "cartpole-family" / "1").params
    env = gym.make("metarl/CartPoleFamily-v0")
    env.unwrapped.set_task(env.unwrapped.sample_tasks(1, seed=123)[0])
    episodes = policy.rollout(env, episodes=10, seed=0)
    assert all(isinstance(e, Episode) and len(e) > 0 for e in episodes)
    adapted = policy.adapt(episodes)
    for k, v in theta.items():
        assert torch.equal(policy.params[k], v.float())  # θ kept
    assert not all(torch.equal(adapted.params[k], v.float()) for k, v in theta.items())
    before = policy.evaluate(env, episodes=10, seed=100)
    after = adapted.evaluate(env, episodes=10, seed=100)
    assert after > before  # this task is one the bundled θ does not balance (17.6 -> 200)
    # tuples work as episodes too, and give the same θ'
    as_tuples = policy.adapt([(e.observations, e.actions, e.rewards) for e in episodes])
    for k in theta:
        assert torch.equal(as_tuples.params[k], adapted.params[k])


def test_act_and_act_batch() -> None:
    nav = metarl.Policy.load("navigation-2d/1", seed=3)
    a = nav.act(np.zeros(2), deterministic=True)
    assert isinstance(a, np.ndarray) and a.shape == (2,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, nav.act(np.zeros(2), deterministic=True))
    sampled = nav.act_batch(np.zeros((5, 2)))
    assert sampled.actions.shape == (5, 2) and sampled.log_probs.shape == (5,)
    again = metarl.Policy.load("navigation-2d/1", seed=3).act_batch(np.zeros((5, 2)))
    np.testing.assert_array_equal(sampled.actions, again.actions)  # seeded
    cp = metarl.Policy.load("cartpole-family/1")
    assert cp.act(np.zeros(4), deterministic=True) in (0, 1)
    with pytest.raises(ValueError, match=r"4 numbers .* act_batch"):
        cp.act(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="at least one episode"):
        cp.adapt([])


def test_load_a_directory_and_a_missing_one(tmp_path: Path) -> None:
    directory = bundled_checkpoints_dir() / "navigation-2d" / "1"
    policy = metarl.Policy.load(directory)
    assert (policy.name, policy.version, policy.env_id) == (
        "navigation-2d",
        "1",
        "metarl/Navigation2D-v0",
    )
    with pytest.raises(CheckpointNotFound, match="no bundled policy"):
        metarl.Policy.load(tmp_path / "nothing")


def test_import_metarl_does_not_import_torch() -> None:
    code = "import sys, metarl, metarl.envs; assert 'torch' not in sys.modules; metarl.Policy"
    code += "; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
