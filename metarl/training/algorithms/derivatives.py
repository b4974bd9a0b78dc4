"""Closed-form derivatives of the MLP policy: meta-gradients and curvature without double backward.

MAML's outer loop differentiates through the inner loop ``theta -> theta'_i`` of
:func:`metarl.core.inner_loop.adapt`. Every quantity it needs is a product with the Jacobian of that
map, ``A_i = d theta'_i / d theta``: the meta-gradient is ``sum_i A_i^T g_i`` and the TRPO
curvature (the Hessian of the KL between old and new *adapted* policies, at the old parameters) is
``sum_i A_i^T G_i A_i`` with ``G_i`` the Fisher of task i's adapted policy on its post-update
episodes (exact at the old parameters: the KL's first derivative vanishes there, so its Hessian is
the Gauss-Newton matrix). For one inner step ``A_i = I - alpha * H_i`` with ``H_i`` the Hessian of
the inner loss, a symmetric matrix, so both products reduce to Hessian-vector products of the
inner loss and Jacobian-vector products of the network.

Autograd can compute these (double backward through ``torch.func.grad``; the tests do, as the
reference), but it walks a generic graph of the whole computation for every product. Here the
forward pass, the backward pass and the loss's curvature are computed once per outer iteration
and every product is a few batched matmuls (forward-over-reverse by hand): three to four times
faster per product (``benchmarks/train_speed.py`` measures it), and the products are most of a
TRPO step.

Where the observations and the outputs are few (2D navigation: 2 and 2), two more shortcuts
cut the products' ``hidden x hidden`` matmuls per sample from 16 to 10: the inner Hessian's
terms that pair the primal backward signal with layer 0's tangent come from moments computed
once (:func:`_first_layer_moments`), and the Fisher reaches layer 0 through the output's
Jacobian in layer 0's pre-activation (:meth:`MLPTape.output_jacobian`) instead of through layer
1. Both are the same algebra; the tests compare them with the plain route, autograd and finite
differences.

Nothing here computes ``theta'`` for training or serving: that stays
:func:`metarl.core.inner_loop.adapt`. This module only linearizes it (and the tests check the two
agree, and that the products match autograd and finite differences).

Shapes: ``K`` tasks, ``N`` samples per task (episodes flattened, padded steps weighted 0).
Parameters are stacked ``K`` deep (:func:`metarl.core.policies.stack`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from metarl.core import policies
from metarl.core.inner_loop import LossBatch
from metarl.core.policies import Params, PolicySpec


def _outer_sum(delta: Tensor, h: Tensor) -> Tensor:
    """``sum_n delta_n h_n^T`` per task, ``[K, out, in]``: a weight gradient. MKL's batched GEMM
    is slow with a long reduction and a thin transposed operand (``[K, 64, N] @ [K, N, 2]`` runs
    ~15x slower than ``[K, 2, N] @ [K, N, 64]``), so the thin side goes first."""
    if h.shape[-1] < delta.shape[-1]:
        return torch.bmm(h.transpose(1, 2), delta).transpose(1, 2)
    return torch.bmm(delta.transpose(1, 2), h)


def _weight(i: int) -> str:
    return f"layers.{i}.weight"


def _bias(i: int) -> str:
    return f"layers.{i}.bias"


class MLPTape:
    """The forward pass of the stacked MLP at ``params`` on ``obs`` ``[K, N, obs_dim]``, with the
    activations and activation derivatives that first and second derivatives reuse."""

    def __init__(self, spec: PolicySpec, params: Params, obs: Tensor) -> None:
        self.spec = spec
        self.params = params
        self.layers = spec.num_layers
        self.inputs: list[Tensor] = []  # inputs[l]: input of layer l (obs, then hidden activations)
        self.dphi: list[Tensor] = []  # dphi[l]: activation derivative at layer l's output (hidden)
        x = obs
        for i in range(self.layers):
            self.inputs.append(x)
            w, b = params[_weight(i)], params[_bias(i)]
            z = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            if i == self.layers - 1:
                self.out = z
            elif spec.activation == "tanh":
                x = policies.tanh(z)
                self.dphi.append(1.0 - x * x)
            else:
                x = torch.relu(z)
                self.dphi.append((z > 0).to(z.dtype))

    def jvp(self, dparams: Params, start: int = 0) -> tuple[Tensor, list[Tensor]]:
        """Tangent of the output along ``dparams`` (stacked), and of each hidden activation
        from layer ``start`` on; ``start`` > 0 leaves out the earlier layers' parameters."""
        dx: Tensor | None = None
        dhidden: list[Tensor] = []
        for i in range(start, self.layers):
            dw, db = dparams[_weight(i)], dparams[_bias(i)]
            dz = torch.baddbmm(db.unsqueeze(1), self.inputs[i], dw.transpose(1, 2))
            if dx is not None:
                dz = dz.baddbmm_(dx, self.params[_weight(i)].transpose(1, 2))
            if i == self.layers - 1:
                return dz, dhidden
            dx = dz.mul_(self.dphi[i])
            dhidden.append(dx)
        raise AssertionError("unreachable")

    def vjp(self, g_out: Tensor, first: int = 0) -> tuple[Params, list[Tensor], list[Tensor]]:
        """Parameter gradients (stacked) for output cotangent ``g_out``, with the backpropagated
        signals: ``deltas[l]`` at layer l's pre-activation, ``gh[l]`` at layer l's input. Only
        layers ``first`` and later (``gh[first]`` is not computed)."""
        grads: Params = {}
        deltas: list[Tensor] = [g_out] * self.layers
        gh: list[Tensor] = [g_out] * self.layers
        delta = g_out
        for i in reversed(range(first, self.layers)):
            deltas[i] = delta
            grads[_weight(i)] = _outer_sum(delta, self.inputs[i])
            grads[_bias(i)] = delta.sum(1)
            if i > first:
                gh[i] = torch.bmm(delta, self.params[_weight(i)])
                delta = gh[i] * self.dphi[i - 1]
        return self.in_order(grads), deltas, gh

    def first_layer_tangent(self, dparams: Params) -> Tensor:
        """Tangent of layer 0's pre-activation along its parameters in ``dparams``."""
        w, b = dparams[_weight(0)], dparams[_bias(0)]
        return torch.baddbmm(b.unsqueeze(1), self.inputs[0], w.transpose(1, 2))

    def output_jacobian(self) -> list[Tensor]:
        """``d out_k / d z_0`` per sample for every output k, ``[K, N, hidden_0]`` each (``z_0``
        layer 0's pre-activation): one backward pass per output, once, after which the part of a
        product that flows through layer 0 costs a few elementwise passes instead of the two
        ``hidden_0 x hidden_1`` matmuls per sample that backpropagation through layer 1 takes."""
        last = self.layers - 1
        jac = []
        for k in range(self.out.shape[-1]):
            delta = self.params[_weight(last)][:, k, :].unsqueeze(1) * self.dphi[last - 1]
            for i in range(last - 1, 0, -1):
                delta = torch.bmm(delta, self.params[_weight(i)]).mul_(self.dphi[i - 1])
            jac.append(delta)
        return jac

    def in_order(self, grads: Params) -> Params:
        """``grads`` with keys in the order of the parameters (they are filled back to front)."""
        return {name: grads[name] for name in self.params if name in grads}


