"""Few-shot adaptation on a new CartPole-family task.

Draws a task training never saw, runs the meta-trained policy on it for a few episodes, sends
them to Adapt, and runs the adapted policy: one ``adapt_on`` call. With ``--num-envs N`` the
episodes come from a gymnasium vector env (one batched Act per vector step).

    metarl serve &
    python examples/few_shot_cartpole.py --target localhost:50051 --episodes 10
"""

from __future__ import annotations

import argparse
import sys

import gymnasium as gym

import metarl_envs  # noqa: F401  (registers metarl/CartPoleFamily-v0; pip install ./envs)
from metarl_client import MetarlError, PolicyClient, Unavailable
from metarl_client.helpers import adapt_on

ENV_ID = "metarl/CartPoleFamily-v0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--target", default="localhost:50051", help="policy server host:port")
    parser.add_argument("--policy", default="cartpole-family")
    parser.add_argument("--episodes", type=int, default=10, help="episodes before and after")
    parser.add_argument("--steps", type=int, default=None, help="inner steps (server default)")
    parser.add_argument("--num-envs", type=int, default=1, help=">1: a vector env")
    parser.add_argument("--seed", type=int, default=20261124, help="picks the new task")
    args = parser.parse_args()

    probe = gym.make(ENV_ID)
    (task,) = probe.unwrapped.sample_tasks(1, seed=args.seed)  # type: ignore[attr-defined]
    probe.close()
    print("new task:", ", ".join(f"{k}={v:.3g}" for k, v in task.items()))
    if args.num_envs > 1:
        env = gym.make_vec(ENV_ID, num_envs=args.num_envs, vectorization_mode="sync", task=task)
    else:
        env = gym.make(ENV_ID, task=task)

    with PolicyClient(args.target) as client:
        policy = client.policy(args.policy)
        il = policy.inner_loop
        print(f"policy {policy.name} v{policy.latest_version}: inner lr {il.learning_rate}")
        with client.create_session(args.policy, seed=args.seed) as session:
            result = adapt_on(
                env,
                session,
                episodes=args.episodes,
                steps=args.steps,
                eval_episodes=args.episodes,
                seed=args.seed,
            )
    stats = result.stats
    print(
        f"meta-trained policy: mean return {result.return_before:.1f} over {args.episodes} episodes"
    )
    loss = f"loss {stats.loss_before:.3f} -> {stats.loss_after:.3f}"
    ms = stats.duration_seconds * 1000
    print(f"adapt: {stats.steps} step(s) on {stats.transitions} transitions in {ms:.0f} ms, {loss}")
    print(
        f"adapted policy:      mean return {result.return_after:.1f} over {args.episodes} episodes"
    )
    env.close()


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
