"""Checks requests against a policy's spaces and limits; failures are InvalidArgument (or
ResourceExhausted for size limits) with a message that says what to send instead.

Everything here is numpy: the serving process does not import torch.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import tensor_pb2
from metarl_client.tensors import TensorError, from_tensor
from metarl_server.errors import InvalidArgument, ResourceExhausted
from metarl_server.registry import PolicyVersion

_LITTLE_ENDIAN = sys.byteorder == "little"
MAX_RANK = 8
"""No tensor of the contract has more dimensions than this."""

Episode = tuple[NDArray[np.float32], NDArray[Any], NDArray[np.float32]]


def all_finite(arr: NDArray[Any]) -> bool:
    """``np.isfinite(arr).all()``, faster for the few values of one observation or action."""
    if arr.size <= 16:
        return all(map(math.isfinite, arr.ravel().tolist()))
    return bool(np.isfinite(arr).all())


_FAST_DTYPES: dict[int, np.dtype[Any]] = (
    {tensor_pb2.DTYPE_FLOAT32: np.dtype("<f4"), tensor_pb2.DTYPE_INT64: np.dtype("<i8")}
    if _LITTLE_ENDIAN
    else {}
)


def decode(tensor: tensor_pb2.Tensor, name: str) -> NDArray[Any]:
    if len(tensor.shape) > MAX_RANK:
        raise InvalidArgument(
            f"{name}: shape has {len(tensor.shape)} dimensions; no tensor here has more than "
            f"{MAX_RANK}"
        )
    dtype = _FAST_DTYPES.get(tensor.dtype)
    if dtype is not None:  # the usual case, reading the data once (each read copies it)
        shape = tuple(tensor.shape)
        data = tensor.data
        if min(shape, default=0) >= 0 and math.prod(shape) * dtype.itemsize == len(data):
            try:
                return np.frombuffer(data, dtype).reshape(shape)
            except ValueError:
                pass  # (from_tensor says why)
    try:
        return from_tensor(tensor, name)
    except TensorError as exc:
        raise InvalidArgument(str(exc)) from None
    except ValueError as exc:  # numpy refusing the shape (e.g. [0, 2**62]: "array is too big")
        raise InvalidArgument(f"{name}: shape {list(tensor.shape)} is not usable: {exc}") from None


def _to_float32(arr: NDArray[Any], name: str) -> NDArray[np.float32]:
    """``arr`` as float32, refusing NaN, infinities, and values float32 cannot hold."""
    if arr.dtype.kind not in "fiu":
        raise InvalidArgument(f"{name} must be numbers (DTYPE_FLOAT32 or DTYPE_FLOAT64)")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32, copy=arr.dtype != np.float32)
    if not np.isfinite(out).all():
        what = "NaN or infinite values" if arr.dtype.kind == "f" else "values too large"
        if arr.dtype.kind == "f" and np.isfinite(arr).all():
            what = "values too large for float32"
        raise InvalidArgument(f"{name} contain {what}")
    return out


def observations(
    tensor: tensor_pb2.Tensor, policy: PolicyVersion, max_batch: int, name: str = "observations"
) -> tuple[NDArray[np.float32], bool]:
    """A float32 batch ``[B, obs_dim]`` and whether the request sent a single observation."""
    obs_shape = policy.observation_space.shape
    if (  # the hot path: one float32 observation
        tensor.dtype == tensor_pb2.DTYPE_FLOAT32
        and _LITTLE_ENDIAN
        and len(tensor.shape) == len(obs_shape)
        and tuple(tensor.shape) == obs_shape
    ):
        data = tensor.data  # (each read of the field copies it)
        if len(data) == 4 * policy.arch.obs_dim:
            arr = np.frombuffer(data, np.float32)
            if not all_finite(arr):
                raise InvalidArgument(f"{name} contain NaN or infinite values")
            return arr.reshape(1, -1), True
    arr = decode(tensor, name)
    if arr.shape == obs_shape:
        single, arr = True, arr.reshape(1, -1)
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
    return _to_float32(arr.reshape(arr.shape[0], -1), name), single


def actions(arr: NDArray[Any], policy: PolicyVersion, steps: int, name: str) -> NDArray[Any]:
    """Actions of an episode: int64 indices from 0 (discrete) or float32 ``[T, action_dim]``."""
    space = policy.action_space
    if isinstance(space, gym.spaces.Discrete):
        if arr.dtype.kind == "f" and (
            not np.isfinite(arr).all() or not (arr == np.round(arr)).all()
        ):
            raise InvalidArgument(
                f"{name}: the policy's actions are discrete; send integer action indices"
            )
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
        return arr.astype(np.int64) - lo
    shape = (steps, *space.shape)  # type: ignore[misc]
    if arr.shape != shape:
        raise InvalidArgument(f"{name} must have shape {list(shape)}, got {list(arr.shape)}")
    return _to_float32(arr.reshape(steps, -1), name)


def episodes(msgs: list[pb.Episode], policy: PolicyVersion, max_transitions: int) -> list[Episode]:
    """Decoded, checked episodes ``(observations, actions, rewards)``."""
    fast = _episodes_float32(msgs, policy, max_transitions)
    if fast is not None:
        return fast
    return _episodes(msgs, policy, max_transitions)


def _episodes_float32(
    msgs: list[pb.Episode], policy: PolicyVersion, max_transitions: int
) -> list[Episode] | None:
    """:func:`_episodes` for the usual request (float32 everything, a box action space, the
    right shapes, finite values), checking the values of all episodes at once: three numpy
    checks instead of three per episode. None when anything is unusual: then :func:`_episodes`
    checks episode by episode and says what is wrong where."""
    space = policy.action_space
    if not (msgs and _LITTLE_ENDIAN and isinstance(space, gym.spaces.Box)):
        return None
    f32 = tensor_pb2.DTYPE_FLOAT32
    obs_shape = tuple(policy.observation_space.shape)
    act_shape = tuple(space.shape)
    obs_dim, act_dim = math.prod(obs_shape), math.prod(act_shape)
    out: list[Episode] = []
    total = 0
    for ep in msgs:
        o, a, r = ep.observations, ep.actions, ep.rewards
        if not (o.dtype == f32 and a.dtype == f32 and r.dtype == f32 and len(r.shape) == 1):
            return None
        steps = r.shape[0]
        total += steps
        if steps == 0 or total > max_transitions:
            return None
        if tuple(o.shape) != (steps, *obs_shape) or tuple(a.shape) != (steps, *act_shape):
            return None
        od, ad, rd = o.data, a.data, r.data
        if len(od) != 4 * steps * obs_dim or len(ad) != 4 * steps * act_dim or len(rd) != 4 * steps:
            return None
        out.append(
            (
                np.frombuffer(od, np.float32).reshape(steps, obs_dim),
                np.frombuffer(ad, np.float32).reshape(steps, act_dim),
                np.frombuffer(rd, np.float32),
            )
        )
    if not all(np.isfinite(np.concatenate([e[i] for e in out], axis=None)).all() for i in range(3)):
        return None
    return out


def _episodes(msgs: list[pb.Episode], policy: PolicyVersion, max_transitions: int) -> list[Episode]:
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
        obs = decode(ep.observations, f"{where}.observations")
        if obs.shape != (steps, *obs_shape):
            raise InvalidArgument(
                f"{where}.observations must have shape "
                f"{[steps, *obs_shape]} (one per reward), got {list(obs.shape)}"
            )
        acts = actions(decode(ep.actions, f"{where}.actions"), policy, steps, f"{where}.actions")
        out.append(
            (
                _to_float32(obs.reshape(steps, -1), f"{where}.observations"),
                acts,
                _to_float32(rewards, f"{where}.rewards"),
            )
        )
    return out


def success_rate(msgs: list[pb.Episode]) -> float | None:
    """Fraction of the episodes whose ``success`` is set (Meta-World's protocol: the flag was set
    at some step); None when no episode carries the field. Some with it and some without is
    refused: the rate would silently count the others as failures."""
    flags = [ep.success if ep.HasField("success") else None for ep in msgs]
    given = [f for f in flags if f is not None]
    if not given:
        return None
    if len(given) != len(flags):
        missing = [i for i, f in enumerate(flags) if f is None]
        raise InvalidArgument(
            f"episodes {missing[:5]} carry no success flag while {len(given)} others do: set "
            "Episode.success on every episode of an Adapt call, or on none"
        )
    return sum(given) / len(given)


def padded_size(eps: list[Episode]) -> int:
    """Steps the inner loop computes on: episodes are padded to the longest one."""
    return len(eps) * max(len(r) for _, _, r in eps)


def check_padded(eps: list[Episode], max_transitions: int) -> None:
    limit = 2 * max_transitions
    if padded_size(eps) > limit:
        longest = max(len(r) for _, _, r in eps)
        raise ResourceExhausted(
            f"{len(eps)} episodes padded to the longest ({longest} steps) exceed the server's "
            f"limit of {limit} padded steps per Adapt call; send episodes of similar lengths, "
            "or fewer of them"
        )


def feedback(fb: pb.StepFeedback) -> pb.StepFeedback:
    if not np.isfinite(fb.reward):
        raise InvalidArgument(f"feedback.reward must be a finite number, got {fb.reward}")
    return fb