class _Head:
    """Per-sample first and second derivatives of ``-log pi(a|s)`` with respect to the network
    output (logits or mean) and ``log_std``."""

    def __init__(self, spec: PolicySpec, tape: MLPTape, actions: Tensor) -> None:
        self.gaussian = spec.distribution == "gaussian"
        out = tape.out
        if self.gaussian:
            log_std = tape.params["log_std"]  # [K, A]
            self.inv_var = torch.exp(-2.0 * log_std).unsqueeze(1)  # [K, 1, A]
            self.err = actions - out  # a - mu
            self.err_iv = self.err * self.inv_var  # (a - mu) / sigma^2
        else:
            self.probs = torch.softmax(out, dim=-1)
            self.onehot = torch.nn.functional.one_hot(actions.long(), out.shape[-1]).to(out.dtype)

    def grad(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        """Gradient of ``sum_n w_n * -log pi_n``: cotangent of the output, and of ``log_std``."""
        w = w.unsqueeze(-1)
        if self.gaussian:
            g_log_std = (w * (1.0 - self.err * self.err_iv)).sum(1)
            return -w * self.err_iv, g_log_std
        return w * (self.probs - self.onehot), None

    def hvp(self, w: Tensor, dout: Tensor, dlog_std: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Hessian of ``sum_n w_n * -log pi_n`` (in output and ``log_std``) times a tangent."""
        w = w.unsqueeze(-1)
        if self.gaussian:
            assert dlog_std is not None
            dls = dlog_std.unsqueeze(1)
            g_out = w * (dout * self.inv_var + 2.0 * self.err_iv * dls)
            g_log_std = (w * (2.0 * self.err_iv * (dout + self.err * dls))).sum(1)
            return g_out, g_log_std
        return w * self._softmax_curvature(dout), None

    def score_outer(
        self, w: Tensor, dout: Tensor, dlog_std: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """``sum_n w_n s_n (s_n . d)`` for the scores ``s_n`` of ``log pi_n`` in output and
        ``log_std``, times a tangent ``d``: what LVC adds to the inner loss's Hessian (negated)."""
        if self.gaussian:
            assert dlog_std is not None
            s_ls = self.err * self.err_iv - 1.0  # d log pi / d log_std
            c = w * ((self.err_iv * dout).sum(-1) + (s_ls * dlog_std.unsqueeze(1)).sum(-1))
            c = c.unsqueeze(-1)
            return c * self.err_iv, (c * s_ls).sum(1)
        s_out = self.onehot - self.probs  # d log pi / d logits
        c = (w * (s_out * dout).sum(-1)).unsqueeze(-1)
        return c * s_out, None

    def fisher(
        self, w: Tensor, dout: Tensor, dlog_std: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Fisher information (the KL's Hessian at the old policy) times a tangent, weighted."""
        wn = w.unsqueeze(-1)
        if self.gaussian:
            assert dlog_std is not None
            return wn * dout * self.inv_var, 2.0 * dlog_std * w.sum(1, keepdim=True)
        return wn * self._softmax_curvature(dout), None

    def _softmax_curvature(self, dz: Tensor) -> Tensor:
        p = self.probs
        return p * dz - p * (p * dz).sum(-1, keepdim=True)


# Where the closed forms below take the first layer's shortcuts (:func:`_first_layer_moments`,
# :meth:`MLPTape.output_jacobian`): observations of at most this many dimensions, and at most
# this many network outputs. Each shortcut costs one pass per input (output) dimension once and
# saves two matmuls per product. The tests set them to 0 to check both routes agree.
FIRST_LAYER_MAX_INPUTS = 8
OUTPUT_JACOBIAN_MAX_OUTPUTS = 4


def _first_layer_moments(tape: MLPTape, deltas: list[Tensor]) -> Tensor | None:
    """``G[c] = sum_n delta1_n (phi0'_n x_nc)^T`` per task, ``[K, in + 1, hidden_1, hidden_0]``
    (``x_n`` the observation with a trailing 1, ``delta1`` the backpropagated signal at layer 1's
    pre-activation, ``phi0'`` layer 0's activation derivative), or None where no shortcut applies.

    In a Hessian-vector product two of the ``hidden_1 x hidden_0`` matmuls per sample only
    pair the primal ``delta1`` with a tangent of layer 0's output, ``phi0' * (x V0^T)``, or pull
    ``delta1 V1`` back into layer 0's gradient: both are linear in ``G`` and the 3-row layer-0
    tangent ``V0`` (or ``V1``), so with ``G`` computed once they cost a few small products."""
    x = tape.inputs[0]
    if tape.layers < 2 or x.shape[-1] + 1 > FIRST_LAYER_MAX_INPUTS:
        return None
    delta1, dphi0 = deltas[1], tape.dphi[0]
    moments = [_outer_sum(delta1, dphi0 * x[..., c : c + 1]) for c in range(x.shape[-1])]
    moments.append(_outer_sum(delta1, dphi0))
    return torch.stack(moments, 1)


def _layer0_columns(v: Params, inputs: int) -> list[Tensor]:
    """The columns of layer 0's weight tangent, then its bias tangent: ``[K, hidden_0]`` each."""
    w = v[_weight(0)]
    return [w[..., c] for c in range(inputs)] + [v[_bias(0)]]


def _hessian_vector(
    tape: MLPTape,
    head: _Head,
    w: Tensor,
    deltas: list[Tensor],
    gh: list[Tensor],
    curv: list[Tensor | None],
    v: Params,
    lvc: bool = False,
    moments: Tensor | None = None,
) -> Params:
    """Hessian of the weighted loss ``sum_n w_n * -log pi_n`` (in the parameters) times ``v``:
    forward-mode over the backward pass, reusing the primal quantities of ``tape``. With ``lvc``,
    that of ``sum_n w_n * -pi_n / stop_gradient(pi_n)`` instead (same value and gradient at the
    current parameters; its Hessian has ``- sum_n w_n s_n s_n^T`` more, ``s_n`` the score). With
    ``moments`` (:func:`_first_layer_moments`) the terms of the primal ``delta1`` against layer
    0's tangent come from them instead of from per-sample matmuls."""
    dout, dhidden = tape.jvp(v)
    ddelta, dlog_std = head.hvp(w, dout, v.get("log_std"))
    if lvc:
        extra_out, extra_log_std = head.score_outer(w, dout, v.get("log_std"))
        ddelta = ddelta - extra_out
        if dlog_std is not None and extra_log_std is not None:
            dlog_std = dlog_std - extra_log_std
    out: Params = {}
    layer0_extra: list[Tensor] = []
    for i in reversed(range(tape.layers)):
        dw = _outer_sum(ddelta, tape.inputs[i])
        if i == 1 and moments is not None:
            # sum_n delta1_n dh0_n^T with dh0 = phi0' * (x V0^T): sum_c G[c] * V0[:, c] (rows).
            for j, col in enumerate(_layer0_columns(v, moments.shape[1] - 1)):
                dw.addcmul_(moments[:, j], col.unsqueeze(1))
            # delta1 V1, pulled back through phi0' into layer 0's gradient: sum_m V1 * G[c].
            v1 = v[_weight(1)]
            layer0_extra = [(moments[:, j] * v1).sum(1) for j in range(moments.shape[1])]
            out[_weight(i)] = dw
        else:
            out[_weight(i)] = dw + _outer_sum(deltas[i], dhidden[i - 1]) if i > 0 else dw
        out[_bias(i)] = ddelta.sum(1)
        if i == 0 and layer0_extra:
            out[_weight(0)] = out[_weight(0)] + torch.stack(layer0_extra[:-1], -1)
            out[_bias(0)] = out[_bias(0)] + layer0_extra[-1]
        if i > 0:
            dgh = torch.bmm(ddelta, tape.params[_weight(i)])
            if not (i == 1 and moments is not None):
                dgh.baddbmm_(deltas[i], v[_weight(i)])
            ddelta = dgh.mul_(tape.dphi[i - 1])
            c = curv[i]
            if c is not None:  # the activation's second derivative: tanh'' = -2 tanh tanh'
                ddelta.addcmul_(c, dhidden[i - 1])
    if dlog_std is not None:
        out["log_std"] = dlog_std
    return tape.in_order(out)


class _InnerStep:
    """One inner step's linearization: the loss Hessian at that step's parameters (``lvc``: that
    of ProMP's low-variance curvature surrogate, see :class:`InnerLoopJacobian`)."""

    def __init__(self, spec: PolicySpec, params: Params, batch: LossBatch, lvc: bool) -> None:
        self.lvc = lvc
        n = batch.weights.sum(-1, keepdim=True).clamp(min=1e-12)
        self.w = w = batch.advantages * batch.weights / n  # reinforce_loss = sum_n w_n * -log pi_n
        self.tape = MLPTape(spec, params, batch.observations)
        self.head = _Head(spec, self.tape, batch.actions)
        g_out, g_log_std = self.head.grad(w)
        self.grad, self.deltas, self.gh = self.tape.vjp(g_out)
        if g_log_std is not None:
            self.grad["log_std"] = g_log_std
        self.curv: list[Tensor | None] = [None] * self.tape.layers
        if spec.activation == "tanh":
            for i in range(1, self.tape.layers):
                self.curv[i] = -2.0 * self.tape.inputs[i] * self.gh[i]
        self.moments = _first_layer_moments(self.tape, self.deltas)

    def hvp(self, v: Params) -> Params:
        return _hessian_vector(
            self.tape, self.head, self.w, self.deltas, self.gh, self.curv, v, self.lvc,
            self.moments,
        )  # fmt: skip


def _scale(lr: float | Params, name: str, x: Tensor) -> Tensor:
    return x * (lr[name] if isinstance(lr, dict) else lr)


class InnerLoopJacobian:
    """The inner loop ``theta -> theta'_i`` of :func:`metarl.core.inner_loop.adapt`, linearized at
    ``theta`` for the ``K`` tasks of ``batch``; ``lr`` is a scalar or per-parameter rates
    (Meta-SGD, whose rates are then inputs of the map too).

    :meth:`jvp` pushes a direction in (theta, rates) to each task's theta'; :meth:`vjp` pulls
    per-task cotangents of theta'_i back, summed over tasks. With ``first_order`` the inner
    gradients are constants (first-order MAML): theta'_i moves exactly as theta does. With
    ``hessian_batch`` (a subset of ``batch``'s samples) the inner loss Hessians are estimated on
    it, at the iterates the whole batch gives: a cheaper approximation for TRPO's curvature.

    ``inner_estimator`` says which inner-loss Hessian the map's Jacobian uses. ``reinforce``: that
    of the REINFORCE loss the inner loop descends (MAML's meta-gradient; it treats the pre-update
    episodes as fixed data, ignoring that theta also chose them). ``lvc``: that of ProMP's
    low-variance curvature surrogate ``-sum_n w_n pi_n / stop_gradient(pi_n)`` (Rothfuss et al.,
    2019), which has the same value and gradient, so the same theta', but whose Hessian adds
    ``-sum_n w_n s_n s_n^T`` (``s_n`` the score of sample n): the term through which the
    meta-gradient credits the pre-update policy for the information its episodes carry.
    """

    def __init__(
        self,
        spec: PolicySpec,
        theta: Params,
        batch: LossBatch,
        *,
        lr: float | Params,
        steps: int,
        first_order: bool = False,
        hessian_batch: LossBatch | None = None,
        inner_estimator: str = "reinforce",
        lr_scales: Sequence[float] | None = None,
    ) -> None:
        if inner_estimator not in ("reinforce", "lvc"):
            raise ValueError(
                f"inner_estimator must be 'reinforce' or 'lvc', not {inner_estimator!r}"
            )
        lvc = inner_estimator == "lvc"
        self.spec = spec
        self.lr = lr
        self.k = batch.advantages.shape[0]
        self.first_order = first_order
        # Step i's rate is lr * scales[i] (InnerLoopConfig.lr_scales).
        self.scales = [1.0] * steps if lr_scales is None else list(lr_scales)
        self.steps: list[_InnerStep] = []  # where the Hessians come from
        self.grads: list[Params] = []  # the inner gradient at each step
        if first_order and not isinstance(lr, dict):
            self.scales = []  # theta'_i moves as theta does: no step enters the map
            return
        current = policies.stack(spec, theta, self.k)
        for scale in self.scales:
            step = _InnerStep(spec, current, batch, lvc)
            self.grads.append(step.grad)
            if hessian_batch is not None and not first_order:
                self.steps.append(_InnerStep(spec, current, hessian_batch, lvc))
            else:
                self.steps.append(step)
            current = {k: p - scale * _scale(lr, k, step.grad[k]) for k, p in current.items()}

    def jvp(self, dtheta: Params, dlr: Params | None = None) -> Params:
        """d theta'_i for a change ``dtheta`` (unstacked) of theta and ``dlr`` of the rates."""
        d = policies.stack(self.spec, dtheta, self.k)
        for step, grad, scale in zip(self.steps, self.grads, self.scales, strict=True):
            hv = step.hvp(d) if not self.first_order else None
            new = {}
            for name, x in d.items():
                if hv is not None:
                    x = x - scale * _scale(self.lr, name, hv[name])
                if dlr is not None:
                    x = x - scale * dlr[name] * grad[name]
                new[name] = x
            d = new
        return d

    def vjp(self, cotangent: Params) -> tuple[Params, Params | None]:
        """Pulls per-task cotangents of theta'_i (stacked) back to theta (summed over tasks) and,
        with learned rates, to the rates."""
        ct = cotangent
        dlr: Params | None = None
        if isinstance(self.lr, dict):
            dlr = {name: torch.zeros_like(x) for name, x in self.lr.items()}
        for step, grad, scale in zip(
            reversed(self.steps), reversed(self.grads), reversed(self.scales), strict=True
        ):
            if dlr is not None:
                for name in dlr:
                    dlr[name] -= scale * (grad[name] * ct[name]).sum(0)
            if not self.first_order:
                hv = step.hvp({name: scale * _scale(self.lr, name, x) for name, x in ct.items()})
                ct = {name: x - hv[name] for name, x in ct.items()}
        return {name: x.sum(0) for name, x in ct.items()}, dlr


class PostUpdateObjective:
    """TRPO's objective on the post-update episodes of ``K`` tasks: the importance-weighted
    surrogate ``mean_i mean_t ratio_t A_t`` and ``mean_i mean_t KL(pi_old || pi_new)``, where
    ``pi_old`` is each task's adapted policy that sampled them (``adapted``, stacked).

    ``num_tasks`` is the number of tasks the means run over (all ranks' when distributed), so
    values and derivatives summed over ranks give the global means.
    """

    def __init__(
        self, spec: PolicySpec, adapted: Params, batch: LossBatch, *, num_tasks: int
    ) -> None:
        self.spec = spec
        self.batch = batch
        n = batch.weights.sum(-1, keepdim=True).clamp(min=1e-12)
        self.w = batch.weights / (n * num_tasks)  # per-sample weight of the double mean
        self.tape = MLPTape(spec, {k: v.detach() for k, v in adapted.items()}, batch.observations)
        self.head = _Head(spec, self.tape, batch.actions)
        self.old_logp = _log_prob(spec, self.tape.params, self.tape.out, batch.actions)
        # d out / d z0 per sample (MLPTape.output_jacobian), where it pays: then the products
        # skip backpropagating through layer 1 into layer 0 (and the tangent's way back out).
        self.out_jac: list[Tensor] | None = None
        if self.tape.layers >= 3 and self.tape.out.shape[-1] <= OUTPUT_JACOBIAN_MAX_OUTPUTS:
            self.out_jac = self.tape.output_jacobian()

    def _pull_back(self, g_out: Tensor, g_log_std: Tensor | None) -> Params:
        """Parameter gradients (stacked) for output cotangent ``g_out`` (and of ``log_std``)."""
        if self.out_jac is None:
            grads, _, _ = self.tape.vjp(g_out)
        else:
            grads, _, _ = self.tape.vjp(g_out, first=1)
            delta0 = g_out[..., 0:1] * self.out_jac[0]
            for k in range(1, len(self.out_jac)):
                delta0.addcmul_(g_out[..., k : k + 1], self.out_jac[k])
            grads[_weight(0)] = _outer_sum(delta0, self.tape.inputs[0])
            grads[_bias(0)] = delta0.sum(1)
            grads = self.tape.in_order(grads)
        if g_log_std is not None:
            grads["log_std"] = g_log_std
        return grads

    def _push_forward(self, u: Params) -> Tensor:
        """Tangent of the output along ``u`` (stacked)."""
        if self.out_jac is None:
            return self.tape.jvp(u)[0]
        dz0 = self.tape.first_layer_tangent(u)
        dout, _ = self.tape.jvp(u, start=1)
        through_layer0 = [torch.linalg.vecdot(jac, dz0) for jac in self.out_jac]
        return dout + torch.stack(through_layer0, -1)

    def reinforce_loss(self) -> Tensor:
        """MAML's post-update loss, ``mean_i mean_t -log pi_old(a_t|s_t) A_t`` (its gradient is
        minus the surrogate's)."""
        return -(self.w * self.batch.advantages * self.old_logp).sum()

    def surrogate_before(self) -> Tensor:
        """The surrogate at the old parameters (every ratio is 1)."""
        return (self.w * self.batch.advantages).sum()

    def grad(self) -> Params:
        """Gradient of the surrogate with respect to each task's adapted parameters (stacked)."""
        return self._pull_back(*self.head.grad(-self.w * self.batch.advantages))

    def fvp(self, u: Params) -> Params:
        """Fisher of the adapted policies on the post-update observations times ``u`` (stacked):
        the Hessian of the mean KL with respect to the adapted parameters, at the old ones."""
        dout = self._push_forward(u)
        return self._pull_back(*self.head.fisher(self.w, dout, u.get("log_std")))

    @torch.no_grad()
    def evaluate(self, adapted: Params) -> tuple[Tensor, Tensor]:
        """Surrogate and mean KL(old || new) for new adapted parameters (stacked)."""
        spec, old = self.spec, self.tape
        out = policies.forward(spec, adapted, self.batch.observations)
        new_logp = _log_prob(spec, adapted, out, self.batch.actions)
        if spec.distribution == "gaussian":
            old_ls, new_ls = old.params["log_std"].unsqueeze(1), adapted["log_std"].unsqueeze(1)
            kl = (
                new_ls
                - old_ls
                + (torch.exp(2 * old_ls) + (old.out - out) ** 2) / (2 * torch.exp(2 * new_ls))
                - 0.5
            ).sum(-1)
        else:
            old_all, new_all = torch.log_softmax(old.out, -1), torch.log_softmax(out, -1)
            kl = (old_all.exp() * (old_all - new_all)).sum(-1)
        ratio = torch.exp(new_logp - self.old_logp)
        surrogate = (self.w * ratio * self.batch.advantages).sum()
        return surrogate, (self.w * kl).sum()


_L = TypeVar("_L")


def converted(linearization: _L, dtype: torch.dtype) -> _L:
    """A copy of a linearization (:class:`InnerLoopJacobian`, :class:`PostUpdateObjective`), or of
    a params dict, whose floating-point tensors are converted to ``dtype``: its products then run
    at that precision (inputs must be converted too), from quantities computed at the original
    one."""

    def convert(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.to(dtype) if x.is_floating_point() else x
        if isinstance(x, list):
            return [convert(v) for v in x]
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, LossBatch):
            return LossBatch(*(convert(v) for v in x))
        if isinstance(x, (MLPTape, _Head, _InnerStep, InnerLoopJacobian, PostUpdateObjective)):
            new = copy.copy(x)
            new.__dict__.update({k: convert(v) for k, v in vars(x).items()})
            return new
        return x

    return convert(linearization)


def _log_prob(spec: PolicySpec, params: Params, out: Tensor, actions: Tensor) -> Tensor:
    """``log pi(a|s)`` from the network output ``out`` of stacked ``params``."""
    if spec.distribution == "gaussian":
        log_std = params["log_std"].unsqueeze(1)
        z = (actions - out) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    logp = torch.log_softmax(out, dim=-1)
    return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
