"""Seconds per meta-batch of MAML-TRPO on 2D navigation, against a naive implementation timed in
the same run (the machines are shared and noisy: the ratio is the figure to trust).

    .venv/bin/python benchmarks/train_speed.py              # ~5 minutes on 2 cores
    .venv/bin/python benchmarks/train_speed.py --rounds 1   # quicker
    .venv/bin/python benchmarks/train_speed.py --products-only   # single products, ~1 minute

Reference configuration (the MAML paper's, as run by the public reference implementation):
``metarl/Navigation2D-v0``, meta-batch of 20 tasks, 20 episodes per task before and after
adaptation, 100 steps, MLP 64-64 tanh with a gaussian head, 1 inner step alpha = 0.1,
gamma = 0.99, lambda = 1, linear feature baseline, TRPO with max-KL 0.01, 10 conjugate-gradient
iterations, damping 1e-5, at most 15 line-search steps shrinking by 0.8.

What is timed: a whole meta-iteration (sample pre-update episodes, adapt, sample post-update
episodes, TRPO step), i.e. the ``seconds`` column ``metarl train`` writes. Every variant runs
once per round, rounds repeat, and each speed-up is taken within a round (then the median), so
load from other jobs on the machine shifts numerator and denominator alike.

* ``naive``: what a straightforward implementation does, as the public reference implementation
  is written: one task at a time, episodes from a gymnasium ``SyncVectorEnv`` of 20 envs per
  task, the inner loop with autograd ``create_graph=True``, the KL's Hessian-vector products by
  double backward through it, the line search re-running every task's inner loop. The math is
  the same as metarl's (tests/test_algorithms.py checks the closed forms against this autograd).
* ``metarl``: the trainer itself: all tasks x episodes stepped in one batched env, tasks
  stacked in batched matmuls, closed-form products with the inner loop's Jacobian
  (metarl/algorithms/derivatives.py); 1 or 2 worker threads, or 2 torchrun processes of 1
  thread; and, for comparison, 1 worker with torch's 2 OpenMP threads (which metarl turns off).
* ``--curvature-dtype bfloat16``: the reference configuration with conjugate gradient's KL
  curvature products in bfloat16 (float32 accumulation), on CPUs with native bf16 dot products;
  the gradient and the line search stay float32 (tests/test_algorithms.py bounds the difference).
* ``--cg-subsample 0.2``: the KL curvature on 4 of each task's 20 episodes (not the reference
  configuration: rllab's subsample_factor, TRPO paper app. C), shown separately.

Also measured, for the design choice it settles: the inner loop over 20 tasks as stacked batched
matmuls (``metarl.core.inner_loop.adapt``) against ``torch.func.vmap`` of the per-task inner loop.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import metarl.envs
from metarl.core import inner_loop, policies
from metarl.core.inner_loop import EpisodeBatch, InnerLoopConfig, LossBatch
from metarl.training.train import TrainConfig, train

ENV = "metarl/Navigation2D-v0"
TASKS, EPISODES, HIDDEN, ALPHA = 20, 20, (64, 64), 0.1
MAX_KL, CG_ITERS, DAMPING, LS_STEPS, BACKTRACK = 0.01, 10, 1e-5, 15, 0.8
REFERENCE = dict(
    env=ENV, meta_batch_size=TASKS, episodes_per_task=EPISODES, hidden_sizes=HIDDEN,
    inner_lr=ALPHA, inner_steps=1, discount=0.99, gae_lambda=1.0, outer="trpo", algo="maml",
    max_kl=MAX_KL, cg_iters=CG_ITERS, cg_damping=DAMPING, ls_max_steps=LS_STEPS,
    ls_backtrack=BACKTRACK,
)  # fmt: skip


def metarl_seconds(iterations: int, threads: int, omp: int = 1, **overrides: object) -> list[float]:
    """Per-iteration seconds of ``metarl.training.train`` in this process, with ``threads``
    worker threads; ``omp`` > 1 lets torch's own (OpenMP) intra-op threads run too, which metarl
    turns off."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            **{**REFERENCE, **overrides},  # type: ignore[arg-type]
            iterations=iterations, out=Path(tmp) / "ckpt", seed=1, threads=threads,
            progress=False, tensorboard=False, save_every=10**9,
        )  # fmt: skip
        set_threads = torch.set_num_threads
        torch.set_num_threads = lambda _: set_threads(omp)  # type: ignore[assignment]
        try:
            train(cfg)
        finally:
            torch.set_num_threads = set_threads
            set_threads(1)
        with (Path(tmp) / "ckpt.metrics.csv").open() as fh:
            return [float(row["seconds"]) for row in csv.DictReader(fh)]


