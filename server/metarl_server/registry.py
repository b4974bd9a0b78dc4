"""Loaded policies: named, versioned checkpoints, picked up while serving.

A model directory holds ``<name>/<version>/`` checkpoints, each served under the name and version
of its path (``models/mine/1``: policy ``mine`` version ``1``; a log line says when its manifest
names it otherwise). :meth:`PolicyRegistry.scan` loads the ones it has not seen (the server
calls it every ``--poll-interval`` seconds and on the admin ``ReloadModels`` RPC): new sessions
get a policy's newest version, existing sessions keep the version they were created on, and a
version that is no longer the newest is unloaded once no session uses it (neither here nor, with
a shared session store, anywhere: see ``usage_sources``). A checkpoint that
fails verification (half-written, altered, malformed) is refused with one log line and retried
only when its files change; serving goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from metarl_client.versions import version_key
from metarl_server.checkpoint_files import check_checkpoint_files
from metarl_server.errors import InvalidArgument, NotFound
from metarl_server.numpy_policy import Arch, NumpyPolicy, ParamSet
from metarl_server.worker import LoadedCheckpoint

log = logging.getLogger(__name__)

Loader = Callable[[Path], LoadedCheckpoint]
MANIFEST = "manifest.json"
PARAMS = "params.safetensors"
_MAX_NAME_IN_MESSAGE = 80


def shorten(text: str, limit: int = _MAX_NAME_IN_MESSAGE) -> str:
    """``repr`` of a client-supplied string, cut so that error messages stay small."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


@dataclass(frozen=True)
class InnerLoop:
    """The inner-loop settings of a checkpoint (``metarl.core.inner_loop.InnerLoopConfig``)."""

    lr: float
    steps: int
    discount: float
    gae_lambda: float
    normalize_advantages: bool
    loss_weighting: str = "step"
    later_steps_lr_scale: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InnerLoop:
        return cls(
            lr=float(d.get("lr", 0.1)),
            steps=int(d.get("steps", 1)),
            discount=float(d.get("discount", 0.99)),
            gae_lambda=float(d.get("gae_lambda", 1.0)),
            normalize_advantages=bool(d.get("normalize_advantages", True)),
            loss_weighting=str(d.get("loss_weighting", "step")),
            later_steps_lr_scale=float(d.get("later_steps_lr_scale", 1.0)),
        )


@dataclass(eq=False)
class PolicyVersion:
    """One loaded checkpoint, the spaces its sessions are checked against, and θ as one flat
    float32 buffer that every session on it shares until it adapts."""

    checkpoint: LoadedCheckpoint
    path: Path
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Space[Any]
    arch: Arch
    policy: NumpyPolicy
    inner_loop: InnerLoop
    pinned: bool = False
    """Given on the command line: never unloaded."""
    sessions: int = 0
    """Live sessions on this version (guarded by the registry's lock)."""
    retired: bool = False
    """Unloaded: no new session may use it."""
    param_set: ParamSet = field(init=False)
    """θ with its layer views: every session on this version shares it until it adapts."""

    def __post_init__(self) -> None:
        self.param_set = self.policy.params(self.checkpoint.params)

    @property
    def params(self) -> np.ndarray:
        """θ as one flat float32 buffer."""
        return self.param_set.flat

    @property
    def action_start(self) -> int:
        """The first action of a discrete action space (0 for a box)."""
        space = self.action_space
        return int(space.start) if isinstance(space, gym.spaces.Discrete) else 0

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


def _spaces(ckpt: LoadedCheckpoint, arch: Arch) -> tuple[gym.spaces.Box, gym.spaces.Space[Any]]:
    """The task family's spaces when the family is registered here, else ones derived from the
    policy's architecture (unbounded boxes)."""
    from metarl import envs  # registers the task families; no torch

    try:
        cls = envs.family(ckpt.env_id).batched_cls
        obs_space, act_space = cls.observation_space, cls.action_space
    except KeyError:
        obs_space = gym.spaces.Box(-np.inf, np.inf, (arch.obs_dim,), np.float32)
        if arch.categorical:
            return obs_space, gym.spaces.Discrete(arch.action_dim)
        return obs_space, gym.spaces.Box(-np.inf, np.inf, (arch.action_dim,), np.float32)
    assert isinstance(obs_space, gym.spaces.Box)
    return obs_space, act_space


def _fingerprint(path: Path) -> tuple[int, ...] | None:
    """Identifies the current files of a checkpoint directory (changes when they are rewritten)."""
    try:
        m, p = (path / MANIFEST).stat(), (path / PARAMS).stat()
    except OSError:
        return None
    return (m.st_mtime_ns, m.st_size, m.st_ino, p.st_mtime_ns, p.st_size, p.st_ino)


def in_process_loader(path: Path) -> LoadedCheckpoint:
    """Loads a checkpoint in this process (imports torch); the server loads through its
    adaptation workers instead."""
    from metarl_server import worker

    return worker.load(path)


