"""Durable sessions in Redis: nothing lost when a server dies, any replica serves any session,
and no acknowledged change lost between replicas (docs/guarantees.md says what is promised).

Layout (``prefix`` defaults to ``metarl:``):

* ``{prefix}session:{id}``: a hash with ``meta`` (JSON: policy, version, counters, sampling
  generator state, owner), ``params`` (the adapted parameters as raw little-endian float32 bytes;
  empty while the session still uses the meta-trained ones), ``rec`` (JSON: the recording as of
  ``seq0``), ``seq0`` (how many recording events ``rec`` includes), ``rev`` (the revision, bumped
  by every change other than recording: Adapt, Reset, owner) and, while an Adapt runs somewhere,
  ``adapt`` / ``adapt_until`` (its claim and when that lapses unless renewed).
* ``{prefix}rec:{id}``: a list of recording events after ``seq0`` (one small JSON array per
  reward or served action), appended to (RPUSH) by every recorded step: O(1) whatever the
  recording's size. A replica folds them into ``rec`` now and then (compaction).
* ``{prefix}sessions``: a sorted set of session ids scored by their expiry time (Redis's clock),
  to count live sessions against the maximum across all replicas.
* ``{prefix}session_versions`` (id -> version) and ``{prefix}versions`` (version -> number of
  stored sessions on it): every replica keeps loaded each version a stored session uses.

Every change is one Lua script, so it is atomic in Redis and checks the session's state there:
a full write (Adapt, Reset) names the revision it was computed from and is refused (ABORTED) if
another replica changed the session since; an Adapt first claims the session (one at a time per
session across replicas; the claim is renewed every second while it runs, and lapses 30 s after
its replica died); recorded steps are appended, so they survive a concurrent Adapt elsewhere
(its commit keeps the events it did not see). An error answer means the change did not happen:
nothing is applied to this replica's copy before Redis has it.

Each replica keeps the sessions it has served in a local cache and checks the revision and the
recording's length with one round trip per call: a session changed on another replica is
reloaded (or only its new recording events read) before it is used. Sampling does not write, so
after a crash a session's sampled actions continue from its last saved generator state.

When Redis cannot be reached, calls fail with UNAVAILABLE and a message that says so; the client
library reconnects by itself, so serving resumes as soon as Redis is back. Stored data that
cannot be read back answers DATA_LOSS (logged once per session and revision). Not for Redis
Cluster: the scripts reach a session's keys by name.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from redis.exceptions import RedisError

from metarl_server.errors import (
    Aborted,
    DataLoss,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from metarl_server.registry import PolicyRegistry, shorten
from metarl_server.sessions import (
    Adaptation,
    Recording,
    Session,
    SessionStore,
    apply_adaptation,
    log_id,
)

log = logging.getLogger(__name__)

# Helpers every script starts with. Times are Redis's (TIME), so replicas' clocks do not matter.
_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(prefix, index, sv, versions, id)
  redis.call('ZREM', index, id)
  local v = redis.call('HGET', sv, id)
  if v then
    redis.call('HDEL', sv, id)
    if redis.call('HINCRBY', versions, v, -1) <= 0 then redis.call('HDEL', versions, v) end
  end
  redis.call('DEL', prefix .. 'session:' .. id, prefix .. 'rec:' .. id)
end
local function sweep(prefix, index, sv, versions, now)
  local ids = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(ids) do forget(prefix, index, sv, versions, id) end
  return #ids
end
local function keep(skey, rkey, index, id, now, ttl, adapt_until)
  local t = tonumber(ttl)
  local u = tonumber(adapt_until or '')
  if u and u > now then t = math.max(t, u - now + t) end  -- no expiry during an Adapt
  redis.call('PEXPIRE', skey, t)
  redis.call('PEXPIRE', rkey, t)
  redis.call('ZADD', index, now + t, id)
end
"""

