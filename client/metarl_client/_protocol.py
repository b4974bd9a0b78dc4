"""Requests and responses shared by the sync and async clients, and the checks made before a
request is sent (against the policy's spaces and limits, as the server would check them)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from metarl_client.errors import InvalidArgument, ResourceExhausted
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import tensor_pb2
from metarl_client.tensors import from_tensor, to_tensor
from metarl_client.types import Episode, PolicyInfo, SpaceInfo

Action = Any
_F32 = tensor_pb2.DTYPE_FLOAT32
_SHORT = 64  # observations up to this size are checked for finiteness in Python (cheaper)
"""What ``act`` returns: an ``int`` for a discrete action space, else an array."""


class SessionFields:
    """What a session handle knows about its session, for the sync and async sessions alike."""

    def __init__(self, session: pb.Session, policy_info: PolicyInfo | None) -> None:
        self.id: str = session.id
        """The session id: pass it to the client's ``get_session`` to reattach."""
        self.policy: str = session.policy
        """The policy name."""
        self.version: str = session.version
        """The policy version the session is pinned to."""
        self.recording: bool = session.recording
        """Whether the session records served actions and reported rewards."""
        self.policy_info: PolicyInfo | None = policy_info
        """The policy's spaces and limits (None if the server did not list it)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, policy={self.policy!r}, "
            f"version={self.version!r})"
        )


def _numeric(value: Any, name: str) -> NDArray[Any]:
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InvalidArgument(f"{name} is not a rectangular array: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise InvalidArgument(
            f"{name} must be numeric, got dtype {arr.dtype}"
            + (
                " (ragged or nested objects? flatten dict/tuple observations first)"
                if arr.dtype.kind == "O"
                else ""
            )
        )
    return arr


def _finite(arr: NDArray[Any], name: str) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise InvalidArgument(
            f"{name}: NaN or infinite values (first at index {list(bad)}: "
            f"{arr[bad]}); the policy needs finite numbers"
        )


def _integral(arr: NDArray[Any]) -> bool:
    return bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())


def _space_label(policy: PolicyInfo | None, space: SpaceInfo) -> str:
    return f"policy {policy.name!r} observes {space}" if policy else str(space)


def observations(
    obs: Any, policy: PolicyInfo | None, *, batch: bool, name: str = "observation"
) -> NDArray[Any]:
    """``obs`` checked against the policy's observation space and cast to its dtype: one
    observation (``batch=False``) or ``[batch, *shape]``. Raises InvalidArgument."""
    if (  # a control loop's usual step, made short: the space's own dtype and shape, finite
        not batch
        and policy is not None
        and type(obs) is np.ndarray
        and obs.dtype == policy.observation_space.dtype
        and obs.shape == policy.observation_space.shape
        and policy.observation_space.kind == "box"
        and obs.dtype.kind == "f"
        and obs.size <= _SHORT
        and all(map(math.isfinite, obs.flat))
    ):
        return obs
    arr = _numeric(obs, name)
    if policy is None:  # spaces unknown: the server checks
        if batch and arr.ndim < 1:
            raise InvalidArgument(f"{name} must be a batch [batch, *observation_shape]")
        return arr
    space = policy.observation_space
    shape = space.shape
    if not batch and arr.shape != shape:
        hint = ""
        if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
            hint = "; this looks like a batch: use act_batch()"
        elif arr.size == int(np.prod(shape)):
            hint = f"; reshape it to {list(shape)}"
        raise InvalidArgument(
            f"{name} must have shape {list(shape)} ({_space_label(policy, space)}), "
            f"got {list(arr.shape)}{hint}"
        )
    if batch:
        if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape:
            hint = "; this is one observation: use act(), or add a batch axis (obs[None])"
            raise InvalidArgument(
                f"{name} must have shape [batch, {', '.join(map(str, shape))}] "
                f"({_space_label(policy, space)}), got {list(arr.shape)}"
                + (hint if arr.shape == shape else "")
            )
        if arr.shape[0] == 0:
            raise InvalidArgument(f"{name}: the batch is empty; send at least one observation")
    if space.kind == "box" and space.dtype.kind == "f":
        arr = arr.astype(space.dtype, copy=False)
    elif space.kind == "discrete":
        if arr.dtype.kind == "f" and not _integral(arr):
            raise InvalidArgument(f"{name}: a discrete observation must be an integer")
        arr = arr.astype(np.int64, copy=False)
    _finite(arr, name)
    return arr


def refuse_keywords(call: str, signature: str, unexpected: dict[str, Any]) -> None:
    """A TypeError naming the keywords ``call`` does not take and the ones it does: a
    reporting method that swallowed ``**unexpected`` to say this instead of Python's bare
    "unexpected keyword argument"."""
    if not unexpected:
        return
    names = ", ".join(repr(k) for k in unexpected)
    hint = ""
    if "done" in unexpected:
        hint = "; gymnasium's done is `terminated or truncated`: pass the two flags step() returned"
    raise TypeError(
        f"{call}() got unexpected keyword argument(s) {names}: it takes {signature}{hint}"
    )


def feedback(reward: float | None, terminated: bool, truncated: bool) -> pb.StepFeedback | None:
    """The outcome of the previous action, or None when there is none to report."""
    if reward is None:
        if terminated or truncated:
            raise InvalidArgument(
                "terminated/truncated need the reward of the step that ended the episode"
            )
        return None
    r = float(reward)
    if not np.isfinite(r):
        raise InvalidArgument(f"reward must be finite, got {r}")
    return pb.StepFeedback(reward=r, terminated=bool(terminated), truncated=bool(truncated))


def act_request(
    session_id: str,
    obs: NDArray[Any],
    deterministic: bool,
    step_feedback: pb.StepFeedback | None = None,
) -> pb.ActRequest:
    req = pb.ActRequest(
        session_id=session_id, observations=to_tensor(obs), deterministic=deterministic
    )
    if step_feedback is not None:
        req.feedback.CopyFrom(step_feedback)
    return req


def action(resp_action: Any, policy: PolicyInfo | None) -> Action:
    """One action as ``act`` returns it: a Python int for discrete spaces, else an array."""
    if (  # a box policy's usual answer, made short: float32 of the action space's shape
        policy is not None
        and resp_action.dtype == _F32
        and policy.action_space.kind == "box"
        and tuple(resp_action.shape) == policy.action_space.shape
        and len(resp_action.data) == 4 * math.prod(policy.action_space.shape)
    ):
        return np.frombuffer(resp_action.data, "<f4").reshape(policy.action_space.shape).copy()
    arr = np.array(from_tensor(resp_action, "action"))
    if arr.ndim == 0 and arr.dtype.kind in "iu":
        return int(arr)
    if policy is not None and policy.action_space.kind == "discrete" and arr.size == 1:
        return int(arr.reshape(()))
    return arr


def batch_chunks(n: int, policy: PolicyInfo | None) -> list[slice]:
    """Slices of at most the policy's ``max_batch_size`` covering ``n`` observations."""
    size = policy.max_batch_size if policy and policy.max_batch_size > 0 else n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def steps(value: int | None, policy: PolicyInfo | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"steps must be an integer, got {value!r}")
    hi = policy.inner_loop.max_steps if policy and policy.inner_loop.max_steps else None
    if value < 1 or (hi is not None and value > hi):
        raise InvalidArgument(
            f"steps must be between 1 and {hi if hi is not None else 'the server limit'}, "
            f"got {value}"
        )
    return int(value)


