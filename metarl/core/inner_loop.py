"""The inner loop: theta' = theta - alpha * grad L_task(theta), shared by trainer and server.

Everything that turns a task's episodes into adapted parameters lives here, so meta-training and
serving cannot disagree (train/serve parity): :func:`adapt_on_episodes` is the one entry point;
the trainer calls it with ``create_graph=True`` to differentiate the outer loss through the
adapted parameters, the server with the defaults.

Shapes: ``K`` tasks (or sessions), ``E`` episodes each, ``H`` steps (episodes are right-padded to
the longest one and ``mask`` marks the real steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from metarl.core import policies
from metarl.core.policies import Params, PolicySpec

# Time is scaled by a constant (not by the episode length) so padding never changes the features.
_TIME_SCALE = 100.0
_OBS_CLIP = 10.0


@dataclass(frozen=True)
class InnerLoopConfig:
    """How a policy adapts to a task; saved in checkpoint manifests and used by the server."""

    lr: float = 0.1
    """Inner-loop learning rate alpha (the initial value when it is learned, as in Meta-SGD)."""
    steps: int = 1
    """Inner gradient steps."""
    discount: float = 0.99
    """Discount factor gamma."""
    gae_lambda: float = 1.0
    """GAE lambda; 1.0 gives Monte-Carlo returns minus the baseline."""
    normalize_advantages: bool = True
    """Normalize each task's advantages to zero mean and unit variance."""
    baseline_reg: float = 1e-5
    """Ridge coefficient of the linear feature baseline fit."""
    loss_weighting: Literal["step", "episode"] = "step"
    """How a task's steps are averaged in every mean over its samples (the losses, the advantage
    normalization, and in training the surrogate, KL and Fisher). ``step``: every real step weighs
    the same (rllab's and the MAML authors' pooled mean). ``episode``: each episode's steps are
    averaged first, then the episodes (pytorch-maml-rl's), so an episode that ends early at its
    goal weighs as much as a full one. Checkpoints written before this setting existed use
    ``step``."""
    later_steps_lr_scale: float = 1.0
    """The learning rate of every inner step after a task's first is ``lr`` times this (per-step
    rates, as in MAML++). Steps count across a session's ``Adapt`` calls (and ``metarl eval``'s
    adaptation rounds): the first step moves from theta, which meta-training shaped for it; later
    steps start near the task's optimum, where a full step overshoots."""

    def __post_init__(self) -> None:
        problems = [
            msg
            for ok, msg in (
                (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
                (0 <= self.discount <= 1, f"discount must be in [0, 1], got {self.discount}"),
                (0 <= self.gae_lambda <= 1, f"gae_lambda must be in [0, 1], got {self.gae_lambda}"),
                (self.baseline_reg > 0, f"baseline_reg must be > 0, got {self.baseline_reg}"),
                (
                    self.loss_weighting in ("step", "episode"),
                    f"loss_weighting must be 'step' or 'episode', got {self.loss_weighting!r}",
                ),
                (
                    self.later_steps_lr_scale >= 0,
                    f"later_steps_lr_scale must be >= 0, got {self.later_steps_lr_scale}",
                ),
            )
            if not ok
        ]
        if problems:
            raise ValueError("invalid inner-loop settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lr_scales(self, steps: int, first_step: int = 0) -> list[float]:
        """The learning-rate factor of each of ``steps`` inner steps, the first being the
        task's step number ``first_step`` (0: the step from theta)."""
        return [1.0 if first_step + i == 0 else self.later_steps_lr_scale for i in range(steps)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InnerLoopConfig:
        return cls(**d)


class EpisodeBatch(NamedTuple):
    """Padded episodes of ``K`` tasks: what a sampler collects or a client sends."""

    observations: Tensor  # [K, E, H, obs_dim]
    actions: Tensor  # [K, E, H] (categorical) or [K, E, H, action_dim]
    rewards: Tensor  # [K, E, H]
    mask: Tensor  # [K, E, H], 1.0 on real steps; each row is a prefix of ones


class LossBatch(NamedTuple):
    """An :class:`EpisodeBatch` flattened over episodes, with advantages and sample weights.

    ``weights`` are each sample's weight in its task's means, ``sum_n w_n x_n / sum_n w_n``: zero
    on padded steps, otherwise 1 (``loss_weighting="step"``) or one over the length of the
    sample's episode (``"episode"``). Only ratios of weights within a task matter, so a subset of
    a task's episodes (a curvature estimate) is still a proper mean."""

    observations: Tensor  # [K, E*H, obs_dim]
    actions: Tensor  # [K, E*H, ...]
    advantages: Tensor  # [K, E*H]
    weights: Tensor  # [K, E*H]


def discounted_cumsum(x: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``y[t] = sum_{k>=t} gamma^(k-t) x[k]`` along the last axis, over masked steps only."""
    out = torch.zeros_like(x)
    running = torch.zeros_like(x[..., 0])
    for t in range(x.shape[-1] - 1, -1, -1):
        running = (x[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def baseline_features(observations: Tensor, mask: Tensor) -> Tensor:
    """Features of the linear baseline: obs, obs^2, t, t^2, t^3, 1 (rllab's), zero where masked."""
    obs = observations.clamp(-_OBS_CLIP, _OBS_CLIP)
    t = torch.arange(obs.shape[-2], dtype=obs.dtype).expand(obs.shape[:-1]).unsqueeze(-1)
    t = t / _TIME_SCALE
    feats = torch.cat([obs, obs**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1)


def fit_linear_baseline(features: Tensor, targets: Tensor, reg: float) -> Tensor:
    """Per-task ridge regression ``argmin_w |Xw - y|^2 + reg |w|^2``; ``features`` [K, N, F].

    The ridge term makes the system positive definite, so rank-deficient data (constant features,
    a single step) still has a solution; should the solve still go non-finite, the ridge grows
    tenfold, up to five times.
    """
    xtx = features.transpose(1, 2) @ features
    xty = features.transpose(1, 2) @ targets.unsqueeze(-1)
    eye = torch.eye(features.shape[-1], dtype=features.dtype)
    for _ in range(5):
        coef, info = torch.linalg.solve_ex(xtx + reg * eye, xty)
        if bool((info == 0).all()) and bool(torch.isfinite(coef).all()):
            return coef.squeeze(-1)
        reg *= 10
    return torch.zeros_like(xty.squeeze(-1))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalized advantage estimates along the last axis; the value after an episode's last
    step is taken as zero."""
    next_values = torch.nn.functional.pad(values[..., 1:], (0, 1)) * torch.nn.functional.pad(
        mask[..., 1:], (0, 1)
    )
    deltas = (rewards + gamma * next_values - values) * mask
    return discounted_cumsum(deltas, mask, gamma * lam)


def sample_weights(mask: Tensor, loss_weighting: str) -> Tensor:
    """Each step's weight in its task's means (see :class:`LossBatch`), ``[K, E, H]``."""
    if loss_weighting == "step":
        return mask
    return mask / mask.sum(-1, keepdim=True).clamp(min=1)


def compute_advantages(batch: EpisodeBatch, config: InnerLoopConfig) -> Tensor:
    """GAE(gamma, lambda) advantages ``[K, E, H]`` against a linear feature baseline fitted to each
    task's discounted returns. Episodes are treated as ending after their last step (the baseline's
    time features absorb time limits), as in rllab and the MAML paper."""
    with torch.no_grad():
        obs = batch.observations.double()
        rewards = batch.rewards.double()
        mask = batch.mask.double()
        k, e, h = mask.shape
        returns = discounted_cumsum(rewards, mask, config.discount)
        feats = baseline_features(obs, mask)
        coef = fit_linear_baseline(
            feats.reshape(k, e * h, -1), returns.reshape(k, e * h), config.baseline_reg
        )
        values = (feats @ coef.view(k, 1, -1, 1)).squeeze(-1) * mask
        adv = gae(rewards, values, mask, config.discount, config.gae_lambda)
        if config.normalize_advantages:
            # Mean and (biased) variance under the same weights as the losses' means.
            w = sample_weights(mask, config.loss_weighting)
            w = w / w.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)
            mean = (w * adv).sum(dim=(1, 2), keepdim=True)
            var = (w * (adv - mean) ** 2).sum(dim=(1, 2), keepdim=True)
            adv = (adv - mean) / (var.sqrt() + 1e-8) * mask
        return adv.to(batch.observations.dtype)


def prepare(batch: EpisodeBatch, config: InnerLoopConfig) -> LossBatch:
    """Attaches advantages and sample weights and flattens episodes: the input of
    :func:`reinforce_loss`."""
    k, e, h = batch.mask.shape
    adv = compute_advantages(batch, config)
    return LossBatch(
        observations=batch.observations.reshape(k, e * h, -1),
        actions=batch.actions.reshape(k, e * h, *batch.actions.shape[3:]),
        advantages=adv.reshape(k, e * h),
        weights=sample_weights(batch.mask, config.loss_weighting).reshape(k, e * h),
    )


def reinforce_loss(spec: PolicySpec, params: Params, batch: LossBatch) -> Tensor:
    """Per-task REINFORCE loss ``-mean_t log pi(a_t|s_t) A_t``, the mean weighted by
    ``batch.weights`` (see :class:`LossBatch`), shape ``[K]``.

    ``params`` must be stacked ``K`` deep (see :func:`metarl.core.policies.stack`)."""
    logp = policies.log_prob(spec, params, batch.observations, batch.actions)
    n = batch.weights.sum(-1).clamp(min=1e-12)
    return -(logp * batch.advantages * batch.weights).sum(-1) / n


def adapt(
    spec: PolicySpec,
    params: Params,
    batch: LossBatch,
    *,
    lr: float | Params,
    steps: int,
    create_graph: bool = False,
    lr_scales: Sequence[float] | None = None,
) -> Params:
    """``steps`` inner gradient steps on ``batch``; returns new parameters stacked ``K`` deep.

    ``params`` are never modified. ``lr`` is a scalar, or per-parameter learning rates (Meta-SGD)
    shaped like the unstacked parameters. With ``create_graph`` the result stays differentiable
    with respect to ``params`` (and ``lr``) through every step: second-order MAML. Without it the
    inner gradients are treated as constants (first-order MAML, and serving). Step ``i`` uses
    ``lr * lr_scales[i]`` (:meth:`InnerLoopConfig.lr_scales`; default: ``lr`` for every step).
    """
    return _inner_steps(
        spec, params, batch, lr=lr, steps=steps, create_graph=create_graph, lr_scales=lr_scales
    )[0]


def adapt_with_loss(
    spec: PolicySpec,
    params: Params,
    batch: LossBatch,
    *,
    lr: float | Params,
    steps: int,
    lr_scales: Sequence[float] | None = None,
) -> tuple[Params, Tensor]:
    """:func:`adapt` without ``create_graph`` (as the server adapts), also returning each task's
    inner loss at ``params``, shape ``[K]``, detached: the same steps, so the same adapted
    parameters bit for bit, with the loss taken from the first step's gradient evaluation
    instead of a forward pass of its own."""
    adapted, loss = _inner_steps(
        spec, params, batch, lr=lr, steps=steps, create_graph=False, lr_scales=lr_scales
    )
    if loss is None:  # no steps
        with torch.no_grad():
            loss = reinforce_loss(spec, adapted, batch)
    return adapted, loss


def _inner_steps(
    spec: PolicySpec,
    params: Params,
    batch: LossBatch,
    *,
    lr: float | Params,
    steps: int,
    create_graph: bool,
    lr_scales: Sequence[float] | None = None,
) -> tuple[Params, Tensor | None]:
    """The inner loop itself: the adapted parameters and the per-task loss at ``params``
    (None without steps). ``torch.func.grad`` is ``grad_and_value`` without the value, so the
    gradients are the same computation either way."""
    k = batch.advantages.shape[0]
    current = policies.stack(spec, params, k)

    def total_loss(p: Params) -> tuple[Tensor, Tensor]:
        # Task i's loss depends only on p[i], so the gradient of the sum is every task's gradient.
        per_task = reinforce_loss(spec, p, batch)
        return per_task.sum(), per_task.detach()

    scales = [1.0] * steps if lr_scales is None else list(lr_scales)
    if len(scales) != steps:
        raise ValueError(f"need one learning-rate scale per step: {steps} steps, {len(scales)}")
    first_loss: Tensor | None = None
    for scale in scales:
        with torch.enable_grad():
            grads, (_, per_task) = torch.func.grad_and_value(total_loss, has_aux=True)(current)
        if first_loss is None:
            first_loss = per_task
        if not create_graph:
            grads = {name: g.detach() for name, g in grads.items()}
        current = {
            name: p - scale * (lr[name] if isinstance(lr, dict) else lr) * grads[name]
            for name, p in current.items()
        }
    return current, first_loss


def adapt_on_episodes(
    spec: PolicySpec,
    params: Params,
    episodes: EpisodeBatch,
    config: InnerLoopConfig,
    *,
    lr: float | Params | None = None,
    steps: int | None = None,
    create_graph: bool = False,
    first_step: int = 0,
) -> Params:
    """Adapted parameters for the tasks of ``episodes``: :func:`prepare` then :func:`adapt`.
    ``first_step`` counts the inner steps ``params`` have already taken on these tasks (0 for
    theta), which sets the steps' learning rates (:attr:`InnerLoopConfig.later_steps_lr_scale`)."""
    steps = config.steps if steps is None else steps
    return adapt(
        spec,
        params,
        prepare(episodes, config),
        lr=config.lr if lr is None else lr,
        steps=steps,
        create_graph=create_graph,
        lr_scales=config.lr_scales(steps, first_step),
    )


def pad_episodes(
    episodes: list[tuple[Tensor, Tensor, Tensor]], dtype: torch.dtype = torch.float32
) -> EpisodeBatch:
    """One task's variable-length episodes ``(observations [T, obs_dim], actions [T, ...],
    rewards [T])`` as an :class:`EpisodeBatch` with ``K = 1``, padded to the longest."""
    if not episodes:
        raise ValueError("need at least one episode")
    horizon = max(len(r) for _, _, r in episodes)
    e = len(episodes)
    obs0, act0, _ = episodes[0]
    obs = torch.zeros((1, e, horizon, *obs0.shape[1:]), dtype=dtype)
    acts = torch.zeros((1, e, horizon, *act0.shape[1:]), dtype=act0.dtype)
    rewards = torch.zeros((1, e, horizon), dtype=dtype)
    mask = torch.zeros((1, e, horizon), dtype=dtype)
    for i, (o, a, r) in enumerate(episodes):
        n = len(r)
        obs[0, i, :n] = o
        acts[0, i, :n] = a
        rewards[0, i, :n] = r
        mask[0, i, :n] = 1.0
    return EpisodeBatch(obs, acts, rewards, mask)
