"""Sessions: a client's own copy of a policy version's parameters, and what it recorded.

A session's state is plain, serializable data (:meth:`Session.snapshot` / :meth:`Session.restore`):
the parameters as one contiguous float32 buffer (shared with the policy version until the first
``Adapt``), counters, the recording, and the sampling generator's state. Stores implement
:class:`SessionStore` (create / get / save-after-change / delete, TTL and a maximum count); this
module has the in-memory one, and a shared store (Redis) can implement the same interface.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metarl_server.errors import InvalidArgument, NotFound, ResourceExhausted
from metarl_server.numpy_policy import ParamSet
from metarl_server.registry import PolicyRegistry, PolicyVersion, shorten

log = logging.getLogger(__name__)

SESSION_ID_BYTES = 16


@dataclass
class RecordedEpisode:
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    source: RecordedEpisode | None = field(default=None, repr=False, compare=False)
    """For the rewarded prefix of an episode in progress: that episode."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "observations": [o.tolist() for o in self.observations],
            "actions": [np.asarray(a).tolist() for a in self.actions],
            "rewards": list(self.rewards),
            "terminated": self.terminated,
            "truncated": self.truncated,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecordedEpisode:
        return cls(
            [np.asarray(o, np.float32) for o in d["observations"]],
            [np.asarray(a) for a in d["actions"]],
            [float(r) for r in d["rewards"]],
            bool(d["terminated"]),
            bool(d["truncated"]),
        )


