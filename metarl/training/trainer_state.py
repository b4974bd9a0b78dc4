"""Resumable training: the trainer state written beside every checkpoint, ``--resume``, and a
clean stop on SIGINT / SIGTERM.

Every time the trainer saves its checkpoint ``<out>/`` it also writes ``<out>.trainer-state/``
(atomically, like the checkpoint): ``state.safetensors`` holds θ, Meta-SGD's rates, the outer
optimizer's state tensors (Adam's moments and step counts) and torch's global random state;
``state.json`` holds the iteration, the run's whole configuration, the checkpoint's ``training``
section, the optimizer's hyperparameters and the metrics CSV's length at that iteration. No
pickle: both files are plain data.

The trainer's own random streams are keyed by ``(seed, iteration[, phase, task])``
(:func:`metarl.training.train.task_rngs`), so nothing else needs carrying over: a run resumed at
iteration k draws exactly what an uninterrupted run draws from iteration k + 1 on, and ends with
the same parameters and metrics, bit for bit on one machine with the same thread count.

``metarl train --resume RUN`` continues the run whose checkpoint is ``RUN`` with the settings it
was started with; only the options in :data:`RUN_CONTROL` may be changed (``--iterations`` to
train it further); other training flags are ignored with a warning (a warm start with new
settings is ``--init-from RUN --out NEW``).

A SIGINT (Ctrl-C) or SIGTERM during training only sets a flag; the trainer stops at its next
safe point (after the phase of the iteration it is in: sampling, the inner loop, the
meta-gradient; or after the outer update, the metrics and the save), saves the last completed
iteration as a resumable state whose checkpoint says it is partial, and
:class:`TrainingInterrupted` carries the exit status (130 / 143) and the one line that says how
to resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import typing
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from metarl.core.checkpoint import Checkpoint, save_checkpoint
from metarl.core.errors import UsageError
from metarl.core.policies import Params
from metarl.training import config, distributed, lineage
from metarl.training.options import TrainConfig

FORMAT_VERSION = 1
SUFFIX = ".trainer-state"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
RUN_CONTROL = ("iterations", "save_every", "threads", "sampler_workers", "progress", "tensorboard")
"""Options a resumed run may change; every other one is the run's."""
_NOT_COMPARED = ("resume", "out", "init_from")


class ResumeError(UsageError, ValueError):
    """``--resume`` names no resumable run. One line naming the path and the way out."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a resumable state (a partial checkpoint)."""

    def __init__(self, signum: int, iteration: int, planned: int, run: Path) -> None:
        self.signum, self.iteration, self.planned, self.run = signum, iteration, planned, run
        self.exit_status = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as a shell shows
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after iteration {iteration} of {planned}, state saved (a partial "
            f"checkpoint); resume with: metarl train --resume {run}"
        )


def state_dir(out: Path) -> Path:
    """Where the trainer state of the checkpoint ``out`` lives."""
    return out.with_name(out.name + SUFFIX)


def run_of(path: Path) -> Path:
    """The checkpoint directory of a run given as itself or as its state directory."""
    return path.with_name(path.name[: -len(SUFFIX)]) if path.name.endswith(SUFFIX) else path


# -- the state on disk ---------------------------------------------------------------------------


