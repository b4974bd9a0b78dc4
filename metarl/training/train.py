"""Meta-train a policy (MAML, first-order MAML or Meta-SGD; Adam or TRPO outer loop) and write a
checkpoint the server can load.

    metarl train --env metarl/CartPoleFamily-v0 --iterations 300 --out runs/cartpole --seed 1
    metarl train --env metarl/Navigation2D-v0 --outer trpo --inner-lr 0.1 --episodes-per-task 20 \\
        --hidden-sizes 64 64 --out runs/nav
    torchrun --nproc_per_node=2 -m metarl.train ...   # the tasks of each meta-batch split over 2

Each iteration: draw a meta-batch of tasks; sample episodes on every task with theta; adapt
theta -> theta'_i with the inner loop the server runs; sample episodes with each theta'_i; update
theta (and, for Meta-SGD, the inner learning rates) to improve the post-update objective,
differentiated through the inner loop (second order unless ``--algo fomaml``):

* ``--outer adam``: one Adam step on the mean post-update REINFORCE loss;
* ``--outer trpo`` (the MAML paper's): conjugate gradient on the Hessian of the KL between the
  old and new adapted policies, then a backtracking line search on the importance-weighted
  surrogate within ``--max-kl``.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import shutil
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from metarl import config, envs, inner_loop, policies, trainer_state
from metarl.algorithms import distributed, maml, metasgd, trpo
from metarl.checkpoint import Checkpoint
from metarl.errors import UsageError
from metarl.inner_loop import InnerLoopConfig
from metarl.policies import Params
from metarl.sampling import episode_returns, sample_episodes

METRICS = [
    "iteration",
    "pre_return",
    "post_return",
    "outer_loss",
    "kl",
    "line_search_steps",
    "inner_lr_mean",
    "policy_std",
    "seconds",
]


@dataclass
class TrainConfig:
    """Meta-train a policy on a task family and save it as a checkpoint."""

    env: str = "metarl/CartPoleFamily-v0"
    """Task family to meta-train on (a registered ``metarl/`` gymnasium id)."""
    iterations: int = 300
    """Meta-iterations (outer updates)."""
    out: Path = Path("runs/latest")
    """Checkpoint directory to write (replaced atomically at every save). `metarl train` refuses
    an existing run there (the checkpoint, <out>.metrics.csv, <out>.tensorboard/,
    <out>.trainer-state/) unless --overwrite, and always refuses a file or a directory that is
    not a checkpoint."""
    overwrite: bool = False
    """Delete the run already at --out (checkpoint, metrics CSV, TensorBoard events, trainer
    state) when this one starts, instead of refusing to start."""
    seed: int = 0
    """Seeds tasks, episodes and initialization: the same seed gives the same run."""
    name: str = ""
    """Policy name in the manifest; empty for the task family's (cartpole-family,
    navigation-2d, pendulum-family, half-cheetah-vel; a family of your own: its id in lower-case
    words, acme/MyRobot2D-v3 -> my-robot-2d)."""
    version: str = ""
    """Version label in the manifest; empty for a UTC timestamp."""
    init_from: str | None = None
    """Warm start: begin from this checkpoint's theta (and Meta-SGD's rates) instead of a fresh
    initialization: a checkpoint directory, ``MODEL_DIR/<name>`` (its newest version) or a bundled
    ``<name>/<version>``. Its task family and architecture must be this run's."""
    resume: Path | None = None
    """Continue the run whose checkpoint is this directory (an earlier ``--out``) from the trainer
    state saved beside it, with that run's settings; ``--iterations`` may extend it."""
    algo: Literal["maml", "fomaml", "metasgd"] = "maml"
    """``maml``: second order, through the inner loop; ``fomaml``: first-order approximation;
    ``metasgd``: second order, with per-parameter inner learning rates learned too."""
    inner_estimator: Literal["reinforce", "lvc"] = "reinforce"
    """Which Hessian of the inner loss the meta-gradient differentiates through (second order
    only; theta' is the same either way). ``reinforce``: MAML's, the REINFORCE loss's, which
    treats the pre-update episodes as fixed data. ``lvc``: ProMP's low-variance curvature
    estimator (Rothfuss et al. 2019), which also credits the pre-update policy for what its
    episodes tell the inner step (meta-learned exploration); with ``--outer adam``."""
    outer: Literal["adam", "trpo"] = "adam"
    """Outer loop: Adam on the post-update loss, or TRPO (the MAML paper's)."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration (split over processes under torchrun)."""
    episodes_per_task: int = 10
    """Episodes sampled per task, before and after adaptation."""
    inner_lr: float = 1.0
    """Inner-loop learning rate alpha (Meta-SGD: the rates' initial value)."""
    inner_steps: int = 1
    """Inner gradient steps."""
    discount: float = 0.99
    """Discount gamma."""
    gae_lambda: float = 1.0
    """GAE lambda of the advantages."""
    normalize_advantages: bool = True
    """Normalize each task's advantages."""
    baseline_reg: float = 1e-5
    """Ridge coefficient of the linear feature baseline."""
    loss_weighting: Literal["step", "episode"] = "episode"
    """How each task's samples are averaged in the inner and outer losses, the advantage
    normalization, the KL and its curvature. ``episode``: the mean of per-episode means
    (pytorch-maml-rl's; an episode that ends early at its goal weighs as much as a full one);
    ``step``: every real step weighs the same (rllab's pooled mean). Saved with the inner loop
    in the checkpoint, so the server adapts the same way."""
    later_steps_lr_scale: float = 1.0
    """Learning-rate factor of every inner step after a task's first (per-step rates): the
    server's later ``Adapt`` calls on a session, ``metarl eval``'s later rounds, and with
    ``--inner-steps`` > 1 the later steps here. Saved with the inner loop in the checkpoint."""
    outer_lr: float = 1e-2
    """Adam learning rate of the outer loop."""
    outer_lr_anneal: bool = False
    """Adam: the learning rate falls linearly from ``outer_lr`` to 0 over the iterations
    (cleanrl's ``anneal_lr``), so the last updates, whose theta is saved, are small."""
    max_kl: float = 0.01
    """TRPO: the trust region, a bound on the mean KL between old and new adapted policies."""
    cg_iters: int = 10
    """TRPO: conjugate-gradient iterations."""
    cg_damping: float = 1e-5
    """TRPO: damping added to the KL Hessian."""
    ls_max_steps: int = 15
    """TRPO: line-search steps before the update is rejected."""
    ls_backtrack: float = 0.8
    """TRPO: step shrink factor per line-search step."""
    cg_subsample: float = 1.0
    """TRPO: fraction of each task's episodes the KL curvature (conjugate gradient's products)
    is computed on; 1 is every episode (exact). Fewer is cheaper, as rllab's subsample_factor
    (TRPO paper, app. C); the gradient and the line search always use every episode."""
    curvature_dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    """TRPO: precision of the KL curvature products (conjugate gradient's). ``bfloat16`` runs their
    matmuls ~2.5x faster on CPUs with native bf16 dot products (AVX512-BF16, AMX), accumulating in
    float32; the gradient and the line search (which checks the trust region) stay float32.
    ``auto``: bfloat16 where the CPU has native support, else float32."""
    hidden_sizes: tuple[int, ...] = (64,)
    """Hidden layer sizes of the MLP policy."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Hidden nonlinearity."""
    init_log_std: float = 0.0
    """Initial log standard deviation of gaussian policies."""
    save_every: int = 25
    """Write the checkpoint every this many iterations (and at the end)."""
    threads: int = 0
    """Worker threads per process; 0 for the machine's cores divided among torchrun's local
    processes (never more threads than cores). Each meta-batch's tasks are split among them;
    torch itself runs one thread, as OpenMP's thread teams stall on a busy machine."""
    metrics_csv: Path | None = None
    """CSV of per-iteration metrics; defaults to ``<out>.metrics.csv`` beside the checkpoint."""
    tensorboard: bool = True
    """Also write TensorBoard events to ``<out>.tensorboard/`` when tensorboard is installed
    (`pip install tensorboard`; without it, the run says once that it skips them)."""
    progress: bool = True
    """Show a progress bar."""
    extra: dict[str, str] = field(default_factory=dict)
    """Free-form notes recorded in the manifest's ``training`` section."""


