"""MAML's meta-objective: the post-update objective, differentiated through the inner loop.

:class:`MetaObjective` is what the outer loops (Adam, TRPO) see of one meta-batch: functions of
the flat meta-parameters ``x`` (theta, and for Meta-SGD the inner learning rates) giving the
meta-gradient, the KL Hessian-vector product and the surrogate and KL at a candidate ``x``; under
torchrun each is summed over the processes' shares of the tasks. Its derivatives are the closed
forms of :mod:`metarl.training.algorithms.derivatives`. :func:`adapted_params` and
:func:`outer_loss` are the same meta-objective through autograd (double backward), kept as the
reference the closed forms are tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TypeVar

import torch
from torch import Tensor

from metarl.core import inner_loop
from metarl.core.inner_loop import EpisodeBatch, InnerLoopConfig, LossBatch
from metarl.core.policies import Params, PolicySpec
from metarl.training.algorithms.derivatives import InnerLoopJacobian, PostUpdateObjective, converted
from metarl.training.algorithms.flat import flatten, unflatten
from metarl.training.distributed import Context

_T = TypeVar("_T")
_R = TypeVar("_R")


class MetaObjective:
    """One meta-batch's meta-objective as a function of ``x = (theta, [rates])``, linearized at
    the current parameters.

    ``pre`` are the pre-update episodes (advantages attached), ``adapted`` the inner loop's
    result on them (stacked, one per task) and ``post`` the episodes sampled with ``adapted``.
    ``num_tasks`` counts the tasks of all processes. ``curvature_episodes`` (subsets of ``pre``
    and ``post``) estimate the KL curvature on fewer episodes. With ``workers``, the tasks are
    split into ``shards`` computed in parallel threads (each torch op releases the GIL), summed
    in a fixed order so that results do not depend on thread timing.
    """

    def __init__(
        self,
        spec: PolicySpec,
        theta: Params,
        rates: Params | None,
        pre: LossBatch,
        adapted: Params,
        post: LossBatch,
        config: InnerLoopConfig,
        *,
        num_tasks: int,
        first_order: bool,
        ctx: Context,
        curvature_episodes: tuple[LossBatch, LossBatch] | None = None,
        curvature_dtype: torch.dtype | None = None,
        inner_estimator: str = "reinforce",
        workers: Executor | None = None,
        shards: int = 1,
    ) -> None:
        self.ctx, self.workers = ctx, workers
        self.groups = [theta, *([rates] if rates is not None else [])]
        self.x = flatten(*self.groups)
        bounds = shard_bounds(pre.weights.shape[0], shards)

        def shard(part: slice) -> _Shard:
            def cut(b: LossBatch) -> LossBatch:
                return LossBatch(*(t[part] for t in b))

            return _Shard(
                spec, theta, rates, cut(pre), {n: p[part] for n, p in adapted.items()}, cut(post),
                config, num_tasks=num_tasks, first_order=first_order,
                curvature_episodes=None if curvature_episodes is None
                else (cut(curvature_episodes[0]), cut(curvature_episodes[1])),
                curvature_dtype=curvature_dtype, inner_estimator=inner_estimator,
            )  # fmt: skip

        self.shards = self._map(shard, bounds)

    def _map(self, f: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        if self.workers is None or len(items) < 2:
            return [f(item) for item in items]
        return list(self.workers.map(f, items))

    def _total(self, f: Callable[[_Shard], Tensor]) -> Tensor:
        """``f`` summed over the shards (in order) and over the processes."""
        parts = self._map(f, self.shards)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return self.ctx.sum_(total.double() if total.dim() == 0 else total)

    def grad(self) -> Tensor:
        """Gradient of the surrogate (minus that of the post-update REINFORCE loss) in ``x``."""
        return self._total(lambda s: s.grad())

    def kl_hvp(self, v: Tensor) -> Tensor:
        """Hessian of the mean KL between old and new adapted policies, in ``x``, times ``v``."""
        tangent = unflatten(v, *self.groups)
        return self._total(lambda s: s.kl_hvp(tangent))

    def evaluate(self, x: Tensor) -> tuple[float, float]:
        """Surrogate and mean KL at ``x``: the inner loop re-run from the new meta-parameters on
        the pre-update episodes, the new adapted policies scored on the post-update ones."""
        new = unflatten(x, *self.groups)
        s, k = self._total(lambda s: s.evaluate(new)).tolist()
        return s, k

    def surrogate_before(self) -> float:
        return self._total(lambda s: s.post.surrogate_before()).item()

    def reinforce_loss(self) -> float:
        return self._total(lambda s: s.post.reinforce_loss()).item()


def shard_bounds(num_tasks: int, shards: int) -> list[slice]:
    """Contiguous, nearly equal slices of ``num_tasks`` tasks, at most ``shards`` of them."""
    k = num_tasks
    return [slice(i * k // shards, (i + 1) * k // shards) for i in range(min(shards, k))]


def adapt_in_shards(
    spec: PolicySpec,
    theta: Params,
    batch: LossBatch,
    *,
    lr: float | Params,
    steps: int,
    workers: Executor | None,
    shards: int,
    lr_scales: Sequence[float] | None = None,
) -> Params:
    """:func:`metarl.core.inner_loop.adapt` over the tasks of ``batch`` (stacked results), with the
    tasks split among ``workers`` threads: each task's theta' is computed alone, so the split
    changes nothing but the wall time."""
    bounds = shard_bounds(batch.weights.shape[0], shards)
    if workers is None or len(bounds) < 2:
        return inner_loop.adapt(spec, theta, batch, lr=lr, steps=steps, lr_scales=lr_scales)

    def part(s: slice) -> Params:
        shard = LossBatch(*(t[s] for t in batch))
        return inner_loop.adapt(spec, theta, shard, lr=lr, steps=steps, lr_scales=lr_scales)

    parts = list(workers.map(part, bounds))
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


class _Shard:
    """A subset of a meta-batch's tasks: its share of every sum over tasks."""

    def __init__(
        self,
        spec: PolicySpec,
        theta: Params,
        rates: Params | None,
        pre: LossBatch,
        adapted: Params,
        post: LossBatch,
        config: InnerLoopConfig,
        *,
        num_tasks: int,
        first_order: bool,
        curvature_episodes: tuple[LossBatch, LossBatch] | None,
        curvature_dtype: torch.dtype | None,
        inner_estimator: str,
    ) -> None:
        self.spec, self.config, self.pre = spec, config, pre
        lr = rates if rates is not None else config.lr
        self.lr_scales = config.lr_scales(config.steps)
        self.jacobian = InnerLoopJacobian(
            spec, theta, pre, lr=lr, steps=config.steps, first_order=first_order,
            inner_estimator=inner_estimator, lr_scales=self.lr_scales,
        )  # fmt: skip
        self.post = PostUpdateObjective(spec, adapted, post, num_tasks=num_tasks)
        # The KL curvature, optionally estimated on a subset of the episodes (pre, post) and at
        # a lower precision (the same linearizations, their stored tensors converted).
        self.curvature_jacobian, self.curvature_post = self.jacobian, self.post
        if curvature_episodes is not None:
            pre_sub, post_sub = curvature_episodes
            self.curvature_jacobian = InnerLoopJacobian(
                spec, theta, pre, lr=lr, steps=config.steps, first_order=first_order,
                hessian_batch=pre_sub, inner_estimator=inner_estimator, lr_scales=self.lr_scales,
            )  # fmt: skip
            self.curvature_post = PostUpdateObjective(spec, adapted, post_sub, num_tasks=num_tasks)
        self.curvature_dtype = curvature_dtype
        if curvature_dtype is not None:
            self.curvature_jacobian = converted(self.curvature_jacobian, curvature_dtype)
            self.curvature_post = converted(self.curvature_post, curvature_dtype)

    @staticmethod
    def _pull_back(jacobian: InnerLoopJacobian, per_task: Params) -> Tensor:
        d_theta, d_rates = jacobian.vjp(per_task)
        return flatten(d_theta, *([d_rates] if d_rates is not None else []))

    def grad(self) -> Tensor:
        return self._pull_back(self.jacobian, self.post.grad())

    def kl_hvp(self, tangent: list[Params]) -> Tensor:
        if self.curvature_dtype is not None:
            tangent = [converted(t, self.curvature_dtype) for t in tangent]
        d_theta, *d_rates = tangent
        u = self.curvature_jacobian.jvp(d_theta, d_rates[0] if d_rates else None)
        product = self._pull_back(self.curvature_jacobian, self.curvature_post.fvp(u))
        return product.to(self.pre.observations.dtype)

    def evaluate(self, new: list[Params]) -> Tensor:
        theta, *rates = new
        adapted = inner_loop.adapt(
            self.spec,
            theta,
            self.pre,
            lr=rates[0] if rates else self.config.lr,
            steps=self.config.steps,
            lr_scales=self.lr_scales,
        )
        surrogate, kl = self.post.evaluate({k: v.detach() for k, v in adapted.items()})
        return torch.stack([surrogate.double(), kl.double()])


