"""``metarl_envs.half_cheetah_vel`` under its ``metarl.envs`` name (the same module at run time)."""

from metarl_envs.half_cheetah_vel import *  # noqa: F403