def torchrun_seconds(iterations: int, nproc: int) -> list[float]:
    """Per-iteration seconds of ``torchrun --nproc_per_node=nproc -m metarl.train``."""
    flags = []
    for key, value in REFERENCE.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", "-m", "metarl.train", *flags,
                "--iterations", str(iterations), "--out", f"{tmp}/ckpt", "--seed", "1",
                "--threads", "1", "--no-progress", "--no-tensorboard", "--save-every", "1000000",
            ],
            check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        with open(f"{tmp}/ckpt.metrics.csv") as fh:
            return [float(row["seconds"]) for row in csv.DictReader(fh)]


# --- the naive implementation ------------------------------------------------------------------


class Naive:
    """MAML-TRPO one task at a time with autograd, the way the public reference implementation
    is structured (same configuration, same math)."""

    def __init__(self, seed: int) -> None:
        cls = metarl.envs.family(ENV).batched_cls
        self.spec = policies.PolicySpec.for_spaces(
            cls.observation_space, cls.action_space, hidden_sizes=HIDDEN
        )
        self.params = policies.init_params(self.spec, torch.Generator().manual_seed(seed))
        self.config = InnerLoopConfig(lr=ALPHA, steps=1, discount=0.99, gae_lambda=1.0)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.envs = [gym.vector.SyncVectorEnv([self._make] * EPISODES) for _ in range(TASKS)]

    @staticmethod
    def _make() -> gym.Env:  # type: ignore[type-arg]
        return gym.make(ENV)

    def rollout(self, vec: gym.vector.SyncVectorEnv, params: policies.Params) -> EpisodeBatch:
        obs, _ = vec.reset(seed=int(self.rng.integers(2**31)))
        observations, actions, rewards, masks = [], [], [], []
        alive = np.ones(EPISODES, dtype=bool)
        for _ in range(100):
            obs_t = torch.as_tensor(obs, dtype=torch.float32)
            with torch.no_grad():
                if policies.is_stacked(self.spec, params):  # adapted: [1, ...]
                    action = policies.act(self.spec, params, obs_t[None], generator=self.generator)[
                        0
                    ][0]
                else:
                    action = policies.act(self.spec, params, obs_t, generator=self.generator)[0]
            observations.append(obs_t)
            actions.append(action)
            masks.append(torch.as_tensor(alive, dtype=torch.float32))
            obs, reward, terminated, truncated, _ = vec.step(action.numpy())
            rewards.append(torch.as_tensor(reward * alive, dtype=torch.float32))
            alive &= ~(terminated | truncated)
            if not alive.any():
                break

        def stack(xs: list[torch.Tensor]) -> torch.Tensor:  # [T, E, ...] -> [1, E, T, ...]
            return torch.stack(xs).movedim(0, 1).unsqueeze(0)

        return EpisodeBatch(stack(observations), stack(actions), stack(rewards), stack(masks))

    def adapt(
        self, params: policies.Params, batch: LossBatch, create_graph: bool
    ) -> policies.Params:
        if not create_graph:
            params = {k: p.detach().requires_grad_() for k, p in params.items()}
        with torch.enable_grad():
            loss = inner_loop.reinforce_loss(self.spec, policies.stack(self.spec, params, 1), batch)
            grads = torch.autograd.grad(
                loss.sum(), list(params.values()), create_graph=create_graph
            )
        if not create_graph:
            params = {k: p.detach() for k, p in params.items()}
        return {
            k: (p - ALPHA * g).unsqueeze(0) for (k, p), g in zip(params.items(), grads, strict=True)
        }

    def surrogate(self, params, pre, post, old=None):  # type: ignore[no-untyped-def]
        losses, kls, olds = [], [], []
        for i in range(TASKS):
            adapted = self.adapt(params, pre[i], create_graph=old is None)
            mean = policies.forward(self.spec, adapted, post[i].observations)
            log_std = adapted["log_std"].unsqueeze(1)
            old_mean, old_log_std = (mean.detach(), log_std.detach()) if old is None else old[i]
            olds.append((old_mean, old_log_std))
            actions = post[i].actions
            logp = policies._gaussian_log_prob(actions, mean, log_std)
            old_logp = policies._gaussian_log_prob(actions, old_mean, old_log_std)
            n = post[i].weights.sum()
            ratio = torch.exp(logp - old_logp)
            losses.append(-(ratio * post[i].advantages * post[i].weights).sum() / n)
            var, old_var = torch.exp(2 * log_std), torch.exp(2 * old_log_std)
            kl = (log_std - old_log_std + (old_var + (old_mean - mean) ** 2) / (2 * var) - 0.5).sum(
                -1
            )
            kls.append((kl * post[i].weights).sum() / n)
        return torch.stack(losses).mean(), torch.stack(kls).mean(), olds

    def run(self, iterations: int) -> list[float]:
        """Seconds of each of ``iterations`` meta-batches."""
        torch.set_num_threads(1)
        seconds = []
        for _ in range(iterations):
            start = time.perf_counter()
            self.meta_batch()
            seconds.append(time.perf_counter() - start)
        return seconds

    def meta_batch(self) -> None:
        cls = metarl.envs.family(ENV).batched_cls
        tasks = cls.sample_tasks(TASKS, self.rng)
        pre, post = [], []
        for task, vec in zip(tasks, self.envs, strict=True):
            vec.call("set_task", task)
            episodes = self.rollout(vec, self.params)
            pre.append(inner_loop.prepare(episodes, self.config))
            with torch.no_grad():
                adapted = self.adapt(self.params, pre[-1], create_graph=False)
            post.append(inner_loop.prepare(self.rollout(vec, adapted), self.config))

        leaves = [p.clone().requires_grad_() for p in self.params.values()]
        params = dict(zip(self.params, leaves, strict=True))
        old_loss, old_kl, olds = self.surrogate(params, pre, post)
        grad = torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(old_loss, leaves, retain_graph=True)]
        )
        kl_grad = torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(old_kl, leaves, create_graph=True)]
        )

        def hvp(v: torch.Tensor) -> torch.Tensor:
            hv = torch.autograd.grad(kl_grad.dot(v), leaves, retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv]) + DAMPING * v

        x, r, p = torch.zeros_like(grad), -grad, -grad.clone()
        rr = r.dot(r)
        for _ in range(CG_ITERS):
            hp = hvp(p)
            alpha = rr / p.dot(hp)
            x, r = x + alpha * p, r - alpha * hp
            rr, rr_old = r.dot(r), rr
            p = r + rr / rr_old * p
        step = x * math.sqrt(MAX_KL / (0.5 * x.dot(hvp(x)).item()))
        old = torch.cat([p.detach().reshape(-1) for p in leaves])
        fraction = 1.0
        for _ in range(LS_STEPS):
            new = old + fraction * step
            candidate, offset = {}, 0
            for name, t in self.params.items():
                candidate[name] = new[offset : offset + t.numel()].view_as(t)
                offset += t.numel()
            with torch.no_grad():
                loss, kl, _ = self.surrogate(candidate, pre, post, olds)
            if loss.item() < old_loss.item() and kl.item() <= MAX_KL:
                self.params = candidate
                break
            fraction *= BACKTRACK


