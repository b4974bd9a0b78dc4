"""A robot-style control loop over StreamAct that adapts after a few episodes.

The "robot" is a simulated task of the CartPole family that the policy never saw in training
(on half of them the motor is wired backwards). The loop streams one observation in and gets
one action out, reporting each step's reward on the next message; the session records what it
served, and every few episodes the robot asks the server to adapt on what it recorded since
the last time -- no episode crosses the wire twice -- and goes on with the adapted policy.

    metarl serve &                      # in another terminal
    python examples/robot_control_loop.py --target localhost:50051

Adapting on a handful of episodes is noisy: on some tasks (try --seed 1) one inner step makes
things worse, and more episodes per adaptation help.

(The SDK needs only grpcio, protobuf and numpy; gymnasium and metarl-envs (`pip install ./client
./envs`, no torch) are here only to simulate the robot.)
"""

from __future__ import annotations

import argparse
import sys

import gymnasium as gym

import metarl_envs  # noqa: F401  (registers metarl/CartPoleFamily-v0, the simulated robot)
from metarl_client import MetarlError, PolicyClient, Unavailable


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--target", default="localhost:50051", help="policy server host:port")
    parser.add_argument("--policy", default="cartpole-family")
    parser.add_argument("--episodes", type=int, default=12, help="episodes to run in all")
    parser.add_argument("--adapt-every", type=int, default=4, help="adapt after every N episodes")
    parser.add_argument("--seed", type=int, default=3, help="picks the robot's task")
    args = parser.parse_args()

    env = gym.make("metarl/CartPoleFamily-v0")
    (task,) = env.unwrapped.sample_tasks(1, seed=args.seed)  # type: ignore[attr-defined]
    env.unwrapped.set_task(task)  # type: ignore[attr-defined]
    print("robot task:", ", ".join(f"{k}={v:.3g}" for k, v in task.items()))

    with (
        PolicyClient(args.target) as client,
        client.create_session(args.policy, seed=args.seed, record=True) as session,
        session.stream() as loop,
    ):
        for episode in range(1, args.episodes + 1):
            obs, _ = env.reset(seed=args.seed * 1000 + episode)
            reward, total, done = None, 0.0, False
            while not done:
                action = loop.act(obs, reward)  # the previous step's reward rides along
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            loop.report(reward, terminated, truncated)  # the episode's last reward ends it
            adaptations = (episode - 1) // args.adapt_every
            print(f"episode {episode:2d} (policy adapted {adaptations}x): return {total:5.0f}")
            if episode % args.adapt_every == 0 and episode < args.episodes:
                stats = session.adapt()  # on what the session recorded (then cleared)
                print(
                    f"  adapted on {stats.episodes} recorded episodes ({stats.transitions} "
                    f"steps) in {stats.duration_seconds * 1000:.0f} ms: "
                    f"loss {stats.loss_before:.3f} -> {stats.loss_after:.3f}"
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
