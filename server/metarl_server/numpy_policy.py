"""The policy's forward pass and action sampling in numpy, for serving.

A mirror of :mod:`metarl.core.policies` (``forward`` and ``act``) over a *flat* float32 parameter
vector: the parameters of one policy version or session live in one contiguous buffer, laid out
in ``PolicySpec.param_shapes()`` order (the order the adaptation worker flattens them in). numpy
costs ~5 µs for a single observation where a torch forward costs ~30 µs, and the serving process
need not import torch at all. The tests check it against :mod:`metarl.core.policies` (same actions,
log-probabilities within 1e-6).

Stacked variants take ``K`` flat vectors ``[K, P]`` and observations ``[K, N, obs_dim]`` and run
batched matmuls: one forward pass for the concurrent ``Act`` calls of ``K`` sessions.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_SCALAR_DRAWS = 8
"""Up to this many action components, one-observation sampling draws scalars."""


@dataclass(frozen=True)
class Arch:
    """The architecture part of a checkpoint manifest (``metarl.core.policies.PolicySpec``)."""

    obs_dim: int
    action_dim: int
    distribution: str
    hidden_sizes: tuple[int, ...]
    activation: str

    @classmethod
    def from_spec_dict(cls, d: dict[str, Any]) -> Arch:
        return cls(
            obs_dim=int(d["obs_dim"]),
            action_dim=int(d["action_dim"]),
            distribution=str(d.get("distribution", "categorical")),
            hidden_sizes=tuple(int(h) for h in d.get("hidden_sizes", (64,))),
            activation=str(d.get("activation", "tanh")),
        )

    @property
    def categorical(self) -> bool:
        return self.distribution == "categorical"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Same names, shapes and order as ``PolicySpec.param_shapes()``."""
        sizes = [self.obs_dim, *self.hidden_sizes, self.action_dim]
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            shapes[f"layers.{i}.weight"] = (n_out, n_in)
            shapes[f"layers.{i}.bias"] = (n_out,)
        if self.distribution == "gaussian":
            shapes["log_std"] = (self.action_dim,)
        return shapes

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())

    def offsets(self) -> list[tuple[str, int, int, tuple[int, ...]]]:
        """``(name, start, stop, shape)`` of each parameter in the flat vector."""
        out, start = [], 0
        for name, shape in self.param_shapes().items():
            stop = start + math.prod(shape)
            out.append((name, start, stop, shape))
            start = stop
        return out


class ParamSet:
    """One parameter vector (a version's θ or a session's θ') with its layer views prepared.

    Immutable once built: a session swaps its whole ``ParamSet`` when it adapts, so a reader
    holding one sees a consistent set. ``flat`` is the only buffer; the views share it."""

    __slots__ = ("flat", "layers", "log_std", "logp_const", "logp_one", "std", "std_one")

    def __init__(self, policy: NumpyPolicy, flat: F32) -> None:
        if flat.dtype != np.float32 or flat.shape != (policy.num_params,):
            raise ValueError(
                f"expected {policy.num_params} float32 parameters, got {flat.dtype} {flat.shape}"
            )
        self.flat = flat
        self.layers = tuple(
            (flat[w0:w1].reshape(wshape), flat[b0:b1])
            for (w0, w1, wshape), (b0, b1, _) in policy._layers
        )
        if policy._log_std is not None:
            self.log_std = flat[policy._log_std[0] : policy._log_std[1]]
            self.std = np.exp(self.log_std)
            self.logp_const = np.float32(
                -self.log_std.sum(dtype=np.float32) - np.float32(_HALF_LOG_2PI) * len(self.log_std)
            )
            # the same as Python numbers, for :meth:`NumpyPolicy.act_one`
            self.std_one: list[float] = self.std.tolist()
            self.logp_one = float(self.logp_const)


