"""Synchronous client for ``metarl.v1.PolicyService``.

>>> from metarl_client import PolicyClient
>>> with PolicyClient("localhost:50051") as client:
...     with client.create_session("cartpole-family", seed=0) as session:
...         action = session.act(obs)              # int for a discrete action space
...         stats = session.adapt(episodes)        # theta' for this client's task
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, NamedTuple, NoReturn, TypeVar

import grpc
import numpy as np
from numpy.typing import NDArray

from metarl_client import _protocol as proto
from metarl_client import errors
from metarl_client._channel import TLS, explain_transport_failure, sync_channel, uses_tls
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.tensors import from_tensor, to_tensor
from metarl_client.types import AdaptStats, Episode, PolicyInfo, SessionInfo

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""Deadline of every call but Adapt, in seconds (and of each step of a stream)."""
DEFAULT_ADAPT_TIMEOUT = 120.0
"""Deadline of Adapt, in seconds."""


class ActResult(NamedTuple):
    """What ``act_batch`` returns."""

    actions: NDArray[Any]
    """``[batch, *action_shape]``: integers for discrete actions, floats for box actions."""
    log_probs: NDArray[np.float32]
    """``[batch]`` log-probability of each action under the session's parameters."""


def _concat(results: list[ActResult]) -> ActResult:
    if len(results) == 1:
        return results[0]
    return ActResult(
        np.concatenate([r.actions for r in results]),
        np.concatenate([r.log_probs for r in results]),
    )


def _act_result(resp: pb.ActResponse) -> ActResult:
    return ActResult(
        np.array(from_tensor(resp.actions, "actions")),
        np.array(from_tensor(resp.log_probs, "log_probs")),
    )


