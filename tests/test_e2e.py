"""A real server on [::]:0 and the client: create, act, adapt, act; parity with the trainer."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import metarl  # noqa: F401  (registers the task families)
from metarl.core import inner_loop, policies
from metarl.core.checkpoint import bundled_checkpoints_dir, load_checkpoint
from metarl_client import Episode, PolicyClient, SessionNotFound
from metarl_client.helpers import mean_return, rollout

POLICY = "cartpole-family"


def test_list_policies_describes_the_bundled_policy(server_target: str) -> None:
    with PolicyClient(server_target) as client:
        (policy,) = [p for p in client.list_policies() if p.name == POLICY]
    assert policy.env_id == "metarl/CartPoleFamily-v0"
    assert policy.latest_version == "1"
    assert policy.observation_space.kind == "box" and policy.observation_space.shape == (4,)
    assert policy.action_space.kind == "discrete" and policy.action_space.n == 2
    assert policy.inner_loop.learning_rate == pytest.approx(1.0)
    assert policy.inner_loop.default_steps == 1


def test_create_act_adapt_act_improves_on_an_unseen_task(server_target: str) -> None:
    env = gym.make("metarl/CartPoleFamily-v0")
    # Seed 987654 is not a training seed; polarity -1 is the case a non-adapted policy fails.
    tasks = env.unwrapped.sample_tasks(20, seed=987654)  # type: ignore[attr-defined]
    task = next(t for t in tasks if t["polarity"] == -1.0)
    env.unwrapped.set_task(task)  # type: ignore[attr-defined]
    with PolicyClient(server_target) as client, client.create_session(POLICY, seed=3) as session:
        assert session.version == "1"
        before = rollout(env, session, episodes=10, seed=100)
        action = session.act(before[0].observations[0])
        assert action in (0, 1)
        stats = session.adapt(before)
        assert stats.steps == 1 and stats.episodes == 10
        assert stats.transitions == sum(len(e) for e in before)
        assert stats.loss_after < stats.loss_before
        after = rollout(env, session, episodes=10, seed=200)
        info = session.info()
        assert info.adaptations == 1 and info.adaptation_steps == 1
    assert mean_return(after) > 1.5 * mean_return(before), (mean_return(before), mean_return(after))


def test_act_batch_and_deterministic_actions(server_target: str) -> None:
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32) * 0.05
    with PolicyClient(server_target) as client, client.create_session(POLICY) as session:
        result = session.act_batch(obs, deterministic=True)
        again = session.act_batch(obs, deterministic=True)
    assert result.actions.shape == (5,) and result.log_probs.shape == (5,)
    np.testing.assert_array_equal(result.actions, again.actions)
    assert (result.log_probs <= 0).all()


def test_a_seeded_session_samples_the_same_actions(server_target: str) -> None:
    obs = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
    with PolicyClient(server_target) as client:
        runs = []
        for _ in range(2):
            with client.create_session(POLICY, seed=42) as session:
                runs.append(session.act_batch(obs).actions)
    np.testing.assert_array_equal(*runs)


def test_deleted_session_is_gone(server_target: str) -> None:
    with PolicyClient(server_target) as client:
        session = client.create_session(POLICY)
        session.close()
        with pytest.raises(SessionNotFound, match="no session"):
            session.act(np.zeros(4, np.float32))


def test_adapt_over_grpc_matches_the_in_process_inner_loop(server_target: str) -> None:
    """Train/serve parity: the server's theta' is the one metarl.core.inner_loop computes."""
    ckpt = load_checkpoint(bundled_checkpoints_dir() / POLICY / "1")
    rng = np.random.default_rng(5)
    episodes = []
    for length in (17, 40, 9):
        episodes.append(
            Episode(
                rng.normal(size=(length, 4)).astype(np.float32) * 0.1,
                rng.integers(0, 2, size=length),
                rng.uniform(0, 1, size=length).astype(np.float32),
                terminated=True,
            )
        )
    probe = rng.normal(size=(32, 4)).astype(np.float32) * 0.1

    with PolicyClient(server_target) as client, client.create_session(POLICY) as session:
        session.adapt(episodes, steps=2)
        served = session.act_batch(probe, deterministic=True)

    batch = inner_loop.pad_episodes(
        [
            (torch.tensor(e.observations), torch.tensor(e.actions), torch.tensor(e.rewards))
            for e in episodes
        ]
    )
    adapted = inner_loop.adapt_on_episodes(ckpt.spec, ckpt.params, batch, ckpt.inner_loop, steps=2)
    local_params = {k: v[0] for k, v in adapted.items()}
    actions, logp = policies.act(ckpt.spec, local_params, torch.tensor(probe), deterministic=True)
    np.testing.assert_array_equal(served.actions, actions.numpy())
    np.testing.assert_allclose(served.log_probs, logp.numpy(), atol=1e-6, rtol=0)