class NumpyPolicy:
    """Forward pass and sampling for one architecture over flat parameter vectors."""

    def __init__(self, arch: Arch) -> None:
        self.arch = arch
        self.num_params = arch.num_params
        off = {name: (start, stop, shape) for name, start, stop, shape in arch.offsets()}
        self._layers = [
            (off[f"layers.{i}.weight"], off[f"layers.{i}.bias"])
            for i in range(len(arch.hidden_sizes) + 1)
        ]
        self._log_std = off.get("log_std")
        self._act = np.tanh if arch.activation == "tanh" else _relu

    def params(self, flat: F32) -> ParamSet:
        return ParamSet(self, flat)

    # -- forward -------------------------------------------------------------------------------

    def forward(self, params: ParamSet | F32, obs: F32) -> F32:
        """Logits or action means ``[N, out]`` for ``obs`` ``[N, obs_dim]``."""
        ps = params if isinstance(params, ParamSet) else ParamSet(self, params)
        if obs.shape[0] == 1:  # matrix-vector products: ~2x faster than a 1-row matmul
            return self.forward_one(ps, obs[0])[None]
        x = obs
        last = len(ps.layers) - 1
        for i, (w, b) in enumerate(ps.layers):
            x = x @ w.T
            x += b
            if i < last:
                x = self._act(x)
        return x

    def forward_one(self, ps: ParamSet, obs: F32) -> F32:
        """``[out]`` for one observation ``[obs_dim]``.

        ``w @ x`` (the matmul ufunc), not ``np.dot``: both end in the same BLAS matrix-vector
        product, but ``np.dot`` releases the GIL around it, and with other threads waiting for
        the GIL (gRPC's, other calls') every release costs a hand-over and two context switches,
        several times the product itself."""
        x = obs
        last = len(ps.layers) - 1
        for i, (w, b) in enumerate(ps.layers):
            x = w @ x
            x += b
            if i < last:
                x = self._act(x, out=x)
        return x

    def forward_stacked(self, flats: F32, obs: F32) -> F32:
        """``[K, N, out]`` for ``K`` parameter vectors ``[K, P]``, ``obs`` ``[K, N, obs_dim]``."""
        k = flats.shape[0]
        x = obs
        last = len(self._layers) - 1
        for i, ((w0, w1, (n_out, n_in)), (b0, b1, _)) in enumerate(self._layers):
            w = flats[:, w0:w1].reshape(k, n_out, n_in)
            x = np.matmul(x, w.transpose(0, 2, 1))
            x += flats[:, None, b0:b1]
            if i < last:
                x = self._act(x)
        return x

    # -- actions -------------------------------------------------------------------------------

    def act_one(
        self, ps: ParamSet, out: list[float], deterministic: bool, rng: np.random.Generator
    ) -> tuple[int | list[float], float]:
        """:meth:`act` for one observation, in Python numbers (this is every control loop's
        step): from the forward output ``out`` (a list), the action (an index from 0, or the
        action's components) and its log-probability.

        Sampling draws one scalar at a time from ``rng``: the same numbers as one array draw,
        and scalar draws keep the GIL (an array draw releases it; see :meth:`forward_one`)."""
        if self.arch.categorical:
            top = max(out)
            log_z = top + math.log(math.fsum(math.exp(v - top) for v in out))
            if deterministic:
                a = out.index(top)
            else:
                u, cdf, a = float(rng.random(dtype=np.float32)), 0.0, len(out) - 1
                for i, v in enumerate(out):
                    cdf += math.exp(v - log_z)
                    if cdf >= u:
                        a = i
                        break
            return a, out[a] - log_z
        if deterministic:
            return out, ps.logp_one
        if len(out) <= _SCALAR_DRAWS:
            normal = rng.standard_normal
            noise = [float(normal(dtype=np.float32)) for _ in out]
        else:
            noise = rng.standard_normal(len(out), dtype=np.float32).tolist()
        # z = (action - mean) / std is the noise itself
        action = [m + n * sd for m, n, sd in zip(out, noise, ps.std_one, strict=True)]
        return action, ps.logp_one - 0.5 * math.fsum(n * n for n in noise)

    def act(
        self, params: ParamSet | F32, out: F32, deterministic: bool, rng: np.random.Generator
    ) -> tuple[NDArray[Any], F32]:
        """Actions and log-probabilities from the forward output ``out`` ``[N, out]`` of
        ``params``, as :func:`metarl.core.policies.act` computes them (inverse-CDF sampling for
        categorical, mean + std * noise for gaussian)."""
        ps = params if isinstance(params, ParamSet) else ParamSet(self, params)
        if self.arch.categorical:
            logp_all = _log_softmax(out)
            if deterministic:
                actions = logp_all.argmax(-1)
            else:
                u = rng.random((out.shape[0], 1), dtype=np.float32)
                cdf = np.exp(logp_all).cumsum(-1)
                actions = np.minimum((cdf < u).sum(-1), self.arch.action_dim - 1)
            logp = np.take_along_axis(logp_all, actions[:, None], -1)[:, 0]
            return actions.astype(np.int64), logp
        if deterministic:
            return out, np.full(out.shape[0], ps.logp_const, np.float32)
        # z = (action - mean) / std is the noise itself
        noise = rng.standard_normal(out.shape, dtype=np.float32)
        actions = out + noise * ps.std
        logp = ps.logp_const - np.float32(0.5) * (noise * noise).sum(-1)
        return actions, logp


def _relu(x: F32, out: F32 | None = None) -> F32:
    return np.maximum(x, 0, out=x if out is None else out)


def _log_softmax(x: F32) -> F32:
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
