"""An in-process policy: load a checkpoint, act, adapt on episodes, act again, evaluate; no server.

>>> import gymnasium as gym, metarl
>>> policy = metarl.Policy.load("cartpole-family/1")      # a bundled name/version, or a directory
>>> env = policy.make_env()                               # gymnasium.make(the checkpoint's family)
>>> episodes = policy.rollout(env, episodes=10, seed=0)
>>> adapted = policy.adapt(episodes)                      # a new Policy with θ'; policy keeps θ
>>> adapted.evaluate(env, episodes=10, seed=100)          # mean episode return

``adapt`` runs exactly what the server's ``Adapt`` runs in its worker: the checkpoint's inner
loop (:func:`metarl.core.inner_loop.adapt_with_loss`, the steps of
:func:`~metarl.core.inner_loop.adapt_on_episodes`) on the episodes converted as the server converts
them, with the inner steps a policy has already taken counted as a session counts them. The same
episodes therefore give the same θ' and the same deterministic actions as a server session.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from numpy.typing import NDArray

from metarl import envs
from metarl.core import inner_loop, policies
from metarl.core.checkpoint import Checkpoint, load_checkpoint
from metarl.core.checkpoint_paths import resolve_checkpoint
from metarl.core.policies import Params
from metarl_client.client import ActResult
from metarl_client.helpers import mean_return, rollout
from metarl_client.types import Episode

EpisodeLike = Episode | tuple[Any, Any, Any]
"""An :class:`metarl_client.Episode`, or ``(observations, actions, rewards)``."""


class Policy:
    """A meta-trained policy in this process: θ from a checkpoint, or θ' after :meth:`adapt`.

    Policies are immutable: :meth:`adapt` returns a new one and leaves this one's parameters
    as they are. Sampling draws from the policy's own seeded generator (``seed``)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        params: Params | None = None,
        *,
        inner_steps: int = 0,
        seed: int | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self._params: Params = {
            k: v.detach().float().clone()
            for k, v in (checkpoint.params if params is None else params).items()
        }
        self.inner_steps = inner_steps
        """Inner steps these parameters have taken from θ (they set later steps' rates)."""
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self.recording = False  # what metarl_client.helpers.rollout asks of a session

    @classmethod
    def load(cls, checkpoint: str | Path, *, seed: int | None = None) -> Policy:
        """A checkpoint directory written by ``metarl train``, or a bundled ``<name>/<version>``
        (or ``<name>``: its newest version), such as ``"navigation-2d/1"``."""
        return cls(load_checkpoint(resolve_checkpoint(checkpoint, flag="")), seed=seed)

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def env_id(self) -> str:
        """The task family the policy was meta-trained on."""
        return self.checkpoint.env_id

    @property
    def params(self) -> Params:
        """A copy of the current parameters (θ, or θ' after adaptation)."""
        return {k: v.clone() for k, v in self._params.items()}

    def make_env(self, **kwargs: Any) -> gym.Env[Any, Any]:
        """``gymnasium.make(self.env_id, **kwargs)`` (e.g. ``task=...``)."""
        envs.family(self.env_id)  # a clear error when the family is not installed
        return gym.make(self.env_id, **kwargs)

    # -- acting -----------------------------------------------------------------------------

    def act_batch(self, obs: Any, deterministic: bool = False) -> ActResult:
        """Actions and log-probabilities for a batch of observations ``[batch, *obs_shape]``."""
        spec = self.checkpoint.spec
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        if x.ndim < 1 or x.numel() != x.shape[0] * spec.obs_dim:
            raise ValueError(
                f"observations must have shape [batch, {spec.obs_dim}] for policy "
                f"{self.name!r}, got {list(x.shape)}; for one observation use act()"
            )
        with torch.no_grad():
            actions, log_probs = policies.act(
                spec,
                self._params,
                x.reshape(x.shape[0], spec.obs_dim),
                deterministic=deterministic,
                generator=self._generator,
            )
        return ActResult(actions.numpy(), log_probs.numpy().astype(np.float32))

    def act(
        self, obs: Any, deterministic: bool = False, *, reward: float | None = None
    ) -> int | NDArray[np.float32]:
        """One action for one observation: an ``int`` for a discrete action space, else an
        array. (``reward`` is accepted, and ignored, so that
        :func:`metarl_client.helpers.rollout` takes a policy where it takes a session.)"""
        spec = self.checkpoint.spec
        x = np.asarray(obs, dtype=np.float32)
        if x.size != spec.obs_dim:
            raise ValueError(
                f"observation must have {spec.obs_dim} numbers for policy {self.name!r}, got "
                f"shape {list(x.shape)}; for a batch use act_batch()"
            )
        result = self.act_batch(x.reshape(1, spec.obs_dim), deterministic)
        action = result.actions[0]
        if spec.distribution == "categorical":
            return int(action)
        return np.asarray(action, dtype=np.float32)

    def rollout(
        self,
        env: Any,
        episodes: int = 1,
        *,
        deterministic: bool = False,
        seed: int | None = None,
        max_steps: int = 100_000,
    ) -> list[Episode]:
        """Episodes of ``env`` (a gymnasium env or vector env) with this policy's actions:
        :func:`metarl_client.helpers.rollout`, the function clients use with a session."""
        session: Any = self  # duck-typed: act, act_batch and recording, as a Session has
        return rollout(
            env, session, episodes, deterministic=deterministic, seed=seed, max_steps=max_steps
        )

    def evaluate(
        self,
        env: Any,
        episodes: int = 10,
        *,
        deterministic: bool = False,
        seed: int | None = None,
    ) -> float:
        """The mean undiscounted return of ``episodes`` episodes of ``env``."""
        return mean_return(self.rollout(env, episodes, deterministic=deterministic, seed=seed))

    # -- adapting ---------------------------------------------------------------------------

    def adapt(self, episodes: Sequence[EpisodeLike], steps: int | None = None) -> Policy:
        """A new policy whose parameters took ``steps`` (default: the checkpoint's) inner steps
        on ``episodes`` from this policy's; this policy is unchanged."""
        ckpt = self.checkpoint
        config = ckpt.inner_loop
        steps = config.steps if steps is None else steps
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        batch = inner_loop.prepare(inner_loop.pad_episodes(self._tensors(episodes)), config)
        lr: float | Params = config.lr if ckpt.learning_rates is None else ckpt.learning_rates
        adapted, _ = inner_loop.adapt_with_loss(
            ckpt.spec,
            self._params,
            batch,
            lr=lr,
            steps=steps,
            lr_scales=config.lr_scales(steps, self.inner_steps),
        )
        new = {k: v[0].detach() for k, v in adapted.items()}
        if not all(torch.isfinite(v).all() for v in new.values()):
            raise ValueError(
                "adaptation diverged (non-finite parameters): ask for fewer steps or adapt on "
                "other episodes"
            )
        seed = int(torch.randint(0, 2**62, (1,), generator=self._generator))
        return Policy(ckpt, new, inner_steps=self.inner_steps + steps, seed=seed)

    def _tensors(
        self, episodes: Sequence[EpisodeLike]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The episodes as the server's worker receives them: observations ``[T, obs_dim]``
        float32, actions ``[T]`` int64 (discrete) or ``[T, action_dim]`` float32, rewards
        ``[T]`` float32."""
        spec = self.checkpoint.spec
        if not episodes:
            raise ValueError("adapt needs at least one episode")
        out = []
        for i, ep in enumerate(episodes):
            if isinstance(ep, Episode):
                o, a, r = ep.observations, ep.actions, ep.rewards
            else:
                o, a, r = ep
            rewards = np.asarray(r, dtype=np.float32).reshape(-1)
            steps = len(rewards)
            obs = np.asarray(o, dtype=np.float32)
            if steps == 0 or obs.size != steps * spec.obs_dim:
                raise ValueError(
                    f"episodes[{i}]: need T >= 1 rewards and T observations of {spec.obs_dim} "
                    f"numbers, got {steps} rewards and observations of shape {list(obs.shape)}"
                )
            acts: NDArray[Any]
            if spec.distribution == "categorical":
                acts = np.asarray(a).reshape(steps).astype(np.int64)
            else:
                acts = np.asarray(a, dtype=np.float32).reshape(steps, spec.action_dim)
            if not (np.isfinite(obs).all() and np.isfinite(rewards).all()):
                raise ValueError(f"episodes[{i}]: observations and rewards must be finite")
            out.append(
                (
                    torch.from_numpy(obs.reshape(steps, spec.obs_dim)),
                    torch.from_numpy(acts),
                    torch.from_numpy(rewards),
                )
            )
        return out

    def __repr__(self) -> str:
        return (
            f"Policy({self.name!r}, version={self.version!r}, env_id={self.env_id!r}, "
            f"inner_steps={self.inner_steps})"
        )