# --- inner loop: stacked batched matmuls vs vmap ---------------------------------------------


def inner_loop_ms() -> tuple[float, float]:
    torch.set_num_threads(1)
    spec = policies.PolicySpec(2, 2, "gaussian", HIDDEN)
    params = policies.init_params(spec, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    n = EPISODES * 100
    batch = LossBatch(
        torch.randn(TASKS, n, 2, generator=gen), torch.randn(TASKS, n, 2, generator=gen),
        torch.randn(TASKS, n, generator=gen), torch.ones(TASKS, n),
    )  # fmt: skip

    def stacked() -> None:
        inner_loop.adapt(spec, params, batch, lr=ALPHA, steps=1)

    def one_task(obs, act, adv, mask):  # type: ignore[no-untyped-def]
        b = LossBatch(obs[None], act[None], adv[None], mask[None])
        return inner_loop.adapt(spec, params, b, lr=ALPHA, steps=1)

    vmapped = torch.func.vmap(one_task)

    def per_task_vmap() -> None:
        vmapped(*batch)

    for name, value in stacked_out(batch, one_task, spec, params).items():
        assert value < 1e-5, f"vmap and stacked inner loops disagree on {name}: {value}"
    return _best(stacked, 7), _best(per_task_vmap, 7)


def kl_hvp_ms() -> tuple[float, float]:
    """One product with TRPO's curvature (the KL Hessian through the inner loop), 20 tasks x 2000
    post-update and 2000 pre-update steps: autograd's double backward (Hessian-vector product of
    the KL recomputed through inner_loop.adapt(create_graph=True); the KL gradient graph built
    once, as a naive implementation would) against the closed form metarl uses."""
    from metarl.training import distributed
    from metarl.training.algorithms import maml

    torch.set_num_threads(1)
    spec = policies.PolicySpec(2, 2, "gaussian", HIDDEN)
    theta = policies.init_params(spec, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    n = EPISODES * 100

    def batch() -> LossBatch:
        return LossBatch(
            torch.randn(TASKS, n, 2, generator=gen), torch.randn(TASKS, n, 2, generator=gen),
            torch.randn(TASKS, n, generator=gen), torch.ones(TASKS, n),
        )  # fmt: skip

    pre, post = batch(), batch()
    config = InnerLoopConfig(lr=ALPHA)
    adapted = inner_loop.adapt(spec, theta, pre, lr=ALPHA, steps=1)
    meta = maml.MetaObjective(
        spec, theta, None, pre, adapted, post, config,
        num_tasks=TASKS, first_order=False, ctx=distributed.Context(),
    )  # fmt: skip
    leaves = [p.clone().requires_grad_() for p in theta.values()]
    new = inner_loop.adapt(spec, dict(zip(theta, leaves, strict=True)), pre, lr=ALPHA, steps=1,
                           create_graph=True)  # fmt: skip
    mean, old = (policies.forward(spec, a, post.observations) for a in (new, adapted))
    log_std, old_log_std = new["log_std"].unsqueeze(1), adapted["log_std"].unsqueeze(1)
    var, old_var = torch.exp(2 * log_std), torch.exp(2 * old_log_std)
    kl = (log_std - old_log_std + (old_var + (old - mean) ** 2) / (2 * var) - 0.5).sum(-1).mean()
    kl_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, leaves, create_graph=True)])
    v = torch.randn(kl_grad.shape, generator=gen)

    def autograd_hvp() -> torch.Tensor:
        hv = torch.autograd.grad(kl_grad.dot(v), leaves, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv])

    torch.testing.assert_close(meta.kl_hvp(v), autograd_hvp(), rtol=1e-3, atol=1e-6)
    a, b = [], []
    for _ in range(6):  # interleaved, so both see the same load
        for f, times in ((autograd_hvp, a), (lambda: meta.kl_hvp(v), b)):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
    return 1000 * min(a), 1000 * min(b)


