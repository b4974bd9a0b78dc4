"""TRPO's update (Schulman et al. 2015), the outer loop of the MAML paper.

Maximize the surrogate ``L(x)`` subject to ``KL(x_old, x) <= max_kl``: solve ``H s = g`` for the
gradient ``g`` and the KL's Hessian ``H`` by conjugate gradient (Hessian-vector products only),
scale ``s`` so the quadratic model of the KL equals ``max_kl``, and backtrack until the surrogate
improves and the actual KL is within the bound (else keep ``x_old``). Defaults are the MAML
paper's and rllab's: 10 CG iterations, damping 1e-5, max-KL 0.01, at most 15 line-search steps
shrinking by 0.8.

Everything works on flat vectors and callables, so the same step serves MAML, first-order MAML
and Meta-SGD, and distributed training only has to all-reduce inside the callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class TRPOConfig:
    max_kl: float = 0.01
    """Trust region: the largest mean KL between the old and new (adapted) policies."""
    cg_iters: int = 10
    """Conjugate-gradient iterations."""
    cg_damping: float = 1e-5
    """Added to the KL Hessian's diagonal (Tikhonov damping)."""
    ls_max_steps: int = 15
    """Line-search steps before the update is rejected."""
    ls_backtrack: float = 0.8
    """Step shrink factor per line-search step."""

    def __post_init__(self) -> None:
        if not (
            self.max_kl > 0
            and self.cg_iters >= 1
            and self.cg_damping >= 0
            and self.ls_max_steps >= 1
            and 0 < self.ls_backtrack < 1
        ):
            raise ValueError(f"invalid TRPO settings: {self}")


class StepStats(NamedTuple):
    """What one TRPO step did."""

    accepted: bool
    """Whether a step within the trust region that improves the surrogate was found."""
    line_search_steps: int
    """Candidates evaluated (1 = the full step was accepted)."""
    surrogate_before: float
    surrogate_after: float
    kl: float
    """Mean KL between the old and the new policies (0 when rejected)."""


class CGResult(NamedTuple):
    """What :func:`conjugate_gradient` found for ``A x = b``."""

    x: Tensor
    """The approximate solution."""
    xax: float
    """``x^T A x``, read off the final residual: ``x^T (b - r)`` with ``r = b - A x`` (CG keeps
    ``r`` up to date), which saves the extra product with ``A`` a TRPO step would need for it."""


def conjugate_gradient(
    mvp: Callable[[Tensor], Tensor], b: Tensor, iters: int, residual_tol: float = 1e-10
) -> CGResult:
    """Approximately solves ``A x = b`` for symmetric positive definite ``A`` given only
    ``mvp(v) = A v``, starting from ``x = 0`` (``iters`` products at most)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if rr.item() < residual_tol:
            break
        ap = mvp(p)
        alpha = rr / p.dot(ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return CGResult(x, x.dot(b - r).item())


def step(
    x: Tensor,
    grad: Tensor,
    hvp: Callable[[Tensor], Tensor],
    evaluate: Callable[[Tensor], tuple[float, float]],
    surrogate_before: float,
    config: TRPOConfig,
) -> tuple[Tensor, StepStats]:
    """One TRPO update of the flat parameters ``x``.

    ``grad`` is the surrogate's gradient at ``x``, ``hvp(v)`` the KL Hessian at ``x`` times
    ``v`` (without damping), ``evaluate(x_new)`` the surrogate and the KL to the old policy at
    ``x_new``. Returns the new parameters (``x`` itself when the line search fails).
    """

    def damped(v: Tensor) -> Tensor:
        return hvp(v) + config.cg_damping * v

    direction, shs2 = conjugate_gradient(damped, grad, config.cg_iters)
    shs = 0.5 * shs2
    rejected = StepStats(False, 0, surrogate_before, surrogate_before, 0.0)
    if not math.isfinite(shs) or shs <= 0:
        return x, rejected
    full_step = direction * math.sqrt(config.max_kl / shs)  # 0.5 s^T H s = max_kl
    fraction = 1.0
    for i in range(1, config.ls_max_steps + 1):
        candidate = x + fraction * full_step
        surrogate, kl = evaluate(candidate)
        if math.isfinite(surrogate) and surrogate > surrogate_before and kl <= config.max_kl:
            return candidate, StepStats(True, i, surrogate_before, surrogate, kl)
        fraction *= config.ls_backtrack
    return x, rejected._replace(line_search_steps=config.ls_max_steps)
