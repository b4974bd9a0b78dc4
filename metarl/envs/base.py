"""``metarl_envs.base`` under its ``metarl.envs`` name (the same module at run time)."""

from metarl_envs.base import *  # noqa: F403
