"""Publish a checkpoint into a served model directory, optionally behind an evaluation gate.

    metarl publish runs/nav --model-dir models                     # models/<name>/<next version>
    metarl publish runs/nav --model-dir models --name nav --version 7
    metarl publish runs/nav --model-dir models --gate --tolerance 1.0

The checkpoint is verified, copied to a hidden temporary directory beside its destination,
verified again there and renamed into ``MODEL_DIR/<name>/<version>`` in one step, so a server
watching the directory (``metarl serve --model-dir``) sees the new version whole or not at all.
Its manifest takes the published name and version (the server serves a checkpoint under the
manifest's), and records where it was published from. An existing version is never overwritten.
A partial checkpoint (its training stopped before its planned iterations: an interrupted run)
is refused unless ``--allow-partial``; its manifest keeps saying ``partial``.

Without ``--version`` the version is the next one after the newest (in the order of
:mod:`metarl_client.versions`, the server's): ``1`` for the first, ``4`` after ``3``, ``v1.10``
after ``v1.9``, and a UTC timestamp after a timestamp.

``--gate`` first evaluates the candidate and the newest published version on the same held-out
tasks with the same episodes (``metarl eval``'s evaluation of the ``maml`` method: same seed
gives the same numbers as that row of ``metarl eval``), prints both side by side, and publishes
only if the candidate's mean return after its inner steps is at least the served version's
minus ``--tolerance``. A refused candidate exits with status 1, so cron jobs and CI pipelines can
use it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import tyro

from metarl import envs
from metarl.core.checkpoint import MANIFEST, PARAMS, Checkpoint, CheckpointError, load_checkpoint
from metarl.core.checkpoint_paths import resolve_checkpoint
from metarl.core.errors import UsageError, UserError
from metarl.training.lineage import read_manifest, versions_in
from metarl_client.versions import is_timestamp, newest_version, version_key

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")


@dataclass
class PublishConfig:
    """Copy a checkpoint into a served model directory as a new version, atomically; with
    --gate, only if it evaluates at least as well as the version served now."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """Checkpoint directory to publish (a ``metarl train --out``), or a bundled
    ``<name>/<version>``."""
    model_dir: Path
    """The model directory the server watches (``metarl serve --model-dir``); made if it does
    not exist yet (its parent must)."""
    name: str = ""
    """Policy name to publish under; empty for the checkpoint's own."""
    version: str = ""
    """Version label; empty for the next after the newest (1, 2, ... or a UTC timestamp)."""
    gate: bool = False
    """Evaluate the candidate and the newest published version first, publish only if the
    candidate is not worse (beyond --tolerance)."""
    tolerance: float = 0.0
    """Gate: how much lower (in mean episode return, after the inner steps) the candidate's
    return may be than the served version's."""
    tasks: int = 20
    """Gate: held-out tasks to evaluate both on."""
    seed: int = 0
    """Gate: seeds the held-out tasks and the episodes (as ``metarl eval --seed``)."""
    episodes_per_task: int | None = None
    """Gate: episodes per task at each step; default: the candidate's training value (else 20)."""
    threads: int = 1
    """Gate: torch intra-op threads."""
    allow_partial: bool = False
    """Publish a partial checkpoint too: one whose training stopped before its planned
    iterations (interrupted; its manifest says ``partial``). Refused without this flag."""


class PublishError(UsageError):
    """The checkpoint, the model directory or the version cannot be published (exit status 2)."""


class GateRefused(UserError):
    """The candidate evaluated worse than the served version beyond the tolerance (exit 1)."""


@dataclass
class GateResult:
    """The gate's evaluation of both policies on the same tasks and episodes."""

    env_id: str
    tasks: int
    seed: int
    episodes_per_task: int
    tolerance: float
    candidate: list[float]
    """Mean return over tasks after 0..K inner steps."""
    candidate_steps: int
    served: list[float] | None
    served_steps: int
    served_label: str
    candidate_label: str

    @property
    def candidate_return(self) -> float:
        return self.candidate[self.candidate_steps]

    @property
    def served_return(self) -> float | None:
        return None if self.served is None else self.served[self.served_steps]

    @property
    def passed(self) -> bool:
        served = self.served_return
        return served is None or self.candidate_return >= served - self.tolerance

    def table(self) -> str:
        steps = len(self.candidate)
        header = ["policy", *(f"{j} step{'s' * (j != 1)}" for j in range(steps)), "after its steps"]
        rows = []
        if self.served is not None:
            rows.append([
                f"served {self.served_label}", *(f"{x:.2f}" for x in self.served),
                f"{self.served[self.served_steps]:.2f} ({self.served_steps})",
            ])  # fmt: skip
        rows.append([
            f"candidate {self.candidate_label}", *(f"{x:.2f}" for x in self.candidate),
            f"{self.candidate_return:.2f} ({self.candidate_steps})",
        ])  # fmt: skip
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            f"gate: {self.env_id}, mean return over {self.tasks} held-out tasks (seed {self.seed}) "
            f"of {self.episodes_per_task} episodes each, after 0..{steps - 1} inner steps",
            *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in [header, *rows]),
        ]  # fmt: skip
        served = self.served_return
        if served is None:
            lines.append("no served version to compare with: the candidate passes")
        else:
            diff = self.candidate_return - served
            verdict = "passes" if self.passed else "REFUSED"
            lines.append(
                f"candidate - served after their inner steps: {diff:+.2f} "
                f"(tolerance {self.tolerance:g}): {verdict}"
            )
        return "\n".join(lines)