def _actions(arr: NDArray[Any], space: SpaceInfo, t: int, name: str) -> NDArray[Any]:
    if space.kind == "discrete":
        if arr.dtype.kind == "f" and not _integral(arr):
            raise InvalidArgument(f"{name}: discrete actions must be integers")
        arr = arr.astype(np.int64, copy=False)
        if arr.shape != (t,):
            raise InvalidArgument(
                f"{name} must have shape [{t}] (one action index per reward), got {list(arr.shape)}"
            )
        lo, hi = space.start, space.start + (space.n or 0)
        if arr.size and (arr.min() < lo or arr.max() >= hi):
            raise InvalidArgument(
                f"{name}: actions must lie in [{lo}, {hi - 1}] ({space}), got values from "
                f"{arr.min()} to {arr.max()}"
            )
        return arr
    shape = (t, *space.shape)
    if arr.shape != shape:
        raise InvalidArgument(
            f"{name} must have shape {list(shape)} (one {space} action per reward), "
            f"got {list(arr.shape)}"
        )
    arr = arr.astype(space.dtype if space.dtype.kind == "f" else np.float32, copy=False)
    _finite(arr, name)
    return arr


def episodes(eps: Iterable[Episode], policy: PolicyInfo | None) -> list[pb.Episode]:
    """Episodes checked against the policy's spaces and limits, as protos."""
    out = []
    total = 0
    limit = policy.inner_loop.max_transitions if policy else 0
    for i, ep in enumerate(eps):
        where = f"episodes[{i}]"
        if not isinstance(ep, Episode):
            raise InvalidArgument(
                f"{where} is a {type(ep).__name__}; wrap it in metarl_client.Episode("
                "observations, actions, rewards, terminated, truncated)"
            )
        rewards = _numeric(ep.rewards, f"{where}.rewards").astype(np.float32, copy=False)
        if rewards.ndim != 1 or rewards.shape[0] == 0:
            raise InvalidArgument(
                f"{where}.rewards must have shape [T] with T >= 1, got {list(rewards.shape)}"
            )
        _finite(rewards, f"{where}.rewards")
        t = rewards.shape[0]
        total += t
        if limit and total > limit:
            raise ResourceExhausted(
                f"episodes hold more than the server's limit of {limit} transitions per "
                "Adapt call; send fewer"
            )
        obs = _numeric(ep.observations, f"{where}.observations")
        if policy is not None:
            shape = (t, *policy.observation_space.shape)
            if obs.shape != shape:
                raise InvalidArgument(
                    f"{where}.observations must have shape {list(shape)} (one per reward), "
                    f"got {list(obs.shape)}"
                )
            if policy.observation_space.dtype.kind == "f":
                obs = obs.astype(policy.observation_space.dtype, copy=False)
        _finite(obs, f"{where}.observations")
        acts = _numeric(ep.actions, f"{where}.actions")
        if policy is not None:
            acts = _actions(acts, policy.action_space, t, f"{where}.actions")
        if ep.successes is not None and np.shape(ep.successes) != (t,):
            raise InvalidArgument(
                f"{where}.successes must have shape [T] = [{t}] (one flag per reward), got "
                f"{list(np.shape(ep.successes))}"
            )
        msg = pb.Episode(
            observations=to_tensor(obs),
            actions=to_tensor(acts),
            rewards=to_tensor(rewards),
            terminated=bool(ep.terminated),
            truncated=bool(ep.truncated),
        )
        succeeded = ep.succeeded
        if succeeded is not None:
            msg.success = succeeded
        out.append(msg)
    return out


def adapt_request(
    session_id: str, eps: Iterable[Episode] | None, n_steps: int | None, policy: PolicyInfo | None
) -> pb.AdaptRequest:
    protos = episodes(eps, policy) if eps is not None else []
    if eps is not None and not protos:
        raise InvalidArgument(
            "no episodes to adapt on: send at least one, or episodes=None to adapt on what "
            "the session recorded"
        )
    req = pb.AdaptRequest(session_id=session_id, episodes=protos)
    n = steps(n_steps, policy)
    if n is not None:
        req.steps = n
    return req


def create_request(
    policy: str, version: str | None, seed: int | None, record: bool
) -> pb.CreateSessionRequest:
    req = pb.CreateSessionRequest(policy=policy, version=version or "", record=record)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidArgument(f"seed must be a non-negative integer, got {seed!r}")
        if seed >= 2**64:
            raise InvalidArgument(f"seed must be below 2**64, got {seed}")
        req.seed = int(seed)
    return req
