"""Plain-Python views of the service's messages (numpy arrays, dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb


@dataclass(frozen=True)
class Episode:
    """One episode on the session's task: ``observations[t]`` seen, ``actions[t]`` taken,
    ``rewards[t]`` received."""

    observations: NDArray[Any]
    actions: NDArray[Any]
    rewards: NDArray[Any]
    terminated: bool = False
    """Ended in a terminal state after the last step."""
    truncated: bool = False
    """Cut short (time limit) after the last step."""

    def __len__(self) -> int:
        return len(self.rewards)


@dataclass(frozen=True)
class SpaceInfo:
    """A gymnasium space: ``kind`` is ``"box"`` (shape, low, high) or ``"discrete"`` (n)."""

    kind: str
    shape: tuple[int, ...]
    low: NDArray[np.float64] | None = None
    high: NDArray[np.float64] | None = None
    n: int | None = None

    @classmethod
    def from_proto(cls, space: pb.Space) -> SpaceInfo:
        if space.WhichOneof("kind") == "discrete":
            return cls(kind="discrete", shape=(), n=int(space.discrete.n))
        shape = tuple(int(d) for d in space.box.shape)
        return cls(
            kind="box",
            shape=shape,
            low=np.array(space.box.low, dtype=np.float64).reshape(shape),
            high=np.array(space.box.high, dtype=np.float64).reshape(shape),
        )


@dataclass(frozen=True)
class InnerLoopInfo:
    learning_rate: float
    default_steps: int
    max_steps: int
    discount: float
    gae_lambda: float
    normalize_advantages: bool
    max_transitions: int
    learned_learning_rates: bool


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    versions: tuple[str, ...]
    latest_version: str
    env_id: str
    observation_space: SpaceInfo
    action_space: SpaceInfo
    inner_loop: InnerLoopInfo
    max_batch_size: int

    @classmethod
    def from_proto(cls, p: pb.Policy) -> PolicyInfo:
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
    id: str
    policy: str
    version: str
    adaptation_steps: int
    adaptations: int
    recording: bool
    recorded_transitions: int
    create_time: datetime
    expire_time: datetime

    @classmethod
    def from_proto(cls, s: pb.Session) -> SessionInfo:
        return cls(
            id=s.id,
            policy=s.policy,
            version=s.version,
            adaptation_steps=s.adaptation_steps,
            adaptations=s.adaptations,
            recording=s.recording,
            recorded_transitions=s.recorded_transitions,
            create_time=s.create_time.ToDatetime(),
            expire_time=s.expire_time.ToDatetime(),
        )


@dataclass(frozen=True)
class AdaptStats:
    steps: int
    loss_before: float
    loss_after: float
    transitions: int
    episodes: int
    duration_seconds: float

    @classmethod
    def from_proto(cls, s: pb.AdaptStats) -> AdaptStats:
        return cls(
            steps=s.steps,
            loss_before=s.loss_before,
            loss_after=s.loss_after,
            transitions=s.transitions,
            episodes=s.episodes,
            duration_seconds=s.duration_seconds,
        )