def maml_returns(
    ckpt: Checkpoint, *, tasks: int, seed: int, steps: int, episodes_per_task: int
) -> np.ndarray:
    """``metarl eval``'s ``maml`` row (:func:`metarl.evaluation.eval.evaluate`): per-task mean
    return ``[steps + 1, tasks]`` after 0..``steps`` inner steps, on the held-out tasks and episode
    streams ``seed`` gives (so two checkpoints of a family see the same tasks and draws)."""
    from metarl.evaluation import eval as evaluation

    batched_cls = envs.family(ckpt.env_id).batched_cls
    # evaluate()'s streams: its first two children are the held-out tasks and the episodes.
    task_ss, episode_ss = np.random.SeedSequence(seed).spawn(2)
    task_list = batched_cls.sample_tasks(tasks, np.random.default_rng(task_ss))
    return evaluation.adaptation_curve(
        batched_cls(tasks * episodes_per_task),
        ckpt.spec,
        ckpt.params,
        task_list,
        ckpt.inner_loop,
        steps=steps,
        episodes_per_task=episodes_per_task,
        lr=ckpt.learning_rates,
        rng=np.random.default_rng(episode_ss),
        generator=torch.Generator().manual_seed(evaluation._torch_seed(episode_ss)),
    )


def run_gate(
    cfg: PublishConfig, candidate: Checkpoint, served: Checkpoint | None, served_label: str
) -> GateResult:
    """Evaluates the candidate (and the served version) as :func:`maml_returns` does."""
    if cfg.tasks < 1:
        raise PublishError(f"--tasks {cfg.tasks}: the gate needs at least 1 task")
    if served is not None and served.env_id != candidate.env_id:
        raise PublishError(
            f"--gate: the served version {served_label} is a {served.env_id} policy and the "
            f"candidate a {candidate.env_id} one; publish under another --name"
        )
    torch.set_num_threads(cfg.threads)
    episodes = cfg.episodes_per_task or int(candidate.training.get("episodes_per_task", 20))
    k_c = candidate.inner_loop.steps
    k_s = served.inner_loop.steps if served is not None else 0
    steps = max(k_c, k_s)

    def curve(ckpt: Checkpoint) -> list[float]:
        r = maml_returns(
            ckpt, tasks=cfg.tasks, seed=cfg.seed, steps=steps, episodes_per_task=episodes
        )
        return [float(x) for x in r.mean(axis=1)]

    return GateResult(
        env_id=candidate.env_id,
        tasks=cfg.tasks,
        seed=cfg.seed,
        episodes_per_task=episodes,
        tolerance=cfg.tolerance,
        candidate=curve(candidate),
        candidate_steps=k_c,
        served=curve(served) if served is not None else None,
        served_steps=k_s,
        served_label=served_label,
        candidate_label=str(cfg.checkpoint),
    )


def next_version(existing: list[str]) -> str:
    """The version after the newest of ``existing`` (see the module doc)."""
    newest = newest_version(existing)
    if newest is None:
        return "1"
    if is_timestamp(newest):
        now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        if version_key(now) <= version_key(newest):
            raise PublishError(
                f"the newest version {newest!r} is not older than now ({now}); pass --version"
            )
        return now
    digits = list(re.finditer(r"\d+", newest))
    if not digits:
        raise PublishError(
            f"cannot tell which version comes after {newest!r} (it has no number); pass --version"
        )
    last = digits[-1]
    bumped = str(int(last.group()) + 1).zfill(len(last.group()))
    return newest[: last.start()] + bumped + newest[last.end() :]


def _check_label(value: str, flag: str) -> None:
    if not _LABEL.fullmatch(value) or value.endswith(".old"):
        raise PublishError(
            f"{flag} {value!r}: use letters, digits and . _ @ + - (not starting with . or -)"
        )


