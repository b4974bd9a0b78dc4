"""Meta-train a policy with MAML and write a checkpoint the server can load.

    metarl train --env metarl/CartPoleFamily-v0 --iterations 150 --out runs/cartpole --seed 1

Each iteration: draw a meta-batch of tasks; sample episodes on every task with theta; adapt
theta -> theta'_i (the shared inner loop); sample episodes with each theta'_i; step Adam on the
mean post-adaptation loss, differentiated through the inner loop (second order unless
``--algo fomaml``).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from metarl import envs, policies
from metarl.algorithms import maml
from metarl.checkpoint import Checkpoint, save_checkpoint
from metarl.inner_loop import InnerLoopConfig
from metarl.sampling import episode_returns, sample_episodes


@dataclass
class TrainConfig:
    """Meta-train a policy on a task family and save it as a checkpoint."""

    env: str = "metarl/CartPoleFamily-v0"
    """Task family to meta-train on (a registered ``metarl/`` gymnasium id)."""
    iterations: int = 300
    """Meta-iterations (outer updates)."""
    out: Path = Path("runs/latest")
    """Checkpoint directory to write (replaced atomically at every save)."""
    seed: int = 0
    """Seeds tasks, episodes and initialization: the same seed gives the same run."""
    name: str = ""
    """Policy name in the manifest; empty for one derived from the env id."""
    version: str = ""
    """Version label in the manifest; empty for a UTC timestamp."""
    algo: Literal["maml", "fomaml"] = "maml"
    """``maml`` differentiates through the inner loop (second order); ``fomaml`` does not."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration."""
    episodes_per_task: int = 10
    """Episodes sampled per task, before and after adaptation."""
    inner_lr: float = 1.0
    """Inner-loop learning rate alpha."""
    inner_steps: int = 1
    """Inner gradient steps."""
    discount: float = 0.99
    """Discount gamma."""
    gae_lambda: float = 1.0
    """GAE lambda of the advantages."""
    normalize_advantages: bool = True
    """Normalize each task's advantages."""
    outer_lr: float = 1e-2
    """Adam learning rate of the outer loop."""
    hidden_sizes: tuple[int, ...] = (64,)
    """Hidden layer sizes of the MLP policy."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Hidden nonlinearity."""
    save_every: int = 25
    """Write the checkpoint every this many iterations (and at the end)."""
    threads: int = 1
    """Torch intra-op threads; small matmuls are fastest on one."""
    metrics_csv: Path | None = None
    """CSV of per-iteration metrics; defaults to ``<out>.metrics.csv`` beside the checkpoint."""
    progress: bool = True
    """Show a progress bar."""
    extra: dict[str, str] = field(default_factory=dict)
    """Free-form notes recorded in the manifest's ``training`` section."""


def default_name(env_id: str) -> str:
    base = env_id.split("/")[-1].split("-v")[0]
    return "".join("-" + c.lower() if c.isupper() else c for c in base).lstrip("-")


def train(cfg: TrainConfig) -> Checkpoint:
    torch.set_num_threads(cfg.threads)
    family = envs.family(cfg.env)
    batched_cls = family.batched_cls
    spec = policies.PolicySpec.for_spaces(
        batched_cls.observation_space,
        batched_cls.action_space,
        hidden_sizes=tuple(cfg.hidden_sizes),
        activation=cfg.activation,
    )
    inner = InnerLoopConfig(
        lr=cfg.inner_lr,
        steps=cfg.inner_steps,
        discount=cfg.discount,
        gae_lambda=cfg.gae_lambda,
        normalize_advantages=cfg.normalize_advantages,
    )

    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    theta = {k: v.requires_grad_() for k, v in policies.init_params(spec, generator).items()}
    optimizer = torch.optim.Adam(theta.values(), lr=cfg.outer_lr)
    env = batched_cls(cfg.meta_batch_size * cfg.episodes_per_task)

    ckpt = Checkpoint(
        name=cfg.name or default_name(cfg.env),
        version=cfg.version or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        env_id=cfg.env,
        spec=spec,
        inner_loop=inner,
        params=theta,
        training={
            "algo": cfg.algo,
            "outer": "adam",
            "seed": cfg.seed,
            "meta_batch_size": cfg.meta_batch_size,
            "episodes_per_task": cfg.episodes_per_task,
            "outer_lr": cfg.outer_lr,
            **cfg.extra,
        },
    )
    metrics_path = cfg.metrics_csv or cfg.out.with_name(cfg.out.name + ".metrics.csv")
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with metrics_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["iteration", "pre_return", "post_return", "outer_loss", "seconds"])
        bar = tqdm(range(1, cfg.iterations + 1), disable=not cfg.progress, desc="meta-train")
        for it in bar:
            start = time.perf_counter()
            tasks = batched_cls.sample_tasks(cfg.meta_batch_size, rng)
            detached = {k: v.detach() for k, v in theta.items()}
            pre = sample_episodes(
                env, spec, detached, tasks, cfg.episodes_per_task, rng=rng, generator=generator
            )
            adapted = maml.adapted_params(spec, theta, pre, inner, first_order=cfg.algo == "fomaml")
            post = sample_episodes(
                env,
                spec,
                {k: v.detach() for k, v in adapted.items()},
                tasks,
                cfg.episodes_per_task,
                rng=rng,
                generator=generator,
            )
            loss = maml.outer_loss(spec, adapted, post, inner)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

            pre_ret = episode_returns(pre).mean().item()
            post_ret = episode_returns(post).mean().item()
            seconds = time.perf_counter() - start
            writer.writerow(
                [it, f"{pre_ret:.4f}", f"{post_ret:.4f}", f"{loss.item():.6f}", f"{seconds:.4f}"]
            )
            bar.set_postfix(pre=f"{pre_ret:.1f}", post=f"{post_ret:.1f}")
            ckpt.training.update(
                iterations=it,
                final_pre_return=round(pre_ret, 3),
                final_post_return=round(post_ret, 3),
            )
            if it % cfg.save_every == 0 or it == cfg.iterations:
                save_checkpoint(ckpt, cfg.out)
    return ckpt


def main() -> None:
    import tyro

    train(tyro.cli(TrainConfig))


if __name__ == "__main__":
    main()
