"""Plain-Python views of the service's messages (numpy arrays, dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from numpy.typing import NDArray

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import tensor_pb2


@dataclass(frozen=True)
class Episode:
    """One episode on the session's task: ``observations[t]`` seen, ``actions[t]`` taken,
    ``rewards[t]`` received, for ``t < T`` (what ``Session.adapt`` takes; ``rollout`` makes
    them). Arrays or anything ``numpy.asarray`` takes."""

    observations: NDArray[Any]
    """``[T, *observation_shape]``."""
    actions: NDArray[Any]
    """``[T]`` for discrete actions, ``[T, *action_shape]`` for box actions."""
    rewards: NDArray[Any]
    """``[T]``."""
    terminated: bool = False
    """Ended in a terminal state after the last step."""
    truncated: bool = False
    """Cut short (time limit) after the last step."""
    success: bool | None = None
    """Whether the task reported success in this episode; None when it has no success flag (or
    ``successes`` gives it per step)."""
    successes: NDArray[Any] | None = None
    """``[T]``: the task's success flag after each step (``info["success"]`` of Meta-World and
    the metarl families that have one); ``rollout`` fills it when the env reports one."""

    def __len__(self) -> int:
        """Number of transitions ``T``."""
        return len(self.rewards)

    @property
    def total_reward(self) -> float:
        """Undiscounted return."""
        return float(np.sum(self.rewards))

    @property
    def succeeded(self) -> bool | None:
        """Meta-World's protocol: the episode succeeded if the flag was set at any step.
        ``success`` when given, else whether any of ``successes`` is set; None when neither."""
        if self.success is not None:
            return bool(self.success)
        if self.successes is None:
            return None
        return bool(np.any(np.asarray(self.successes)))


_BOX_DTYPES: dict[int, np.dtype[Any]] = {
    tensor_pb2.DTYPE_FLOAT32: np.dtype(np.float32),
    tensor_pb2.DTYPE_FLOAT64: np.dtype(np.float64),
    tensor_pb2.DTYPE_INT32: np.dtype(np.int32),
    tensor_pb2.DTYPE_INT64: np.dtype(np.int64),
}


@dataclass(frozen=True)
class SpaceInfo:
    """A gymnasium space: ``kind`` is ``"box"`` (shape, low, high, dtype) or ``"discrete"``
    (n, start: values ``start, ..., start + n - 1``; shape ``()``)."""

    kind: str
    """``"box"`` or ``"discrete"``."""
    shape: tuple[int, ...]
    """Shape of one element (``()`` for discrete)."""
    low: NDArray[np.float64] | None = None
    """Box lower bounds (shape ``shape``); None for discrete."""
    high: NDArray[np.float64] | None = None
    """Box upper bounds (shape ``shape``); None for discrete."""
    n: int | None = None
    """Number of discrete values; None for a box."""
    start: int = 0
    """Smallest discrete value."""
    dtype: np.dtype[Any] = field(default_factory=lambda: np.dtype(np.float32))
    """Element type (int64 for discrete)."""

    def __str__(self) -> str:
        if self.kind == "discrete":
            start = f", start={self.start}" if self.start else ""
            return f"Discrete({self.n}{start})"
        return f"Box(shape={self.shape}, dtype={self.dtype})"

    @classmethod
    def from_proto(cls, space: pb.Space) -> SpaceInfo:
        """Converts a ``metarl.v1.Space``."""
        if space.WhichOneof("kind") == "discrete":
            return cls(
                kind="discrete",
                shape=(),
                n=int(space.discrete.n),
                start=int(space.discrete.start),
                dtype=np.dtype(np.int64),
            )
        shape = tuple(int(d) for d in space.box.shape)
        return cls(
            kind="box",
            shape=shape,
            low=np.array(space.box.low, dtype=np.float64).reshape(shape),
            high=np.array(space.box.high, dtype=np.float64).reshape(shape),
            dtype=_BOX_DTYPES.get(space.box.dtype, np.dtype(np.float32)),
        )


@dataclass(frozen=True)
class InnerLoopInfo:
    """How the server adapts sessions of a policy, and the limits of one Adapt call."""

    learning_rate: float
    """Inner-loop learning rate alpha."""
    default_steps: int
    """Inner steps an ``adapt`` call takes when it does not ask for a number."""
    max_steps: int
    """Most inner steps one ``adapt`` call may ask for."""
    discount: float
    """Discount gamma of the inner loss."""
    gae_lambda: float
    """GAE lambda of the inner loss."""
    normalize_advantages: bool
    """Whether advantages are normalized."""
    max_transitions: int
    """Most transitions (summed over episodes) one ``adapt`` call may send."""
    learned_learning_rates: bool
    """Whether the policy learned per-parameter inner learning rates (Meta-SGD)."""


@dataclass(frozen=True)
class PolicyInfo:
    """A policy the server has loaded (``PolicyClient.list_policies``)."""

    name: str
    """The name ``create_session`` takes."""
    versions: tuple[str, ...]
    """Loaded versions, oldest first."""
    latest_version: str
    """The version a session gets when it does not ask for one."""
    env_id: str
    """The task family it was meta-trained on (a gymnasium id)."""
    observation_space: SpaceInfo
    """What ``act`` takes (one observation)."""
    action_space: SpaceInfo
    """What ``act`` returns (one action)."""
    inner_loop: InnerLoopInfo
    """Adaptation settings and limits."""
    max_batch_size: int
    """Most observations one Act call may send (``act_batch`` splits larger batches)."""

    @classmethod
    def from_proto(cls, p: pb.Policy) -> PolicyInfo:
        """Converts a ``metarl.v1.Policy``."""
        il = p.inner_loop
        return cls(
            name=p.name,
            versions=tuple(p.versions),
            latest_version=p.latest_version,
            env_id=p.env_id,
            observation_space=SpaceInfo.from_proto(p.observation_space),
            action_space=SpaceInfo.from_proto(p.action_space),
            inner_loop=InnerLoopInfo(
                learning_rate=il.learning_rate,
                default_steps=il.default_steps,
                max_steps=il.max_steps,
                discount=il.discount,
                gae_lambda=il.gae_lambda,
                normalize_advantages=il.normalize_advantages,
                max_transitions=il.max_transitions,
                learned_learning_rates=il.learned_learning_rates,
            ),
            max_batch_size=p.max_batch_size,
        )


@dataclass(frozen=True)
class SessionInfo:
    """A session's state on the server (``Session.info``)."""

    id: str
    """The session id (``PolicyClient.get_session`` takes it)."""
    policy: str
    """The policy name."""
    version: str
    """The policy version the session is pinned to."""
    adaptation_steps: int
    """Inner steps applied since the session was created or last reset."""
    adaptations: int
    """Adapt calls since the session was created or last reset."""
    recording: bool
    """Whether the session records served actions and reported rewards."""
    recorded_transitions: int
    """Recorded transitions an ``adapt()`` without episodes would use."""
    create_time: datetime
    """When the session was created (UTC)."""
    expire_time: datetime
    """When the session expires if it is not used again (UTC)."""

    @classmethod
    def from_proto(cls, s: pb.Session) -> SessionInfo:
        """Converts a ``metarl.v1.Session``."""
        return cls(
            id=s.id,
            policy=s.policy,
            version=s.version,
            adaptation_steps=s.adaptation_steps,
            adaptations=s.adaptations,
            recording=s.recording,
            recorded_transitions=s.recorded_transitions,
            create_time=s.create_time.ToDatetime(tzinfo=timezone.utc),
            expire_time=s.expire_time.ToDatetime(tzinfo=timezone.utc),
        )


