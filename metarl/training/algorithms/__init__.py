"""Meta-learning algorithms (outer loops) built on :mod:`metarl.core.inner_loop`."""

from types import ModuleType


def __getattr__(name: str) -> ModuleType:
    if name == "distributed":  # deprecated: `from metarl.algorithms import distributed`
        from metarl.training import distributed

        return distributed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
