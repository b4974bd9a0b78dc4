"""An asyncio client driving many sessions at once.

Each of ``--sessions`` simulated robots gets its own new CartPole-family task and its own
session; all of them act, adapt and act again concurrently over one connection
(``AsyncPolicyClient``). Prints each robot's returns before and after adapting, and the
throughput.

    metarl serve &
    python examples/async_many_sessions.py --target localhost:50051 --sessions 16
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import gymnasium as gym

import metarl_envs  # noqa: F401  (registers metarl/CartPoleFamily-v0; pip install ./envs)
from metarl_client import AsyncPolicyClient, MetarlError, Unavailable
from metarl_client.helpers import AdaptResult, adapt_on_async

ENV_ID = "metarl/CartPoleFamily-v0"


async def robot(
    client: AsyncPolicyClient, policy: str, task: dict[str, Any], episodes: int, seed: int
) -> AdaptResult:
    env = gym.make(ENV_ID, task=task)
    try:
        async with client.create_session(policy, seed=seed) as session:
            return await adapt_on_async(
                env, session, episodes=episodes, eval_episodes=episodes, seed=seed
            )
    finally:
        env.close()


async def run(args: argparse.Namespace) -> None:
    probe = gym.make(ENV_ID)
    tasks = probe.unwrapped.sample_tasks(args.sessions, seed=args.seed)  # type: ignore[attr-defined]
    probe.close()
    start = time.perf_counter()
    async with AsyncPolicyClient(args.target) as client:
        results = await asyncio.gather(
            *(
                robot(client, args.policy, task, args.episodes, args.seed + i)
                for i, task in enumerate(tasks)
            )
        )
    elapsed = time.perf_counter() - start
    steps = 0
    for i, (task, r) in enumerate(zip(tasks, results, strict=True)):
        steps += r.stats.transitions + round((r.return_after or 0) * args.episodes)
        wiring = "reversed" if task.get("polarity", 1.0) < 0 else "normal"
        print(f"robot {i:2d} ({wiring:8s} motor): return {r.return_before:6.1f} -> "
              f"{r.return_after:6.1f}")  # fmt: skip
    before = sum(r.return_before for r in results) / len(results)
    after = sum(r.return_after or 0.0 for r in results) / len(results)
    print(f"{len(results)} sessions, mean return {before:.1f} -> {after:.1f}; "
          f"{steps} actions served in {elapsed:.1f} s ({steps / elapsed:.0f}/s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--target", default="localhost:50051", help="policy server host:port")
    parser.add_argument("--policy", default="cartpole-family")
    parser.add_argument("--sessions", type=int, default=16, help="robots (sessions) at once")
    parser.add_argument("--episodes", type=int, default=5, help="episodes before and after")
    parser.add_argument("--seed", type=int, default=31337, help="picks the tasks")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    try:
        main()
    except Unavailable as exc:  # one line on stderr, not a traceback
        hint = "is `metarl serve` running at --target?"
        sys.exit(f"{sys.argv[0]}: no answer from the policy server: {exc} ({hint})")
    except MetarlError as exc:
        sys.exit(f"{sys.argv[0]}: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
