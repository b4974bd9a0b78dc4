"""Warm starts: train from a served (or any) checkpoint's θ, and record where a policy came from.

``metarl train --init-from SOURCE`` starts from the θ of SOURCE (and its learned inner learning
rates, for Meta-SGD) instead of a fresh initialization. SOURCE is

* a checkpoint directory (``runs/nav``, ``models/nav/3``);
* a model directory's policy, ``MODEL_DIR/<name>``: its newest version, in the order the
  server uses (:mod:`metarl_client.versions`);
* a bundled checkpoint, ``<name>/<version>`` (or ``<name>`` for its newest bundled version).

The source must fit the run: same task family and same architecture (the
:class:`~metarl.core.policies.PolicySpec` fields that shape θ). Otherwise
:class:`WarmStartError` says which field differs and the flag that makes the run match.

The new checkpoint's ``training`` section records its lineage: ``parent`` (name, version,
parameter hash, where it was read from, and the iterations behind it) and ``lineage`` (the chain
of ancestors, nearest first); ``iterations`` stays what this run added.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metarl.core.checkpoint import (
    MANIFEST,
    Checkpoint,
    CheckpointError,
    bundled_checkpoints_dir,
    load_checkpoint,
)
from metarl.core.errors import UsageError
from metarl.core.policies import Params, PolicySpec
from metarl_client.versions import newest_version

_MAX_LINEAGE = 50
"""Ancestors kept in a manifest (a policy refreshed daily for years stays small)."""


class WarmStartError(UsageError, ValueError):
    """``--init-from`` names no usable checkpoint, or one that does not fit the run. The message
    is one line that names the source and what to pass instead."""


def versions_in(name_dir: Path) -> dict[str, Path]:
    """The ``<version>/`` checkpoints of a model directory's ``<name>/`` (hidden ones, which are
    writes in progress, excluded)."""
    try:
        entries = list(name_dir.iterdir())
    except OSError:
        return {}
    return {
        p.name: p
        for p in entries
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    }


def newest_in(name_dir: Path) -> Path | None:
    """The newest version's directory under ``name_dir``, or None when it has none."""
    versions = versions_in(name_dir)
    newest = newest_version(versions)
    return None if newest is None else versions[newest]


def resolve_source(source: str | Path, flag: str = "--init-from") -> Path:
    """The checkpoint directory SOURCE names (see the module doc); raises WarmStartError."""
    path = Path(source)
    for candidate in (path, bundled_checkpoints_dir() / path):
        if (candidate / MANIFEST).is_file():
            return candidate
        if candidate.is_dir():
            newest = newest_in(candidate)
            if newest is not None:
                return newest
            if candidate == path:
                raise WarmStartError(
                    f"{flag} {source}: {path} is neither a checkpoint (no {MANIFEST}) nor a "
                    "model directory's <name>/ with <version>/ checkpoints; pass a directory "
                    "written by `metarl train` or `metarl publish`"
                )
    bundled = sorted(
        f"{m.parent.parent.name}/{m.parent.name}"
        for m in bundled_checkpoints_dir().glob(f"*/*/{MANIFEST}")
    )
    raise WarmStartError(
        f"{flag} {source}: no such checkpoint directory, MODEL_DIR/<name> or bundled "
        f"<name>/<version> (bundled: {', '.join(bundled) or 'none'})"
    )


def read_manifest(path: Path) -> dict[str, Any]:
    """A checkpoint's manifest as JSON (call after :func:`load_checkpoint` has verified it)."""
    data = json.loads((path / MANIFEST).read_text())
    assert isinstance(data, dict)
    return data


@dataclass
class Parent:
    """A checkpoint a run starts from."""

    path: Path
    checkpoint: Checkpoint
    manifest: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What the child's manifest says about its parent."""
        training = self.checkpoint.training
        behind = int(training.get("parent", {}).get("total_iterations", 0))
        return {
            "name": self.checkpoint.name,
            "version": self.checkpoint.version,
            "params_sha256": self.manifest["params_sha256"],
            "source": str(self.path),
            "total_iterations": behind + int(training.get("iterations", 0)),
        }

    def lineage(self) -> list[dict[str, str]]:
        """Ancestors of the child, nearest first: this parent, then its own lineage."""
        own = {k: self.record()[k] for k in ("name", "version", "params_sha256")}
        older = list(self.checkpoint.training.get("lineage", []))
        return [own, *older][:_MAX_LINEAGE]


def load_parent(source: str | Path) -> Parent:
    """Resolves and verifies SOURCE; raises WarmStartError saying why it cannot be used."""
    path = resolve_source(source)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise WarmStartError(
            f"--init-from {source}: {exc}; pass another checkpoint (or restore this one)"
        ) from None
    return Parent(path, ckpt, read_manifest(path))


_SPEC_FLAGS = {"hidden_sizes": "--hidden-sizes", "activation": "--activation"}


def check_fits(parent: Parent, *, env_id: str, spec: PolicySpec, algo: str) -> None:
    """Raises WarmStartError when the parent's task family or architecture differ from the
    run's, or when it learned inner learning rates the run would drop."""
    src, where = parent.checkpoint, f"--init-from {parent.path}"
    if src.env_id != env_id:
        raise WarmStartError(
            f"{where}: task family differs: the source was trained on {src.env_id}, this run is "
            f"{env_id}; pass --env {src.env_id} (or start from a checkpoint of {env_id})"
        )
    ours, theirs = spec.to_dict(), src.spec.to_dict()
    for field in ("obs_dim", "action_dim", "distribution", "hidden_sizes", "activation"):
        if ours[field] == theirs[field]:
            continue
        flag = _SPEC_FLAGS.get(field)
        value = " ".join(map(str, theirs[field])) if field == "hidden_sizes" else theirs[field]
        fix = f"pass {flag} {value}" if flag else "train from scratch or use a matching source"
        raise WarmStartError(
            f"{where}: architecture differs: {field} is {_show(theirs[field])} in the source and "
            f"{_show(ours[field])} in this run; {fix}"
        )
    if src.learning_rates is not None and algo != "metasgd":
        raise WarmStartError(
            f"{where}: the source learned per-parameter inner learning rates (Meta-SGD), which "
            f"--algo {algo} would drop; pass --algo metasgd"
        )


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def warm_start(
    source: str | Path,
    *,
    env_id: str,
    spec: PolicySpec,
    algo: str,
    theta: Params,
    rates: Params | None,
) -> dict[str, Any]:
    """Copies the source's θ (and, when both have them, its inner learning rates) into ``theta``
    and ``rates`` in place; returns the lineage entries of the child's ``training`` section."""
    parent = load_parent(source)
    check_fits(parent, env_id=env_id, spec=spec, algo=algo)
    with torch.no_grad():
        for name, p in theta.items():
            p.copy_(parent.checkpoint.params[name])
        if rates is not None and parent.checkpoint.learning_rates is not None:
            for name, r in rates.items():
                r.copy_(parent.checkpoint.learning_rates[name])
    return {"parent": parent.record(), "lineage": parent.lineage()}
