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
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from metarl import envs
from metarl.core import inner_loop, policies
from metarl.core.checkpoint import Checkpoint
from metarl.core.errors import UsageError, UserError, debug_requested, reported
from metarl.core.inner_loop import InnerLoopConfig
from metarl.core.policies import Params
from metarl.core.sampling import episode_returns, with_horizon
from metarl.training import config, distributed, parallel_sampling, trainer_state
from metarl.training.algorithms import maml, metasgd, trpo
from metarl.training.lineage import WarmStartError
from metarl.training.options import TrainConfig

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
    env = with_horizon(batched_cls(num_local * cfg.episodes_per_task), cfg.max_episode_steps)
    # Families whose step is expensive sample in worker processes (whole episodes per worker).
    pool = parallel_sampling.training_pool(
        batched_cls, cfg.sampler_workers, ctx.local_world_size, cfg.max_episode_steps
    )

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
            **({"max_episode_steps": cfg.max_episode_steps} if cfg.max_episode_steps else {}),
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
    # SIGINT / SIGTERM stop at the next safe point (run.safe_point, run.end_iteration) with a
    # resumable one (metarl.training.trainer_state).
    run = trainer_state.Run(cfg, ckpt, theta, rates, optimizer, resumed, ctx=ctx, spec=spec)
    log = _MetricsLog(cfg, run.metrics_offset, run.start) if ctx.is_main else None
    run.watch(log)
    progress = cfg.progress and ctx.is_main
    # a terminal gets the bar; a log (stderr not a terminal) plain lines, not its \r frames
    lines = _ProgressLines(cfg.iterations, run.start) if progress and not _tty() else None
    bar = tqdm(
        range(run.start + 1, cfg.iterations + 1), initial=run.start, total=cfg.iterations,
        disable=not progress or lines is not None, desc="meta-train",
    )  # fmt: skip
    for it in bar:
        start = time.perf_counter()
        # 1. This iteration's tasks (the same draw in every process) and this process's share.
        all_tasks = batched_cls.sample_tasks(
            cfg.meta_batch_size, np.random.default_rng([cfg.seed, it])
        )
        tasks = all_tasks[share]

        # 2. Pre-update episodes with theta; theta'_i from the inner loop the server runs.
        pre = parallel_sampling.sample(
            pool, env, spec, detached(theta), tasks, cfg.episodes_per_task,
            task_rngs(cfg.seed, it, 0, share),
        )  # fmt: skip
        pre_batch = inner_loop.prepare(pre, inner)
        run.safe_point()
        lr: float | Params = detached(rates) if rates is not None else inner.lr
        with torch.no_grad():
            adapted = maml.adapt_in_shards(
                spec, detached(theta), pre_batch, lr=lr, steps=inner.steps,
                workers=workers, shards=threads, lr_scales=inner.lr_scales(inner.steps),
            )  # fmt: skip
        run.safe_point()

        # 3. Post-update episodes with each theta'_i: the data the meta-objective is measured on.
        post = parallel_sampling.sample(
            pool, env, spec, adapted, tasks, cfg.episodes_per_task,
            task_rngs(cfg.seed, it, 1, share),
        )  # fmt: skip
        run.safe_point()

        # 4. The meta-objective of this meta-batch, differentiated through the inner loop
        # (closed forms, see metarl.training.algorithms.derivatives), summed over every
        # process's tasks.
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
        run.safe_point()  # the last one: from here to end_iteration, a signal waits

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
            if lines is not None:
                lines.show(it, shown)
        run.end_iteration(it)  # the checkpoint and the trainer state every --save-every
    if log is not None:
        log.close()
    return ckpt


def _tty() -> bool:
    return sys.stderr.isatty()


class _ProgressLines:
    """The progress bar where stderr is not a terminal (a log file, CI, ``2>&1 | tee``): one
    plain line every ``every`` iterations (about 20 in a run) and at the last."""

    def __init__(self, total: int, start: int) -> None:
        self.total, self.start = total, start
        self.every = max(1, total // 20)
        self.began = time.perf_counter()

    def show(self, it: int, shown: dict[str, str]) -> None:
        if it % self.every and it != self.total:
            return
        rate = (it - self.start) / max(time.perf_counter() - self.began, 1e-9)
        values = " ".join(f"{k}={v}" for k, v in shown.items())
        print(
            f"meta-train: iteration {it}/{self.total} {values} ({rate:.2f} it/s)",
            file=sys.stderr,
            flush=True,
        )


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


def train_or_exit(cfg: TrainConfig) -> Checkpoint:
    """``train(cfg)`` for a command: a run stopped by a signal exits with 130 / 143 and the line
    that resumes it; a refused ``--resume`` or ``--init-from`` is one line and exit status 2."""
    try:
        return train(cfg)
    except trainer_state.TrainingInterrupted as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # (the process that saved; torchrun's others)
            newline = "\n" if sys.stderr.isatty() else ""  # past the progress bar
            print(f"{newline}metarl train: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_status) from None
    except (trainer_state.ResumeError, WarmStartError) as exc:
        print(f"metarl train: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def report_checkpoint(out: Path, ckpt: Checkpoint) -> None:
    """Says where the checkpoint went, only when this run really wrote it there (an other
    process under torchrun says nothing)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    if (manifest.get("name"), manifest.get("version")) != (ckpt.name, ckpt.version):
        raise UserError(
            f"no checkpoint was written to {out}: the run ended before its first save; run at "
            "least one iteration (--iterations 1 or more)"
        )
    print(f"wrote checkpoint {out} (policy {ckpt.name} version {ckpt.version})")


def main() -> None:
    """``python -m metarl.train`` (what ``torchrun -m metarl.train`` starts in each process)."""
    args = sys.argv[1:]
    prog = "python -m metarl.train"
    with reported(prog, debug_requested(args)):
        # every process checks its outputs before the first one can write (the rendezvous is
        # in train()), and before the configuration is printed
        remove = int(os.environ.get("RANK", "0")) == 0
        cfg = config.parse_train_args(
            [a for a in args if a != "--debug"],
            prog=prog,
            check=lambda c: prepare_outputs(c, remove=remove),
        )
        ckpt = train_or_exit(cfg)
        report_checkpoint(cfg.out, ckpt)


if __name__ == "__main__":
    main()
