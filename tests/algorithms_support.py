"""Small float64 meta-learning problems shared by the algorithm tests."""

from __future__ import annotations

import torch

from metarl.core import inner_loop, policies
from metarl.core.inner_loop import InnerLoopConfig, LossBatch
from metarl.core.policies import PolicySpec
from metarl.training import distributed
from metarl.training.algorithms import maml

F64 = torch.float64


def batch(spec: PolicySpec, k: int, n: int, seed: int, unequal: bool = True) -> LossBatch:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(k, n, spec.obs_dim, generator=gen, dtype=F64)
    if spec.distribution == "gaussian":
        actions = torch.randn(k, n, spec.action_dim, generator=gen, dtype=F64)
    else:
        actions = torch.randint(0, spec.action_dim, (k, n), generator=gen)
    weights = torch.ones(k, n, dtype=F64)
    weights[0, n - 2 :] = 0.0  # a shorter episode: padded steps must not count
    if unequal:
        weights[0, :3] = 0.5  # unequal weights, as loss_weighting="episode" gives
    return LossBatch(obs, actions, torch.randn(k, n, generator=gen, dtype=F64), weights)


def problem(  # type: ignore[no-untyped-def]
    distribution: str, activation: str = "tanh", k: int = 3, n: int = 9, unequal: bool = True
):
    spec = PolicySpec(3, 2, distribution, (5, 4), activation)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(7)
    theta = {
        name: p + 0.3 * torch.randn(p.shape, generator=gen, dtype=F64)
        for name, p in policies.init_params(spec, gen, dtype=F64).items()
    }
    return spec, theta, batch(spec, k, n, 1, unequal), batch(spec, k, n, 2, unequal)


def meta_objective(spec, theta, rates, pre, post, steps, lr=0.1, first_order=False, **kw):  # type: ignore[no-untyped-def]
    """A MetaObjective with the post-update batch's 'old' policy at the current parameters."""
    config = InnerLoopConfig(lr=lr, steps=steps)
    adapted = inner_loop.adapt(spec, theta, pre, lr=rates if rates else lr, steps=steps)
    return maml.MetaObjective(
        spec, theta, rates, pre, adapted, post, config,
        num_tasks=pre.weights.shape[0], first_order=first_order, ctx=distributed.Context(), **kw,
    )  # fmt: skip


def post_objective(spec, post, old_logp, theta, rates, pre, steps, lr=0.1):  # type: ignore[no-untyped-def]
    """The surrogate mean_i mean_t exp(logp - logp_old) A_t as a plain function (autograd-able)."""
    adapted = inner_loop.adapt(
        spec, theta, pre, lr=rates if rates else lr, steps=steps, create_graph=True
    )
    logp = policies.log_prob(spec, adapted, post.observations, post.actions)
    n = post.weights.sum(-1).clamp(min=1)
    per_task = (torch.exp(logp - old_logp) * post.advantages * post.weights).sum(-1) / n
    return per_task.mean()
