"""Checks a checkpoint's files against what its manifest declares before anything reads them
whole: a model directory is written by other people, and a stray or hostile file (a 1 GiB
``params.safetensors``, a sparse one, a FIFO) must be refused from its size and its
safetensors header, in a few kilobytes of reading, not after the loader has read it all.

The loader (``metarl.core.checkpoint.load_checkpoint``: SHA-256, shapes, finite values) still
verifies everything afterwards; this check only makes sure it reads nothing larger than the
parameters the manifest declares.
"""

from __future__ import annotations

import json
import math
import stat
import struct
from pathlib import Path
from typing import Any

from metarl_server.numpy_policy import Arch

MANIFEST = "manifest.json"
PARAMS = "params.safetensors"
LR_PREFIX = "inner_lr."
MAX_MANIFEST_BYTES = 1 << 20
"""A manifest is a page of JSON (its ``training`` record included); past this it is refused."""
MAX_HEADER_BYTES = 1 << 20
"""A safetensors header of a policy's few tensors is well under a kilobyte."""
ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


class CheckpointFilesError(ValueError):
    """A checkpoint's files are not what its manifest declares (refused before reading them)."""


def _regular_size(path: Path, limit: int | None = None) -> int:
    """``path``'s size; refuses anything but a regular file (a FIFO or device would block or
    never end), and one past ``limit`` bytes."""
    try:
        st = path.stat()
    except OSError as exc:
        raise CheckpointFilesError(f"{path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointFilesError(f"{path}: not a regular file")
    if limit is not None and st.st_size > limit:
        raise CheckpointFilesError(
            f"{path}: {st.st_size} bytes, more than the {limit} a checkpoint's file can be; "
            "refused without reading it"
        )
    return st.st_size


def declared_tensors(manifest: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors (name: shape) a manifest declares: the architecture's parameters, and
    their learned learning rates when ``learned_learning_rates``."""
    shapes = Arch.from_spec_dict(manifest["policy"]).param_shapes()
    if manifest.get("learned_learning_rates"):
        shapes = {**shapes, **{LR_PREFIX + k: v for k, v in shapes.items()}}
    return shapes


def check_checkpoint_files(path: Path) -> None:
    """Raises :class:`CheckpointFilesError` unless ``path``'s ``params.safetensors`` is a
    regular file whose safetensors header lists exactly the tensors its manifest declares
    (names, shapes, a float dtype, contiguous offsets) and whose size is exactly the header's
    plus those tensors' bytes. Reads the manifest (at most :data:`MAX_MANIFEST_BYTES`) and the
    header only."""
    manifest_path, params_path = path / MANIFEST, path / PARAMS
    if not (manifest_path.exists() and params_path.exists()):
        raise CheckpointFilesError(
            f"{path} is not a checkpoint: it needs {MANIFEST} and {PARAMS} (half-written?)"
        )
    _regular_size(manifest_path, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(manifest_path.read_bytes())
        expected = declared_tensors(manifest)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointFilesError(
            f"{manifest_path}: not a checkpoint manifest ({type(exc).__name__}: {exc})"
        ) from None
    size = _regular_size(params_path)
    with params_path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointFilesError(f"{params_path}: {size} bytes, too short for safetensors")
        (n,) = struct.unpack("<Q", prefix)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointFilesError(
                f"{params_path}: its safetensors header claims {n} bytes (the file has {size}); "
                "not a checkpoint's parameters"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
        header.pop("__metadata__", None)
        entries = {
            name: (
                str(e["dtype"]),
                tuple(int(d) for d in e["shape"]),
                tuple(int(o) for o in e["data_offsets"]),
            )
            for name, e in header.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointFilesError(
            f"{params_path}: unreadable safetensors header ({type(exc).__name__})"
        ) from None
    if set(entries) != set(expected):
        raise CheckpointFilesError(
            f"{params_path}: tensors {sorted(entries)} are not the ones its manifest declares "
            f"{sorted(expected)}"
        )
    data = 0
    for name, (dtype, shape, offsets) in sorted(entries.items(), key=lambda e: e[1][2][0]):
        if shape != expected[name] or dtype not in ITEM_BYTES:
            raise CheckpointFilesError(
                f"{params_path}: tensor {name} is {dtype} {list(shape)}; its manifest declares "
                f"a float tensor of shape {list(expected[name])}"
            )
        nbytes = math.prod(shape) * ITEM_BYTES[dtype]
        if offsets != (data, data + nbytes):
            raise CheckpointFilesError(f"{params_path}: tensor {name}'s offsets do not add up")
        data += nbytes
    if size != 8 + n + data:
        raise CheckpointFilesError(
            f"{params_path}: {size} bytes, where the tensors its manifest declares take "
            f"{8 + n + data}; refused without reading it (a stray, altered or half-written file)"
        )
