"""The policy's forward pass and action sampling in numpy, for serving.

A mirror of :mod:`metarl.policies` (``forward`` and ``act``) over a *flat* float32 parameter
vector: the parameters of one policy version or session live in one contiguous buffer, laid out
in ``PolicySpec.param_shapes()`` order (the order the adaptation worker flattens them in). numpy
costs ~5 µs for a single observation where a torch forward costs ~30 µs, and the serving process
need not import torch at all. The tests check it against :mod:`metarl.policies` (same actions,
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


@dataclass(frozen=True)
class Arch:
    """The architecture part of a checkpoint manifest (``metarl.policies.PolicySpec``)."""

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

    # -- forward -------------------------------------------------------------------------------

    def forward(self, flat: F32, obs: F32) -> F32:
        """Logits or action means ``[N, out]`` for ``obs`` ``[N, obs_dim]``."""
        x = obs
        last = len(self._layers) - 1
        for i, ((w0, w1, wshape), (b0, b1, _)) in enumerate(self._layers):
            x = x @ flat[w0:w1].reshape(wshape).T
            x += flat[b0:b1]
            if i < last:
                x = self._act(x)
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

    def log_std(self, flat: F32) -> F32:
        assert self._log_std is not None
        return flat[self._log_std[0] : self._log_std[1]]

    # -- actions -------------------------------------------------------------------------------

    def act(
        self, flat: F32, out: F32, deterministic: bool, rng: np.random.Generator
    ) -> tuple[NDArray[Any], F32]:
        """Actions and log-probabilities from the forward output ``out`` ``[N, out]`` of ``flat``,
        as :func:`metarl.policies.act` computes them (inverse-CDF sampling for categorical)."""
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
        log_std = self.log_std(flat)
        if deterministic:
            actions = out
            z2 = np.zeros_like(out)
        else:
            noise = rng.standard_normal(out.shape, dtype=np.float32)
            actions = out + noise * np.exp(log_std)
            z = (actions - out) * np.exp(-log_std)
            z2 = z * z
        logp = (-0.5 * z2 - log_std - np.float32(_HALF_LOG_2PI)).sum(-1, dtype=np.float32)
        return actions, logp


def _relu(x: F32) -> F32:
    return np.maximum(x, 0, out=x)


def _log_softmax(x: F32) -> F32:
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