def curvature_dtype(name: str) -> torch.dtype | None:
    """The dtype TRPO's curvature products run in: ``float32`` (``None``: the training dtype,
    exact) or ``bfloat16``, whose matmuls run ~2.5x faster on CPUs with native bf16 dot products
    (AVX512-BF16, AMX) and accumulate in float32. Only the conjugate-gradient direction comes
    from these products; the gradient, the step size's KL bound check and the line search stay
    in float32, so an accepted step still satisfies the trust region exactly. ``auto`` picks
    bfloat16 where the CPU has native support."""
    if name == "auto":
        name = "bfloat16" if native_bfloat16() else "float32"
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    raise ValueError(f"unknown curvature dtype {name!r}: use float32, bfloat16 or auto")


def native_bfloat16() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def first_episodes(batch: LossBatch, horizon: int, episodes: int) -> LossBatch:
    """The first ``episodes`` episodes of every task of a flattened batch (``horizon`` steps
    each): a random subset, episodes being independent draws."""
    n = episodes * horizon
    return LossBatch(*(t[:, :n] for t in batch))


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
    )  # (lr_scales from config, first_step 0: the trainer adapts from theta)


def outer_loss(
    spec: PolicySpec, adapted: Params, post_update: EpisodeBatch, config: InnerLoopConfig
) -> Tensor:
    """Mean over tasks of the REINFORCE loss of theta'_i on episodes sampled with theta'_i."""
    return inner_loop.reinforce_loss(spec, adapted, inner_loop.prepare(post_update, config)).mean()