class PolicyClient:
    """A connection to a policy server (``metarl serve``).

    Args:
        target: ``host:port`` (any gRPC target, e.g. ``dns:///policies.internal:443``).
        token: sent as ``authorization: Bearer <token>`` on every call.
        tls: ``None``/``False`` for plaintext; ``True`` for TLS with the system's root
            certificates; a path to (or the PEM bytes of) the root certificate to trust; or
            ``grpc.ChannelCredentials``.
        timeout: deadline of every call but Adapt, in seconds; also how long each step of a
            :meth:`Session.stream` may wait for its action.
        adapt_timeout: deadline of Adapt, in seconds.
        options: extra gRPC channel options, overriding the client's defaults (for example
            ``[("grpc.service_config", ...)]`` for another retry policy).
        interceptors: gRPC client interceptors (tracing, logging), applied after the token.
        channel: use this channel instead of making one (``token``, ``tls``, ``options`` and
            ``interceptors`` are then ignored, and so is the retry policy unless the channel
            has it); the client closes it on :meth:`close`.

    ListPolicies, GetSession, DeleteSession, ResetSession and CreateSession are retried by the
    channel's retry policy on UNAVAILABLE (for example while the server restarts or is still
    loading its policies, for up to about 7.5 s). Other calls fail with
    :class:`~metarl_client.errors.Unavailable` at once. Failed calls raise the typed
    exceptions of :mod:`metarl_client.errors`, keeping the server's message.

    Thread-safe: share one client (and its connection) among threads.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: TLS = None,
        timeout: float = DEFAULT_TIMEOUT,
        adapt_timeout: float = DEFAULT_ADAPT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[Any] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        if timeout <= 0 or adapt_timeout <= 0:
            raise ValueError("timeout and adapt_timeout must be positive (seconds)")
        self.target = target
        self.timeout = timeout
        self.adapt_timeout = adapt_timeout
        self._channel = channel or sync_channel(target, tls, token, options, interceptors)
        self._tls = uses_tls(tls)
        self._probe = channel is None  # on a failure, until a probe was conclusive
        self._stub = pb_grpc.PolicyServiceStub(self._channel)
        self._policies: dict[str, PolicyInfo] | None = None
        self._policies_lock = threading.Lock()

    def _call(
        self,
        method: Callable[..., T],
        request: Any,
        *,
        timeout: float | None = None,
        not_found: type[errors.NotFound] = errors.NotFound,
    ) -> T:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            error = errors.from_rpc_error(exc, not_found)
        if self._probe:  # does the server speak TLS where the client does not, or not?
            error, conclusive = explain_transport_failure(error, self.target, self._tls)
            self._probe = not conclusive
        raise error

    def list_policies(self, *, timeout: float | None = None) -> list[PolicyInfo]:
        """The policies the server has loaded: versions, spaces, inner-loop settings, limits.

        Always asks the server (and refreshes the client's cache of spaces)."""
        resp = self._call(self._stub.ListPolicies, pb.ListPoliciesRequest(), timeout=timeout)
        policies = [PolicyInfo.from_proto(p) for p in resp.policies]
        with self._policies_lock:
            self._policies = {p.name: p for p in policies}
        return policies

    def policy(self, name: str) -> PolicyInfo:
        """The server's description of policy ``name``, cached after the first ListPolicies.

        Raises :class:`~metarl_client.errors.PolicyNotFound` if the server has no such policy.
        """
        with self._policies_lock:
            cached = self._policies
        if cached is None or name not in cached:
            self.list_policies()
            with self._policies_lock:
                cached = self._policies or {}
        if name not in cached:
            raise errors.PolicyNotFound(
                f"the server has no policy {name!r}; it has {sorted(cached)}"
            )
        return cached[name]

    def _policy_or_none(self, name: str) -> PolicyInfo | None:
        try:
            return self.policy(name)
        except errors.PolicyNotFound:  # a server that lists it differently: it checks
            return None

    def create_session(
        self,
        policy: str,
        version: str | None = None,
        seed: int | None = None,
        record: bool = False,
        *,
        timeout: float | None = None,
    ) -> Session:
        """Starts a session on ``policy`` (its newest version unless ``version`` is given),
        holding the meta-trained parameters.

        ``seed`` makes sampled actions repeatable. ``record=True`` makes the session record
        the actions it serves to single observations and the rewards reported with them
        (:meth:`Session.stream`, ``act(..., reward=...)``, :meth:`Session.report`), so
        :meth:`Session.adapt` with no episodes adapts on what was recorded.

        Use the session as a context manager to delete it on exit.
        """
        req = proto.create_request(policy, version, seed, record)
        resp = self._call(
            self._stub.CreateSession, req, timeout=timeout, not_found=errors.PolicyNotFound
        )
        return Session(self, resp.session, self._policy_or_none(resp.session.policy))

    def get_session(self, session_id: str, *, timeout: float | None = None) -> Session:
        """Reattaches to an existing session, for example after the client process restarted.

        Raises :class:`~metarl_client.errors.SessionNotFound` if it was deleted or expired.
        """
        resp = self._call(
            self._stub.GetSession,
            pb.GetSessionRequest(session_id=session_id),
            timeout=timeout,
            not_found=errors.SessionNotFound,
        )
        return Session(self, resp.session, self._policy_or_none(resp.session.policy))

    def close(self) -> None:
        """Closes the connection. Sessions stay on the server until deleted or expired."""
        self._channel.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PolicyClient({self.target!r})"


class Session(proto.SessionFields):
    """A session on the server: a copy of a policy version's parameters, adapted to this
    client's task. Made by :meth:`PolicyClient.create_session` or
    :meth:`PolicyClient.get_session`.

    Use it as a context manager to delete it on exit. Methods may be called from several
    threads.
    """

    def __init__(
        self, client: PolicyClient, session: pb.Session, policy_info: PolicyInfo | None
    ) -> None:
        self._client = client
        self._stub = client._stub
        super().__init__(session, policy_info)

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        return self._client._call(
            method, request, timeout=timeout, not_found=errors.SessionNotFound
        )

    def info(self, *, timeout: float | None = None) -> SessionInfo:
        """The session's state on the server (adaptations, recording, expiry)."""
        resp = self._call(self._stub.GetSession, pb.GetSessionRequest(session_id=self.id), timeout)
        return SessionInfo.from_proto(resp.session)

    def act(
        self,
        obs: Any,
        deterministic: bool = False,
        *,
        reward: float | None = None,
        terminated: bool = False,
        truncated: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """The action for one observation (shape ``observation_space.shape``): an ``int`` for
        a discrete action space, else an array of ``action_space.shape``.

        ``deterministic=True`` takes the most likely action instead of sampling. ``reward``,
        ``terminated`` and ``truncated`` report the outcome of this session's previous
        action, which a recording session records.
        """
        arr = proto.observations(obs, self.policy_info, batch=False)
        req = proto.act_request(
            self.id, arr, deterministic, proto.feedback(reward, terminated, truncated)
        )
        resp = self._call(self._stub.Act, req, timeout)
        return proto.action(resp.actions, self.policy_info)

    def act_batch(
        self, obs_batch: Any, deterministic: bool = False, *, timeout: float | None = None
    ) -> ActResult:
        """Actions and their log-probabilities for a batch ``[batch, *observation_shape]``
        (for example a vector env's observations). Batches larger than the server's
        ``max_batch_size`` are sent in several calls."""
        arr = proto.observations(obs_batch, self.policy_info, batch=True, name="observations")
        results = []
        for part in proto.batch_chunks(len(arr), self.policy_info):
            req = proto.act_request(self.id, arr[part], deterministic)
            results.append(_act_result(self._call(self._stub.Act, req, timeout)))
        return _concat(results)

    def stream(self, deterministic: bool = False, *, timeout: float | None = None) -> ActionStream:
        """A control loop over the ``StreamAct`` bidi stream: one observation in, one action
        out, with the previous step's reward on the next observation (which a recording
        session records). Lower latency than :meth:`act`: one HTTP/2 stream for the loop.

        ``timeout`` bounds the whole stream (default: none; each step still waits at most the
        client's ``timeout`` for its action). Close it, or use it as a context manager.
        """
        return ActionStream(self, deterministic, timeout)

    def report(
        self,
        reward: float,
        terminated: bool = False,
        truncated: bool = False,
        *,
        timeout: float | None = None,
        **unexpected: NoReturn,
    ) -> SessionInfo:
        """Reports the outcome of the session's last action without asking for another, for
        example the final reward of an episode. Only recording sessions take it
        (:class:`~metarl_client.errors.FailedPrecondition` otherwise)."""
        proto.refuse_keywords(
            "Session.report",
            "(reward, terminated=False, truncated=False, *, timeout=None)",
            unexpected,
        )
        fb = proto.feedback(reward, terminated, truncated)
        req = pb.ReportFeedbackRequest(session_id=self.id, feedback=fb)
        resp = self._call(self._stub.ReportFeedback, req, timeout)
        return SessionInfo.from_proto(resp.session)

    def adapt(
        self,
        episodes: Iterable[Episode] | None = None,
        steps: int | None = None,
        *,
        timeout: float | None = None,
    ) -> AdaptStats:
        """Adapts the session's parameters to its task and returns what the inner loop did.

        ``episodes`` are :class:`~metarl_client.types.Episode` collected on the task (see
        :func:`metarl_client.helpers.rollout`); with none, the session adapts on what it
        recorded (and clears the recording). ``steps``: inner steps, the policy's default
        when None. From then on, :meth:`act` serves the adapted parameters. Adapting again
        starts from the current (already adapted) parameters; :meth:`reset` goes back.
        """
        req = proto.adapt_request(self.id, episodes, steps, self.policy_info)
        resp = self._call(self._stub.Adapt, req, timeout or self._client.adapt_timeout)
        return AdaptStats.from_proto(resp.stats)

    def reset(self, *, timeout: float | None = None) -> SessionInfo:
        """Goes back to the meta-trained parameters and clears the recording."""
        resp = self._call(
            self._stub.ResetSession, pb.ResetSessionRequest(session_id=self.id), timeout
        )
        return SessionInfo.from_proto(resp.session)

    def close(self, *, timeout: float | None = None) -> None:
        """Deletes the session on the server (a session already gone is not an error)."""
        with contextlib.suppress(errors.SessionNotFound):
            self._call(
                self._stub.DeleteSession, pb.DeleteSessionRequest(session_id=self.id), timeout
            )

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # do not hide the exception that is leaving the block
            self.close()
        except errors.MetarlError as close_error:
            log.warning("could not delete session %s: %s", self.id, close_error)


_END = object()


class _StepWatchdog:
    """Cancels a stream whose step has waited longer than its ``step_timeout`` for its action.

    One thread for all of a process's streams (started with the first, ended when none is
    left), so a stream's step is a plain ``next()`` on the gRPC call in the caller's thread: no
    reader thread and queue between the wire and the control loop (a thread hand-off costs
    about as much as the step's own work)."""

    PERIOD = 0.05
    """Seconds between checks (how late a timeout may fire)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: weakref.WeakSet[ActionStream] = weakref.WeakSet()
        self._thread: threading.Thread | None = None

    def watch(self, stream: ActionStream) -> None:
        with self._lock:
            self._streams.add(stream)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="metarl-stream-watchdog", daemon=True
                )
                self._thread.start()

    def forget(self, stream: ActionStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def _run(self) -> None:
        while True:
            time.sleep(self.PERIOD)
            now = time.monotonic()
            with self._lock:
                if not self._streams:
                    self._thread = None
                    return
                late = []
                for st in self._streams:
                    since = st._waiting_since  # (set and cleared by the stream's thread)
                    if since is not None and now - since > st.step_timeout:
                        late.append(st)
            for st in late:
                st._timed_out = True
                st._call.cancel()


_WATCHDOG = _StepWatchdog()


class ActionStream:
    """A control loop over ``StreamAct`` (from :meth:`Session.stream`).

    >>> with session.stream() as loop:
    ...     obs, _ = env.reset()
    ...     reward = None
    ...     for _ in range(1000):
    ...         action = loop.act(obs, reward)   # reward of the previous action
    ...         obs, reward, terminated, truncated, _ = env.step(action)
    ...         if terminated or truncated:
    ...             loop.report(reward, terminated, truncated)  # a recording session's
    ...             obs, _ = env.reset()                        # episode ends here
    ...             reward = None

    Not thread-safe: one control loop per stream.
    """

    def __init__(self, session: Session, deterministic: bool, timeout: float | None) -> None:
        self.session = session
        self.deterministic = deterministic
        self.step_timeout = session._client.timeout
        """How long :meth:`act` waits for its action, in seconds."""
        self.log_prob: float | None = None
        """Log-probability of the last action."""
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._first = True
        self._error: errors.MetarlError | None = None
        self._closed = False
        self._waiting_since: float | None = None  # (read by the watchdog)
        self._timed_out = False
        # gRPC's own thread sends what _requests yields; act() reads the answers itself
        self._call = session._stub.StreamAct(self._request_iterator(), timeout=timeout)
        _WATCHDOG.watch(self)

    def _request_iterator(self) -> Iterator[pb.StreamActRequest]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def _next(self, late: Callable[[], errors.MetarlError]) -> Any:
        """The call's next answer (``_END`` when the server ended the stream), waiting at most
        ``step_timeout`` (the watchdog cancels the call past it: ``late()`` is raised)."""
        self._waiting_since = time.monotonic()
        try:
            return next(self._call)
        except StopIteration:
            return _END
        except grpc.RpcError as exc:
            if self._timed_out:
                raise self._fail(late()) from None
            raise self._fail(errors.from_rpc_error(exc, errors.SessionNotFound)) from None
        finally:
            self._waiting_since = None

    def _send(self, req: pb.StreamActRequest) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise errors.FailedPrecondition("the stream is closed: open another with stream()")
        if self._first:
            req.session_id = self.session.id
            self._first = False
        self._requests.put(req)

    def _fail(self, error: errors.MetarlError) -> errors.MetarlError:
        self._error = error
        self._closed = True
        self._requests.put(_END)
        _WATCHDOG.forget(self)
        return error

    def _no_action(self) -> errors.MetarlError:
        return errors.DeadlineExceeded(
            f"no action within {self.step_timeout} s; the stream is cancelled"
        )

    def act(
        self,
        obs: Any,
        reward: float | None = None,
        terminated: bool = False,
        truncated: bool = False,
        **unexpected: NoReturn,
    ) -> Any:
        """The action for ``obs``, reporting the previous action's ``reward`` (and whether it
        ended the episode) on the same message. Returns an ``int`` for a discrete action
        space, else an array."""
        proto.refuse_keywords(
            "ActionStream.act", "(obs, reward=None, terminated=False, truncated=False)", unexpected
        )
        arr = proto.observations(obs, self.session.policy_info, batch=False)
        req = pb.StreamActRequest(observation=to_tensor(arr), deterministic=self.deterministic)
        fb = proto.feedback(reward, terminated, truncated)
        if fb is not None:
            req.feedback.CopyFrom(fb)
        self._send(req)
        item = self._next(self._no_action)
        if item is _END:
            raise self._fail(errors.Unavailable("the server ended the stream"))
        self.log_prob = item.log_prob
        return proto.action(item.action, self.session.policy_info)

    def report(
        self,
        reward: float,
        terminated: bool = False,
        truncated: bool = False,
        **unexpected: NoReturn,
    ) -> None:
        """Reports the outcome of the last action without asking for another: the last
        reward of an episode, with ``terminated`` or ``truncated``. A recording session
        records it before this returns (so an ``adapt()`` right after sees the episode);
        a session that does not record has no use for it, and it is not sent."""
        proto.refuse_keywords(
            "ActionStream.report", "(reward, terminated=False, truncated=False)", unexpected
        )
        proto.feedback(reward, terminated, truncated)  # checked either way
        if self._error is not None:
            raise self._error
        if self.session.recording:
            # unary ReportFeedback, after the stream's last answered message: acknowledged,
            # where a feedback-only stream message would not be
            self.session.report(reward, terminated, truncated)

    def close(self) -> None:
        """Ends the stream and waits until the server has handled every message sent (so an
        ``adapt()`` that follows sees all reported rewards). Raises the stream's error if
        the server failed it."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(_END)

        def late() -> errors.MetarlError:
            return errors.DeadlineExceeded(
                f"the server did not end the stream within {self.step_timeout} s"
            )

        try:
            while self._next(late) is not _END:
                pass  # (no answers are due: every act() took its own)
        finally:
            _WATCHDOG.forget(self)

    def __enter__(self) -> ActionStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        self._closed = True
        self._requests.put(_END)
        self._call.cancel()
        _WATCHDOG.forget(self)