@dataclass
class ScanResult:
    loaded: list[PolicyVersion] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    unloaded: list[PolicyVersion] = field(default_factory=list)


def _stays_inside(version_dir: Path, model_dir: Path) -> bool:
    """False (with a log line) when ``version_dir`` or a file in it resolves outside
    ``model_dir`` through a symbolic link: whoever can write the model directory must not make
    the server read files elsewhere (symbolic links within it are fine)."""
    root = model_dir.resolve()
    try:
        paths = [version_dir, *version_dir.iterdir()]
        outside = [p for p in paths if not p.resolve().is_relative_to(root)]
    except (OSError, RuntimeError) as exc:  # (RuntimeError: a symlink loop)
        log.warning("refused %s: cannot resolve its files (%s)", version_dir, exc)
        return False
    if outside:
        log.warning(
            "refused %s: %s is a symbolic link out of the model directory %s (copy the "
            "checkpoint into it instead)",
            version_dir,
            outside[0],
            root,
        )
        return False
    return True


class PolicyRegistry:
    """Thread-safe map of policy name -> version -> :class:`PolicyVersion`, with session counts."""

    def __init__(self, loader: Loader | None = None) -> None:
        self.loader: Loader = loader or in_process_loader
        self.model_dirs: list[Path] = []
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self._policies: dict[str, dict[str, PolicyVersion]] = {}
        self._seen: dict[Path, tuple[int, ...] | None] = {}
        """Checkpoint directories already handled (loaded, refused or retired), by fingerprint."""
        self.listeners: list[Callable[[ScanResult], None]] = []
        self.usage_sources: list[Callable[[], set[tuple[str, str]]]] = []
        """Where else sessions live (a shared session store): each gives the (name, version)
        pairs its stored sessions use, which are never unloaded, whatever this process's own
        session counts say; one that fails keeps every version loaded for now."""

    # -- loading -------------------------------------------------------------------------------

    def add_checkpoint(self, path: Path, *, pinned: bool = True) -> PolicyVersion:
        """Loads the checkpoint at ``path``; raises ``CheckpointError`` if it is invalid."""
        return self._add(Path(path), pinned)[0]

    def _add(
        self, path: Path, pinned: bool, *, layout: tuple[str, str] | None = None
    ) -> tuple[PolicyVersion, bool]:
        check_checkpoint_files(path)  # (from its header: a huge or stray file is never read)
        ckpt = self.loader(path)
        if layout is not None and (ckpt.name, ckpt.version) != layout:
            # A model directory's <name>/<version>/ path is what its operator named it: serve
            # it so (the manifest's name and version are the trainer's defaults).
            log.info(
                "%s: its manifest says policy %s version %s; serving it as policy %s version "
                "%s, as its <name>/<version>/ place in the model directory says",
                path,
                ckpt.name,
                ckpt.version,
                *layout,
            )
            ckpt = dataclasses.replace(ckpt, name=layout[0], version=layout[1])
        arch = Arch.from_spec_dict(ckpt.spec)
        shapes = [(name, tuple(shape)) for name, shape in ckpt.param_shapes]
        if shapes != list(arch.param_shapes().items()):
            raise ValueError(f"{path}: parameter layout {shapes} is not the one this server reads")
        obs_space, act_space = _spaces(ckpt, arch)
        pv = PolicyVersion(
            ckpt,
            path,
            obs_space,
            act_space,
            arch,
            NumpyPolicy(arch),
            InnerLoop.from_dict(ckpt.inner_loop),
            pinned=pinned,
        )
        with self._lock:
            versions = self._policies.setdefault(pv.name, {})
            if pv.version in versions:
                log.warning(
                    "%s: policy %s version %s is already loaded (from %s); keeping that one",
                    path,
                    pv.name,
                    pv.version,
                    versions[pv.version].path,
                )
                return versions[pv.version], False
            versions[pv.version] = pv
        log.info("loaded policy %s version %s from %s", pv.name, pv.version, path)
        return pv, True

    def load_model_dir(self, model_dir: Path) -> list[PolicyVersion]:
        """Watches ``model_dir`` and loads its ``<name>/<version>/`` checkpoints (an invalid one
        is logged and skipped, so the others still serve)."""
        model_dir = Path(model_dir)
        if model_dir not in self.model_dirs:
            self.model_dirs.append(model_dir)
        return self.scan().loaded

    def scan(self) -> ScanResult:
        """Loads checkpoints that appeared (or changed after being refused) in the model
        directories, then unloads what no session needs."""
        result = ScanResult()
        with self._scan_lock:
            for model_dir in self.model_dirs:
                for path in self._candidates(model_dir):
                    fp = _fingerprint(path)
                    if path in self._seen and self._seen[path] == fp:
                        continue
                    self._seen[path] = fp
                    try:
                        pv, new = self._add(
                            path, pinned=False, layout=(path.parent.name, path.name)
                        )
                        if new:
                            result.loaded.append(pv)
                    except Exception as exc:  # CheckpointError, or anything a bad file causes
                        reason = str(exc) or type(exc).__name__
                        log.error("refusing checkpoint %s: %s", path, reason)
                        result.refused.append((path, reason))
            result.unloaded = self.unload_unused()
        for listener in self.listeners:
            listener(result)
        return result

    @staticmethod
    def _candidates(model_dir: Path) -> list[Path]:
        """``<name>/<version>/`` directories with a manifest, skipping hidden ones (a trainer's
        temporary directories are ``.<version>.*`` until renamed into place)."""
        out: list[Path] = []
        try:
            names = sorted(p for p in model_dir.iterdir() if p.is_dir())
        except OSError as exc:
            log.error("cannot read model directory %s: %s", model_dir, exc)
            return out
        for name_dir in names:
            if name_dir.name.startswith("."):
                continue
            try:
                versions = sorted(p for p in name_dir.iterdir() if p.is_dir())
            except OSError:
                continue
            out.extend(
                v
                for v in versions
                if not v.name.startswith(".")
                and (v / MANIFEST).exists()
                and _stays_inside(v, model_dir)
            )
        return out

    # -- unloading -----------------------------------------------------------------------------

    def unload_unused(self) -> list[PolicyVersion]:
        """Unloads every version that is not its policy's newest, not pinned, and has no
        session."""
        unloaded: list[PolicyVersion] = []
        stored = self._stored_versions()
        if stored is None:
            return unloaded
        with self._lock:
            for versions in self._policies.values():
                newest = max(versions, key=version_key)
                for version, pv in list(versions.items()):
                    if (
                        version != newest
                        and not pv.pinned
                        and pv.sessions == 0
                        and (pv.name, version) not in stored
                    ):
                        del versions[version]
                        pv.retired = True
                        unloaded.append(pv)
        for pv in unloaded:
            log.info("unloaded policy %s version %s: no session uses it", pv.name, pv.version)
        return unloaded

    # -- sessions ------------------------------------------------------------------------------

    def acquire(self, name: str, version: str = "") -> PolicyVersion:
        """The given version of ``name`` (its newest when ``version`` is empty), counted as used
        by one more session until :meth:`release`."""
        with self._lock:
            pv = self._get(name, version)
            pv.sessions += 1
            return pv

    def release(self, pv: PolicyVersion) -> None:
        """One session of ``pv`` ended; unloads ``pv`` if it was the last and ``pv`` is not
        needed otherwise."""
        with self._lock:
            pv.sessions -= 1
            if not self._unloadable(pv):
                return
        stored = self._stored_versions()  # (not under the lock: it may ask Redis)
        if stored is None or (pv.name, pv.version) in stored:
            return
        with self._lock:
            if not self._unloadable(pv):
                return
            del self._policies[pv.name][pv.version]
            pv.retired = True
        log.info("unloaded policy %s version %s: its last session ended", pv.name, pv.version)
        for listener in self.listeners:
            listener(ScanResult(unloaded=[pv]))

    def _unloadable(self, pv: PolicyVersion) -> bool:
        """``pv`` has no session here, is not pinned, loaded, and not its policy's newest."""
        if pv.sessions > 0 or pv.pinned or pv.retired:
            return False
        versions = self._policies.get(pv.name, {})
        return versions.get(pv.version) is pv and pv.version != max(versions, key=version_key)

    def _stored_versions(self) -> set[tuple[str, str]] | None:
        """The versions :attr:`usage_sources` say stored sessions use; None if one failed."""
        used: set[tuple[str, str]] = set()
        for source in list(self.usage_sources):
            try:
                used |= source()
            except Exception as exc:
                log.warning("keeping every policy version loaded for now: %s", exc)
                return None
        return used

    # -- lookups -------------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> PolicyVersion:
        """The given version of ``name``, or its newest when ``version`` is empty."""
        with self._lock:
            return self._get(name, version)

    def _get(self, name: str, version: str) -> PolicyVersion:
        if not name:
            raise InvalidArgument("policy is required: name one of ListPolicies' policies")
        versions = self._policies.get(name)
        if not versions:
            raise NotFound(
                f"no policy named {shorten(name)}; loaded policies: {sorted(self._policies)}"
            )
        if not version:
            return versions[max(versions, key=version_key)]
        if version not in versions:
            raise NotFound(
                f"policy {name!r} has no version {shorten(version)}; loaded versions: "
                f"{sorted(versions, key=version_key)}"
            )
        return versions[version]

    def list(self) -> list[list[PolicyVersion]]:
        """Every policy's versions, oldest first; policies sorted by name."""
        with self._lock:
            return [
                sorted(v.values(), key=lambda pv: version_key(pv.version))
                for _, v in sorted(self._policies.items())
                if v
            ]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._policies.values())