def shortcut_ms() -> tuple[float, float, float]:
    """One curvature product (as in :func:`kl_hvp_ms`, on sampled-like random data of the same
    shapes) by the closed form without and with its first-layer shortcuts
    (``derivatives.FIRST_LAYER_MAX_INPUTS`` / ``OUTPUT_JACOBIAN_MAX_OUTPUTS`` set to 0 turns
    them off), interleaved, fastest of 8 calls each; and the conjugate-gradient directions' (10
    iterations) relative difference between the two routes."""
    from metarl.training import distributed
    from metarl.training.algorithms import derivatives, maml, trpo

    torch.set_num_threads(1)
    spec = policies.PolicySpec(2, 2, "gaussian", HIDDEN)
    theta = policies.init_params(spec, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    n = EPISODES * 100

    def batch() -> LossBatch:
        return LossBatch(
            torch.randn(TASKS, n, 2, generator=gen), torch.randn(TASKS, n, 2, generator=gen),
            torch.randn(TASKS, n, generator=gen), torch.ones(TASKS, n),
        )  # fmt: skip

    pre, post = batch(), batch()
    adapted = inner_loop.adapt(spec, theta, pre, lr=ALPHA, steps=1)
    limits = (derivatives.FIRST_LAYER_MAX_INPUTS, derivatives.OUTPUT_JACOBIAN_MAX_OUTPUTS)

    def objective(shortcuts: bool) -> maml.MetaObjective:
        first, out = limits if shortcuts else (0, 0)
        derivatives.FIRST_LAYER_MAX_INPUTS, derivatives.OUTPUT_JACOBIAN_MAX_OUTPUTS = first, out
        try:
            return maml.MetaObjective(
                spec, theta, None, pre, adapted, post, InnerLoopConfig(lr=ALPHA),
                num_tasks=TASKS, first_order=False, ctx=distributed.Context(),
            )  # fmt: skip
        finally:
            derivatives.FIRST_LAYER_MAX_INPUTS, derivatives.OUTPUT_JACOBIAN_MAX_OUTPUTS = limits

    plain, fast = objective(False), objective(True)
    g = plain.grad()
    directions = [
        trpo.conjugate_gradient(lambda v, m=m: m.kl_hvp(v) + DAMPING * v, g, CG_ITERS).x
        for m in (plain, fast)
    ]
    gap = ((directions[1] - directions[0]).norm() / directions[0].norm()).item()
    a, b = [], []
    for _ in range(8):  # interleaved, so both see the same load
        for m, times in ((plain, a), (fast, b)):
            start = time.perf_counter()
            m.kl_hvp(g)
            times.append(time.perf_counter() - start)
    return 1000 * min(a), 1000 * min(b), gap


def tanh_ms() -> tuple[float, float]:
    """torch.tanh against metarl's 2 sigmoid(2x) - 1, on a hidden activation of a meta-batch."""
    torch.set_num_threads(1)
    x = torch.randn(TASKS, EPISODES * 100, HIDDEN[0], generator=torch.Generator().manual_seed(0))
    assert (policies.tanh(x) - torch.tanh(x)).abs().max() < 2e-7
    return _best(lambda: torch.tanh(x), 20), _best(lambda: policies.tanh(x), 20)


def _best(f, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Milliseconds of the fastest of a few calls (after a warm-up)."""
    f()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def stacked_out(batch, one_task, spec, params):  # type: ignore[no-untyped-def]
    a = inner_loop.adapt(spec, params, batch, lr=ALPHA, steps=1)
    b = torch.func.vmap(one_task)(*batch)
    return {k: (a[k] - b[k].squeeze(1)).abs().max().item() for k in a}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant")
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-batches per round")
    parser.add_argument("--no-torchrun", action="store_true", help="skip the 2-process runs")
    parser.add_argument(
        "--products-only", action="store_true", help="only the one-product measurements"
    )
    args = parser.parse_args()
    n = args.iterations
    if args.products_only:
        products()
        return

    variants: dict[str, Callable[[], list[float]]] = {
        "naive: per task, SyncVectorEnv, autograd double backward": lambda: naive.run(n),
        "metarl train, 1 thread": lambda: metarl_seconds(n + 1, threads=1)[1:],
        "metarl train, 2 worker threads": lambda: metarl_seconds(n + 1, threads=2)[1:],
        "metarl train, 1 worker, 2 OpenMP threads": lambda: metarl_seconds(n + 1, 1, omp=2)[1:],
    }
    if not args.no_torchrun:
        variants["torchrun, 2 processes x 1 thread"] = lambda: torchrun_seconds(n + 1, 2)[1:]
    variants["metarl train, 2 worker threads, --curvature-dtype bfloat16"] = lambda: metarl_seconds(
        n + 1, threads=2, curvature_dtype="bfloat16"
    )[1:]
    variants["metarl train, 2 worker threads, --cg-subsample 0.2 (*)"] = lambda: metarl_seconds(
        n + 1, threads=2, cg_subsample=0.2
    )[1:]

    print(
        f"2D navigation, reference configuration; {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"{args.rounds} rounds; each round times every variant, {n} meta-batches each (after a")
    print("warm-up one); speed-up = the naive median / the variant's median in the same round\n")
    naive = Naive(seed=1)
    naive.meta_batch()  # warm-up
    medians: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, run in variants.items():
            medians[name].append(statistics.median(run()))
        print(f"round {r + 1}: " + ", ".join(f"{m[-1]:.2f}" for m in medians.values()), flush=True)
    base = medians[next(iter(variants))]
    print(f"\n{'variant':<60} {'s/meta-batch':>12} {'speed-up':>9}")
    for name, values in medians.items():
        speedup = statistics.median(b / v for b, v in zip(base, values, strict=True))
        print(f"{name:<60} {statistics.median(values):>12.3f} {speedup:>8.1f}x")
    print("(*) not the reference configuration: KL curvature from 4 of the 20 episodes per task")
    products()


def products() -> None:
    """The measurements of single products and kernels, each against its baseline."""
    autograd_ms, closed_ms = kl_hvp_ms()
    print(
        f"\none KL Hessian-vector product through the inner loop, 1 thread: autograd double "
        f"backward {autograd_ms:.0f} ms, closed form {closed_ms:.0f} ms "
        f"({autograd_ms / closed_ms:.1f}x)"
    )
    plain_ms, fast_ms, gap = shortcut_ms()
    print(
        f"the same product by the closed form without / with its first-layer shortcuts: "
        f"{plain_ms:.0f} / {fast_ms:.0f} ms ({plain_ms / fast_ms:.2f}x); conjugate-gradient "
        f"directions differ by {gap:.1e} (relative)"
    )
    torch_ms, ours_ms = tanh_ms()
    print(
        f"tanh of a [20, 2000, 64] float32 activation, 1 thread: torch.tanh {torch_ms:.2f} ms, "
        f"metarl.policies.tanh (2 sigmoid(2x) - 1) {ours_ms:.2f} ms ({torch_ms / ours_ms:.1f}x)"
    )
    stacked, vmapped = inner_loop_ms()
    winner = "stacked" if stacked <= vmapped else "vmap"
    print(
        f"inner loop, 20 tasks x 2000 steps, 1 thread: stacked batched matmuls {stacked:.1f} ms, "
        f"torch.func.vmap over tasks {vmapped:.1f} ms: {winner} is faster "
        f"({max(stacked, vmapped) / min(stacked, vmapped):.2f}x)"
    )


if __name__ == "__main__":
    main()
