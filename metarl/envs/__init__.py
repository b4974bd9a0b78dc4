"""The task families: ``metarl.envs`` is the ``metarl_envs`` package (distribution
``metarl-envs``, gymnasium and numpy only), under the name the trainer and server import.

Importing it registers the families with gymnasium (``metarl/...`` ids). At run time
``metarl.envs`` and its submodules ARE the ``metarl_envs`` module objects
(``metarl.envs.base is metarl_envs.base``), so a family registered through either name is known
to both; the files beside this one only re-export for type checkers.
"""

import sys

import metarl_envs
import metarl_envs.base
import metarl_envs.cartpole_family
import metarl_envs.navigation
import metarl_envs.pendulum_family
from metarl_envs import *  # noqa: F403  (for type checkers; replaced below)

for _name, _module in list(sys.modules.items()):
    if _name.startswith("metarl_envs."):
        sys.modules["metarl.envs." + _name.removeprefix("metarl_envs.")] = _module
sys.modules[__name__] = metarl_envs