def publish(cfg: PublishConfig, out: Any = None) -> Path:
    """Publishes ``cfg.checkpoint`` (see the module doc); returns the new version's directory.
    Prints the gate's table to ``out`` (stdout). Raises :class:`PublishError` or
    :class:`GateRefused`; nothing is left in the model directory unless it succeeded."""
    out = out or sys.stdout
    try:
        source = resolve_checkpoint(cfg.checkpoint, flag="")
        candidate = load_checkpoint(source)
    except (CheckpointError, FileNotFoundError) as exc:
        raise PublishError(
            f"{cfg.checkpoint}: {exc}; pass a checkpoint directory written by `metarl train`"
        ) from None
    if candidate.partial and not cfg.allow_partial:
        done, planned = candidate.progress() or ("?", "?")
        raise PublishError(
            f"{cfg.checkpoint}: a partial checkpoint (training stopped after iteration {done} of "
            f"{planned}); finish it with `metarl train --resume {source}`, or pass "
            "--allow-partial to publish it as it is"
        )
    name = cfg.name or candidate.name
    _check_label(name, "--name")
    if cfg.model_dir.exists() and not cfg.model_dir.is_dir():
        raise PublishError(f"--model-dir {cfg.model_dir}: not a directory")
    if not cfg.model_dir.exists() and not cfg.model_dir.absolute().parent.is_dir():
        # (a new model directory is made, as the first publish's; not a whole missing path)
        raise PublishError(
            f"--model-dir {cfg.model_dir}: its parent {cfg.model_dir.absolute().parent} does "
            "not exist; create it, or pass the directory `metarl serve --model-dir` watches"
        )
    name_dir = cfg.model_dir / name
    existing = versions_in(name_dir)
    version = cfg.version or next_version(list(existing))
    _check_label(version, "--version")
    target = name_dir / version
    if target.exists():
        raise PublishError(
            f"{target} already exists and published versions are never overwritten; pass "
            f"another --version, or none for the next ({next_version([*existing, version])})"
        )

    newest = newest_version(existing)
    if newest is not None:
        served_env = read_manifest(existing[newest]).get("env_id")
        if served_env != candidate.env_id:
            raise PublishError(
                f"{name_dir}: its newest version {newest} is a {served_env} policy and "
                f"{cfg.checkpoint} a {candidate.env_id} one (clients of {name!r} would get "
                "another task family); publish under another --name"
            )
    if cfg.gate:
        served, label = None, ""
        if newest is not None:
            label = f"{name}@{newest}"
            try:
                served = load_checkpoint(existing[newest])
            except CheckpointError as exc:
                raise PublishError(
                    f"--gate: the served version {existing[newest]} cannot be read ({exc}); "
                    "repair or remove it first"
                ) from None
        result = run_gate(cfg, candidate, served, label)
        print(result.table(), file=out, flush=True)
        if not result.passed:
            raise GateRefused(
                f"{cfg.checkpoint} not published: its return after {result.candidate_steps} "
                f"inner step(s) is {result.candidate_return:.2f}, below {label}'s "
                f"{result.served_return:.2f} by more than --tolerance {cfg.tolerance:g}"
            )

    _copy_atomically(source, target, name=name, version=version)
    return target


def _copy_atomically(source: Path, target: Path, *, name: str, version: str) -> None:
    """Copies the checkpoint ``source`` to ``target`` (which must not exist) with its manifest's
    name and version set, via a hidden temporary sibling renamed into place."""
    manifest = read_manifest(source)
    original = {"name": manifest.get("name"), "version": manifest.get("version")}
    manifest.update(
        name=name,
        version=version,
        published={
            "from": str(source.resolve()),
            **original,
            "at": datetime.now(timezone.utc).isoformat(),
        },
    )
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
        shutil.copyfile(source / PARAMS, tmp / PARAMS)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for f in (tmp / PARAMS, tmp / MANIFEST):
            f.chmod(0o644)  # the server may run as another user
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(0o755)
        load_checkpoint(tmp)  # the copy verifies (SHA-256, architecture) before anyone sees it
        try:
            if target.exists():
                raise FileExistsError(errno.EEXIST, "exists")
            os.rename(tmp, target)  # fails rather than replace a non-empty directory
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            raise PublishError(
                f"{target} was published by someone else meanwhile (versions are never "
                "overwritten); pass another --version, or none for the next"
            ) from None
        tmp = None
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except CheckpointError as exc:
        raise PublishError(
            f"{target}: the copy does not verify ({exc}); nothing published"
        ) from None
    except OSError as exc:
        raise PublishError(
            f"cannot write {target} ({exc.strerror or exc}); check that this user may write "
            f"{target.parent}, or pass another --model-dir; nothing published"
        ) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run_publish(cfg: PublishConfig) -> Path:
    """The ``metarl publish`` command: publishes, then says where; a refusal or an error is one
    line on stderr (after the gate's table) and a non-zero exit status."""
    try:
        target = publish(cfg)
    except UserError as exc:
        kind = "refused" if isinstance(exc, GateRefused) else "error"
        print(f"metarl publish: {kind}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    print(f"published {cfg.checkpoint} as {target.parent.name} version {target.name} in {target}")
    return target