# KEYS: session, index, session_versions, versions. ARGV: id, ttl_ms, max, meta, rec, vkey, prefix
_CREATE = (
    _LIB
    + """
local now = now_ms()
sweep(ARGV[7], KEYS[2], KEYS[3], KEYS[4], now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], 'meta', ARGV[4], 'params', '', 'rec', ARGV[5], 'seq0', 0, 'rev', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[6])
redis.call('HINCRBY', KEYS[4], ARGV[6], 1)
return 1
"""
)

# KEYS: session, rec, index, session_versions, versions. ARGV: id, ttl_ms, prefix.
# {rev, seq0, number of events in rec}, or false if gone.
_TOUCH = (
    _LIB
    + """
local h = redis.call('HMGET', KEYS[1], 'rev', 'seq0', 'adapt_until')
if not h[1] then forget(ARGV[3], KEYS[3], KEYS[4], KEYS[5], ARGV[1]) return false end
keep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now_ms(), ARGV[2], h[3])
return {h[1], h[2] or '0', redis.call('LLEN', KEYS[2])}
"""
)

# KEYS: session, rec, index. ARGV: id, ttl_ms, events... -> {rev, seq0, length of rec after the
# append, 1 if an Adapt holds a claim}, or false if gone.
_APPEND = (
    _LIB
    + """
local h = redis.call('HMGET', KEYS[1], 'rev', 'seq0', 'adapt_until')
if not h[1] then return false end
local n = redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
local now = now_ms()
keep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now, ARGV[2], h[3])
local leased = 0
if h[3] and tonumber(h[3]) > now then leased = 1 end
return {h[1], h[2] or '0', n, leased}
"""
)

# KEYS: session, rec. ARGV: rev, first event (absolute). {seq0, events...} if the session is still
# at rev and rec still holds that event onwards; else false.
_TAIL = """
local h = redis.call('HMGET', KEYS[1], 'rev', 'seq0')
if h[1] ~= ARGV[1] then return false end
local seq0 = tonumber(h[2] or '0')
local from = tonumber(ARGV[2])
if from < seq0 then return false end
return {seq0, redis.call('LRANGE', KEYS[2], from - seq0, -1)}
"""

# A full write. KEYS: session, rec, index. ARGV: id, ttl_ms, mode, expected rev, meta, params,
# rec, upto (absolute events included in rec), claim token.
# mode 'save' (Reset, owner: bumps rev), 'commit' (an Adapt: needs its claim, ends it, bumps rev),
# 'compact' (folds events into rec: same content, no bump; not while an Adapt holds a claim).
# Events after upto stay in the list (another replica recorded them meanwhile).
# -> {new rev}, or {-1} gone, {-2} changed since expected rev, {-3} claimed, {-4} claim lost.
_WRITE = (
    _LIB
    + """
local h = redis.call('HMGET', KEYS[1], 'rev', 'seq0', 'adapt', 'adapt_until')
if not h[1] then return {-1} end
if h[1] ~= ARGV[4] then return {-2} end
local seq0 = tonumber(h[2] or '0')
local upto = tonumber(ARGV[8])
if upto < seq0 then return {-2} end
local now = now_ms()
local claimed = h[3] and tonumber(h[4] or '0') > now
local mode = ARGV[3]
if mode == 'commit' and h[3] ~= ARGV[9] then return {-4} end
if mode == 'compact' and claimed then return {-3} end
if upto > seq0 then redis.call('LTRIM', KEYS[2], upto - seq0, -1) end
redis.call('HSET', KEYS[1], 'meta', ARGV[5], 'params', ARGV[6], 'rec', ARGV[7], 'seq0', upto)
local rev = tonumber(h[1])
if mode ~= 'compact' then rev = redis.call('HINCRBY', KEYS[1], 'rev', 1) end
local adapt_until = h[4]
if mode == 'commit' then
  redis.call('HDEL', KEYS[1], 'adapt', 'adapt_until')
  adapt_until = nil
end
keep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now, ARGV[2], adapt_until)
return {rev}
"""
)