@dataclass
class TrainerState:
    iteration: int
    """Completed iterations."""
    config: dict[str, Any]
    """The run's TrainConfig as JSON values (its name and version filled in)."""
    training: dict[str, Any]
    """The checkpoint's ``training`` section at ``iteration``."""
    metrics_csv: str | None
    metrics_offset: int | None
    """Bytes of the metrics CSV through iteration ``iteration`` (header included)."""
    params: Params
    rates: Params | None
    optimizer: dict[str, Any] | None
    """``torch.optim.Optimizer.state_dict()``, or None (TRPO keeps no state)."""
    torch_rng: torch.Tensor


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def save_state(state: TrainerState, out: Path) -> Path:
    """Writes the state of the run ``out`` to ``<out>.trainer-state/`` atomically."""
    target = state_dir(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"params.{k}": v.detach().contiguous() for k, v in state.params.items()}
    tensors |= {f"rates.{k}": v.detach().contiguous() for k, v in (state.rates or {}).items()}
    tensors["torch_rng"] = state.torch_rng.contiguous()
    optimizer_json: dict[str, Any] | None = None
    if state.optimizer is not None:
        scalars: dict[str, dict[str, Any]] = {}
        for index, slots in state.optimizer["state"].items():
            for slot, value in slots.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{slot}"] = value.detach().contiguous()
                else:
                    scalars.setdefault(str(index), {})[slot] = value
        optimizer_json = {
            "param_groups": _plain(state.optimizer["param_groups"]),
            "scalars": scalars,
        }
    meta = {
        "format_version": FORMAT_VERSION,
        "iteration": state.iteration,
        "config": _plain(state.config),
        "training": _plain(state.training),
        "metrics_csv": state.metrics_csv,
        "metrics_offset": state.metrics_offset,
        "optimizer": optimizer_json,
        "random_streams": "keyed by (seed, iteration, phase, task): nothing to carry over",
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(tensors, tmp / STATE_TENSORS)
        (tmp / STATE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _no_state(run: Path, where: Path) -> str:
    """Why ``--resume run`` finds no trainer state, from what is there, and what to do."""
    if (run / "manifest.json").is_file():  # a checkpoint, without the state to continue it
        return (
            f"--resume {run}: no trainer state at {where} (the checkpoint was written before "
            "resumable training, or by another tool); start a new run from its checkpoint with "
            f"--init-from {run} --out NEW"
        )
    left = [
        str(p)
        for p in (
            run.with_name(run.name + ".metrics.csv"),
            run.with_name(run.name + ".tensorboard"),
            where,
            run,
        )
        if p.exists()
    ]
    if left:  # (killed before its first save: nothing was saved to continue from)
        return (
            f"--resume {run}: nothing to resume: the run stopped before its first save "
            f"(no checkpoint, no trainer state; it left {', '.join(left)}); start it again "
            "afresh: its `metarl train` command with --overwrite (which replaces what it left)"
        )
    return (
        f"--resume {run}: no such run (nothing there: no checkpoint, no trainer state); pass "
        "the --out of a run of `metarl train`"
    )


def load_state(run: Path) -> TrainerState:
    """Reads the state of the run ``run`` (its checkpoint directory or its state directory)."""
    run = run_of(Path(run))
    where = state_dir(run)
    if not (where / STATE_JSON).is_file() or not (where / STATE_TENSORS).is_file():
        raise ResumeError(_no_state(run, where))
    try:
        meta = json.loads((where / STATE_JSON).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ResumeError(
                f"--resume {run}: {where / STATE_JSON} has format_version "
                f"{meta.get('format_version')!r}, this metarl reads {FORMAT_VERSION}; "
                f"start a new run with --init-from {run}"
            )
        tensors = load_file(where / STATE_TENSORS)
        optimizer = None
        if meta["optimizer"] is not None:
            slots: dict[int, dict[str, Any]] = {}
            for key, value in tensors.items():
                if key.startswith("optimizer."):
                    _, index, slot = key.split(".", 2)
                    slots.setdefault(int(index), {})[slot] = value
            for index, scalars in meta["optimizer"]["scalars"].items():
                slots.setdefault(int(index), {}).update(scalars)
            groups = [
                {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
                for g in meta["optimizer"]["param_groups"]
            ]
            optimizer = {"state": slots, "param_groups": groups}
        state = TrainerState(
            iteration=int(meta["iteration"]),
            config=dict(meta["config"]),
            training=dict(meta["training"]),
            metrics_csv=meta.get("metrics_csv"),
            metrics_offset=meta.get("metrics_offset"),
            params=_prefixed(tensors, "params."),
            rates=_prefixed(tensors, "rates.") or None,
            optimizer=optimizer,
            torch_rng=tensors["torch_rng"],
        )
    except ResumeError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise ResumeError(
            f"--resume {run}: unreadable trainer state in {where} ({type(exc).__name__}: {exc}); "
            f"start a new run from its checkpoint with --init-from {run}"
        ) from None
    return state


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# -- --resume: the run's configuration -----------------------------------------------------------


def _base_config(cfg: TrainConfig) -> TrainConfig:
    """What the command line would give without any flag for this env: TrainConfig's defaults
    under the family's preset (:mod:`metarl.training.config`), so a value equal to it was not
    asked for."""
    base = type(cfg)()
    try:
        return dataclasses.replace(base, **config.load_preset(cfg.env))
    except Exception:  # no preset support, or an env without one: the dataclass defaults
        return base


def _config_from_json(cfg: TrainConfig, values: dict[str, Any]) -> dict[str, Any]:
    """The saved values that are still TrainConfig fields, with TrainConfig's types."""
    hints = typing.get_type_hints(type(cfg))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name not in values:
            continue
        value, hint = values[f.name], str(hints[f.name])
        if isinstance(value, str) and "Path" in hint:
            value = Path(value)
        elif isinstance(value, list) and "tuple" in hint:
            value = tuple(value)
        out[f.name] = value
    return out


def resolve_resume(cfg: TrainConfig) -> TrainerState | None:
    """For ``cfg.resume``: loads the run's state and turns ``cfg`` (in place) into the run's
    configuration, with the :data:`RUN_CONTROL` options the command line changed; None when
    ``cfg`` does not resume. Raises :class:`ResumeError`."""
    if cfg.resume is None:
        return None
    run = run_of(Path(cfg.resume))
    if cfg.init_from:
        raise ResumeError(
            f"--resume {run} and --init-from {cfg.init_from}: a resumed run continues from its "
            "own state; drop one of them"
        )
    state = load_state(run)
    saved = _config_from_json(cfg, state.config)
    base = _base_config(cfg)
    ignored: list[str] = []
    changed: list[str] = []
    for f in dataclasses.fields(cfg):
        if f.name in _NOT_COMPARED or f.name not in saved:
            continue
        given = getattr(cfg, f.name)
        if given == getattr(base, f.name) or given == saved[f.name]:
            continue
        if f.name in RUN_CONTROL:
            saved[f.name] = given
            changed.append(f.name)
        else:
            ignored.append(f"--{f.name.replace('_', '-')}")
    if ignored:
        print(
            f"metarl train: --resume {run} keeps the run's settings, ignoring "
            f"{' '.join(ignored)} (to train with new settings: --init-from {run} --out NEW)",
            file=sys.stderr,
        )
    for key, value in saved.items():
        if key not in _NOT_COMPARED:
            setattr(cfg, key, value)
    cfg.out, cfg.resume, cfg.init_from = run, run, saved.get("init_from")
    if cfg.iterations <= state.iteration:
        raise ResumeError(
            f"--resume {run}: the run has completed {state.iteration} iterations of "
            f"{cfg.iterations}; pass --iterations N with N > {state.iteration} to train it further"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"metarl train: resuming {run} after iteration {state.iteration} of "
            f"{cfg.iterations}, with its own settings\n"
            + config.describe(cfg, [f"the run's own, {state_dir(run) / STATE_JSON}"], changed),
            file=sys.stderr,
            flush=True,
        )
    return state


# -- during training -----------------------------------------------------------------------------

_previous_handlers: dict[int, Any] = {}


def restore_signal_handlers() -> None:
    """Puts back the SIGINT / SIGTERM handlers :class:`Run` replaced (train() calls it last)."""
    for signum, handler in _previous_handlers.items():
        signal.signal(signum, handler)
    _previous_handlers.clear()


class Run:
    """The trainer's saving and stopping.

    :meth:`end_iteration` records a completed iteration and saves on the ``--save-every``
    schedule (:meth:`save`: the checkpoint and, beside it, the trainer state). A SIGINT or
    SIGTERM only sets a flag: its handler runs between any two Python bytecodes, inside a
    ``torch.func`` transform or halfway through a save, where nothing may be written. The loop
    stops at its next safe point: :meth:`safe_point` between the phases of an iteration (the
    iteration is dropped; theta and the optimizer are still those of the last completed one),
    or :meth:`end_iteration` once the outer update, the metrics and the save are done. It saves
    the last completed iteration there (unless just saved) and raises
    :class:`TrainingInterrupted`. Under torchrun the processes agree at the end of each
    iteration (one all-reduce of the flag), so all stop after the same iteration."""

    def __init__(
        self,
        cfg: TrainConfig,
        ckpt: Checkpoint,
        theta: Params,
        rates: Params | None,
        optimizer: torch.optim.Optimizer | None,
        resumed: TrainerState | None,
        *,
        ctx: distributed.Context,
        spec: Any,
    ) -> None:
        """Restores a resumed run's state into ``theta``, ``rates``, ``optimizer`` and ``ckpt``,
        or warm-starts from ``cfg.init_from``; nothing is written yet."""
        self.cfg, self.ckpt, self.theta, self.rates = cfg, ckpt, theta, rates
        self.optimizer, self.ctx = optimizer, ctx
        self.metrics_offset = resumed.metrics_offset if resumed is not None else None
        self.log: Any = None
        self.completed = 0
        self._saved: int | None = None
        """The iteration whose state is on disk now (None: none of this run's)."""
        self._signal: int | None = None
        """The first SIGINT / SIGTERM received, not yet acted on."""
        if resumed is not None:
            self._restore(resumed)
        elif cfg.init_from:
            ckpt.training.update(
                lineage.warm_start(
                    cfg.init_from, env_id=cfg.env, spec=spec, algo=cfg.algo, theta=theta,
                    rates=rates,
                )
            )  # fmt: skip
        self._rng = torch.get_rng_state()  # torch's random state at the last completed iteration

    def _restore(self, state: TrainerState) -> None:
        with torch.no_grad():
            for name, p in self.theta.items():
                p.copy_(state.params[name])
            for name, r in (self.rates or {}).items():
                assert state.rates is not None
                r.copy_(state.rates[name])
        if self.optimizer is not None and state.optimizer is not None:
            self.optimizer.load_state_dict(state.optimizer)
        torch.set_rng_state(state.torch_rng)
        # The run's record (iterations, final returns, lineage) under this start's settings
        # (a resumed run may have more --iterations); `resume` is not part of the recipe.
        fresh = dict(self.ckpt.training)
        if isinstance(fresh.get("config"), dict):
            fresh["config"] = {**fresh["config"], "resume": None}
        self.ckpt.training = {**state.training, **fresh}
        self.completed = self._saved = state.iteration

    @property
    def start(self) -> int:
        """Iterations already done (0 for a new run)."""
        return self.completed

    def watch(self, log: Any) -> None:
        """From now on, a SIGINT or SIGTERM stops training at the next safe point with a
        resumable state (``log``: the metrics log whose position the state records)."""
        self.log = log
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            _previous_handlers.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is None:  # (a second one changes nothing: the stop is near)
            self._signal = signum

    def save(self) -> None:
        """Writes the checkpoint and, beside it, the trainer state of the last completed
        iteration (first process only). The manifest says whether the run's planned iterations
        are all done (``training.partial``, ``iterations`` of ``planned_iterations``)."""
        if not self.ctx.is_main:
            return
        done, planned = self.completed, self.cfg.iterations
        self.ckpt.training.update(
            iterations=done, planned_iterations=planned, partial=done < planned
        )
        config = {**_plain(dataclasses.asdict(self.cfg)), "name": self.ckpt.name}
        config["version"] = self.ckpt.version
        metrics_path = getattr(self.log, "path", None)
        save_state(
            TrainerState(
                iteration=done,
                config=config,
                training=self.ckpt.training,
                metrics_csv=None if metrics_path is None else str(metrics_path),
                metrics_offset=self.log.position() if self.log is not None else None,
                params=self.theta,
                rates=self.rates,
                optimizer=self.optimizer.state_dict() if self.optimizer is not None else None,
                torch_rng=self._rng,
            ),
            self.cfg.out,
        )
        save_checkpoint(self.ckpt, self.cfg.out)
        self._saved = done

    def safe_point(self) -> None:
        """Between two phases of an iteration: stops here if a signal came (one process; under
        torchrun the processes stop together at the end of the iteration)."""
        if self._signal is not None and not self.ctx.enabled:
            self._stop(self._signal)

    def end_iteration(self, iteration: int) -> None:
        """Iteration ``iteration`` is complete (its update, metrics and log row): saves on the
        ``--save-every`` schedule and at the last iteration, then stops if a signal came
        before the last."""
        self.completed = iteration
        self._rng = torch.get_rng_state()
        if iteration % self.cfg.save_every == 0 or iteration == self.cfg.iterations:
            self.save()
        asked = self._signal is not None
        if self.ctx.enabled:  # did any process get one? (all stop after this iteration)
            asked = bool(self.ctx.sum_(torch.tensor([float(asked)])).item())
        if asked and iteration < self.cfg.iterations:
            self._stop(self._signal or signal.SIGTERM)

    def _stop(self, signum: int) -> None:
        restore_signal_handlers()
        if self._saved != self.completed:
            self.save()
        raise TrainingInterrupted(signum, self.completed, self.cfg.iterations, Path(self.cfg.out))
