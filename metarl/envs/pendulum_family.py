"""``metarl_envs.pendulum_family`` under its ``metarl.envs`` name (the same module at run time)."""

from metarl_envs.pendulum_family import *  # noqa: F403
