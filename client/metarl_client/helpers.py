"""Running a served policy in gymnasium envs (duck-typed: the SDK never imports gymnasium).

- :func:`rollout` collects episodes with a session's actions, from a single env
  (``reset()``/``step()`` as in gymnasium) or a gymnasium 1.x vector env (anything with
  ``num_envs``: one ``act_batch`` call per vector step, autoreset handled), in the form
  :meth:`metarl_client.Session.adapt` takes.
- :func:`adapt_on` does collect -> adapt -> report in one call.
- :func:`rollout_async` and :func:`adapt_on_async` are the same for
  :class:`metarl_client.AsyncSession`.

With a recording session (``create_session(..., record=True)``) and a single env, the rollout
also reports each reward, so the server's recording holds the same episodes and ``adapt()``
without episodes adapts on them. (Batched calls are not recorded.)
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from metarl_client.types import AdaptStats, Episode

if TYPE_CHECKING:
    from metarl_client.aio import AsyncSession
    from metarl_client.client import Session


class _Act(NamedTuple):
    obs: Any
    batch: bool
    reward: float | None = None


class _Report(NamedTuple):
    reward: float
    terminated: bool
    truncated: bool


_Collector = Generator["_Act | _Report", Any, list[Episode]]


def _episode(
    obs: list[Any],
    acts: list[Any],
    rews: list[float],
    term: bool,
    trunc: bool,
    succ: list[bool] | None = None,
) -> Episode:
    return Episode(
        np.stack([np.asarray(o) for o in obs]),
        np.asarray(acts),
        np.asarray(rews, dtype=np.float32),
        terminated=term,
        truncated=trunc,
        # Only when every step reported the flag (a family without one reports none).
        successes=np.asarray(succ, dtype=bool) if succ and len(succ) == len(rews) else None,
    )


def _success_flag(info: Any, j: int | None = None) -> bool | None:
    """``info["success"]`` of a step (of sub-env ``j`` of a vector env), or None."""
    if not isinstance(info, dict) or "success" not in info:
        return None
    flag = info["success"]
    if j is None:
        return bool(flag)
    present = info.get("_success")
    if present is not None and not present[j]:
        return None
    return bool(np.asarray(flag)[j])


def _single_env(
    env: Any, episodes: int, seed: int | None, max_steps: int, report: bool
) -> _Collector:
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=None if seed is None else seed + i)
        observations: list[Any] = []
        actions: list[Any] = []
        rewards: list[float] = []
        successes: list[bool] = []
        terminated = truncated = False
        while not (terminated or truncated) and len(rewards) < max_steps:
            previous = rewards[-1] if (report and rewards) else None
            action = yield _Act(obs, False, previous)
            observations.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            rewards.append(float(reward))
            flag = _success_flag(info)
            if flag is not None:
                successes.append(flag)
        cut = not (terminated or truncated)  # max_steps reached: the episode was cut short
        if report and rewards:
            yield _Report(rewards[-1], bool(terminated), bool(truncated) or cut)
        out.append(
            _episode(
                observations, actions, rewards, bool(terminated), bool(truncated) or cut, successes
            )
        )
    return out


def _autoreset_mode(env: Any) -> str:
    """``"NextStep"`` (gymnasium 1.x's default), ``"SameStep"`` or ``"Disabled"``."""
    mode = (getattr(env, "metadata", None) or {}).get("autoreset_mode", "NextStep")
    return str(getattr(mode, "value", mode))


def _vector_env(env: Any, episodes: int, seed: int | None, max_steps: int) -> _Collector:
    n = int(env.num_envs)
    # Each sub-env contributes a fixed number of episodes: taking the first `episodes` to end
    # would favour short ones.
    quota = [episodes // n + (1 if j < episodes % n else 0) for j in range(n)]
    mode = _autoreset_mode(env)
    if mode not in ("NextStep", "SameStep", "Disabled"):
        raise ValueError(f"unknown autoreset mode {mode!r} of the vector env")
    obs, _ = env.reset(seed=seed)
    buffers: list[tuple[list[Any], list[Any], list[float], list[bool]]] = [
        ([], [], [], []) for _ in range(n)
    ]
    finished: list[Episode] = []
    counts = [0] * n
    resetting = np.zeros(n, dtype=bool)  # NextStep: this step only resets the sub-env
    discarding = np.zeros(n, dtype=bool)  # cut at max_steps: drop the rest of the episode
    while any(counts[j] < quota[j] for j in range(n)):
        actions = yield _Act(obs, True)
        next_obs, rewards, terms, truncs, info = env.step(actions)
        ended = np.logical_or(terms, truncs)
        for j in range(n):
            if resetting[j] or discarding[j] or counts[j] >= quota[j]:
                continue
            o, a, r, f = buffers[j]
            o.append(obs[j])
            a.append(actions[j])
            r.append(float(rewards[j]))
            flag = _success_flag(info, j)
            if flag is not None:
                f.append(flag)
            if ended[j] or len(r) >= max_steps:
                finished.append(
                    _episode(o, a, r, bool(terms[j]), bool(truncs[j]) or not ended[j], f)
                )
                counts[j] += 1
                buffers[j] = ([], [], [], [])
                discarding[j] = not ended[j]
        discarding &= ~ended
        if mode == "NextStep":
            resetting = ended
        elif mode == "Disabled" and ended.any():
            next_obs, _ = env.reset(options={"reset_mask": ended})
        obs = next_obs
    return finished


def _collector(
    env: Any, episodes: int, seed: int | None, max_steps: int, report: bool
) -> _Collector:
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if hasattr(env, "num_envs"):
        return _vector_env(env, episodes, seed, max_steps)
    return _single_env(env, episodes, seed, max_steps, report)


def rollout(
    env: Any,
    session: Session,
    episodes: int = 1,
    *,
    deterministic: bool = False,
    seed: int | None = None,
    max_steps: int = 100_000,
) -> list[Episode]:
    """Runs ``episodes`` episodes of ``env`` with the session's actions and returns them in
    the form :meth:`~metarl_client.Session.adapt` takes.

    ``env`` is a gymnasium env, or a gymnasium 1.x vector env (any autoreset mode; each
    sub-env runs ``episodes / num_envs`` episodes, one ``act_batch`` call per vector step).
    ``seed`` seeds the resets: episode ``i`` of a single env resets with ``seed + i``; a
    vector env resets once with ``seed``. ``max_steps`` cuts an episode short (marked
    ``truncated``). Episodes come back in the order they ended.
    """
    gen = _collector(env, episodes, seed, max_steps, session.recording)
    try:
        request = next(gen)
        while True:
            result: Any = None
            if isinstance(request, _Report):
                session.report(*request)
            elif request.batch:
                result = session.act_batch(request.obs, deterministic).actions
            else:
                result = session.act(request.obs, deterministic, reward=request.reward)
            request = gen.send(result)
    except StopIteration as stop:
        return list(stop.value)


async def rollout_async(
    env: Any,
    session: AsyncSession,
    episodes: int = 1,
    *,
    deterministic: bool = False,
    seed: int | None = None,
    max_steps: int = 100_000,
) -> list[Episode]:
    """:func:`rollout` for an :class:`~metarl_client.AsyncSession` (the env's own steps run
    in the event loop: keep them cheap, or use a thread)."""
    gen = _collector(env, episodes, seed, max_steps, session.recording)
    try:
        request = next(gen)
        while True:
            result: Any = None
            if isinstance(request, _Report):
                await session.report(*request)
            elif request.batch:
                result = (await session.act_batch(request.obs, deterministic)).actions
            else:
                result = await session.act(request.obs, deterministic, reward=request.reward)
            request = gen.send(result)
    except StopIteration as stop:
        return list(stop.value)


def mean_return(episodes: list[Episode]) -> float:
    """Mean undiscounted return."""
    if not episodes:
        raise ValueError("no episodes")
    return float(np.mean([float(np.sum(ep.rewards)) for ep in episodes]))


def success_rate(episodes: list[Episode]) -> float | None:
    """Fraction of the episodes that succeeded (Meta-World's protocol: the flag set at any
    step); None when an episode carries no success flag."""
    if not episodes:
        raise ValueError("no episodes")
    flags = [ep.succeeded for ep in episodes]
    if any(f is None for f in flags):
        return None
    return float(np.mean([bool(f) for f in flags]))


@dataclass(frozen=True)
class AdaptResult:
    """What :func:`adapt_on` did."""

    stats: AdaptStats
    """What the inner loop did."""
    episodes: list[Episode]
    """The episodes collected before adapting (and adapted on)."""
    return_before: float
    """Mean return of those episodes, under the parameters the session had before."""
    return_after: float | None = None
    """Mean return over ``eval_episodes`` run after adapting (None if none were run)."""
    success_before: float | None = None
    """Success rate of the collected episodes (None when the env reports no success flag)."""
    success_after: float | None = None
    """Success rate of the ``eval_episodes`` (Meta-World's protocol: adapt on the collected
    episodes, score fresh ones); None if none were run or the env reports no success flag."""

    @property
    def returns_before(self) -> list[float]:
        """Return of each episode collected before adapting."""
        return [ep.total_reward for ep in self.episodes]


def adapt_on(
    env: Any,
    session: Session,
    episodes: int = 10,
    steps: int | None = None,
    *,
    eval_episodes: int = 0,
    deterministic: bool = False,
    seed: int | None = None,
) -> AdaptResult:
    """Collect -> adapt -> report: runs ``episodes`` episodes of ``env`` with the session,
    adapts the session on them (``steps`` inner steps; the policy's default when None) and,
    if ``eval_episodes``, runs that many more with the adapted parameters."""
    collected = rollout(env, session, episodes, deterministic=deterministic, seed=seed)
    stats = session.adapt(collected, steps=steps)
    fresh: list[Episode] = []
    if eval_episodes:
        eval_seed = None if seed is None else seed + episodes
        fresh = rollout(env, session, eval_episodes, deterministic=deterministic, seed=eval_seed)
    return _result(stats, collected, fresh)


def _result(stats: AdaptStats, collected: list[Episode], fresh: list[Episode]) -> AdaptResult:
    return AdaptResult(
        stats,
        collected,
        mean_return(collected),
        mean_return(fresh) if fresh else None,
        success_rate(collected),
        success_rate(fresh) if fresh else None,
    )


async def adapt_on_async(
    env: Any,
    session: AsyncSession,
    episodes: int = 10,
    steps: int | None = None,
    *,
    eval_episodes: int = 0,
    deterministic: bool = False,
    seed: int | None = None,
) -> AdaptResult:
    """:func:`adapt_on` for an :class:`~metarl_client.AsyncSession`."""
    collected = await rollout_async(env, session, episodes, deterministic=deterministic, seed=seed)
    stats = await session.adapt(collected, steps=steps)
    fresh: list[Episode] = []
    if eval_episodes:
        eval_seed = None if seed is None else seed + episodes
        fresh = await rollout_async(
            env, session, eval_episodes, deterministic=deterministic, seed=eval_seed
        )
    return _result(stats, collected, fresh)
