"""Checkpoints: a directory with ``params.safetensors`` and a ``manifest.json``.

safetensors holds plain tensors and cannot run code when loaded (unlike pickle). The manifest
records everything needed to serve and adapt the policy without the trainer's code: the task
family, the architecture and the inner-loop settings, plus a SHA-256 of the tensors file so a
half-written or altered checkpoint is refused. Writes are atomic: a checkpoint is written to a
temporary sibling directory and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from metarl.core.inner_loop import InnerLoopConfig
from metarl.core.policies import Params, PolicySpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARAMS = "params.safetensors"
_LR_PREFIX = "inner_lr."


class CheckpointError(Exception):
    """A checkpoint is missing, malformed, or does not match its manifest."""


@dataclass
class Checkpoint:
    name: str
    """Policy name clients ask for."""
    version: str
    """Version label; versions of one name sort oldest to newest."""
    env_id: str
    """The task family (gymnasium id) the policy was meta-trained on."""
    spec: PolicySpec
    inner_loop: InnerLoopConfig
    params: Params
    """Meta-trained initial parameters theta."""
    learning_rates: Params | None = None
    """Per-parameter inner learning rates (Meta-SGD), or None for the scalar ``inner_loop.lr``."""
    training: dict[str, Any] = field(default_factory=dict)
    """How the checkpoint was made (algorithm, iterations, seed, final metrics)."""
    created_at: str = ""

    def progress(self) -> tuple[int, int] | None:
        """``(iterations done, iterations planned)`` of the run that wrote this checkpoint, from
        its ``training`` record (``planned_iterations``, or the recipe's ``config.iterations``
        in a checkpoint written before that key); None when it records neither."""
        done = self.training.get("iterations")
        recipe = self.training.get("config")
        planned = self.training.get(
            "planned_iterations", recipe.get("iterations") if isinstance(recipe, dict) else None
        )
        if isinstance(done, int) and isinstance(planned, int):
            return done, planned
        return None

    @property
    def partial(self) -> bool:
        """Training stopped before its planned iterations (a signal, a crash after a periodic
        save): ``training.partial`` of the manifest, else :meth:`progress`."""
        flag = self.training.get("partial")
        if isinstance(flag, bool):
            return flag
        progress = self.progress()
        return progress is not None and progress[0] < progress[1]

    def manifest(self, params_sha256: str) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "env_id": self.env_id,
            "policy": self.spec.to_dict(),
            "inner_loop": self.inner_loop.to_dict(),
            "learned_learning_rates": self.learning_rates is not None,
            "training": self.training,
            "created_at": self.created_at or datetime.now(timezone.utc).isoformat(),
            "params_sha256": params_sha256,
        }


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Writes ``ckpt`` to the directory ``path`` atomically, replacing what is there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {name: p.detach().float().contiguous() for name, p in ckpt.params.items()}
        for name, lr in (ckpt.learning_rates or {}).items():
            tensors[_LR_PREFIX + name] = lr.detach().float().contiguous()
        save_file(tensors, tmp / PARAMS)
        digest = hashlib.sha256((tmp / PARAMS).read_bytes()).hexdigest()
        (tmp / MANIFEST).write_text(json.dumps(ckpt.manifest(digest), indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)  # mkstemp/mkdtemp default to owner-only; servers may run as others
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(0o755)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Loads and verifies a checkpoint directory; raises :class:`CheckpointError` saying why not."""
    path = Path(path)
    manifest_path, params_path = path / MANIFEST, path / PARAMS
    if not manifest_path.is_file() or not params_path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it needs {MANIFEST} and {PARAMS}")
    try:
        m = json.loads(manifest_path.read_text())
        if m.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{manifest_path}: format_version {m.get('format_version')!r} is not supported "
                f"(this metarl reads {FORMAT_VERSION})"
            )
        spec = PolicySpec.from_dict(m["policy"])
        inner = InnerLoopConfig.from_dict(m["inner_loop"])
        raw = params_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != m["params_sha256"]:
            raise CheckpointError(
                f"{params_path} does not match the SHA-256 in its manifest "
                "(half-written or altered)"
            )
        tensors = load_file(params_path)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    params = {k: v for k, v in tensors.items() if not k.startswith(_LR_PREFIX)}
    lrs = {k[len(_LR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_LR_PREFIX)} or None
    expected = spec.param_shapes()
    got = {k: tuple(v.shape) for k, v in params.items()}
    if got != expected:
        raise CheckpointError(
            f"{params_path}: parameters {got} do not match the manifest's architecture {expected}"
        )
    if bool(m.get("learned_learning_rates")) != (lrs is not None):
        raise CheckpointError(f"{path}: manifest and tensors disagree on learned learning rates")
    for name, t in {**params, **(lrs or {})}.items():
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{params_path}: tensor {name} has NaN or inf values")
    return Checkpoint(
        name=str(m["name"]),
        version=str(m["version"]),
        env_id=str(m["env_id"]),
        spec=spec,
        inner_loop=inner,
        params=params,
        learning_rates=lrs,
        training=dict(m.get("training", {})),
        created_at=str(m.get("created_at", "")),
    )


def bundled_checkpoints_dir() -> Path:
    """The model directory shipped inside the package (``<name>/<version>/`` checkpoints)."""
    return Path(__file__).parent.parent / "data" / "checkpoints"
