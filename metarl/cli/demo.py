"""Few-shot adaptation end to end: a client on held-out tasks, a server on the bundled policy.

For each task (drawn with a seed training never used): act with the meta-trained policy for a
few episodes, send those episodes to Adapt, act again with the adapted parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gymnasium as gym

from metarl import envs
from metarl.core.errors import UsageError, UserError
from metarl_client import PolicyClient
from metarl_client.errors import MetarlError, Unavailable
from metarl_client.helpers import mean_return, rollout


@dataclass
class DemoConfig:
    """Show few-shot adaptation over gRPC on tasks the training never saw."""

    target: str = ""
    """Server address (host:port); empty to start one in this process on the bundled policies."""
    policy: str = "cartpole-family"
    """Policy to use."""
    tasks: int = 4
    """Held-out tasks to adapt to."""
    episodes: int = 10
    """Episodes collected before adapting, and run after."""
    seed: int = 20261124
    """Seed of the held-out tasks and of the episodes."""
    steps: int | None = None
    """Inner steps per Adapt; the policy's default when unset."""


def _health(target: str) -> str | None:
    """The health status of the server at ``target`` (``SERVING``, ``NOT_SERVING``, ...), or
    None when nothing answers there."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2.0
            )
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        return exc.code().name  # a server, without the health service
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _unavailable(target: str, exc: Unavailable) -> str:
    """What a ListPolicies that stayed UNAVAILABLE means: a server that is up but has no
    policy to serve yet (an empty --model-dir, still loading, draining), or no server."""
    health = _health(target)
    if health is None:
        return (
            f"no policy server answers at {target} ({exc}): start one with `metarl serve` (or "
            "leave out --target to start one in this process)"
        )
    return (
        f"the policy server at {target} is up but serves no policy yet (health {health}; it "
        f"answers: {exc}): publish a checkpoint into the --model-dir it watches (`metarl "
        "publish CHECKPOINT --model-dir DIR`) or wait until it has loaded, then run the demo "
        "again"
    )


def run_demo(cfg: DemoConfig) -> tuple[float, float]:
    server = None
    target = cfg.target
    if not target:
        from metarl_server.app import ServeConfig, build_registry, create_server

        server, port = create_server("127.0.0.1:0", build_registry(ServeConfig()))
        server.start()
        target = f"127.0.0.1:{port}"
        started = time.perf_counter()
        # The adaptation worker (a process importing torch, then a warm-up adaptation) starts
        # in the background; wait for it, so the first Adapt's time is an adaptation's.
        server.adapter.start()
        print(
            f"started a policy server on {target} with the bundled policies (adaptation worker "
            f"ready in {time.perf_counter() - started:.1f} s)"
        )
    try:
        with PolicyClient(target) as client:
            try:
                info = {p.name: p for p in client.list_policies()}
            except Unavailable as exc:
                raise UserError(_unavailable(target, exc)) from None
            except MetarlError as exc:  # e.g. a server that requires a token
                raise UserError(
                    f"the server at {target} refused to list its policies: {exc}"
                ) from None
            if cfg.policy not in info:
                raise UsageError(
                    f"--policy {cfg.policy}: the server at {target} has no such policy (it has "
                    f"{', '.join(sorted(info)) or 'none'}); pass one of those, or serve yours "
                    "with `metarl serve --checkpoint DIR`"
                )
            policy = info[cfg.policy]
            print(
                f"policy {policy.name} version {policy.latest_version} ({policy.env_id}), "
                f"inner lr {policy.inner_loop.learning_rate}, "
                f"{policy.inner_loop.default_steps} inner step(s)"
            )
            tasks = envs.family(policy.env_id)().sample_tasks(cfg.tasks, seed=cfg.seed)
            befores, afters = [], []
            for i, task in enumerate(tasks):
                env = gym.make(policy.env_id, task=task)
                shown = ", ".join(f"{k}={v:.3g}" for k, v in task.items())
                print(f"task {i + 1}/{cfg.tasks}: {shown}")
                with client.create_session(cfg.policy, seed=cfg.seed + i) as session:
                    collected = rollout(env, session, cfg.episodes, seed=cfg.seed + 1000 * i)
                    stats = session.adapt(collected, steps=cfg.steps)
                    adapted = rollout(env, session, cfg.episodes, seed=cfg.seed + 1000 * i + 500)
                before_ret, after_ret = mean_return(collected), mean_return(adapted)
                befores.append(before_ret)
                afters.append(after_ret)
                print(
                    f"  before: mean return {before_ret:.1f} over {cfg.episodes} episodes; "
                    f"adapted on {stats.transitions} transitions in "
                    f"{stats.duration_seconds * 1000:.0f} ms (loss {stats.loss_before:.3f} -> "
                    f"{stats.loss_after:.3f}); after: mean return {after_ret:.1f}"
                )
                env.close()
    finally:
        if server is not None:
            server.stop(None)
    before, after = sum(befores) / len(befores), sum(afters) / len(afters)
    print(f"adaptation: return {before:.1f} -> {after:.1f}")
    return before, after


def main(cfg: DemoConfig) -> None:
    run_demo(cfg)
