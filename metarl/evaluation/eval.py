"""Evaluate a checkpoint: return after 0..K inner steps on held-out tasks, against baselines.

    metarl eval runs/nav --tasks 40 --adapt-steps 3 --seed 7 [--json] [--plot curves.png]

Tasks are drawn from the checkpoint's family with ``--seed`` (from a stream training never
uses; a family with a fixed test split, Meta-World ML1's test goals, gives its test tasks).
For a family that reports success, each step also scores the success rate of the episodes it
sampled, as Meta-World's protocol does: an episode succeeded if the task's flag was set at any of
its steps, and the rate after ``j`` steps is scored on fresh episodes of the parameters adapted
``j`` times on the previous round's episodes.

Every method starts from its own initial parameters and then runs the *same* inner loop
as the server (:func:`metarl.core.inner_loop.adapt_on_episodes`, one step at a time): sample
``episodes_per_task`` episodes per task with the current parameters, record their mean return,
adapt one step on them, repeat. The methods:

* ``maml``: the checkpoint's meta-trained θ (and its learned inner learning rates, if any);
* ``pretrained``: a policy trained on all tasks jointly (multi-task REINFORCE with the same loss
  and Adam, for ``--pretrain-iterations`` iterations, seeded, cached nowhere), then fine-tuned;
* ``random``: a fresh random initialization, then fine-tuned.

A fair comparison tunes the baselines' fine-tuning too: the checkpoint's α and σ are MAML's,
learnt for θ, and can leave a plain policy stuck (a pretrained navigation policy's mean actions
sit far outside the ±0.1 clip, so with σ ≈ 0.1 every episode is the same and its gradient is
zero). So each baseline fine-tunes with the learning rate (``--baseline-lr-scales`` × α) and, for
gaussian policies, the exploration std (``--baseline-stds`` × the action range's half-width, 0:
its own) that give the best mean return after 1..K steps on ``--baseline-tasks`` *training*
tasks, drawn from a stream apart from the held-out one; the grid and the choice are reported.
``maml`` keeps the checkpoint's settings.

All methods see the same tasks and the same random streams, so their differences are the
initializations' (and the baselines' chosen fine-tuning). The same seed gives the same numbers.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import tyro

from metarl import envs
from metarl.core import inner_loop, policies
from metarl.core.checkpoint import Checkpoint, load_checkpoint
from metarl.core.checkpoint_paths import resolve_checkpoint as _resolve
from metarl.core.errors import UsageError
from metarl.core.inner_loop import InnerLoopConfig
from metarl.core.policies import Params, PolicySpec
from metarl.core.sampling import (
    episode_returns,
    sample_episodes,
    sample_episodes_and_successes,
    with_horizon,
)
from metarl.envs.base import BatchedTaskEnv, Task

Method = Literal["maml", "pretrained", "random"]
METHODS: tuple[Method, ...] = ("maml", "pretrained", "random")
BASELINES = ("pretrained", "random")


@dataclass
class EvalConfig:
    """Evaluate a checkpoint's adaptation on held-out tasks against two baselines."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """Checkpoint directory, or ``<name>/<version>`` of a bundled one (e.g. navigation-2d/1)."""
    tasks: int = 40
    """Held-out tasks to evaluate on."""
    adapt_steps: int = 3
    """Inner steps K; returns are reported after 0..K steps."""
    seed: int = 0
    """Seeds the held-out tasks, the episodes and the baselines: same seed, same numbers."""
    episodes_per_task: int | None = None
    """Episodes per task at each step; default: the checkpoint's training value (else 20)."""
    json: bool = False
    """Print one JSON object on stdout instead of the table (progress goes to stderr)."""
    plot: Path | None = None
    """Also draw the adaptation curves to this PNG (needs matplotlib: ``metarl[plot]``)."""
    pretrain_iterations: int = 100
    """Iterations of joint multi-task training for the ``pretrained`` baseline."""
    pretrain_tasks: int = 20
    """Tasks per iteration of the ``pretrained`` baseline's training."""
    pretrain_lr: float = 1e-2
    """Adam learning rate of the ``pretrained`` baseline's training."""
    baseline_lr_scales: tuple[float, ...] = (1.0, 10.0, 30.0, 100.0)
    """Fine-tuning learning rates tried for the ``pretrained`` and ``random`` baselines, as
    multiples of the checkpoint's inner learning rate alpha."""
    baseline_stds: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0)
    """Gaussian policies: exploration stds tried for the baselines' fine-tuning, as multiples of
    the action range's half-width; 0 keeps the baseline's own std."""
    baseline_tasks: int = 10
    """Training tasks (a stream apart from the held-out one) on which each baseline's fine-tuning
    settings are chosen, by the mean return after 1..K inner steps."""
    threads: int = 1
    """Torch intra-op threads."""
    quiet: bool = False
    methods: tuple[Method, ...] = METHODS
    """Methods to evaluate: ``maml`` alone skips the baselines' training and tuning."""
    max_episode_steps: int | None = None
    """Episode length; default: the checkpoint's training value (else the family's)."""
    """No progress messages on stderr."""


