"""The MAML paper's 2D-navigation configuration, trained as a user would, beside the reference.

    .venv/bin/python benchmarks/paper_parity.py                       # 500 meta-batches, seed 1
    .venv/bin/python benchmarks/paper_parity.py --seeds 1 2 3 --iterations 500
    .venv/bin/python benchmarks/paper_parity.py --reference-dir ~/src/pytorch-maml-rl \\
        --reference-python ~/src/venv/bin/python --reference-batches 20
    .venv/bin/python benchmarks/paper_parity.py --reference-dir ~/src/pytorch-maml-rl \\
        --reference-python ~/src/venv/bin/python --speed 25 5 --rounds 2   # timing only

For each seed this runs ``metarl train --env metarl/Navigation2D-v0 --preset paper`` (the MAML
paper's settings: 20 tasks x 20 episodes, 64-64 tanh, sigma0 1, alpha 0.1, gamma 0.99, lambda 1,
TRPO with max-KL 0.01) as a subprocess, and prints, per window of 100 meta-batches, the mean
post-update return of the training batches and the policy's std at the window's end, the median
seconds per meta-batch, and the held-out return after 0..3 inner steps (``metarl eval``, 40
tasks from ``--eval-seed``, a stream training never uses).

With ``--reference-dir`` (a checkout of tristandeleu/pytorch-maml-rl that runs with the given
interpreter: it needs a few patches for current gym/torch, which this project does not ship),
it also times ``--reference-batches`` meta-batches of the reference's own
``configs/maml/2d-navigation.yaml`` in the same run, with ``OMP_NUM_THREADS=1`` (otherwise its
forked workers oversubscribe the cores) and 2 workers, and prints the ratio of seconds per
meta-batch. ``--reference-log`` (a CSV with ``batch`` and ``post_return`` columns, from a
logged reference run) adds the reference's windows beside ours.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METARL = Path(sys.executable).with_name("metarl")
WINDOW = 100


def windows(values: list[float], size: int = WINDOW) -> list[float]:
    return [statistics.fmean(values[i : i + size]) for i in range(0, len(values), size)]


def run_ours(seed: int, iterations: int, out: Path, extra: list[str]) -> dict[str, object]:
    cmd = [
        str(METARL), "train", "--env", "metarl/Navigation2D-v0", "--preset", "paper",
        "--iterations", str(iterations), "--seed", str(seed), "--out", str(out),
        "--no-progress", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    with out.with_name(out.name + ".metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    post = [float(r["post_return"]) for r in rows]
    std = [float(r["policy_std"]) for r in rows]
    ends = [std[min(i + WINDOW, len(std)) - 1] for i in range(0, len(std), WINDOW)]
    evaluation = subprocess.run(
        [str(METARL), "eval", str(out), "--tasks", "40", "--adapt-steps", "3",
         "--seed", str(ARGS.eval_seed), "--json", "--quiet", "--methods", "maml"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    held_out = json.loads(evaluation.stdout)["returns"]["maml"]
    return {
        "seed": seed,
        "windows": windows(post),
        "std_at_window_end": ends,
        "seconds_per_batch": statistics.median(float(r["seconds"]) for r in rows),
        "train_wall_seconds": wall,
        "held_out": held_out,
    }


def children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process so far, their children
    included (the reference's sampler workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_ours(iterations: int, out: Path, extra: list[str]) -> float:
    """Wall seconds of one whole ``metarl train --preset paper`` process of ``iterations``."""
    cmd = [
        str(METARL), "train", "--env", "metarl/Navigation2D-v0", "--preset", "paper",
        "--iterations", str(iterations), "--seed", "1", "--out", str(out), "--overwrite",
        "--no-progress", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def speed(scratch: Path, many: int, few: int, rounds: int) -> dict[str, object]:
    """Seconds per meta-batch of both sides as whole processes, startup left out: the wall time
    of ``many`` meta-batches minus that of ``few``, over ``many - few``. Each round runs the
    four processes one after the other (reference few, metarl few, reference many, metarl
    many), so load from other work falls on both sides alike; the ratio is taken per round."""
    assert ARGS.reference_dir is not None
    rows = []
    for r in range(rounds):
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for side, n in (
            ("ref_few", few),
            ("ours_few", few),
            ("ref_many", many),
            ("ours_many", many),
        ):
            before = children_cpu()
            if side.startswith("ref"):
                wall[side] = time_reference_whole(
                    ARGS.reference_dir, ARGS.reference_python, n, scratch
                )
            else:
                wall[side] = time_ours(n, scratch / f"speed-{n}", ARGS.extra)
            cpu[side] = children_cpu() - before
        ref_s = (wall["ref_many"] - wall["ref_few"]) / (many - few)
        ours_s = (wall["ours_many"] - wall["ours_few"]) / (many - few)
        ref_cpu = (cpu["ref_many"] - cpu["ref_few"]) / (many - few)
        ours_cpu = (cpu["ours_many"] - cpu["ours_few"]) / (many - few)
        load = os.getloadavg()[0]
        rows.append({
            "reference_s": ref_s, "metarl_s": ours_s, "ratio": ours_s / ref_s,
            "reference_cpu_s": ref_cpu, "metarl_cpu_s": ours_cpu, "cpu_ratio": ours_cpu / ref_cpu,
            "load_average": load,
        })  # fmt: skip
        print(
            f"round {r + 1}: seconds per meta-batch ({many} minus {few}, whole processes): "
            f"reference {ref_s:.3f}, metarl {ours_s:.3f}, metarl / reference {ours_s / ref_s:.3f}"
            f" ({ref_s / ours_s:.1f}x); CPU seconds per meta-batch (all their processes): "
            f"reference {ref_cpu:.3f}, metarl {ours_cpu:.3f}, ratio {ours_cpu / ref_cpu:.3f}; "
            f"load average {load:.1f}",
            flush=True,
        )
    median = statistics.median(float(row["ratio"]) for row in rows)
    cpu_median = statistics.median(float(row["cpu_ratio"]) for row in rows)
    print(
        f"median ratio metarl / reference over {rounds} round(s): wall {median:.3f}, "
        f"CPU {cpu_median:.3f}"
    )
    return {"rounds": rows, "median_ratio": median, "many": many, "few": few}


def time_reference_whole(directory: Path, python: str, batches: int, scratch: Path) -> float:
    """Wall seconds of one whole process of the reference's 2D-navigation config."""
    return time_reference(directory, python, batches, scratch) * batches


