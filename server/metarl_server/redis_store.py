"""Durable sessions in Redis: nothing lost when a server dies, any replica serves any session.

Layout (``prefix`` defaults to ``metarl:``):

* ``{prefix}session:{id}``: a hash with ``meta`` (JSON: policy, version, counters, sampling
  generator state, recording), ``params`` (the adapted parameters as raw little-endian float32
  bytes; empty while the session still uses the meta-trained ones) and ``rev``, a counter bumped
  by every save. Redis expires the key after ``ttl`` of idleness (every use refreshes it).
* ``{prefix}sessions``: a sorted set of session ids scored by their expiry time, to count live
  sessions against the maximum across all replicas.

Each replica keeps the sessions it has served in a local cache and checks the ``rev`` with one
round trip per call, so a session adapted on another replica is reloaded before it is used. A
session is written on every change (Adapt, Reset, recorded steps); sampling does not write, so
after a crash a session's sampled actions continue from its last saved generator state.

When Redis cannot be reached, calls fail with UNAVAILABLE and a message that says so; the client
library reconnects by itself, so serving resumes as soon as Redis is back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from redis.exceptions import RedisError

from metarl_server.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from metarl_server.registry import PolicyRegistry, shorten
from metarl_server.sessions import (
    Session,
    SessionStore,
)

log = logging.getLogger(__name__)

# KEYS: session key, index key. ARGV: id, now_ms, ttl_ms, max_sessions, meta.
# Drops expired ids from the index, refuses when full, else writes the new session.
_CREATE = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[1], 'meta', ARGV[5], 'params', '', 'rev', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: session key, index key. ARGV: id, now_ms, ttl_ms. Returns rev, or false if gone.
_TOUCH = """
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then redis.call('ZREM', KEYS[2], ARGV[1]) return false end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return rev
"""

# KEYS: session key, index key. ARGV: id, now_ms, ttl_ms, meta, params. New rev, or -1 if gone.
_SAVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'meta', ARGV[4], 'params', ARGV[5])
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return rev
"""