@dataclass
class EvalResult:
    env_id: str
    num_tasks: int
    seed: int
    episodes_per_task: int
    returns: dict[str, list[float]]
    """Mean over tasks of each task's mean episode return, after 0..K inner steps."""
    std: dict[str, list[float]]
    """Standard deviation over tasks of the same per-task means."""
    per_task: dict[str, np.ndarray] = field(repr=False)
    """``[K + 1, num_tasks]`` per-task mean returns."""
    fine_tuning: dict[str, FineTuning] = field(default_factory=dict)
    """Each baseline's fine-tuning settings, chosen on training tasks, with the grid tried."""
    selection_tasks: int = 0
    """Training tasks the baselines' settings were chosen on."""
    partial: bool = False
    """The checkpoint's training stopped before its planned iterations (its manifest says so):
    the returns are of an unfinished policy."""
    training_iterations: tuple[int, int] | None = None
    """``(done, planned)`` iterations of the checkpoint's training, where its manifest has them."""
    success: dict[str, list[float]] = field(default_factory=dict)
    """Families that report success: the fraction of episodes that succeeded (mean over tasks of
    each task's rate) after 0..K inner steps; empty for the others."""
    per_task_success: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """``[K + 1, num_tasks]`` per-task success rates."""
    max_episode_steps: int = 0
    """Episode length the evaluation ran."""

    def best_baseline(self) -> list[float] | None:
        """After each step, the better of the fine-tuned baselines' mean returns (None when no
        baseline was evaluated)."""
        ran = [self.returns[m] for m in BASELINES if m in self.returns]
        return [max(xs) for xs in zip(*ran, strict=True)] if ran else None

    def to_json(self) -> dict[str, Any]:
        best = self.best_baseline()
        out: dict[str, Any] = {
            "env_id": self.env_id,
            "num_tasks": self.num_tasks,
            "seed": self.seed,
            "returns": self.returns,
            "std": self.std,
            "adapt_steps": len(next(iter(self.returns.values()))) - 1,
            "episodes_per_task": self.episodes_per_task,
            "partial": self.partial,
            "training_iterations": None
            if self.training_iterations is None
            else dict(zip(("done", "planned"), self.training_iterations, strict=True)),
            "max_episode_steps": self.max_episode_steps,
            **({"success_rate": self.success} if self.success else {}),
            "fine_tuning": {
                "selection_tasks": self.selection_tasks,
                "criterion": "mean return after 1..K inner steps on training tasks",
                **{m: ft.to_json() for m, ft in self.fine_tuning.items()},
            },
        }
        if best is not None:
            out["best_baseline"] = best
            out["maml_minus_best_baseline"] = [
                round(a - b, 4) for a, b in zip(self.returns["maml"], best, strict=True)
            ]
        return out


@dataclass
class FineTuning:
    """How a baseline is fine-tuned: the inner learning rate and (gaussian) exploration std."""

    lr: float
    std: float | None
    """Exploration std set before fine-tuning (mean over action dimensions); None: its own."""
    grid: list[dict[str, Any]]
    """Every setting tried: ``{"lr", "std", "score"}`` (score: mean return after 1..K steps)."""

    def to_json(self) -> dict[str, Any]:
        return {"lr": self.lr, "std": self.std, "grid": self.grid}