def time_reference(directory: Path, python: str, batches: int, scratch: Path) -> float:
    """Seconds per meta-batch of the reference's 2D-navigation config over ``batches`` batches
    (the whole process, startup included, divided by the batches)."""
    config = (directory / "configs" / "maml" / "2d-navigation.yaml").read_text()
    lines = [
        f"num-batches: {batches}" if line.startswith("num-batches:") else line
        for line in config.splitlines()
    ]
    short = scratch / "2d-navigation-short.yaml"
    short.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(
        [python, "train.py", "--config", str(short), "--output-folder", str(scratch / "ref"),
         "--seed", "1", "--num-workers", "2"],
        cwd=directory, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return (time.perf_counter() - start) / batches


def reference_windows(path: Path) -> list[float]:
    with path.open() as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["batch"]))
    return windows([float(r["post_return"]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--eval-seed", type=int, default=1000)
    parser.add_argument("--reference-dir", type=Path)
    parser.add_argument("--reference-python", default=sys.executable)
    parser.add_argument("--reference-batches", type=int, default=20)
    parser.add_argument("--reference-log", type=Path)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--speed", type=int, nargs=2, metavar=("MANY", "FEW"),
        help="only time both sides (needs --reference-dir): whole processes of MANY and of FEW "
        "meta-batches, seconds per meta-batch = difference / (MANY - FEW); e.g. --speed 25 5",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --speed")
    parser.add_argument("extra", nargs="*", help="more `metarl train` flags, after --")
    global ARGS
    ARGS = parser.parse_args()

    results: dict[str, object] = {"ours": []}
    with tempfile.TemporaryDirectory(prefix="paper-parity-") as tmp:
        scratch = Path(tmp)
        if ARGS.speed is not None:
            if ARGS.reference_dir is None:
                parser.error("--speed needs --reference-dir")
            results["speed"] = speed(scratch, *ARGS.speed, ARGS.rounds)
            if ARGS.json is not None:
                ARGS.json.write_text(json.dumps(results, indent=2))
            return
        if ARGS.reference_dir is not None:
            ref_s = time_reference(
                ARGS.reference_dir, ARGS.reference_python, ARGS.reference_batches, scratch
            )
            results["reference_seconds_per_batch"] = ref_s
            print(f"reference: {ref_s:.2f} s per meta-batch ({ARGS.reference_batches} batches)")
        for seed in ARGS.seeds:
            r = run_ours(seed, ARGS.iterations, scratch / f"seed{seed}", ARGS.extra)
            results["ours"].append(r)  # type: ignore[attr-defined]
            fmt = " ".join(f"{w:7.1f}" for w in r["windows"])  # type: ignore[attr-defined]
            stds = " ".join(f"{s:.2f}" for s in r["std_at_window_end"])  # type: ignore[attr-defined]
            held = " -> ".join(f"{v:.1f}" for v in r["held_out"])  # type: ignore[attr-defined]
            print(
                f"metarl seed {seed}: post-update return per {WINDOW} batches {fmt} | std {stds} | "
                f"{r['seconds_per_batch']:.2f} s/batch, {r['train_wall_seconds']:.0f} s | "
                f"held-out 0..3 steps {held}"
            )
            if "reference_seconds_per_batch" in results:
                ref_s = float(results["reference_seconds_per_batch"])  # type: ignore[arg-type]
                whole = float(r["train_wall_seconds"]) / ARGS.iterations  # type: ignore[arg-type]
                print(
                    f"  wall time per meta-batch, reference / metarl: {ref_s / whole:.1f}x "
                    f"(whole processes: {ref_s:.2f} / {whole:.2f} s), "
                    f"{ref_s / float(r['seconds_per_batch']):.1f}x against metarl's median"  # type: ignore[arg-type]
                )
    if ARGS.reference_log is not None:
        ref = reference_windows(ARGS.reference_log)
        results["reference_windows"] = ref
        print("reference: post-update return per 100 batches " + " ".join(f"{w:7.1f}" for w in ref))
    if ARGS.json is not None:
        ARGS.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
