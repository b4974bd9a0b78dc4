"""metarl: meta-reinforcement learning (MAML) with policies that adapt to new tasks.

Importing the package registers its task families with gymnasium (``metarl/...`` ids) and
imports nothing heavy: :class:`metarl.Policy` (the in-process API, torch) loads on first use.
"""

from typing import TYPE_CHECKING, Any

from metarl import envs as envs

if TYPE_CHECKING:
    from metarl.api import Policy as Policy

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Policy":  # lazily: the serving process imports metarl without torch
        from metarl.api import Policy

        return Policy
    raise AttributeError(f"module 'metarl' has no attribute {name!r}")
