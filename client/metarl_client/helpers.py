"""Running a served policy in a gymnasium-style env (duck-typed: no gymnasium import)."""

from __future__ import annotations

from typing import Any

import numpy as np

from metarl_client.client import Session
from metarl_client.types import Episode


def rollout(
    env: Any,
    session: Session,
    episodes: int = 1,
    *,
    deterministic: bool = False,
    seed: int | None = None,
    max_steps: int = 100_000,
) -> list[Episode]:
    """Runs ``episodes`` episodes of ``env`` (``reset()``/``step()`` as in gymnasium) with the
    session's actions and returns them in the form :meth:`Session.adapt` takes."""
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=None if seed is None else seed + i)
        observations: list[Any] = []
        actions: list[Any] = []
        rewards: list[float] = []
        terminated = truncated = False
        while not (terminated or truncated) and len(rewards) < max_steps:
            action = session.act(obs, deterministic=deterministic)
            observations.append(np.asarray(obs))
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(float(reward))
        out.append(
            Episode(
                np.stack(observations),
                np.asarray(actions),
                np.asarray(rewards, dtype=np.float32),
                terminated=bool(terminated),
                truncated=bool(truncated),
            )
        )
    return out


def mean_return(episodes: list[Episode]) -> float:
    """Mean undiscounted return."""
    return float(np.mean([ep.rewards.sum() for ep in episodes]))
