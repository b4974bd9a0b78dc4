"""Adapt a served policy to a robot task it never saw: the simulation runs here, on the client.

The MuJoCo (HalfCheetahDir, Ant*) or Meta-World (ML1 reach/push/pick-place) task runs in this
process; only observations, actions and the episodes go to the server, which adapts the
session's copy of the policy. Needs no torch: ``pip install ./client './envs[mujoco]'``
(``'./envs[metaworld]'`` for the ML1 families).

    metarl serve &        # serves the bundled half-cheetah-dir and ml1-reach checkpoints
    python examples/robot_adaptation.py --target localhost:50051 --policy half-cheetah-dir
    python examples/robot_adaptation.py --policy ml1-reach --episodes 10

It draws one held-out task (an ML1 test goal; for the other families a task from a seed
training never used), runs ``--episodes`` episodes with the meta-trained policy, sends them to
Adapt, then runs ``--episodes`` fresh episodes with the adapted policy and prints the mean return
and, where the family reports one, the success rate of each (Meta-World's protocol: an episode
succeeded if the task's success flag was set at any step).
"""

from __future__ import annotations

import argparse
import sys

import gymnasium as gym

import metarl_envs  # noqa: F401  (registers the metarl/ families; pip install './envs[mujoco]')
from metarl_client import MetarlError, PolicyClient, Unavailable
from metarl_client.helpers import adapt_on


def percent(rate: float | None) -> str:
    return "n/a (no success flag)" if rate is None else f"{100 * rate:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--target", default="localhost:50051", help="policy server host:port")
    parser.add_argument("--policy", default="half-cheetah-dir", help="a served policy's name")
    parser.add_argument("--episodes", type=int, default=10, help="episodes before and after")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=100,
        help="episode length (the bundled checkpoints were trained on 100 steps)",
    )
    parser.add_argument("--steps", type=int, default=None, help="inner steps (server default)")
    parser.add_argument("--seed", type=int, default=20261206, help="picks the held-out task")
    args = parser.parse_args()

    with PolicyClient(args.target) as client:
        policy = client.policy(args.policy)
        env_id = policy.env_id
        probe = gym.make(env_id)
        (task,) = probe.unwrapped.sample_tasks(1, seed=args.seed, split="test")  # type: ignore[attr-defined]
        probe.close()
        print(f"policy {policy.name} v{policy.latest_version} on {env_id}")
        print("held-out task:", ", ".join(f"{k}={v:g}" for k, v in task.items()))
        # One vector env, an episode per sub-env: one batched Act per simulation step.
        env = gym.make_vec(
            env_id,
            num_envs=args.episodes,
            vectorization_mode="vector_entry_point",
            tasks=[task] * args.episodes,
            max_episode_steps=args.max_steps,
        )
        with client.create_session(args.policy, seed=args.seed) as session:
            result = adapt_on(
                env,
                session,
                episodes=args.episodes,
                steps=args.steps,
                eval_episodes=args.episodes,
                seed=args.seed,
            )
        env.close()
    stats = result.stats
    print(
        f"meta-trained policy: mean return {result.return_before:.1f}, "
        f"success {percent(result.success_before)} over {args.episodes} episodes"
    )
    ms = stats.duration_seconds * 1000
    print(f"adapt: {stats.steps} step(s) on {stats.transitions} transitions in {ms:.0f} ms")
    print(
        f"adapted policy:      mean return {result.return_after:.1f}, "
        f"success {percent(result.success_after)} over {args.episodes} fresh episodes"
    )


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