def default_name(env_id: str) -> str:
    """The policy name when ``--name`` is not given: the one the task family declares
    (``metarl/CartPoleFamily-v0`` -> ``cartpole-family``, ``metarl/Navigation2D-v0`` ->
    ``navigation-2d``, the bundled policies' names), else :func:`metarl.envs.derived_policy_name`
    (``acme/MyRobot2D-v3`` -> ``my-robot-2d``)."""
    return envs.policy_name(env_id)


def run_outputs(cfg: TrainConfig) -> list[Path]:
    """The files and directories a run writes besides its checkpoint ``cfg.out``."""
    metrics = cfg.metrics_csv or cfg.out.with_name(cfg.out.name + ".metrics.csv")
    return [
        metrics,
        cfg.out.with_name(cfg.out.name + ".tensorboard"),
        trainer_state.state_dir(cfg.out),
    ]


def prepare_outputs(cfg: TrainConfig, *, remove: bool = True) -> None:
    """``metarl train``'s safe outputs: raises a :class:`UsageError` (one line, the way out) when
    ``--out`` is a file or a directory other than a checkpoint, or when a run is already there
    and ``--overwrite`` is not given; with ``--overwrite`` (and ``remove``: the first process
    only) deletes that run, so its TensorBoard events and trainer state do not mix with this
    one's. A resumed run (``--resume``) writes into its own run and is not checked."""
    if getattr(cfg, "resume", None) is not None:
        return
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; pass a directory path for the checkpoint")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise UsageError(
            f"--out {out}: is a directory holding other files, not a checkpoint; pass a new "
            "directory path for the checkpoint (it would be replaced)"
        )
    found = [out] if (out / "manifest.json").is_file() else []  # (an empty directory: no run)
    found += [p for p in run_outputs(cfg) if p.exists()]
    if not found:
        return
    if not cfg.overwrite:
        resumable = trainer_state.state_dir(out).exists()
        raise UsageError(
            f"--out {out}: a run is already there ({', '.join(str(p) for p in found)}); pass "
            "--overwrite to replace it, or another --out"
            + (f", or --resume {out} to continue it" if resumable else "")
        )
    if remove:
        for path in found:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def task_rngs(seed: int, iteration: int, phase: int, share: slice) -> list[np.random.Generator]:
    """One random stream per task of this process's share (``phase`` 0: pre-, 1: post-update
    episodes), keyed by the task's index in the meta-batch, so any split samples the same."""
    return [
        np.random.default_rng([seed, iteration, phase, i]) for i in range(share.start, share.stop)
    ]


