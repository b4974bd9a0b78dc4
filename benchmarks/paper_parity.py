"""The MAML paper's 2D-navigation configuration, trained as a user would, beside the reference.

    .venv/bin/python benchmarks/paper_parity.py                       # 500 meta-batches, seed 1
    .venv/bin/python benchmarks/paper_parity.py --seeds 1 2 3 --iterations 500
    .venv/bin/python benchmarks/paper_parity.py --reference-dir ~/src/pytorch-maml-rl \\
        --reference-python ~/src/venv/bin/python --reference-batches 20

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
    parser.add_argument("extra", nargs="*", help="more `metarl train` flags, after --")
    global ARGS
    ARGS = parser.parse_args()

    results: dict[str, object] = {"ours": []}
    with tempfile.TemporaryDirectory(prefix="paper-parity-") as tmp:
        scratch = Path(tmp)
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