@dataclass
class Recording:
    """Served actions and reported rewards, as episodes (RLlib's ``log_returns`` pattern).

    Each single-observation Act appends a step whose reward arrives with the next message's
    feedback (or ReportFeedback); a done flag closes the episode. At most ``max_transitions``
    rewarded steps are kept: the oldest episodes are dropped first."""

    max_transitions: int = 10_000
    episodes: list[RecordedEpisode] = field(default_factory=list)
    current: RecordedEpisode = field(default_factory=RecordedEpisode)
    _done_transitions: int = 0
    journal: list[tuple[Any, ...]] = field(default_factory=list, repr=False, compare=False)
    """The changes (:meth:`feedback` and :meth:`step` calls) not yet handed to the session store:
    a shared store appends them instead of rewriting the whole recording
    (:meth:`SessionStore.save_recording` drains it; :meth:`replay` applies them)."""

    def feedback(self, reward: float, terminated: bool, truncated: bool) -> bool:
        """Attaches the reward of the last served action; False if no action awaits one."""
        cur = self.current
        if len(cur.rewards) >= len(cur.actions):
            return False
        self.journal.append(("f", reward, terminated, truncated))
        cur.rewards.append(reward)
        if terminated or truncated:
            cur.terminated, cur.truncated = terminated, truncated
            self._close_current()
        elif len(cur.rewards) >= self.max_transitions:
            cur.truncated = True  # an endless episode: keep its newest part, as a finished one
            self._close_current()
        self._trim()
        return True

    def _close_current(self) -> None:
        self.episodes.append(self.current)
        self._done_transitions += len(self.current.rewards)
        self.current = RecordedEpisode()

    def _trim(self) -> None:
        while self.episodes and self.transitions > self.max_transitions:
            self._done_transitions -= len(self.episodes.pop(0).rewards)

    def step(self, obs: np.ndarray, action: np.ndarray) -> None:
        cur = self.current
        if len(cur.rewards) < len(cur.actions):  # no feedback for the previous step: drop it
            cur.observations.pop()
            cur.actions.pop()
        cur.observations.append(obs)
        cur.actions.append(action)
        self.journal.append(("s", obs, action))

    @staticmethod
    def event_json(event: tuple[Any, ...]) -> list[Any]:
        """A :attr:`journal` entry as JSON-ready values (``["f", reward, terminated, truncated]``
        or ``["s", observation, action]``; an integer action is a number, a float one a list)."""
        if event[0] == "f":
            return ["f", float(event[1]), bool(event[2]), bool(event[3])]
        action = event[2]
        return ["s", event[1].tolist(), action.tolist()]

    def replay(self, events: list[Any]) -> None:
        """Applies :meth:`event_json` events (recorded elsewhere) in order, without journaling
        them; ``ValueError`` for a malformed one."""
        journal, self.journal = self.journal, []
        try:
            for e in events:
                if not isinstance(e, list) or not e:
                    raise ValueError(f"malformed recording event {e!r:.80}")
                if e[0] == "f" and len(e) == 4:
                    self.feedback(float(e[1]), bool(e[2]), bool(e[3]))
                elif e[0] == "s" and len(e) == 3:
                    a = e[2]
                    action = (
                        np.array(a, np.int64) if isinstance(a, int) else np.array(a, np.float32)
                    )
                    self.step(np.array(e[1], np.float32), action)
                else:
                    raise ValueError(f"malformed recording event {e!r:.80}")
        finally:
            self.journal = journal

    def complete_episodes(self) -> list[RecordedEpisode]:
        """Finished episodes plus the rewarded prefix of the one in progress."""
        eps = list(self.episodes)
        cur = self.current
        if cur.rewards:
            n = len(cur.rewards)
            eps.append(
                RecordedEpisode(
                    cur.observations[:n],
                    cur.actions[:n],
                    cur.rewards[:n],
                    truncated=True,
                    source=cur,
                )
            )
        return eps

    def consume(self, used: list[RecordedEpisode]) -> None:
        """Forgets what an adaptation used (steps recorded while it ran are kept)."""
        ids = {id(e) for e in used if e.source is None}
        self.episodes = [e for e in self.episodes if id(e) not in ids]
        for prefix in (e for e in used if e.source is not None):
            src, n = prefix.source, len(prefix.rewards)  # (it may have finished since)
            assert src is not None
            del src.observations[:n], src.actions[:n], src.rewards[:n]
            if src is not self.current and not src.rewards:
                self.episodes = [e for e in self.episodes if e is not src]
        self._done_transitions = sum(len(e.rewards) for e in self.episodes)

    @property
    def transitions(self) -> int:
        return self._done_transitions + len(self.current.rewards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_transitions": self.max_transitions,
            "episodes": [e.to_dict() for e in self.episodes],
            "current": self.current.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recording:
        rec = cls(
            int(d["max_transitions"]),
            [RecordedEpisode.from_dict(e) for e in d["episodes"]],
            RecordedEpisode.from_dict(d["current"]),
        )
        rec._done_transitions = sum(len(e.rewards) for e in rec.episodes)
        return rec


@dataclass(eq=False)
class Session:
    id: str
    policy: PolicyVersion
    param_set: ParamSet
    """Current parameters: one flat float32 buffer (with its layer views), replaced as a whole
    and never written to, so a reader that took the reference sees one consistent set (the old
    θ' or the new, never a mix). Until the first Adapt it is the policy version's own (no copy)."""
    rng: np.random.Generator
    recording: Recording | None
    ttl_seconds: float
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    adaptation_steps: int = 0
    adaptations: int = 0
    generation: int = 0
    """Bumped by ResetSession: an adaptation that started before a reset is not applied after it."""
    adapting: bool = False
    """An Adapt is running for this session (at most one at a time); the session does not
    expire meanwhile."""
    owner: str | None = None
    """The name of the client that created it (from its token); None: any client may use it."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Guards the recording, the counters and ``adapting``; never held while adapting."""

    @classmethod
    def new(
        cls,
        policy: PolicyVersion,
        seed: int | None,
        ttl_seconds: float,
        max_recorded_transitions: int | None,
    ) -> Session:
        """A fresh session on ``policy``'s meta-trained parameters, with a random id; it records
        (up to ``max_recorded_transitions``) unless that is None."""
        seed = secrets.randbits(63) if seed is None else seed
        return cls(
            id=secrets.token_hex(SESSION_ID_BYTES),
            policy=policy,
            param_set=policy.param_set,
            rng=np.random.Generator(np.random.PCG64(seed)),
            recording=None
            if max_recorded_transitions is None
            else Recording(max_recorded_transitions),
            ttl_seconds=ttl_seconds,
        )

    @property
    def expires_at(self) -> float:
        return time.time() + self.ttl_seconds - (time.monotonic() - self.last_used)

    @property
    def params(self) -> np.ndarray:
        """The current parameters as one flat float32 buffer."""
        return self.param_set.flat

    @property
    def adapted(self) -> bool:
        return self.param_set is not self.policy.param_set

    def snapshot(self) -> dict[str, Any]:
        """The session's state as plain values (bytes, numbers, lists, dicts)."""
        with self.lock:
            return {
                "id": self.id,
                "policy": self.policy.name,
                "version": self.policy.version,
                "params": self.params.tobytes() if self.adapted else None,
                "rng": self.rng.bit_generator.state,
                "recording": self.recording.to_dict() if self.recording else None,
                "ttl_seconds": self.ttl_seconds,
                "created_at": self.created_at,
                "idle_seconds": time.monotonic() - self.last_used,
                "adaptation_steps": self.adaptation_steps,
                "adaptations": self.adaptations,
                "generation": self.generation,
                "owner": self.owner,
            }

    @classmethod
    def restore(cls, state: dict[str, Any], policy: PolicyVersion) -> Session:
        """A session from :meth:`snapshot` on ``policy`` (already acquired by the caller)."""
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state["rng"]
        param_set = (
            policy.policy.params(np.frombuffer(state["params"], dtype=np.float32).copy())
            if state["params"] is not None
            else policy.param_set
        )
        rec = state["recording"]
        return cls(
            id=state["id"],
            policy=policy,
            param_set=param_set,
            rng=rng,
            recording=Recording.from_dict(rec) if rec is not None else None,
            ttl_seconds=float(state["ttl_seconds"]),
            created_at=float(state["created_at"]),
            last_used=time.monotonic() - float(state["idle_seconds"]),
            adaptation_steps=int(state["adaptation_steps"]),
            adaptations=int(state["adaptations"]),
            generation=int(state["generation"]),
            owner=state.get("owner"),
        )


def log_id(session_id: str) -> str:
    """What logs say instead of a session id (the id is the session's only credential when
    clients are not named): the first 12 hex digits of its SHA-256, the same in every log line
    and replica, so one session's lines can still be followed."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:12]


@dataclass
class Adaptation:
    """A computed adaptation, to be applied to its session by
    :meth:`SessionStore.commit_adaptation`."""

    param_set: ParamSet
    steps: int
    used: list[RecordedEpisode]
    """The recorded episodes it was computed on (the recording forgets them once applied)."""


def apply_adaptation(session: Session, adaptation: Adaptation) -> None:
    """Swaps in the adapted parameters and counts the adaptation; the caller holds the
    session's lock."""
    session.param_set = adaptation.param_set  # the swap: one reference assignment
    session.adaptation_steps += adaptation.steps
    session.adaptations += 1
    if adaptation.used and session.recording is not None:
        session.recording.consume(adaptation.used)


RemoveListener = Callable[[Session, str], None]


class SessionStore(abc.ABC):
    """Where sessions live: the interface the service needs, with a maximum count and an idle
    time-to-live. ``on_remove`` listeners hear of every session deleted or expired (the server
    releases its policy version and updates metrics there)."""

    def __init__(self, max_sessions: int, ttl_seconds: float) -> None:
        self.max_sessions = max_sessions
        self.ttl_seconds = ttl_seconds
        self.on_remove: list[RemoveListener] = []

    @abc.abstractmethod
    def create(self, policy: PolicyVersion, seed: int | None, record: bool) -> Session:
        """A new session on ``policy`` (acquired by the caller); ``ResourceExhausted`` when the
        store is full."""

    @abc.abstractmethod
    def get(self, session_id: str) -> Session:
        """The live session ``session_id`` (its idle clock restarts); ``NotFound`` otherwise."""

    @abc.abstractmethod
    def save(self, session: Session) -> None:
        """Persists ``session`` after a change (parameters, counters, recording)."""

    def save_recording(self, session: Session) -> None:
        """Persists what ``session``'s recording got since the last call (its
        :attr:`Recording.journal`): a shared store appends it."""
        if session.recording is not None:
            session.recording.journal.clear()

    def claim_adaptation(self, session: Session) -> Any:
        """Marks ``session`` as adapting for every replica (``Aborted`` if another Adapt holds
        it, or the session changed since ``session`` was read); returns the claim for
        :meth:`commit_adaptation` and :meth:`release_adaptation`. This process's own
        ``Session.adapting`` flag is the caller's."""
        return None

    def commit_adaptation(
        self, session: Session, claim: Any, adaptation: Adaptation, check: Callable[[], None]
    ) -> None:
        """Applies ``adaptation`` to ``session`` and persists it, all or nothing: ``check``
        (called with the session's lock held) raises to refuse it (a reset meanwhile, a
        cancelled call); a shared store raises ``Aborted`` when the session changed elsewhere
        since the claim, and an error means nothing was applied."""
        with session.lock:
            check()
            apply_adaptation(session, adaptation)

    def release_adaptation(self, session: Session, claim: Any) -> None:
        """Ends ``claim`` (after its commit, or instead of it)."""
        return None

    @abc.abstractmethod
    def delete(self, session_id: str) -> None:
        """Ends ``session_id``; ``NotFound`` if there is no such session."""

    @abc.abstractmethod
    def expire(self) -> int:
        """Ends the sessions idle for longer than the TTL; returns how many."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    def _removed(self, session: Session, reason: str) -> None:
        for listener in self.on_remove:
            try:
                listener(session, reason)
            except Exception:
                log.exception("session-removal listener failed")

    def unknown(self, session_id: str) -> NotFound:
        """The answer for an id that names no live session, whichever the reason (never
        created, deleted, expired, or another client's: a prober learns nothing)."""
        return NotFound(
            f"no session {shorten(session_id)}: it was deleted, expired after "
            f"{self.ttl_seconds:.0f} s idle, or never existed"
        )

    @staticmethod
    def check_id(session_id: str) -> None:
        if not session_id:
            raise InvalidArgument("session_id is required: use the id CreateSession returned")


class InMemorySessionStore(SessionStore):
    """Sessions in this process's memory, least recently used first."""

    def __init__(
        self,
        max_sessions: int = 10_000,
        ttl_seconds: float = 3600.0,
        max_recorded_transitions: int = 10_000,
    ) -> None:
        super().__init__(max_sessions, ttl_seconds)
        self.max_recorded_transitions = max_recorded_transitions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def _expire_locked(self, now: float) -> list[Session]:
        expired = []
        while self._sessions:
            oldest = next(iter(self._sessions.values()))  # least recently used first
            if now - oldest.last_used <= self.ttl_seconds:
                break
            if oldest.adapting:  # its own Adapt is using it: that counts as use
                oldest.last_used = now
                self._sessions.move_to_end(oldest.id)
                continue
            self._sessions.popitem(last=False)
            expired.append(oldest)
        return expired

    def _notify_expired(self, expired: list[Session]) -> None:
        for s in expired:
            log.info("session %s expired after %.0f s idle", log_id(s.id), self.ttl_seconds)
            self._removed(s, "expired")

    def create(self, policy: PolicyVersion, seed: int | None, record: bool) -> Session:
        session = Session.new(
            policy, seed, self.ttl_seconds, self.max_recorded_transitions if record else None
        )
        with self._lock:
            expired = self._expire_locked(time.monotonic())
            full = len(self._sessions) >= self.max_sessions
            if not full:
                self._sessions[session.id] = session
        self._notify_expired(expired)
        if full:
            raise ResourceExhausted(
                f"the server holds its maximum of {self.max_sessions} sessions: delete "
                "sessions you no longer use, or retry after idle ones expire"
            )
        return session

    def add(self, session: Session) -> None:
        """Puts a restored session back (its policy version acquired by the caller)."""
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise ResourceExhausted(f"the server holds its maximum of {self.max_sessions}")
            self._sessions[session.id] = session

    def get(self, session_id: str) -> Session:
        self.check_id(session_id)
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and (
                now - session.last_used <= self.ttl_seconds or session.adapting
            ):
                session.last_used = now
                self._sessions.move_to_end(session_id)
                return session
            expired = self._expire_locked(now)
        self._notify_expired(expired)
        raise self.unknown(session_id)

    def save(self, session: Session) -> None:
        pass  # the store holds the object itself

    def delete(self, session_id: str) -> None:
        self.check_id(session_id)
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            raise NotFound(f"no session {shorten(session_id)}")
        self._removed(session, "deleted")

    def expire(self) -> int:
        with self._lock:
            expired = self._expire_locked(time.monotonic())
        self._notify_expired(expired)
        return len(expired)

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def release_versions(registry: PolicyRegistry) -> RemoveListener:
    """An ``on_remove`` listener that gives a removed session's policy version back."""

    def listener(session: Session, reason: str) -> None:
        registry.release(session.policy)

    return listener
