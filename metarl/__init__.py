"""metarl: meta-reinforcement learning (MAML) with policies that adapt to new tasks.

Importing the package registers its task families with gymnasium (``metarl/...`` ids).
"""

from metarl import envs as envs

__version__ = "0.1.0"
