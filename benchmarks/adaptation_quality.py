"""Adaptation quality: meta-train each task family, then evaluate it against the baselines.

    .venv/bin/python benchmarks/adaptation_quality.py                 # every registered family
    .venv/bin/python benchmarks/adaptation_quality.py --families navigation cartpole
    .venv/bin/python benchmarks/adaptation_quality.py --families half-cheetah-dir \
        --checkpoint half-cheetah-dir=runs/hcd        # evaluate a run trained beforehand

For each family this runs ``metarl.training.train.train`` with its preset
(``metarl/presets/<family>.toml``, ``default`` or ``--preset NAME``; timed, wall clock), then
``metarl.evaluation.eval.evaluate`` on ``--tasks`` held-out tasks drawn with ``--eval-seed`` (a
stream training never sees): mean return after 0..K inner steps of the meta-trained θ
(``maml``), of a policy trained on all tasks jointly (``pretrained``: multi-task REINFORCE with
Adam, by default as many updates as MAML's training) and of a random initialization
(``random``), each fine-tuned with the same inner steps on the same episodes' random streams,
the baselines with the learning rate and exploration std that ``metarl eval`` chose for them on
training tasks. For families that report success (HalfCheetahDir, Meta-World ML1) it also prints
the success rate after each step (Meta-World's protocol). ``--checkpoint NAME=DIR`` evaluates a
run trained beforehand (``metarl train`` with the same preset) instead of training; its training
time is then the sum of the ``seconds`` column of ``DIR.metrics.csv`` (each iteration's
wall-clock time, without start-up), and the settings shown are the checkpoint's. It prints one
table per family with the baselines' grids, a summary, and the targets of issues 3 and 18:

* Navigation2D: return after 1 inner step >= -10 on 40 held-out tasks, training <= 300 s;
* CartPole family: adapted return (1 step) >= 1.5 x unadapted;
* HalfCheetahDir: success (ran 3 m its task's way) after 1 step on >= 95% of the episodes,
  training <= 20 min;
* AntDir, AntGoal: post - pre >= 25% of |pre| after 1 step, training <= 45 min;
* ML1 reach: success after 1 step >= 90% of the test goals' episodes and >= 30 points above
  before, training <= 60 min;
* every family: ``maml`` ahead of the better fine-tuned baseline after 1 inner step (the step
  MAML trains for).

The exit status is 0 whether or not targets are met (it measures; it does not gate).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from metarl import envs
from metarl.core.checkpoint import load_checkpoint
from metarl.evaluation.eval import (
    EvalConfig,
    EvalResult,
    evaluate,
    format_fine_tuning,
    format_table,
)
from metarl.training import config
from metarl.training.train import TrainConfig, train

# The families this benchmark runs; each trains with its preset in metarl/presets/<family>.toml
# (`default` unless --preset says otherwise), the settings `metarl train --env ID` uses.
FAMILIES: dict[str, str] = {
    "navigation": "metarl/Navigation2D-v0",
    "cartpole": "metarl/CartPoleFamily-v0",
    "pendulum": "metarl/PendulumFamily-v0",
    "half-cheetah-vel": "metarl/HalfCheetahVel-v0",
    "half-cheetah-dir": "metarl/HalfCheetahDir-v0",
    "ml1-reach": "metarl/ML1Reach-v3",
    "ant-dir": "metarl/AntDir-v0",
    "ant-goal": "metarl/AntGoal-v0",
    "ml1-push": "metarl/ML1Push-v3",
    "ml1-pick-place": "metarl/ML1PickPlace-v3",
    "ant-vel": "metarl/AntVel-v0",
}
# Issue 18's targets: (minimum success after 1 step, minimum gain in points, training budget s)
SUCCESS_TARGETS: dict[str, tuple[float, float, float]] = {
    "metarl/HalfCheetahDir-v0": (0.95, 0.0, 20 * 60),
    "metarl/ML1Reach-v3": (0.90, 0.30, 60 * 60),
}
GAIN_TARGETS: dict[str, tuple[float, float]] = {  # (post - pre >= this x |pre|, budget s)
    "metarl/AntDir-v0": (0.25, 45 * 60),
    "metarl/AntGoal-v0": (0.25, 45 * 60),
}
NAV_TARGET_RETURN = -10.0
NAV_TIME_BUDGET_S = 300.0
CARTPOLE_RATIO = 1.5


def available() -> list[str]:
    registered = set(envs.registered_families())
    return [name for name, env in FAMILIES.items() if env in registered]


def trained_seconds(ckpt_dir: Path) -> float:
    """The training time of a run trained beforehand: the sum of its metrics' ``seconds``."""
    metrics = ckpt_dir.with_name(ckpt_dir.name + ".metrics.csv")
    with metrics.open() as f:
        return sum(float(row["seconds"]) for row in csv.DictReader(f))


