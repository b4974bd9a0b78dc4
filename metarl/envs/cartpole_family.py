"""``metarl_envs.cartpole_family`` under its ``metarl.envs`` name (the same module at run time)."""

from metarl_envs.cartpole_family import *  # noqa: F403
