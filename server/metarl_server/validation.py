"""Checks requests against a policy's spaces and limits; failures are InvalidArgument (or
ResourceExhausted for size limits) with a message that says what to send instead."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from numpy.typing import NDArray

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import tensor_pb2
from metarl_client.tensors import TensorError, from_tensor
from metarl_server.errors import InvalidArgument, ResourceExhausted
from metarl_server.registry import PolicyVersion


def decode(tensor: tensor_pb2.Tensor, name: str) -> NDArray[Any]:
    try:
        return from_tensor(tensor, name)
    except TensorError as exc:
        raise InvalidArgument(str(exc)) from None


def _check_finite(arr: NDArray[Any], name: str) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidArgument(f"{name} contain NaN or infinite values")


def observations(
    tensor: tensor_pb2.Tensor, policy: PolicyVersion, max_batch: int, name: str = "observations"
) -> tuple[torch.Tensor, bool]:
    """A float32 batch ``[B, obs_dim]`` and whether the request sent a single observation."""
    arr = decode(tensor, name)
    obs_shape = tuple(policy.observation_space.shape)
    if arr.shape == obs_shape:
        single, arr = True, arr[None]
    elif arr.ndim == len(obs_shape) + 1 and arr.shape[1:] == obs_shape:
        single = False
    else:
        raise InvalidArgument(
            f"{name} must have shape {list(obs_shape)} or [batch, {', '.join(map(str, obs_shape))}]"
            f" for policy {policy.name!r}, got {list(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise InvalidArgument(f"{name}: the batch is empty; send at least one observation")
    if arr.shape[0] > max_batch:
        raise ResourceExhausted(
            f"{name}: batch of {arr.shape[0]} exceeds the server's limit of {max_batch}; "
            "split it into smaller Act calls"
        )
    _check_finite(arr, name)
    return torch.tensor(arr.reshape(arr.shape[0], -1), dtype=torch.float32), single


def actions(arr: NDArray[Any], policy: PolicyVersion, steps: int, name: str) -> torch.Tensor:
    space = policy.action_space
    if isinstance(space, gym.spaces.Discrete):
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
                raise InvalidArgument(f"{name}: discrete actions must be integers")
            arr = arr.astype(np.int64)
        if arr.shape != (steps,):
            raise InvalidArgument(
                f"{name} must have shape [{steps}] (one action index per "
                f"step), got {list(arr.shape)}"
            )
        lo, hi = int(space.start), int(space.start + space.n)
        if arr.size and (arr.min() < lo or arr.max() >= hi):
            raise InvalidArgument(
                f"{name}: actions must lie in [{lo}, {hi - 1}], got values "
                f"from {arr.min()} to {arr.max()}"
            )
        return torch.tensor(arr - lo, dtype=torch.int64)
    shape = (steps, *space.shape)  # type: ignore[misc]
    if arr.shape != shape:
        raise InvalidArgument(f"{name} must have shape {list(shape)}, got {list(arr.shape)}")
    _check_finite(arr, name)
    return torch.tensor(arr.reshape(steps, -1), dtype=torch.float32)


def episodes(
    msgs: list[pb.Episode], policy: PolicyVersion, max_transitions: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Decoded, checked episodes ``(observations, actions, rewards)``."""
    out = []
    total = 0
    obs_shape = tuple(policy.observation_space.shape)
    for i, ep in enumerate(msgs):
        where = f"episodes[{i}]"
        rewards = decode(ep.rewards, f"{where}.rewards")
        if rewards.ndim != 1 or rewards.shape[0] == 0:
            raise InvalidArgument(
                f"{where}.rewards must have shape [T] with T >= 1, got {list(rewards.shape)}"
            )
        steps = rewards.shape[0]
        total += steps
        if total > max_transitions:
            raise ResourceExhausted(
                f"episodes hold more than the server's limit of "
                f"{max_transitions} transitions per Adapt call; send fewer"
            )
        _check_finite(rewards, f"{where}.rewards")
        obs = decode(ep.observations, f"{where}.observations")
        if obs.shape != (steps, *obs_shape):
            raise InvalidArgument(
                f"{where}.observations must have shape "
                f"{[steps, *obs_shape]} (one per reward), got {list(obs.shape)}"
            )
        _check_finite(obs, f"{where}.observations")
        acts = actions(decode(ep.actions, f"{where}.actions"), policy, steps, f"{where}.actions")
        out.append(
            (
                torch.tensor(obs.reshape(steps, -1), dtype=torch.float32),
                acts,
                torch.tensor(rewards, dtype=torch.float32),
            )
        )
    return out