def run_family(name: str, args: argparse.Namespace) -> dict[str, Any]:
    preset = config.load_preset(FAMILIES[name], args.preset)
    if args.iterations_scale != 1.0:
        preset["iterations"] = max(1, round(preset["iterations"] * args.iterations_scale))
    given = dict(c.split("=", 1) for c in args.checkpoint).get(name)
    out = Path(given) if given else args.out / name
    cfg = TrainConfig(
        **preset,
        seed=args.seed,
        out=out,
        name=name,
        version="benchmark",
        progress=not args.no_progress,
        save_every=10**9,
    )
    if given:
        ckpt = load_checkpoint(out)
        train_seconds = trained_seconds(out)
        print(f"[{name}] {out}: trained beforehand in {train_seconds:.0f} s", file=sys.stderr)
    else:
        print(f"[{name}] training {cfg.env}: {cfg.iterations} iterations", file=sys.stderr)
        start = time.perf_counter()
        ckpt = train(cfg)
        train_seconds = time.perf_counter() - start
        print(f"[{name}] trained in {train_seconds:.0f} s; evaluating", file=sys.stderr)
    episodes = int(ckpt.training.get("episodes_per_task", cfg.episodes_per_task))
    ecfg = EvalConfig(
        checkpoint=out,
        tasks=args.tasks,
        adapt_steps=args.adapt_steps,
        seed=args.eval_seed,
        episodes_per_task=episodes,
        # Same number of Adam updates as MAML's training (MAML samples twice per update).
        pretrain_iterations=args.pretrain_iterations or cfg.iterations,
        quiet=args.no_progress,
    )
    result = evaluate(ecfg, ckpt)
    return {
        "family": name,
        "env_id": cfg.env,
        "train_seconds": round(train_seconds, 1),
        "train_config": (
            {k: v for k, v in ckpt.training.get("config", {}).items() if k in preset}
            if given
            else {k: v for k, v in preset.items() if k != "env"} | {"seed": args.seed}
        ),
        "result": result,
    }