# KEYS: session, rec, index. ARGV: id, ttl_ms, expected rev, token, lease_ms.
# 1 claimed, -1 gone, -2 changed since expected rev, -3 another claim holds it.
_CLAIM = (
    _LIB
    + """
local h = redis.call('HMGET', KEYS[1], 'rev', 'adapt', 'adapt_until')
if not h[1] then return -1 end
local now = now_ms()
if h[2] and tonumber(h[3] or '0') > now then return -3 end
if h[1] ~= ARGV[3] then return -2 end
local u = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'adapt', ARGV[4], 'adapt_until', u)
keep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now, ARGV[2], u)
return 1
"""
)

# KEYS: session, rec, index. ARGV: id, ttl_ms, token, lease_ms. 1 renewed, 0 not ours any more.
_RENEW = (
    _LIB
    + """
if redis.call('HGET', KEYS[1], 'adapt') ~= ARGV[3] then return 0 end
local now = now_ms()
local u = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'adapt_until', u)
keep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now, ARGV[2], u)
return 1
"""
)

# KEYS: session. ARGV: token. Ends the claim if it is still this one.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'adapt') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'adapt', 'adapt_until')
  return 1
end
return 0
"""

# KEYS: session, index, session_versions, versions. ARGV: id, prefix. 1 if it existed.
_DELETE = (
    _LIB
    + """