def detached(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


def train(cfg: TrainConfig) -> Checkpoint:
    resumed = trainer_state.resolve_resume(cfg)  # --resume: the run's settings and state
    ctx = distributed.init()
    threads = cfg.threads or distributed.default_threads(ctx)
    workers = ThreadPoolExecutor(threads, "metarl-train") if threads > 1 else None
    try:
        return _train(cfg, ctx, workers, threads, resumed)
    finally:
        trainer_state.restore_signal_handlers()
        if workers is not None:
            workers.shutdown()
        distributed.shutdown(ctx)


def _train(
    cfg: TrainConfig,
    ctx: distributed.Context,
    workers: Executor | None,
    threads: int,
    resumed: trainer_state.TrainerState | None = None,
) -> Checkpoint:
    if not 0 < cfg.cg_subsample <= 1:
        raise ValueError(f"--cg-subsample must be in (0, 1], got {cfg.cg_subsample}")
    curvature_dtype = maml.curvature_dtype(cfg.curvature_dtype)
    if cfg.inner_estimator != "reinforce" and cfg.algo == "fomaml":
        raise ValueError(
            f"--inner-estimator {cfg.inner_estimator} changes the inner step's Hessian, which "
            "first-order MAML drops: use --algo maml or metasgd, or --inner-estimator reinforce"
        )
    if cfg.inner_estimator == "lvc" and cfg.outer == "trpo":
        raise ValueError(
            "--inner-estimator lvc with --outer trpo: TRPO's line search measures the surrogate "
            "on the episodes already sampled, which cannot show the exploration LVC credits, so "
            "it rejects most steps; use --outer adam with lvc"
        )
    torch.set_num_threads(1)  # parallelism comes from `workers` (and processes)
    family = envs.family(cfg.env)
    batched_cls = family.batched_cls
    spec = policies.PolicySpec.for_spaces(
        batched_cls.observation_space,
        batched_cls.action_space,
        hidden_sizes=tuple(cfg.hidden_sizes),
        activation=cfg.activation,
        init_log_std=cfg.init_log_std,
    )
    inner = InnerLoopConfig(
        lr=cfg.inner_lr,
        steps=cfg.inner_steps,
        discount=cfg.discount,
        gae_lambda=cfg.gae_lambda,
        normalize_advantages=cfg.normalize_advantages,
        baseline_reg=cfg.baseline_reg,
        loss_weighting=cfg.loss_weighting,
        later_steps_lr_scale=cfg.later_steps_lr_scale,
    )
    trpo_cfg = trpo.TRPOConfig(
        cfg.max_kl, cfg.cg_iters, cfg.cg_damping, cfg.ls_max_steps, cfg.ls_backtrack
    )

    # Meta-parameters: theta, and for Meta-SGD one inner learning rate per parameter.
    generator = torch.Generator().manual_seed(cfg.seed)  # same init in every process
    theta = {k: v.requires_grad_() for k, v in policies.init_params(spec, generator).items()}
    rates = metasgd.init_learning_rates(theta, cfg.inner_lr) if cfg.algo == "metasgd" else None
    meta_params = [*theta.values(), *(rates or {}).values()]
    optimizer = torch.optim.Adam(meta_params, lr=cfg.outer_lr) if cfg.outer == "adam" else None

    share = ctx.task_share(cfg.meta_batch_size)
    num_local = share.stop - share.start
    env = batched_cls(num_local * cfg.episodes_per_task)

    ckpt = Checkpoint(
        name=cfg.name or default_name(cfg.env),
        version=cfg.version or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        env_id=cfg.env,
        spec=spec,
        inner_loop=inner,
        params=theta,
        learning_rates=rates,
        training={
            "algo": cfg.algo,
            "inner_estimator": cfg.inner_estimator,
            "outer": cfg.outer,
            "seed": cfg.seed,
            "meta_batch_size": cfg.meta_batch_size,
            "episodes_per_task": cfg.episodes_per_task,
            **(
                {"outer_lr": cfg.outer_lr, "outer_lr_anneal": cfg.outer_lr_anneal}
                if cfg.outer == "adam"
                else {}
            ),
            **(
                {
                    "trpo": {
                        **vars(trpo_cfg),
                        "cg_subsample": cfg.cg_subsample,
                        "curvature_dtype": str(curvature_dtype or torch.float32).split(".")[-1],
                    }
                }
                if cfg.outer == "trpo"
                else {}
            ),
            "processes": ctx.world_size,
            **cfg.extra,
            # The whole configuration: `metarl train --config <checkpoint>` repeats the run.
            "config": config.to_dict(cfg),
        },
    )
    # A resumed run's state, or --init-from's theta; then saves also write the trainer state and
    # SIGINT / SIGTERM stop with a resumable one (metarl.trainer_state).
    run = trainer_state.Run(
        cfg, ckpt, theta, rates, optimizer, resumed, is_main=ctx.is_main, spec=spec
    )
    log = _MetricsLog(cfg, run.metrics_offset, run.start) if ctx.is_main else None
    run.watch(log)
    bar = tqdm(
        range(run.start + 1, cfg.iterations + 1), initial=run.start, total=cfg.iterations,
        disable=not (cfg.progress and ctx.is_main), desc="meta-train",
    )  # fmt: skip
    for it in bar:
        start = time.perf_counter()
        # 1. This iteration's tasks (the same draw in every process) and this process's share.
        all_tasks = batched_cls.sample_tasks(
            cfg.meta_batch_size, np.random.default_rng([cfg.seed, it])
        )
        tasks = all_tasks[share]

        # 2. Pre-update episodes with theta; theta'_i from the inner loop the server runs.
        pre = sample_episodes(
            env, spec, detached(theta), tasks, cfg.episodes_per_task,
            task_rngs=task_rngs(cfg.seed, it, 0, share),
        )  # fmt: skip
        pre_batch = inner_loop.prepare(pre, inner)
        lr: float | Params = detached(rates) if rates is not None else inner.lr
        with torch.no_grad():
            adapted = maml.adapt_in_shards(
                spec, detached(theta), pre_batch, lr=lr, steps=inner.steps,
                workers=workers, shards=threads, lr_scales=inner.lr_scales(inner.steps),
            )  # fmt: skip

        # 3. Post-update episodes with each theta'_i: the data the meta-objective is measured on.
        post = sample_episodes(
            env, spec, adapted, tasks, cfg.episodes_per_task,
            task_rngs=task_rngs(cfg.seed, it, 1, share),
        )  # fmt: skip

        # 4. The meta-objective of this meta-batch, differentiated through the inner loop
        # (closed forms, see metarl.algorithms.derivatives), summed over every process's tasks.
        post_batch = inner_loop.prepare(post, inner)
        curvature = None
        if cfg.outer == "trpo" and cfg.cg_subsample < 1:
            n = max(1, math.ceil(cfg.cg_subsample * cfg.episodes_per_task))
            curvature = (
                maml.first_episodes(pre_batch, pre.mask.shape[-1], n),
                maml.first_episodes(post_batch, post.mask.shape[-1], n),
            )
        meta = maml.MetaObjective(
            spec, detached(theta), detached(rates) if rates is not None else None, pre_batch,
            adapted, post_batch, inner, num_tasks=cfg.meta_batch_size,
            first_order=cfg.algo == "fomaml", ctx=ctx, curvature_episodes=curvature,
            curvature_dtype=curvature_dtype if cfg.outer == "trpo" else None,
            inner_estimator=cfg.inner_estimator,
            workers=workers, shards=threads,
        )  # fmt: skip
        grad = meta.grad()
        outer_loss = meta.reinforce_loss()

        run.begin_update()  # from here to end_update, a signal waits for the save
        # 5. The outer update: Adam on the post-update loss, or a TRPO step.
        kl, ls_steps = float("nan"), 0
        if optimizer is not None:
            for p, g in zip(meta_params, unflatten_list(-grad, meta_params), strict=True):
                p.grad = g
            if cfg.outer_lr_anneal:  # a function of the iteration alone: resumes exactly
                for group in optimizer.param_groups:
                    group["lr"] = cfg.outer_lr * (1.0 - (it - 1) / cfg.iterations)
            optimizer.step()
        else:
            x_new, stats = trpo.step(
                meta.x, grad, meta.kl_hvp, meta.evaluate, meta.surrogate_before(), trpo_cfg
            )
            with torch.no_grad():
                for p, new in zip(meta_params, unflatten_list(x_new, meta_params), strict=True):
                    p.copy_(new)
            kl, ls_steps = stats.kl, stats.line_search_steps

        # 6. Metrics (means over all processes' tasks) and checkpoints.
        e = cfg.episodes_per_task
        pre_sum, post_sum = distributed.sum_tensor(
            ctx, [episode_returns(pre).sum().item(), episode_returns(post).sum().item()]
        )
        row: dict[str, Any] = {
            "iteration": it,
            "pre_return": pre_sum / (cfg.meta_batch_size * e),
            "post_return": post_sum / (cfg.meta_batch_size * e),
            "outer_loss": outer_loss,
            "kl": kl,
            "line_search_steps": ls_steps,
            "inner_lr_mean": torch.cat([r.detach().view(-1) for r in rates.values()]).mean().item()
            if rates is not None
            else cfg.inner_lr,
            # The mean exploration std of theta (gaussian policies): where it collapses, MAML's
            # pre-update episodes stop carrying information about the task.
            "policy_std": theta["log_std"].detach().exp().mean().item()
            if "log_std" in theta
            else float("nan"),
            "seconds": time.perf_counter() - start,
        }
        ckpt.training.update(
            iterations=it,
            final_pre_return=round(row["pre_return"], 3),
            final_post_return=round(row["post_return"], 3),
        )
        if log is not None:
            log.write(row)
            shown = {"pre": f"{row['pre_return']:.1f}", "post": f"{row['post_return']:.1f}"}
            if cfg.outer == "trpo":
                shown["kl"] = f"{kl:.4f}"
            bar.set_postfix(shown)
            if it % cfg.save_every == 0 or it == cfg.iterations:
                run.save(it)  # the checkpoint and the trainer state
        run.end_update(it)
    if log is not None:
        log.close()
    return ckpt


def unflatten_list(vector: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Splits a flat vector into tensors shaped like ``like``."""
    out, offset = [], 0
    for t in like:
        out.append(vector[offset : offset + t.numel()].view_as(t).clone())
        offset += t.numel()
    return out


class _MetricsLog:
    """Per-iteration metrics: a CSV, and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, cfg: TrainConfig, resume_at: int | None = None, start: int = 0) -> None:
        self.path = path = cfg.metrics_csv or cfg.out.with_name(cfg.out.name + ".metrics.csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_at is not None and path.is_file():  # a resumed run: its rows through `start`
            self._fh = path.open("r+", newline="")
            self._fh.truncate(resume_at)
            self._fh.seek(resume_at)
            self._csv = csv.writer(self._fh)
        else:
            self._fh = path.open("w", newline="")
            self._csv = csv.writer(self._fh)
            self._csv.writerow(METRICS)
        self._tb: Any = None
        if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
            print(
                "metarl train: TensorBoard events skipped: tensorboard is not installed (pip "
                "install tensorboard; --no-tensorboard silences this); metrics go to "
                f"{path}",
                file=sys.stderr,
            )
        elif cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(cfg.out.with_name(cfg.out.name + ".tensorboard")),
                purge_step=start + 1 if start else None,  # a resumed run replaces later events
            )

    def write(self, row: dict[str, Any]) -> None:
        self._csv.writerow([_fmt(row[k]) for k in METRICS])
        self._fh.flush()
        if self._tb is not None:
            for k in METRICS[1:]:
                if isinstance(row[k], float) and np.isfinite(row[k]):
                    self._tb.add_scalar(f"train/{k}", row[k], row["iteration"])

    def position(self) -> int:
        """Bytes written so far (what a resumed run truncates the CSV to)."""
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.6g}"
    return str(v)


def main() -> None:
    from metarl.cli import report_checkpoint
    from metarl.errors import debug_requested, reported

    args = sys.argv[1:]
    prog = "python -m metarl.train"
    with reported(prog, debug_requested(args)):
        cfg = config.parse_train_args([a for a in args if a != "--debug"], prog=prog)
        # every process checks before the first one can write (the rendezvous is in train())
        prepare_outputs(cfg, remove=int(os.environ.get("RANK", "0")) == 0)
        ckpt = trainer_state.train_or_exit(cfg)
        report_checkpoint(cfg.out, ckpt)


if __name__ == "__main__":
    main()