def targets(run: dict[str, Any]) -> list[tuple[str, bool]]:
    r: EvalResult = run["result"]
    maml, best = r.returns["maml"], r.best_baseline()
    checks = [
        (
            f"maml {maml[1]:.2f} > best fine-tuned baseline {best[1]:.2f} after 1 step",
            maml[1] > best[1],
        )
    ]
    if run["env_id"] == "metarl/Navigation2D-v0":
        checks.append(
            (
                f"return after 1 step {maml[1]:.2f} >= {NAV_TARGET_RETURN}",
                maml[1] >= NAV_TARGET_RETURN,
            )
        )
        checks.append(
            (
                f"training {run['train_seconds']:.0f} s <= {NAV_TIME_BUDGET_S:.0f} s",
                run["train_seconds"] <= NAV_TIME_BUDGET_S,
            )
        )
    if run["env_id"] == "metarl/CartPoleFamily-v0":
        ratio = maml[1] / maml[0] if maml[0] > 0 else float("inf")
        checks.append(
            (f"adapted/unadapted {ratio:.2f} >= {CARTPOLE_RATIO}", ratio >= CARTPOLE_RATIO)
        )
    budget = None
    if run["env_id"] in SUCCESS_TARGETS and "maml" in r.success:
        least, gain, budget = SUCCESS_TARGETS[run["env_id"]]
        before, after = r.success["maml"][0], r.success["maml"][1]
        checks.append((f"success after 1 step {after:.1%} >= {least:.0%}", after >= least))
        if gain:
            checks.append(
                (f"success gain {after - before:+.1%} >= {gain:.0%}", after - before >= gain)
            )
    if run["env_id"] in GAIN_TARGETS:
        share, budget = GAIN_TARGETS[run["env_id"]]
        need = share * abs(maml[0])
        checks.append(
            (f"post - pre {maml[1] - maml[0]:.2f} >= {need:.2f}", maml[1] - maml[0] >= need)
        )
    if budget is not None:
        seconds = run["train_seconds"]
        checks.append((f"training {seconds:.0f} s <= {budget:.0f} s", seconds <= budget))
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILIES),
        default=None,
        help="families to run (default: every preset whose env is registered)",
    )
    parser.add_argument(
        "--preset",
        default=config.DEFAULT_PRESET,
        help="named preset of each family (metarl/presets/<family>.toml); families without it "
        "are skipped",
    )
    parser.add_argument("--seed", type=int, default=1, help="training seed")
    parser.add_argument("--eval-seed", type=int, default=1000, help="seed of the held-out tasks")
    parser.add_argument("--tasks", type=int, default=40, help="held-out tasks")
    parser.add_argument("--adapt-steps", type=int, default=3, help="inner steps evaluated")
    parser.add_argument(
        "--pretrain-iterations",
        type=int,
        default=None,
        help="multi-task training iterations of the pretrained baseline "
        "(default: the family's meta-training iterations)",
    )
    parser.add_argument(
        "--iterations-scale",
        type=float,
        default=1.0,
        help="scale every preset's training iterations (smoke runs)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/adaptation-quality"))
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="evaluate this run (trained beforehand with the family's preset) instead of training",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)  # fmt: skip

    families = args.families or available()
    runs = []
    for name in families:
        if FAMILIES[name] not in envs.registered_families():
            hint = f"install it: {envs.OPTIONAL_FAMILIES.get(FAMILIES[name], '?')}"
            print(f"[{name}] skipped: {FAMILIES[name]} is not registered ({hint})",
                  file=sys.stderr)  # fmt: skip
            continue
        if args.preset not in config.preset_names(FAMILIES[name]):
            print(f"[{name}] skipped: it has no preset {args.preset!r}", file=sys.stderr)
            continue
        run = run_family(name, args)
        runs.append(run)
        print(f"\n== {name}: trained {run['train_seconds']:.0f} s, {run['train_config']}")
        print(format_table(run["result"]))
        print(format_fine_tuning(run["result"]))
        for text, ok in targets(run):
            print(f"  target {'met ' if ok else 'MISSED'}  {text}")
        sys.stdout.flush()

    print("\nsummary (mean return after 0 / 1 / last inner steps)")
    print(f"{'family':18} {'train s':>8}  {'maml':>26}  {'pretrained':>26}  {'random':>26}")
    for run in runs:
        r: EvalResult = run["result"]
        cells = [" / ".join(f"{x:.1f}" for x in (c[0], c[1], c[-1])) for c in r.returns.values()]
        print(f"{run['family']:18} {run['train_seconds']:>8.0f}  "
              + "  ".join(f"{c:>26}" for c in cells))  # fmt: skip
        for method, rates in r.success.items():
            shown = " / ".join(f"{x:.0%}" for x in (rates[0], rates[1], rates[-1]))
            print(f"{'':18} {'':>8}  {method} success {shown}")
    all_checks = [ok for run in runs for _, ok in targets(run)]
    print(f"targets met: {sum(all_checks)}/{len(all_checks)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = [
            {k: v for k, v in run.items() if k != "result"}
            | run["result"].to_json()
            | {"targets": [{"what": t, "met": ok} for t, ok in targets(run)]}
            for run in runs
        ]
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
