"""In-memory sessions: a client's own copy of a policy's parameters, and what it recorded."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from metarl.policies import Params
from metarl_server.errors import NotFound, ResourceExhausted
from metarl_server.registry import PolicyVersion


@dataclass
class RecordedEpisode:
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False


@dataclass
class Recording:
    """Served actions and reported rewards, as episodes (RLlib's ``log_returns`` pattern).

    Each single-observation Act appends a step whose reward arrives with the next message's
    feedback (or ReportFeedback); a done flag closes the episode."""

    episodes: list[RecordedEpisode] = field(default_factory=list)
    current: RecordedEpisode = field(default_factory=RecordedEpisode)

    def feedback(self, reward: float, terminated: bool, truncated: bool) -> bool:
        """Attaches the reward of the last served action; False if no action awaits one."""
        cur = self.current
        if len(cur.rewards) >= len(cur.actions):
            return False
        cur.rewards.append(reward)
        if terminated or truncated:
            cur.terminated, cur.truncated = terminated, truncated
            self.episodes.append(cur)
            self.current = RecordedEpisode()
        return True

    def step(self, obs: np.ndarray, action: np.ndarray) -> None:
        cur = self.current
        if len(cur.rewards) < len(cur.actions):  # no feedback for the previous step: drop it
            cur.observations.pop()
            cur.actions.pop()
        cur.observations.append(obs)
        cur.actions.append(action)

    def complete_episodes(self) -> list[RecordedEpisode]:
        """Finished episodes plus the rewarded prefix of the one in progress."""
        eps = list(self.episodes)
        cur = self.current
        if cur.rewards:
            n = len(cur.rewards)
            eps.append(
                RecordedEpisode(
                    cur.observations[:n], cur.actions[:n], cur.rewards[:n], truncated=True
                )
            )
        return eps

    @property
    def transitions(self) -> int:
        return sum(len(e.rewards) for e in self.episodes) + len(self.current.rewards)


@dataclass
class Session:
    id: str
    policy: PolicyVersion
    params: Params
    """Current parameters (unstacked). Replaced as a whole, never mutated, so a reader that took
    the reference sees one consistent set."""
    generator: torch.Generator
    recording: Recording | None
    ttl_seconds: float
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    adaptation_steps: int = 0
    adaptations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards the generator, the recording and the counters; never held while adapting."""

    @property
    def expires_at(self) -> float:
        return time.time() + self.ttl_seconds - (time.monotonic() - self.last_used)


class SessionStore:
    """Sessions by id, with a maximum count and an idle time-to-live."""

    def __init__(self, max_sessions: int = 10_000, ttl_seconds: float = 3600.0) -> None:
        self.max_sessions = max_sessions
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))  # least recently used first
            if now - oldest.last_used <= self.ttl_seconds:
                break
            self._sessions.popitem(last=False)

    def create(self, policy: PolicyVersion, seed: int | None, record: bool) -> Session:
        seed = secrets.randbits(63) if seed is None else seed
        session = Session(
            id=secrets.token_hex(16),
            policy=policy,
            params=policy.checkpoint.params,
            generator=torch.Generator().manual_seed(seed),
            recording=Recording() if record else None,
            ttl_seconds=self.ttl_seconds,
        )
        with self._lock:
            self._expire(time.monotonic())
            if len(self._sessions) >= self.max_sessions:
                raise ResourceExhausted(
                    f"the server holds its maximum of {self.max_sessions} sessions: delete "
                    "sessions you no longer use, or retry after idle ones expire"
                )
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFound(
                    f"no session {session_id!r}: it was deleted, expired after "
                    f"{self.ttl_seconds:.0f} s idle, or never existed"
                )
            session.last_used = now
            self._sessions.move_to_end(session_id)
            return session

    def delete(self, session_id: str) -> None:
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise NotFound(f"no session {session_id!r}")

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
