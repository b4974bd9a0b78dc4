"""MAML's meta-objective: the post-adaptation loss, differentiated through the inner loop."""

from __future__ import annotations

from torch import Tensor

from metarl import inner_loop
from metarl.inner_loop import EpisodeBatch, InnerLoopConfig
from metarl.policies import Params, PolicySpec


def adapted_params(
    spec: PolicySpec,
    theta: Params,
    pre_update: EpisodeBatch,
    config: InnerLoopConfig,
    *,
    first_order: bool,
    learning_rates: Params | None = None,
) -> Params:
    """theta'_i for every task i of ``pre_update``. Second-order unless ``first_order``: the
    result keeps the graph back to ``theta`` through every inner step."""
    return inner_loop.adapt_on_episodes(
        spec, theta, pre_update, config, lr=learning_rates, create_graph=not first_order
    )


def outer_loss(
    spec: PolicySpec, adapted: Params, post_update: EpisodeBatch, config: InnerLoopConfig
) -> Tensor:
    """Mean over tasks of the REINFORCE loss of theta'_i on episodes sampled with theta'_i."""
    return inner_loop.reinforce_loss(spec, adapted, inner_loop.prepare(post_update, config)).mean()
