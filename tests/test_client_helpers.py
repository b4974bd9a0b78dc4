"""gymnasium helpers of the SDK (rollout, adapt_on) with real gymnasium envs, single and
vector (every autoreset mode), against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import metarl  # noqa: F401  (registers metarl/CartPoleFamily-v0)
from metarl_client import AsyncPolicyClient, Episode, PolicyClient
from metarl_client.helpers import (
    AdaptResult,
    adapt_on,
    adapt_on_async,
    mean_return,
    rollout,
    rollout_async,
)

POLICY = "cartpole-family"
ENV_ID = "metarl/CartPoleFamily-v0"


@pytest.fixture
def client(server_target: str) -> Iterator[PolicyClient]:
    with PolicyClient(server_target) as c:
        yield c


def task() -> dict[str, Any]:
    """A held-out task of the family (drawn with a seed training never used)."""
    env = gym.make(ENV_ID)
    (t,) = env.unwrapped.sample_tasks(1, seed=987_654)  # type: ignore[attr-defined]
    env.close()
    return dict(t)


class CountingEnv(gym.Env[np.ndarray, np.int64]):
    """Episodes of exactly ``length`` steps: obs[t] = [t, episode, 0, 0], reward = t + 1 if
    the action is 1 else -1; terminated at the end (or truncated when ``truncate``)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 3, truncate: bool = False) -> None:
        self.length, self.truncate = length, truncate
        self.episode, self.t = -1, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.episode, 0, 0], np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> Any:
        reward = float(self.t + 1) if int(action) == 1 else -1.0
        self.t += 1
        end = self.t >= self.length
        return self._obs(), reward, end and not self.truncate, end and self.truncate, {}


# -- single env ------------------------------------------------------------------------------


def test_rollout_returns_episodes_in_the_form_adapt_takes(client: PolicyClient) -> None:
    env = CountingEnv(length=3)
    with client.create_session(POLICY, seed=0) as session:
        episodes = rollout(env, session, episodes=2, deterministic=True)
        actions = session.act_batch(
            [[0, 0, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0]], deterministic=True
        ).actions
        assert len(episodes) == 2
        for i, ep in enumerate(episodes):
            assert isinstance(ep, Episode) and len(ep) == 3
            np.testing.assert_array_equal(ep.observations[:, 0], [0, 1, 2])  # obs before acting
            np.testing.assert_array_equal(ep.observations[:, 1], [i, i, i])
            assert ep.observations.dtype == np.float32 and ep.observations.shape == (3, 4)
            assert ep.rewards.dtype == np.float32
            if i == 0:
                np.testing.assert_array_equal(ep.actions, actions)
            want = [t + 1.0 if a == 1 else -1.0 for t, a in enumerate(ep.actions)]
            np.testing.assert_array_equal(ep.rewards, want)
            assert (ep.terminated, ep.truncated) == (True, False)
        assert mean_return(episodes) == pytest.approx(np.mean([e.total_reward for e in episodes]))
        assert session.adapt(episodes).transitions == 6


def test_rollout_on_the_task_family(client: PolicyClient) -> None:
    env = gym.make(ENV_ID, task=task())
    with client.create_session(POLICY, seed=0) as session:
        episodes = rollout(env, session, episodes=4, seed=10)
    assert len(episodes) == 4
    for ep in episodes:
        assert 1 <= len(ep) <= 200
        assert ep.observations.shape == (len(ep), 4) and ep.actions.shape == (len(ep),)
        assert set(np.unique(ep.actions)) <= {0, 1}
        np.testing.assert_array_equal(ep.rewards, 1.0)  # CartPole: +1 per step
        assert ep.terminated != ep.truncated
        assert ep.truncated == (len(ep) == 200)
    env.close()


def test_rollout_max_steps_cuts_episodes_short(client: PolicyClient) -> None:
    with client.create_session(POLICY) as session:
        (ep,) = rollout(CountingEnv(length=10), session, max_steps=4)
    assert len(ep) == 4 and (ep.terminated, ep.truncated) == (False, True)


def test_rollout_feeds_a_recording_session(client: PolicyClient) -> None:
    """A recording session records the same episodes rollout returns: adapt() on the
    recording equals adapt(episodes) on a twin session."""
    env = CountingEnv(length=4, truncate=True)
    recording = client.create_session(POLICY, seed=3, record=True)
    twin = client.create_session(POLICY, seed=3)
    try:
        episodes = rollout(env, recording, episodes=3)
        assert recording.info().recorded_transitions == 12
        got, want = recording.adapt(), twin.adapt(episodes)
        assert (got.episodes, got.transitions) == (3, 12)
        assert got.loss_before == pytest.approx(want.loss_before, rel=1e-5, abs=1e-6)
        assert got.loss_after == pytest.approx(want.loss_after, rel=1e-5, abs=1e-6)
    finally:
        recording.close()
        twin.close()