def _log(cfg: EvalConfig, msg: str) -> None:
    if not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


def resolve_checkpoint(path: Path) -> Path:
    """``path`` itself if it exists, else the bundled checkpoint of that ``name/version``
    (:func:`metarl.core.checkpoint_paths.resolve_checkpoint`, which ``serve`` uses too)."""
    return _resolve(path, flag="")


def adaptation_curve(
    env: BatchedTaskEnv,
    spec: PolicySpec,
    params: Params,
    tasks: list[Task],
    inner: InnerLoopConfig,
    *,
    steps: int,
    episodes_per_task: int,
    lr: float | Params | None,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> np.ndarray:
    """Per-task mean return ``[steps + 1, len(tasks)]`` after 0..``steps`` inner steps (the
    returns of :func:`adaptation_curves`)."""
    returns, _ = adaptation_curves(
        env, spec, params, tasks, inner, steps=steps, episodes_per_task=episodes_per_task,
        lr=lr, rng=rng, generator=generator,
    )  # fmt: skip
    return returns


def adaptation_curves(
    env: BatchedTaskEnv,
    spec: PolicySpec,
    params: Params,
    tasks: list[Task],
    inner: InnerLoopConfig,
    *,
    steps: int,
    episodes_per_task: int,
    lr: float | Params | None,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-task mean return ``[steps + 1, len(tasks)]`` after 0..``steps`` inner steps, and the
    per-task success rate (same shape) for a family that reports success, else None.

    Step ``j`` samples episodes with the parameters adapted ``j`` times and, unless it is the
    last, adapts once more on exactly those episodes (the server's inner loop): every figure
    after ``j`` steps is scored on episodes the ``j``-th adaptation did not see."""
    current = {k: v.detach() for k, v in params.items()}
    out = np.zeros((steps + 1, len(tasks)))
    success: np.ndarray | None = None
    for j in range(steps + 1):
        batch, succeeded = sample_episodes_and_successes(
            env, spec, current, tasks, episodes_per_task, rng=rng, generator=generator
        )
        out[j] = episode_returns(batch).mean(dim=1).double().numpy()
        if succeeded is not None:
            if success is None:
                success = np.zeros((steps + 1, len(tasks)))
            success[j] = succeeded.mean(axis=1)
        if j < steps:
            current = inner_loop.adapt_on_episodes(
                spec, current, batch, inner, lr=lr, steps=1, first_step=j
            )
    return out, success


def pretrain_multitask(
    batched_cls: type[BatchedTaskEnv],
    spec: PolicySpec,
    inner: InnerLoopConfig,
    *,
    iterations: int,
    tasks_per_iteration: int,
    episodes_per_task: int,
    lr: float,
    rng: np.random.Generator,
    generator: torch.Generator,
    max_episode_steps: int | None = None,
) -> Params:
    """The ``pretrained`` baseline: one policy trained on all tasks jointly with the inner loop's
    REINFORCE loss (same advantages) and Adam; no adaptation during training."""
    theta = {k: v.requires_grad_() for k, v in policies.init_params(spec, generator).items()}
    optimizer = torch.optim.Adam(theta.values(), lr=lr)
    env = with_horizon(batched_cls(tasks_per_iteration * episodes_per_task), max_episode_steps)
    for _ in range(iterations):
        tasks = batched_cls.sample_tasks(tasks_per_iteration, rng)
        detached = {k: v.detach() for k, v in theta.items()}
        batch = sample_episodes(
            env, spec, detached, tasks, episodes_per_task, rng=rng, generator=generator
        )
        stacked = policies.stack(spec, theta, tasks_per_iteration)
        loss = inner_loop.reinforce_loss(spec, stacked, inner_loop.prepare(batch, inner)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach() for k, v in theta.items()}


def _torch_seed(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def with_std(spec: PolicySpec, params: Params, std: torch.Tensor | None) -> Params:
    """``params`` with the gaussian policy's std set to ``std`` (None: unchanged)."""
    if std is None or spec.distribution != "gaussian":
        return params
    log_std = params["log_std"]
    return {**params, "log_std": torch.log(std.to(log_std.dtype)).expand_as(log_std).clone()}


def choose_fine_tuning(
    batched_cls: type[BatchedTaskEnv],
    spec: PolicySpec,
    params: Params,
    inner: InnerLoopConfig,
    *,
    lrs: list[float],
    stds: list[torch.Tensor | None],
    num_tasks: int,
    steps: int,
    episodes_per_task: int,
    seed: np.random.SeedSequence,
    max_episode_steps: int | None = None,
) -> tuple[FineTuning, torch.Tensor | None]:
    """The grid point (learning rate, std) with the best mean return after 1..``steps`` inner
    steps (0 steps: before any) on ``num_tasks`` tasks drawn from ``seed``, every point on the
    same tasks and random streams; ties go to the earlier point."""
    task_ss, episode_ss = seed.spawn(2)
    tasks = batched_cls.sample_tasks(num_tasks, np.random.default_rng(task_ss))
    env = with_horizon(batched_cls(num_tasks * episodes_per_task), max_episode_steps)
    grid: list[dict[str, Any]] = []
    best: tuple[float, float, torch.Tensor | None] | None = None
    best_score = -float("inf")
    for std in stds:
        for lr in lrs:
            curve = adaptation_curve(
                env, spec, with_std(spec, params, std), tasks, inner,
                steps=steps, episodes_per_task=episodes_per_task, lr=lr,
                rng=np.random.default_rng(episode_ss),
                generator=torch.Generator().manual_seed(_torch_seed(episode_ss)),
            )  # fmt: skip
            score = float(curve[1:].mean()) if steps > 0 else float(curve[0].mean())
            shown_std = None if std is None else round(float(std.mean()), 6)
            grid.append({"lr": lr, "std": shown_std, "score": round(score, 4)})
            if score > best_score:
                best_score, best = score, (lr, shown_std or 0.0, std)
    assert best is not None
    lr, _, std = best
    return FineTuning(lr, None if std is None else round(float(std.mean()), 6), grid), std


def evaluate(cfg: EvalConfig, ckpt: Checkpoint | None = None) -> EvalResult:
    """Runs the evaluation ``cfg`` describes (on ``ckpt`` if given, else on ``cfg.checkpoint``)."""
    if cfg.tasks < 1 or cfg.adapt_steps < 0:
        raise ValueError("--tasks must be at least 1 and --adapt-steps at least 0")
    if "maml" not in cfg.methods:
        raise UsageError("--methods must include maml (the baselines are compared against it)")
    torch.set_num_threads(cfg.threads)
    if ckpt is None:
        ckpt = load_checkpoint(resolve_checkpoint(cfg.checkpoint))
    batched_cls = envs.family(ckpt.env_id).batched_cls
    spec, inner = ckpt.spec, ckpt.inner_loop
    episodes = cfg.episodes_per_task or int(ckpt.training.get("episodes_per_task", 20))
    trained_horizon = ckpt.training.get("max_episode_steps")
    horizon = cfg.max_episode_steps or (int(trained_horizon) if trained_horizon else None)

    if cfg.baseline_tasks < 1 or not cfg.baseline_lr_scales or not cfg.baseline_stds:
        raise UsageError(
            "--baseline-tasks must be at least 1 and --baseline-lr-scales and --baseline-stds "
            "need at least one value each"
        )
    if any(s <= 0 for s in cfg.baseline_lr_scales) or any(s < 0 for s in cfg.baseline_stds):
        raise UsageError("--baseline-lr-scales must be > 0 and --baseline-stds >= 0")
    # Independent streams: held-out tasks, episodes (shared by every method), baselines, and
    # the training tasks the baselines' fine-tuning is chosen on (children 0-3 are as before).
    streams = np.random.SeedSequence(cfg.seed).spawn(5)
    task_ss, episode_ss, pretrain_ss, random_ss, select_ss = streams
    # Held-out tasks: a family's test split where it has one (ML1's test goals), else fresh draws.
    sample_test = getattr(batched_cls, "sample_test_tasks", batched_cls.sample_tasks)
    tasks = sample_test(cfg.tasks, np.random.default_rng(task_ss))

    inits: dict[str, tuple[Params, float | Params | None]] = {
        "maml": (ckpt.params, ckpt.learning_rates),
    }
    if "pretrained" in cfg.methods:
        _log(cfg, f"pretrained: {cfg.pretrain_iterations} iterations of multi-task training")
        inits["pretrained"] = (
            pretrain_multitask(
                batched_cls,
                spec,
                inner,
                iterations=cfg.pretrain_iterations,
                tasks_per_iteration=cfg.pretrain_tasks,
                episodes_per_task=episodes,
                lr=cfg.pretrain_lr,
                rng=np.random.default_rng(pretrain_ss),
                generator=torch.Generator().manual_seed(_torch_seed(pretrain_ss)),
                max_episode_steps=horizon,
            ),
            None,
        )
    random_gen = torch.Generator().manual_seed(_torch_seed(random_ss))
    inits["random"] = (policies.init_params(spec, random_gen), None)  # (cheap: always drawn)

    # Each baseline's fine-tuning (learning rate, exploration std), chosen on training tasks.
    alpha = inner.lr
    lrs = [alpha * s for s in cfg.baseline_lr_scales]
    stds: list[torch.Tensor | None] = [None]
    if spec.distribution == "gaussian":
        space = batched_cls.action_space
        half = torch.as_tensor((space.high - space.low) / 2, dtype=torch.float32)  # type: ignore[attr-defined]
        stds = [None if s == 0 else s * half for s in dict.fromkeys(cfg.baseline_stds)]
    fine_tuning: dict[str, FineTuning] = {}
    for method in (m for m in BASELINES if m in cfg.methods):
        _log(cfg, f"{method}: choosing its fine-tuning on {cfg.baseline_tasks} training tasks "
                  f"({len(lrs)} learning rates x {len(stds)} stds)")  # fmt: skip
        params, _ = inits[method]
        fine_tuning[method], std = choose_fine_tuning(
            batched_cls, spec, params, inner,
            lrs=lrs, stds=stds, num_tasks=cfg.baseline_tasks, steps=cfg.adapt_steps,
            episodes_per_task=episodes, seed=select_ss, max_episode_steps=horizon,
        )  # fmt: skip
        inits[method] = (with_std(spec, params, std), fine_tuning[method].lr)

    env = with_horizon(batched_cls(cfg.tasks * episodes), horizon)
    per_task: dict[str, np.ndarray] = {}
    per_task_success: dict[str, np.ndarray] = {}
    for method in (m for m in METHODS if m in cfg.methods):
        _log(cfg, f"{method}: {cfg.tasks} tasks x {episodes} episodes, {cfg.adapt_steps} steps")
        params, lr = inits[method]
        per_task[method], succeeded = adaptation_curves(
            env,
            spec,
            params,
            tasks,
            inner,
            steps=cfg.adapt_steps,
            episodes_per_task=episodes,
            lr=lr,
            rng=np.random.default_rng(episode_ss),
            generator=torch.Generator().manual_seed(_torch_seed(episode_ss)),
        )
        if succeeded is not None:
            per_task_success[method] = succeeded
    return EvalResult(
        env_id=ckpt.env_id,
        num_tasks=cfg.tasks,
        seed=cfg.seed,
        episodes_per_task=episodes,
        returns={m: [round(float(x), 4) for x in r.mean(axis=1)] for m, r in per_task.items()},
        std={m: [round(float(x), 4) for x in r.std(axis=1)] for m, r in per_task.items()},
        per_task=per_task,
        fine_tuning=fine_tuning,
        selection_tasks=cfg.baseline_tasks,
        partial=ckpt.partial,
        training_iterations=ckpt.progress(),
        success={
            m: [round(float(x), 4) for x in s.mean(axis=1)] for m, s in per_task_success.items()
        },
        per_task_success=per_task_success,
        max_episode_steps=env.max_episode_steps,
    )


def format_fine_tuning(result: EvalResult) -> str:
    """Each baseline's grid (score per learning rate and std, * chosen) and MAML against the
    best fine-tuned baseline."""
    steps = len(result.returns["maml"]) - 1
    lines = [
        f"baselines' fine-tuning, chosen on {result.selection_tasks} training tasks by the mean "
        f"return after {'1..' + str(steps) if steps > 1 else steps} step{'s' * (steps != 1)}:"
    ]
    for method, ft in result.fine_tuning.items():
        stds = list(dict.fromkeys(g["std"] for g in ft.grid))
        lrs = list(dict.fromkeys(g["lr"] for g in ft.grid))
        score = {(g["lr"], g["std"]): g["score"] for g in ft.grid}
        header = [f"{method} lr", *("own std" if s is None else f"std {s:g}" for s in stds)]
        if stds == [None]:  # categorical: the learning rate alone
            header[1] = "score"
        rows = [
            [f"{lr:g}"]
            + [f"{score[lr, s]:.2f}" + ("*" if (lr, s) == (ft.lr, ft.std) else "") for s in stds]
            for lr in lrs
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    best = result.best_baseline()
    assert best is not None  # (called when a baseline was fine-tuned)
    diffs = ", ".join(
        f"{d:+.2f} after {j}" for j, d in enumerate(
            a - b for a, b in zip(result.returns["maml"], best, strict=True)
        )
    )  # fmt: skip
    lines.append(f"maml minus the best fine-tuned baseline: {diffs}")
    return "\n".join(line.rstrip() for line in lines)


def format_table(result: EvalResult) -> str:
    steps = len(result.returns["maml"])
    header = ["method", *(f"{j} step{'s' * (j != 1)}" for j in range(steps))]
    rows = [
        [
            m,
            *(
                f"{mu:.2f} ± {sd:.2f}"
                for mu, sd in zip(result.returns[m], result.std[m], strict=True)
            ),
        ]
        for m in result.returns
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"{result.env_id}: mean ± std over {result.num_tasks} held-out tasks (seed {result.seed}) "
        f"of the mean return of {result.episodes_per_task} episodes, after 0..{steps - 1} "
        "inner steps",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
    ]
    if result.partial:  # first, where it cannot be missed
        done, planned = result.training_iterations or ("?", "?")
        lines.insert(
            0,
            f"PARTIAL checkpoint: its training stopped after iteration {done} of {planned} "
            "(`metarl train --resume <its directory>` finishes it)",
        )
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if result.success:
        lines.append(
            "success rate (episodes whose success flag was set at some step; mean over tasks), "
            f"after 0..{steps - 1} inner steps:"
        )
        rows = [[m, *(f"{100 * s:.1f}%" for s in result.success[m])] for m in result.success]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def plot_curves(result: EvalResult, path: Path) -> None:
    """Mean return (± one std over tasks, shaded) against inner steps, one line per method."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise SystemExit(
            "--plot needs matplotlib: pip install 'metarl[plot]' (or drop --plot)"
        ) from exc
    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    ax = fig.add_subplot()
    for method, means in result.returns.items():
        x = np.arange(len(means))
        mu, sd = np.array(means), np.array(result.std[method])
        ax.plot(x, mu, marker="o", label=method)
        ax.fill_between(x, mu - sd, mu + sd, alpha=0.15)
    ax.set_xticks(np.arange(len(result.returns["maml"])))
    ax.set_xlabel("inner gradient steps")
    ax.set_ylabel("mean episode return")
    ax.set_title(f"{result.env_id}, {result.num_tasks} held-out tasks, seed {result.seed}")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def run_eval(cfg: EvalConfig) -> EvalResult:
    """The ``metarl eval`` command: evaluate, then print the table or the JSON, and plot."""
    result = evaluate(cfg)
    if cfg.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_table(result))
        if result.fine_tuning:
            print()
            print(format_fine_tuning(result))
    if cfg.plot is not None:
        plot_curves(result, cfg.plot)
        _log(cfg, f"wrote {cfg.plot}")
    return result


def main() -> None:
    run_eval(tyro.cli(EvalConfig))


if __name__ == "__main__":
    main()