@dataclass(frozen=True)
class AdaptStats:
    """What one ``adapt`` call did."""

    steps: int
    """Inner steps taken."""
    loss_before: float
    """Inner loss of the session's parameters before this call, on this call's data."""
    loss_after: float
    """Inner loss of the adapted parameters, on the same data."""
    transitions: int
    """Transitions adapted on."""
    episodes: int
    """Episodes adapted on."""
    duration_seconds: float
    """Time the server spent on the call."""
    mean_return: float | None = None
    """Mean undiscounted return of the episodes adapted on (under the parameters before the
    call); None from a server that does not report it."""
    success_rate: float | None = None
    """Fraction of the episodes adapted on that succeeded; None unless every episode carried a
    success flag (``Episode.success`` or ``Episode.successes``)."""

    @classmethod
    def from_proto(cls, s: pb.AdaptStats) -> AdaptStats:
        """Converts a ``metarl.v1.AdaptStats``."""
        return cls(
            steps=s.steps,
            loss_before=s.loss_before,
            loss_after=s.loss_after,
            transitions=s.transitions,
            episodes=s.episodes,
            duration_seconds=s.duration_seconds,
            mean_return=s.mean_return if s.HasField("mean_return") else None,
            success_rate=s.success_rate if s.HasField("success_rate") else None,
        )
