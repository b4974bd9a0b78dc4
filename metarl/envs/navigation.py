"""``metarl_envs.navigation`` under its ``metarl.envs`` name (the same module at run time)."""

from metarl_envs.navigation import *  # noqa: F403