class RedisSessionStore(SessionStore):
    """Sessions persisted in Redis, shared by every server pointed at the same database."""

    def __init__(
        self,
        url: str,
        registry: PolicyRegistry,
        max_sessions: int = 10_000,
        ttl_seconds: float = 3600.0,
        max_recorded_transitions: int = 10_000,
        prefix: str = "metarl:",
        timeout: float = 2.0,
    ) -> None:
        super().__init__(max_sessions, ttl_seconds)
        self.url = url
        self.registry = registry
        self.max_recorded_transitions = max_recorded_transitions
        self.prefix = prefix
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        self._create = self._redis.register_script(_CREATE)
        self._touch = self._redis.register_script(_TOUCH)
        self._save = self._redis.register_script(_SAVE)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Session, int]] = {}  # id -> (session, rev it was loaded at)

    # -- keys and errors -----------------------------------------------------------------------

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}sessions"

    def _unavailable(self, exc: RedisError) -> Unavailable:
        return Unavailable(
            f"the session store (Redis at {self._redacted_url}) cannot be reached "
            f"({type(exc).__name__}: {exc}); retry shortly"
        )

    @property
    def _redacted_url(self) -> str:
        kw = self._redis.connection_pool.connection_kwargs
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl_seconds * 1000))

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    def ping(self) -> None:
        """Raises :class:`Unavailable` unless Redis answers."""
        try:
            self._redis.ping()
        except RedisError as exc:
            raise self._unavailable(exc) from None

    # -- (de)serialization ---------------------------------------------------------------------

    @staticmethod
    def _meta(state: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in state.items() if k not in ("params", "idle_seconds")})

    def _load(self, session_id: str, fields: dict[Any, Any]) -> Session:
        meta = json.loads(fields[b"meta"])
        params = fields.get(b"params") or None
        state = {**meta, "params": params, "idle_seconds": 0.0}
        try:
            policy = self.registry.acquire(meta["policy"], meta["version"])
        except NotFound:
            raise FailedPrecondition(
                f"session {shorten(session_id)} uses policy {meta['policy']!r} version "
                f"{meta['version']!r}, which this server has not loaded: load it (model "
                "directory) or create a new session"
            ) from None
        try:
            return Session.restore(state, policy)
        except Exception:
            self.registry.release(policy)
            raise

    # -- SessionStore --------------------------------------------------------------------------

    def create(self, policy: Any, seed: int | None, record: bool) -> Session:
        session = Session.new(
            policy, seed, self.ttl_seconds, self.max_recorded_transitions if record else None
        )
        try:
            ok = self._create(
                keys=[self._key(session.id), self._index],
                args=[
                    session.id,
                    self._now_ms(),
                    self._ttl_ms(),
                    self.max_sessions,
                    self._meta(session.snapshot()),
                ],
            )
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if ok == -1:
            raise ResourceExhausted(
                f"the servers hold their maximum of {self.max_sessions} sessions: delete "
                "sessions you no longer use, or retry after idle ones expire"
            )
        with self._lock:
            self._cache[session.id] = (session, 1)
        return session

    def get(self, session_id: str) -> Session:
        self.check_id(session_id)
        try:
            rev_raw = self._touch(
                keys=[self._key(session_id), self._index],
                args=[session_id, self._now_ms(), self._ttl_ms()],
            )
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if rev_raw is None:
            self._drop(session_id, "expired")
            raise NotFound(
                f"no session {shorten(session_id)}: it was deleted, expired after "
                f"{self.ttl_seconds:.0f} s idle, or never existed"
            )
        rev = int(rev_raw)
        with self._lock:
            cached = self._cache.get(session_id)
        if cached is not None and cached[1] == rev:
            cached[0].last_used = time.monotonic()
            return cached[0]
        try:  # new to this replica, or changed by another one
            fields = self._redis.hgetall(self._key(session_id))
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if not fields:
            self._drop(session_id, "expired")
            raise NotFound(f"no session {shorten(session_id)}: it expired or was deleted")
        session = self._load(session_id, fields)
        with self._lock:
            old = self._cache.get(session_id)
            self._cache[session_id] = (session, int(fields[b"rev"]))
        if old is not None:
            self._removed(old[0], "reloaded")
        return session

    def save(self, session: Session) -> None:
        state = session.snapshot()
        try:
            rev = self._save(
                keys=[self._key(session.id), self._index],
                args=[
                    session.id,
                    self._now_ms(),
                    self._ttl_ms(),
                    self._meta(state),
                    state["params"] or b"",
                ],
            )
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if rev == -1:
            self._drop(session.id, "expired")
            raise NotFound(f"session {shorten(session.id)} was deleted or expired meanwhile")
        with self._lock:
            if session.id in self._cache:
                self._cache[session.id] = (session, int(rev))

    def delete(self, session_id: str) -> None:
        self.check_id(session_id)
        try:
            pipe = self._redis.pipeline()
            pipe.delete(self._key(session_id))
            pipe.zrem(self._index, session_id)
            deleted, _ = pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc) from None
        self._drop(session_id, "deleted")
        if not deleted:
            raise NotFound(f"no session {shorten(session_id)}")

    def expire(self) -> int:
        """Drops ids of expired sessions from the shared index, and from this replica's cache the
        sessions it has not used for a TTL (they may live on, served by another replica)."""
        now = time.monotonic()
        try:
            removed = int(self._redis.zremrangebyscore(self._index, "-inf", self._now_ms()))
        except RedisError as exc:
            log.warning("session expiry skipped: %s", self._unavailable(exc))
            return 0
        with self._lock:
            idle = [
                sid for sid, (s, _) in self._cache.items() if now - s.last_used > self.ttl_seconds
            ]
        for sid in idle:
            self._drop(sid, "expired")
        return removed

    def _drop(self, session_id: str, reason: str) -> None:
        with self._lock:
            cached = self._cache.pop(session_id, None)
        if cached is not None:
            self._removed(cached[0], reason)

    def cached_sessions(self) -> list[Session]:
        with self._lock:
            return [s for s, _ in self._cache.values()]

    def __len__(self) -> int:
        try:
            self._redis.zremrangebyscore(self._index, "-inf", self._now_ms())
            return int(self._redis.zcard(self._index))
        except RedisError:
            with self._lock:
                return len(self._cache)

    def close(self) -> None:
        """Forgets the local cache (the sessions stay in Redis) and closes the connections."""
        with self._lock:
            cached, self._cache = list(self._cache.values()), {}
        for s, _ in cached:
            self._removed(s, "closed")
        self._redis.close()