# -- vector envs -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
def test_vector_rollout_matches_single_env_rollouts(client: PolicyClient, mode) -> None:  # type: ignore[no-untyped-def]
    """With deterministic actions, sub-env j of a vector env reset with seed s plays the same
    episodes as a single env reset with seed s + j (then reset without a seed): no step of an
    autoreset leaks into an episode, whatever the autoreset mode."""
    n, per_env, seed = 3, 2, 100
    t = task()
    venv = gym.make_vec(
        ENV_ID, num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode},
        task=t,
    )  # fmt: skip
    with client.create_session(POLICY) as session:
        got = rollout(venv, session, episodes=n * per_env, deterministic=True, seed=seed)
        want: list[list[Episode]] = []
        for j in range(n):
            env = gym.make(ENV_ID, task=t)
            eps = rollout(env, session, 1, deterministic=True, seed=seed + j)
            eps += rollout(env, session, per_env - 1, deterministic=True)
            want.append(eps)
    venv.close()
    assert len(got) == n * per_env

    def key(ep: Episode) -> bytes:
        return ep.observations.tobytes()

    assert sorted(map(key, got)) == sorted(key(ep) for eps in want for ep in eps)
    by_obs = {key(ep): ep for eps in want for ep in eps}
    for ep in got:
        twin = by_obs[key(ep)]
        np.testing.assert_array_equal(ep.actions, twin.actions)
        np.testing.assert_array_equal(ep.rewards, twin.rewards)
        assert (ep.terminated, ep.truncated) == (twin.terminated, twin.truncated)


def test_vector_rollout_of_exact_episodes_and_steps(client: PolicyClient) -> None:
    """4 episodes from 3 sub-envs of fixed-length episodes: 2 + 1 + 1, each exactly as the
    env played it (obs t = 0, 1, 2), none polluted by the reset step."""
    venv = gym.vector.SyncVectorEnv([lambda: CountingEnv(length=3) for _ in range(3)])
    with client.create_session(POLICY) as session:
        episodes = rollout(venv, session, episodes=4)
    assert len(episodes) == 4
    for ep in episodes:
        np.testing.assert_array_equal(ep.observations[:, 0], [0, 1, 2])
        assert len(ep) == 3 and ep.terminated
    assert sorted(int(ep.observations[0, 1]) for ep in episodes) == [0, 0, 0, 1]


def test_vector_rollout_max_steps(client: PolicyClient) -> None:
    venv = gym.vector.SyncVectorEnv([lambda: CountingEnv(length=5) for _ in range(2)])
    with client.create_session(POLICY) as session:
        episodes = rollout(venv, session, episodes=4, max_steps=2)
    assert [len(ep) for ep in episodes] == [2, 2, 2, 2]
    assert all(ep.truncated and not ep.terminated for ep in episodes)
    for ep in episodes:  # each cut episode starts at the start of an env episode
        np.testing.assert_array_equal(ep.observations[:, 0], [0, 1])


# -- adapt_on --------------------------------------------------------------------------------


def test_adapt_on_collects_adapts_and_reports(client: PolicyClient) -> None:
    env = gym.make(ENV_ID, task=task())
    with client.create_session(POLICY, seed=0) as session:
        result = adapt_on(env, session, episodes=5, steps=2, eval_episodes=3, seed=1)
        assert isinstance(result, AdaptResult)
        assert len(result.episodes) == 5
        assert result.stats.steps == 2 and result.stats.episodes == 5
        assert result.stats.transitions == sum(len(ep) for ep in result.episodes)
        assert result.return_before == pytest.approx(np.mean(result.returns_before))
        assert result.return_after is not None and 1 <= result.return_after <= 200
        info = session.info()
        assert (info.adaptations, info.adaptation_steps) == (1, 2)
        # the episodes adapted on are the ones the meta-trained policy played
        result2 = adapt_on(env, session, episodes=2)
        assert result2.return_after is None and result2.stats.episodes == 2
    env.close()


def test_async_helpers(server_target: str) -> None:
    async def main() -> tuple[list[Episode], AdaptResult]:
        async with (
            AsyncPolicyClient(server_target) as client,
            await client.create_session(POLICY, seed=0, record=True) as session,
        ):
            env = CountingEnv(length=3)
            episodes = await rollout_async(env, session, episodes=2)
            assert (await session.info()).recorded_transitions == 6
            venv = gym.vector.SyncVectorEnv([lambda: CountingEnv(length=3)] * 2)
            vector_episodes = await rollout_async(venv, session, episodes=2)
            assert [len(ep) for ep in vector_episodes] == [3, 3]
            result = await adapt_on_async(env, session, episodes=2, eval_episodes=1)
            return episodes, result

    episodes, result = asyncio.run(main())
    assert [len(ep) for ep in episodes] == [3, 3]
    assert result.stats.transitions == 6 and result.return_after is not None


def test_rollout_on_the_familys_own_vector_env(client: PolicyClient) -> None:
    """The family's batched vector env (next-step autoreset): every episode starts from a
    reset state (CartPole's are within ±0.05), so no autoreset step leaked into one."""
    venv = gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="vector_entry_point")
    with client.create_session(POLICY, seed=0) as session:
        episodes = rollout(venv, session, episodes=8, seed=3)
    venv.close()
    assert len(episodes) == 8
    for ep in episodes:
        assert np.abs(ep.observations[0]).max() <= 0.05
        assert ep.terminated != ep.truncated and ep.truncated == (len(ep) == 200)
        np.testing.assert_array_equal(ep.rewards, 1.0)
