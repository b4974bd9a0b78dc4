"""The import paths of metarl's modules before they moved into rooms, kept working (deprecated).

``metarl.train`` is :mod:`metarl.training.train`, ``metarl.inner_loop`` is
:mod:`metarl.core.inner_loop`, and so on (:data:`MOVED`): importing an old path gives the module
itself (``metarl.train is metarl.training.train``), so code written against the old layout, and a
``monkeypatch`` of it, keeps working. ``python -m metarl.train`` (``torchrun -m metarl.train``)
runs the trainer as before. New code imports from the new places; type checkers only know those.

:func:`install` (called by ``import metarl``) puts the finder first on :data:`sys.meta_path`;
it answers only for the names below and imports nothing until one of them is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType

MOVED: dict[str, str] = {
    "metarl.checkpoint": "metarl.core.checkpoint",
    "metarl.checkpoint_paths": "metarl.core.checkpoint_paths",
    "metarl.errors": "metarl.core.errors",
    "metarl.inner_loop": "metarl.core.inner_loop",
    "metarl.policies": "metarl.core.policies",
    "metarl.sampling": "metarl.core.sampling",
    "metarl.algorithms": "metarl.training.algorithms",
    "metarl.algorithms.distributed": "metarl.training.distributed",
    "metarl.config": "metarl.training.config",
    "metarl.lineage": "metarl.training.lineage",
    "metarl.publish": "metarl.training.publish",
    "metarl.train": "metarl.training.train",
    "metarl.trainer_state": "metarl.training.trainer_state",
    "metarl.eval": "metarl.evaluation.eval",
    "metarl.demo": "metarl.cli.demo",
}
"""Old module path -> where the module lives now. A submodule of a moved package moved with it
(``metarl.algorithms.maml`` is ``metarl.training.algorithms.maml``)."""


def new_path(old: str) -> str | None:
    """Where the module once imported as ``old`` lives now; None for a path that did not move."""
    if old in MOVED:
        return MOVED[old]
    package, _, leaf = old.rpartition(".")
    if package in MOVED and package != "metarl":
        return f"{MOVED[package]}.{leaf}"
    return None


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = new_path(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=f"moved to {new}")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_path(spec.name)
        assert new is not None
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # put back in exec_module (the import machinery
        return module  # sets the module's __spec__ to this alias spec in between)

    def exec_module(self, module: ModuleType) -> None:
        alias_spec = module.__spec__
        if alias_spec is not None and alias_spec.loader_state is not None:
            module.__spec__ = alias_spec.loader_state

    def get_code(self, fullname: str) -> CodeType:
        """``python -m OLD``: runs the module at its new path as ``__main__``."""
        new = new_path(fullname)
        source = f"import runpy\nrunpy.run_module({new!r}, run_name='__main__', alter_sys=True)\n"
        return compile(source, f"<{fullname}, moved to {new}>", "exec")


def install() -> None:
    """Makes the old paths importable (once)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldPaths())
