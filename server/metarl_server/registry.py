"""Loaded policies: named, versioned checkpoints."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from metarl import envs
from metarl.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from metarl.policies import PolicySpec
from metarl_server.errors import NotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyVersion:
    """One loaded checkpoint and the spaces its sessions are checked against."""

    checkpoint: Checkpoint
    path: Path
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Space[Any]

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def spec(self) -> PolicySpec:
        return self.checkpoint.spec


def _spaces(ckpt: Checkpoint) -> tuple[gym.spaces.Box, gym.spaces.Space[Any]]:
    """The task family's spaces when the family is registered here, else ones derived from the
    policy's architecture (unbounded boxes)."""
    try:
        cls = envs.family(ckpt.env_id).batched_cls
        return cls.observation_space, cls.action_space
    except KeyError:
        spec = ckpt.spec
        obs = gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
        if spec.distribution == "categorical":
            return obs, gym.spaces.Discrete(spec.action_dim)
        return obs, gym.spaces.Box(-np.inf, np.inf, (spec.action_dim,), np.float32)


def version_key(version: str) -> tuple[Any, ...]:
    """Sorts ``2`` before ``10`` and ``v1.9`` before ``v1.10``."""
    return tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", version) if p
    )


class PolicyRegistry:
    """Thread-safe map of policy name -> version -> :class:`PolicyVersion`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[str, dict[str, PolicyVersion]] = {}

    def add_checkpoint(self, path: Path) -> PolicyVersion:
        """Loads the checkpoint at ``path``; raises :class:`CheckpointError` if it is invalid."""
        ckpt = load_checkpoint(path)
        obs_space, act_space = _spaces(ckpt)
        pv = PolicyVersion(ckpt, Path(path), obs_space, act_space)
        with self._lock:
            self._policies.setdefault(pv.name, {})[pv.version] = pv
        log.info("loaded policy %s version %s from %s", pv.name, pv.version, path)
        return pv

    def load_model_dir(self, model_dir: Path) -> list[PolicyVersion]:
        """Loads every ``<name>/<version>/`` checkpoint under ``model_dir``; an invalid one is
        logged and skipped so the others still serve."""
        loaded = []
        for manifest in sorted(Path(model_dir).glob("*/*/manifest.json")):
            try:
                loaded.append(self.add_checkpoint(manifest.parent))
            except CheckpointError as exc:
                log.error("refusing checkpoint %s: %s", manifest.parent, exc)
        return loaded

    def get(self, name: str, version: str = "") -> PolicyVersion:
        """The given version of ``name``, or its newest when ``version`` is empty."""
        with self._lock:
            versions = self._policies.get(name)
            if not versions:
                raise NotFound(
                    f"no policy named {name!r}; loaded policies: {sorted(self._policies)}"
                )
            if not version:
                return versions[max(versions, key=version_key)]
            if version not in versions:
                raise NotFound(
                    f"policy {name!r} has no version {version!r}; loaded versions: "
                    f"{sorted(versions, key=version_key)}"
                )
            return versions[version]

    def list(self) -> list[list[PolicyVersion]]:
        """Every policy's versions, oldest first; policies sorted by name."""
        with self._lock:
            return [
                sorted(v.values(), key=lambda pv: version_key(pv.version))
                for _, v in sorted(self._policies.items())
            ]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._policies.values())
