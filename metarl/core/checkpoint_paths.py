"""Which checkpoint directory a command-line argument names; shared by ``eval`` and ``serve``.

An argument is a checkpoint directory (``runs/cp``), a model directory's ``<name>/`` for its
newest version (``models/mine``), a bundled policy's ``<name>/<version>`` (``cartpole-family/1``),
or a bundled policy's ``<name>`` alone for its newest version. A path that exists always wins
over a bundled name.

This module imports neither torch nor grpc: the serving process resolves its ``--checkpoint``
arguments with it.
"""

from __future__ import annotations

from pathlib import Path

from metarl.core.errors import NotFoundError

MANIFEST = "manifest.json"


def bundled_checkpoints_dir() -> Path:
    """The model directory shipped inside the package (``<name>/<version>/`` checkpoints)."""
    return Path(__file__).parent.parent / "data" / "checkpoints"


def bundled_policies() -> list[str]:
    """The bundled checkpoints as ``<name>/<version>``, sorted."""
    return sorted(
        f"{m.parent.parent.name}/{m.parent.name}"
        for m in bundled_checkpoints_dir().glob(f"*/*/{MANIFEST}")
    )


class CheckpointNotFound(NotFoundError, FileNotFoundError):
    """No checkpoint directory and no bundled policy of that name (exit status 2)."""


def newest_version(name_dir: Path) -> Path | None:
    """The newest ``<version>/`` checkpoint of a model directory's ``<name>/``, or None."""
    from metarl_client.versions import version_key  # torch-free, as the server's

    try:
        versions = [v for v in name_dir.iterdir() if (v / MANIFEST).is_file()]
    except OSError:
        return None
    return max(versions, key=lambda v: version_key(v.name)) if versions else None


def resolve_checkpoint(path: str | Path, flag: str = "--checkpoint") -> Path:
    """``path`` itself if it exists (a model directory's ``<name>/``: its newest version), else
    the bundled checkpoint ``<name>/<version>`` (or the newest version of the bundled
    ``<name>``); raises :class:`CheckpointNotFound` (one line that says what exists) otherwise."""
    path = Path(path)
    if path.exists():
        if path.is_dir() and not (path / MANIFEST).exists():
            return newest_version(path) or path  # (the loader says what is missing)
        return path
    if not path.is_absolute() and ".." not in path.parts:
        bundled = bundled_checkpoints_dir() / path
        if (bundled / MANIFEST).is_file():
            return bundled
        if len(path.parts) == 1 and bundled.is_dir():
            newest = newest_version(bundled)
            if newest is not None:
                return newest
    raise CheckpointNotFound(
        f"{flag + ' ' if flag else ''}{path}: does not exist, and is no bundled policy (bundled: "
        f"{', '.join(bundled_policies()) or 'none'}); pass a checkpoint directory written by "
        "`metarl train`"
    )
