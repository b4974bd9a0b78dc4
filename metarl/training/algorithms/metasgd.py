"""Meta-SGD (Li et al. 2017): the inner loop's learning rates are meta-learned too.

The inner step becomes ``theta' = theta - alpha * grad L(theta)`` with ``alpha`` a tensor shaped
like ``theta`` (one rate per parameter, so it sets both the step size and the direction of each
coordinate), initialized to the scalar inner learning rate and updated by the outer loop together
with ``theta``. The rates are saved in the checkpoint (``Checkpoint.learning_rates``) and the
server's inner loop uses them in place of the scalar rate.
"""

from __future__ import annotations

import torch

from metarl.core.policies import Params


def init_learning_rates(theta: Params, lr: float) -> Params:
    """One learning rate per parameter, all ``lr``, as leaves the outer loop can update."""
    return {name: torch.full_like(p.detach(), lr).requires_grad_() for name, p in theta.items()}
