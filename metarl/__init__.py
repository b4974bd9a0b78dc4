"""metarl: meta-reinforcement learning (MAML) with policies that adapt to new tasks.

Importing the package registers its task families with gymnasium (``metarl/...`` ids) and
imports nothing heavy: :class:`metarl.Policy` (the in-process API, torch) loads on first use.

The rooms: :mod:`metarl.core` (policies, the inner loop, rollouts, checkpoints: what the trainer,
evaluation, ``metarl.Policy`` and the server share), :mod:`metarl.training`,
:mod:`metarl.evaluation`, :mod:`metarl.cli`. The module paths from before the rooms
(``metarl.train``, ``metarl.inner_loop``, ...) still import, as deprecated aliases
(:mod:`metarl._old_paths`).
"""

from typing import TYPE_CHECKING, Any

from metarl import _old_paths
from metarl import envs as envs

if TYPE_CHECKING:
    from metarl.api import Policy as Policy

__version__ = "0.1.0"

_old_paths.install()


def __getattr__(name: str) -> Any:
    if name == "Policy":  # lazily: the serving process imports metarl without torch
        from metarl.api import Policy

        return Policy
    raise AttributeError(f"module 'metarl' has no attribute {name!r}")