local existed = redis.call('EXISTS', KEYS[1])
forget(ARGV[2], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
return existed
"""
)

# KEYS: index, session_versions, versions. ARGV: prefix. Forgets expired sessions.
_SWEEP = (
    _LIB
    + """
return sweep(ARGV[1], KEYS[1], KEYS[2], KEYS[3], now_ms())
"""
)


@dataclass(eq=False)
class _Entry:
    """A cached session and how far it matches Redis."""

    session: Session
    rev: int
    seen: int
    """Recording events (counted from the session's creation) its recording includes; -1 when
    unknown (the next use reloads it)."""


@dataclass(frozen=True)
class _Claim:
    session_id: str
    token: str


def _vkey(name: str, version: str) -> str:
    return json.dumps([name, version])


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
        adapt_lease_seconds: float = 30.0,
    ) -> None:
        super().__init__(max_sessions, ttl_seconds)
        self.url = url
        self.registry = registry
        self.max_recorded_transitions = max_recorded_transitions
        self.prefix = prefix
        self.adapt_lease_seconds = adapt_lease_seconds
        self.compact_after = 2 * max_recorded_transitions + 1000
        """Recording events in a session's list past which a replica folds them into ``rec``."""
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        reg = self._redis.register_script
        self._create, self._touch, self._append = reg(_CREATE), reg(_TOUCH), reg(_APPEND)
        self._tail, self._write, self._claim = reg(_TAIL), reg(_WRITE), reg(_CLAIM)
        self._renew, self._release, self._delete = reg(_RENEW), reg(_RELEASE), reg(_DELETE)
        self._sweep = reg(_SWEEP)
        self._lock = threading.Lock()
        self._cache: dict[str, _Entry] = {}
        self._locks: dict[str, threading.Lock] = {}
        """Per session: orders this replica's appends, reloads and writes of it."""
        self._claims: dict[str, str] = {}  # id -> token of the Adapts this replica runs
        self._reported: set[tuple[str, bytes]] = set()  # corrupt sessions already logged
        registry.usage_sources.append(self.versions_in_use)
        self.hooks: dict[str, Any] = {}
        """Test hooks: callables run at named points ('before_commit')."""

    # -- keys and errors -----------------------------------------------------------------------

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def _rec_key(self, session_id: str) -> str:
        return f"{self.prefix}rec:{session_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}sessions"

    @property
    def _version_keys(self) -> list[str]:
        return [f"{self.prefix}session_versions", f"{self.prefix}versions"]

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

    def _lease_ms(self) -> int:
        return max(1, int(self.adapt_lease_seconds * 1000))

    def _lock_for(self, session_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(session_id, threading.Lock())

    def _corrupt(self, session_id: str, what: Any, exc: Exception) -> DataLoss:
        """DATA_LOSS for a session whose stored data cannot be read; logged once."""
        sid = log_id(session_id)
        mark = (session_id, repr(what).encode()[:64])
        with self._lock:
            first = mark not in self._reported
            if first and len(self._reported) < 10_000:
                self._reported.add(mark)
        if first:
            log.error(
                "session %s: its data in Redis is corrupt (%s: %s); answering DATA_LOSS",
                sid,
                type(exc).__name__,
                exc,
            )
        return DataLoss(
            f"session {sid}: its data in the session store is corrupt and cannot be read "
            f"({type(exc).__name__}); create a new session (an operator can remove the Redis "
            f"key {self.prefix}session:<its id>)"
        )

    def ping(self) -> None:
        """Raises :class:`Unavailable` unless Redis answers."""
        try:
            self._redis.ping()
        except RedisError as exc:
            raise self._unavailable(exc) from None

    # -- (de)serialization ---------------------------------------------------------------------

    @staticmethod
    def _meta(s: Session, adaptation: Adaptation | None = None) -> str:
        """The session's meta JSON (with ``adaptation`` applied); the caller holds its lock."""
        return json.dumps(
            {
                "id": s.id,
                "policy": s.policy.name,
                "version": s.policy.version,
                "rng": s.rng.bit_generator.state,
                "ttl_seconds": s.ttl_seconds,
                "created_at": s.created_at,
                "adaptation_steps": s.adaptation_steps + (adaptation.steps if adaptation else 0),
                "adaptations": s.adaptations + (1 if adaptation else 0),
                "generation": s.generation,
                "owner": s.owner,
            }
        )

    @staticmethod
    def _events(raw: list[Any]) -> list[Any]:
        return [json.loads(e) for e in raw]

    def _load(self, session_id: str, fields: dict[Any, Any], events: list[Any]) -> Session:
        try:
            meta = json.loads(fields[b"meta"])
            name, version = meta["policy"], meta["version"]
            rec = json.loads(fields[b"rec"]) if b"rec" in fields else meta.get("recording")
            evs = self._events(events)
        except (KeyError, ValueError, TypeError) as exc:
            raise self._corrupt(session_id, fields.get(b"rev"), exc) from None
        try:
            policy = self.registry.acquire(name, version)
        except NotFound:
            raise FailedPrecondition(
                f"session {log_id(session_id)} uses policy {shorten(str(name))} version "
                f"{shorten(str(version))}, which this server has not loaded: load it (model "
                "directory) or create a new session"
            ) from None
        state = {**meta, "params": fields.get(b"params") or None, "recording": rec}
        state["idle_seconds"] = 0.0
        try:
            session = Session.restore(state, policy)
            n = policy.param_set.flat.size
            if session.param_set.flat.size != n:
                raise ValueError(f"{session.param_set.flat.size} parameters, the policy has {n}")
            if not np.isfinite(session.param_set.flat).all():
                raise ValueError("its parameters hold NaN or infinity")
            if session.recording is not None:
                session.recording.replay(evs)
        except Exception as exc:
            self.registry.release(policy)
            raise self._corrupt(session_id, fields.get(b"rev"), exc) from None
        return session

    # -- SessionStore --------------------------------------------------------------------------

    def create(self, policy: Any, seed: int | None, record: bool) -> Session:
        session = Session.new(
            policy, seed, self.ttl_seconds, self.max_recorded_transitions if record else None
        )
        rec = session.recording.to_dict() if session.recording is not None else None
        try:
            ok = self._create(
                keys=[self._key(session.id), self._index, *self._version_keys],
                args=[
                    session.id,
                    self._ttl_ms(),
                    self.max_sessions,
                    self._meta(session),
                    json.dumps(rec),
                    _vkey(policy.name, policy.version),
                    self.prefix,
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
            self._cache[session.id] = _Entry(session, 1, 0)
        return session

    def get(self, session_id: str) -> Session:
        self.check_id(session_id)
        try:
            found = self._touch(
                keys=[
                    self._key(session_id),
                    self._rec_key(session_id),
                    self._index,
                    *self._version_keys,
                ],
                args=[session_id, self._ttl_ms(), self.prefix],
            )
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if found is None:
            self._drop(session_id, "expired")
            raise self.unknown(session_id)
        try:
            rev, seq0, length = int(found[0]), int(found[1]), int(found[2])
        except (ValueError, TypeError) as exc:
            raise self._corrupt(session_id, found, exc) from None
        entry = self._cache.get(session_id)
        if entry is not None and entry.rev == rev and entry.seen >= seq0 + length:
            entry.session.last_used = time.monotonic()
            return entry.session
        with self._lock_for(session_id):
            entry = self._cache.get(session_id)
            if (
                entry is not None
                and entry.rev == rev
                and entry.seen >= 0
                and (entry.seen >= seq0 + length or self._catch_up(entry))
            ):
                entry.session.last_used = time.monotonic()
                return entry.session
            return self._reload(session_id)

    def _catch_up(self, entry: _Entry) -> bool:
        """Applies the recording events other replicas appended; False if a reload is needed.
        The caller holds the session's store lock."""
        s = entry.session
        try:
            found = self._tail(
                keys=[self._key(s.id), self._rec_key(s.id)], args=[entry.rev, entry.seen]
            )
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if found is None:
            return False
        try:
            events = self._events(found[1])
            with s.lock:
                if s.recording is not None:
                    if s.recording.journal:  # steps of ours not yet appended would come after
                        return False  # these in Redis: read it whole instead
                    s.recording.replay(events)
        except (ValueError, TypeError, KeyError) as exc:
            self._drop(s.id, "corrupt")
            raise self._corrupt(s.id, entry.rev, exc) from None
        entry.seen += len(events)
        return True

    def _reload(self, session_id: str) -> Session:
        """Reads the session whole (the caller holds its store lock) and caches it."""
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hgetall(self._key(session_id))
            pipe.lrange(self._rec_key(session_id), 0, -1)
            fields, events = pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if not fields:
            self._drop(session_id, "expired")
            raise NotFound(f"no session {shorten(session_id)}: it expired or was deleted")
        try:
            rev, seq0 = int(fields[b"rev"]), int(fields.get(b"seq0", 0))
        except (KeyError, ValueError) as exc:
            raise self._corrupt(session_id, fields.get(b"rev"), exc) from None
        session = self._load(session_id, fields, events)
        with self._lock:
            old = self._cache.get(session_id)
            self._cache[session_id] = _Entry(session, rev, seq0 + len(events))
        if old is not None:
            self._removed(old.session, "reloaded")
        return session

    def save_recording(self, session: Session) -> None:
        """Appends what the session recorded since the last call (one RPUSH, whatever the
        recording's size); folds the list into the stored recording now and then."""
        if session.recording is None:
            return
        sid = session.id
        with self._lock_for(sid):
            with session.lock:
                rec = session.recording
                if rec is None or not rec.journal:
                    return
                events, rec.journal = rec.journal, []
            payload = [json.dumps(Recording.event_json(e)) for e in events]
            try:
                found = self._append(
                    keys=[self._key(sid), self._rec_key(sid), self._index],
                    args=[sid, self._ttl_ms(), *payload],
                )
            except RedisError as exc:
                self._drop(sid, "unsaved")  # this replica's copy has steps Redis has not
                raise self._unavailable(exc) from None
            if found is None:
                self._drop(sid, "expired")
                raise NotFound(f"session {shorten(sid)} was deleted or expired meanwhile")
            rev, seq0, length, claimed = (int(x) for x in found)
            entry = self._cache.get(sid)
            if entry is None or entry.session is not session:
                return  # (an older copy: the cached one reads these events on its next use)
            if entry.rev == rev and entry.seen == seq0 + length - len(payload):
                entry.seen = seq0 + length
            else:  # another replica appended or changed it in between: reload on next use
                entry.seen = -1
            if length > self.compact_after and not claimed and entry.seen >= 0:
                self._compact(entry)

    def _compact(self, entry: _Entry) -> None:
        """Folds the recording events into the stored recording (the caller holds the store
        lock): the list stays short, loading stays fast."""
        s = entry.session
        with s.lock:
            if s.recording is not None and s.recording.journal:
                return  # (steps not yet appended: the stored recording must not have them)
            meta, params, rec = self._full_state(s, None)
        try:
            found = self._write(
                keys=[self._key(s.id), self._rec_key(s.id), self._index],
                args=[
                    s.id,
                    self._ttl_ms(),
                    "compact",
                    entry.rev,
                    meta,
                    params,
                    rec,
                    entry.seen,
                    "",
                ],
            )
        except RedisError as exc:
            log.warning("recording compaction skipped: %s", self._unavailable(exc))
            return
        if int(found[0]) < 0:
            entry.seen = -1  # changed elsewhere meanwhile: reload on next use

    def _full_state(self, s: Session, adaptation: Adaptation | None) -> tuple[str, bytes, str]:
        """meta, params and recording JSON of ``s`` with ``adaptation`` applied (without
        changing ``s``); the journal is emptied (its steps are in the recording written). The
        caller holds ``s.lock``."""
        rec = s.recording
        if rec is not None:
            rec.journal.clear()
            if adaptation is not None and adaptation.used:
                rec, used = copy.deepcopy((rec, adaptation.used))
                rec.consume(used)
        param_set = adaptation.param_set if adaptation is not None else s.param_set
        params = b"" if param_set is s.policy.param_set else param_set.flat.tobytes()
        rec_json = json.dumps(rec.to_dict() if rec is not None else None)
        return self._meta(s, adaptation), params, rec_json

    def _write_full(
        self,
        s: Session,
        mode: str,
        adaptation: Adaptation | None,
        token: str = "",
        check: Callable[[], None] | None = None,
    ) -> None:
        """A full, revision-checked write of ``s`` (the caller holds its store lock); ``check``
        runs with ``s.lock`` held, right before the state written is read."""
        with self._lock:
            entry = self._cache.get(s.id)
        if entry is None or entry.session is not s or entry.seen < 0:
            self._drop(s.id, "changed")
            raise Aborted(
                "the session changed meanwhile (on another replica, or was reloaded); nothing "
                "was changed: retry"
            )
        with s.lock:
            if check is not None:
                check()
            meta, params, rec = self._full_state(s, adaptation)
        try:
            hook = self.hooks.get(f"before_{mode}")
            if hook is not None:
                hook(s)
            found = self._write(
                keys=[self._key(s.id), self._rec_key(s.id), self._index],
                args=[s.id, self._ttl_ms(), mode, entry.rev, meta, params, rec, entry.seen, token],
            )
        except RedisError as exc:
            self._drop(s.id, "unsaved")
            raise self._unavailable(exc) from None
        code = int(found[0])
        if code == -1:
            self._drop(s.id, "expired")
            raise NotFound(f"session {shorten(s.id)} was deleted or expired meanwhile")
        if code < 0:
            self._drop(s.id, "changed")
            raise Aborted(
                "the session was reset or adapted on another replica meanwhile"
                + (" (or this Adapt's claim lapsed)" if code == -4 else "")
                + "; this change was not applied: read the session again and retry"
            )
        entry.rev = code

    def save(self, session: Session) -> None:
        """Writes the whole session, refused (``Aborted``) if it changed elsewhere since this
        replica read it; on any error this replica forgets its copy (the next use reads the
        stored one), so a failed change is not applied anywhere."""
        with self._lock_for(session.id):
            self._write_full(session, "save", None)

    def claim_adaptation(self, session: Session) -> Any:
        sid = session.id
        entry = self._cache.get(sid)
        if entry is None or entry.session is not session or entry.seen < 0:
            raise Aborted("the session changed meanwhile (on another replica): retry the Adapt")
        token = secrets.token_hex(8)
        try:
            code = int(
                self._claim(
                    keys=[self._key(sid), self._rec_key(sid), self._index],
                    args=[sid, self._ttl_ms(), entry.rev, token, self._lease_ms()],
                )
            )
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if code == -1:
            self._drop(sid, "expired")
            raise NotFound(f"no session {shorten(sid)}: it was deleted or expired")
        if code == -2:
            raise Aborted("the session changed meanwhile (on another replica): retry the Adapt")
        if code == -3:
            raise Aborted(
                "another Adapt on this session is still running (on this or another server): "
                "wait for its answer, then retry"
            )
        with self._lock:
            self._claims[sid] = token
        return _Claim(sid, token)

    def commit_adaptation(
        self, session: Session, claim: Any, adaptation: Adaptation, check: Callable[[], None]
    ) -> None:
        assert isinstance(claim, _Claim)
        generation: list[int] = []

        def checked() -> None:
            check()
            generation.append(session.generation)

        with self._lock_for(session.id):
            self._write_full(session, "commit", adaptation, claim.token, checked)
            with session.lock:  # Redis has it: now this replica's copy too ...
                if session.generation == generation[0]:  # (... unless a Reset came after it)
                    apply_adaptation(session, adaptation)
            with self._lock:
                self._claims.pop(session.id, None)

    def release_adaptation(self, session: Session, claim: Any) -> None:
        assert isinstance(claim, _Claim)
        with self._lock:
            mine = self._claims.pop(claim.session_id, None) == claim.token
        if not mine:
            return  # committed (the commit ended the claim)
        try:
            self._release(keys=[self._key(claim.session_id)], args=[claim.token])
        except RedisError as exc:
            log.warning(
                "could not end an Adapt's claim on session %s (it lapses in %.0f s): %s",
                log_id(claim.session_id),
                self.adapt_lease_seconds,
                exc,
            )

    def delete(self, session_id: str) -> None:
        self.check_id(session_id)
        try:
            deleted = self._delete(
                keys=[self._key(session_id), self._index, *self._version_keys],
                args=[session_id, self.prefix],
            )
        except RedisError as exc:
            raise self._unavailable(exc) from None
        self._drop(session_id, "deleted")
        if not deleted:
            raise NotFound(f"no session {shorten(session_id)}")

    def expire(self) -> int:
        """Drops expired sessions from the shared index (and their versions' counts), renews
        this replica's Adapt claims, and drops from this replica's cache the sessions it has not
        used for a TTL (they may live on, served by another replica)."""
        now = time.monotonic()
        try:
            removed = self._sweep_expired()
            with self._lock:
                claims = list(self._claims.items())
            for sid, token in claims:
                self._renew(
                    keys=[self._key(sid), self._rec_key(sid), self._index],
                    args=[sid, self._ttl_ms(), token, self._lease_ms()],
                )
        except RedisError as exc:
            log.warning("session expiry skipped: %s", self._unavailable(exc))
            return 0
        with self._lock:
            idle = [
                sid
                for sid, e in self._cache.items()
                if now - e.session.last_used > self.ttl_seconds and not e.session.adapting
            ]
        for sid in idle:
            self._drop(sid, "expired")
        return removed

    def _sweep_expired(self) -> int:
        return int(self._sweep(keys=[self._index, *self._version_keys], args=[self.prefix]))

    def versions_in_use(self) -> set[tuple[str, str]]:
        """(policy, version) of every stored session (every replica's): never unloaded."""
        self._sweep_expired()
        counts = self._redis.hgetall(self._version_keys[1])
        out = set()
        for k, n in counts.items():
            if int(n) > 0:
                name, version = json.loads(k)
                out.add((str(name), str(version)))
        return out

    def _drop(self, session_id: str, reason: str) -> None:
        with self._lock:
            cached = self._cache.pop(session_id, None)
            if reason in ("deleted", "expired"):
                self._locks.pop(session_id, None)
        if cached is not None:
            self._removed(cached.session, reason)

    def cached_sessions(self) -> list[Session]:
        with self._lock:
            return [e.session for e in self._cache.values()]

    def __len__(self) -> int:
        try:
            self._sweep_expired()
            return int(self._redis.zcard(self._index))
        except RedisError:
            with self._lock:
                return len(self._cache)

    def close(self) -> None:
        """Forgets the local cache (the sessions stay in Redis) and closes the connections."""
        if self.versions_in_use in self.registry.usage_sources:
            self.registry.usage_sources.remove(self.versions_in_use)
        with self._lock:
            cached, self._cache = list(self._cache.values()), {}
        for e in cached:
            self._removed(e.session, "closed")
        self._redis.close()
