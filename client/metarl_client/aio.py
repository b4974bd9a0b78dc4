"""asyncio client for ``metarl.v1.PolicyService`` (on ``grpc.aio``): the same API as
:class:`metarl_client.PolicyClient`, with coroutines, async context managers and an async
control-loop stream.

>>> from metarl_client import AsyncPolicyClient
>>> async with AsyncPolicyClient("localhost:50051") as client:
...     async with client.create_session("cartpole-family") as session:
...         action = await session.act(obs)

Create and use the client inside one running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio

from metarl_client import _protocol as proto
from metarl_client import errors
from metarl_client._channel import (
    TLS,
    aio_channel,
    auth_metadata,
    explain_transport_failure,
    uses_tls,
)
from metarl_client.client import (
    DEFAULT_ADAPT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ActResult,
    _act_result,
    _concat,
)
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.tensors import to_tensor
from metarl_client.types import AdaptStats, Episode, PolicyInfo, SessionInfo

T = TypeVar("T")
log = logging.getLogger(__name__)


class AsyncPolicyClient:
    """An asyncio connection to a policy server; see :class:`metarl_client.PolicyClient` for
    the arguments, retries and errors. Every method is a coroutine.

    Many sessions can be driven concurrently over the one connection
    (``asyncio.gather``, task groups).
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
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        if timeout <= 0 or adapt_timeout <= 0:
            raise ValueError("timeout and adapt_timeout must be positive (seconds)")
        self.target = target
        self.timeout = timeout
        self.adapt_timeout = adapt_timeout
        self._metadata = auth_metadata(token)
        self._channel = channel or aio_channel(target, tls, options, interceptors)
        self._tls = uses_tls(tls)
        self._probe = channel is None  # on a failure, until a probe was conclusive
        self._stub = pb_grpc.PolicyServiceStub(self._channel)
        self._policies: dict[str, PolicyInfo] | None = None
        self._policies_lock = asyncio.Lock()

    async def _call(
        self,
        method: Callable[..., Awaitable[T]],
        request: Any,
        *,
        timeout: float | None = None,
        not_found: type[errors.NotFound] = errors.NotFound,
    ) -> T:
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            error = errors.from_rpc_error(exc, not_found)
        if self._probe:  # TLS on one side only? (the probe blocks: off the event loop)
            error, conclusive = await asyncio.to_thread(
                explain_transport_failure, error, self.target, self._tls
            )
            self._probe = not conclusive
        raise error

    async def list_policies(self, *, timeout: float | None = None) -> list[PolicyInfo]:
        """The policies the server has loaded (and refreshes the cache of spaces)."""
        resp = await self._call(self._stub.ListPolicies, pb.ListPoliciesRequest(), timeout=timeout)
        policies = [PolicyInfo.from_proto(p) for p in resp.policies]
        self._policies = {p.name: p for p in policies}
        return policies

    async def policy(self, name: str) -> PolicyInfo:
        """The server's description of policy ``name``, cached after the first ListPolicies
        (:class:`~metarl_client.errors.PolicyNotFound` if there is none)."""
        if self._policies is None or name not in self._policies:
            async with self._policies_lock:  # many sessions starting at once: one fetch
                if self._policies is None or name not in self._policies:
                    await self.list_policies()
        cached = self._policies or {}
        if name not in cached:
            raise errors.PolicyNotFound(
                f"the server has no policy {name!r}; it has {sorted(cached)}"
            )
        return cached[name]

    async def _policy_or_none(self, name: str) -> PolicyInfo | None:
        try:
            return await self.policy(name)
        except errors.PolicyNotFound:
            return None

    def create_session(
        self,
        policy: str,
        version: str | None = None,
        seed: int | None = None,
        record: bool = False,
        *,
        timeout: float | None = None,
    ) -> SessionStart:
        """Starts a session; see :meth:`metarl_client.PolicyClient.create_session`.

        ``session = await client.create_session(...)`` returns the session;
        ``async with client.create_session(...) as session:`` also deletes it on exit (as does
        ``async with await client.create_session(...)``)."""
        return SessionStart(self._create_session(policy, version, seed, record, timeout))

    async def _create_session(
        self,
        policy: str,
        version: str | None,
        seed: int | None,
        record: bool,
        timeout: float | None,
    ) -> AsyncSession:
        req = proto.create_request(policy, version, seed, record)
        resp = await self._call(
            self._stub.CreateSession, req, timeout=timeout, not_found=errors.PolicyNotFound
        )
        return AsyncSession(self, resp.session, await self._policy_or_none(resp.session.policy))

    async def get_session(self, session_id: str, *, timeout: float | None = None) -> AsyncSession:
        """Reattaches to an existing session
        (:class:`~metarl_client.errors.SessionNotFound` if it is gone)."""
        resp = await self._call(
            self._stub.GetSession,
            pb.GetSessionRequest(session_id=session_id),
            timeout=timeout,
            not_found=errors.SessionNotFound,
        )
        return AsyncSession(self, resp.session, await self._policy_or_none(resp.session.policy))

    async def close(self) -> None:
        """Closes the connection. Sessions stay on the server until deleted or expired."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncPolicyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncPolicyClient({self.target!r})"


class SessionStart(Awaitable["AsyncSession"]):
    """What :meth:`AsyncPolicyClient.create_session` returns: await it for the session, or use it
    directly in ``async with`` (the session is deleted when the block ends)."""

    def __init__(self, creating: Coroutine[Any, Any, AsyncSession]) -> None:
        self._creating = creating
        self._session: AsyncSession | None = None

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._creating.__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._creating
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.__aexit__(exc_type, exc, tb)

    def close(self) -> None:
        """Drops a start that was never awaited (no session is created)."""
        self._creating.close()


class AsyncSession(proto.SessionFields):
    """A session, for asyncio; see :class:`metarl_client.Session` for what each method does.
    ``async with`` deletes it on exit."""

    def __init__(
        self, client: AsyncPolicyClient, session: pb.Session, policy_info: PolicyInfo | None
    ) -> None:
        self._client = client
        self._stub = client._stub
        super().__init__(session, policy_info)

    async def _call(
        self, method: Callable[..., Awaitable[T]], request: Any, timeout: float | None = None
    ) -> T:
        return await self._client._call(
            method, request, timeout=timeout, not_found=errors.SessionNotFound
        )

    async def info(self, *, timeout: float | None = None) -> SessionInfo:
        """The session's state on the server."""
        resp = await self._call(
            self._stub.GetSession, pb.GetSessionRequest(session_id=self.id), timeout
        )
        return SessionInfo.from_proto(resp.session)

    async def act(
        self,
        obs: Any,
        deterministic: bool = False,
        *,
        reward: float | None = None,
        terminated: bool = False,
        truncated: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """The action for one observation; see :meth:`metarl_client.Session.act`."""
        arr = proto.observations(obs, self.policy_info, batch=False)
        req = proto.act_request(
            self.id, arr, deterministic, proto.feedback(reward, terminated, truncated)
        )
        resp = await self._call(self._stub.Act, req, timeout)
        return proto.action(resp.actions, self.policy_info)

    async def act_batch(
        self, obs_batch: Any, deterministic: bool = False, *, timeout: float | None = None
    ) -> ActResult:
        """Actions and log-probabilities for a batch; see
        :meth:`metarl_client.Session.act_batch`."""
        arr = proto.observations(obs_batch, self.policy_info, batch=True, name="observations")
        results = []
        for part in proto.batch_chunks(len(arr), self.policy_info):
            req = proto.act_request(self.id, arr[part], deterministic)
            results.append(_act_result(await self._call(self._stub.Act, req, timeout)))
        return _concat(results)

    def stream(
        self, deterministic: bool = False, *, timeout: float | None = None
    ) -> AsyncActionStream:
        """An async control loop over ``StreamAct``; see :meth:`metarl_client.Session.stream`.
        ``async with session.stream() as loop: action = await loop.act(obs, reward)``."""
        return AsyncActionStream(self, deterministic, timeout)

    async def report(
        self,
        reward: float,
        terminated: bool = False,
        truncated: bool = False,
        *,
        timeout: float | None = None,
        **unexpected: NoReturn,
    ) -> SessionInfo:
        """Reports the outcome of the last action; see :meth:`metarl_client.Session.report`."""
        proto.refuse_keywords(
            "AsyncSession.report",
            "(reward, terminated=False, truncated=False, *, timeout=None)",
            unexpected,
        )
        fb = proto.feedback(reward, terminated, truncated)
        req = pb.ReportFeedbackRequest(session_id=self.id, feedback=fb)
        resp = await self._call(self._stub.ReportFeedback, req, timeout)
        return SessionInfo.from_proto(resp.session)

    async def adapt(
        self,
        episodes: Iterable[Episode] | None = None,
        steps: int | None = None,
        *,
        timeout: float | None = None,
    ) -> AdaptStats:
        """Adapts to the session's task; see :meth:`metarl_client.Session.adapt`."""
        req = proto.adapt_request(self.id, episodes, steps, self.policy_info)
        resp = await self._call(self._stub.Adapt, req, timeout or self._client.adapt_timeout)
        return AdaptStats.from_proto(resp.stats)

    async def reset(self, *, timeout: float | None = None) -> SessionInfo:
        """Goes back to the meta-trained parameters and clears the recording."""
        resp = await self._call(
            self._stub.ResetSession, pb.ResetSessionRequest(session_id=self.id), timeout
        )
        return SessionInfo.from_proto(resp.session)

    async def close(self, *, timeout: float | None = None) -> None:
        """Deletes the session on the server (a session already gone is not an error)."""
        with contextlib.suppress(errors.SessionNotFound):
            await self._call(
                self._stub.DeleteSession, pb.DeleteSessionRequest(session_id=self.id), timeout
            )

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        try:  # do not hide the exception that is leaving the block
            await self.close()
        except errors.MetarlError as close_error:
            log.warning("could not delete session %s: %s", self.id, close_error)


class AsyncActionStream:
    """An async control loop over ``StreamAct`` (from :meth:`AsyncSession.stream`); see
    :class:`metarl_client.ActionStream`. One control loop (task) per stream."""

    def __init__(self, session: AsyncSession, deterministic: bool, timeout: float | None) -> None:
        self.session = session
        self.deterministic = deterministic
        self.step_timeout = session._client.timeout
        """How long :meth:`act` waits for its action, in seconds."""
        self.log_prob: float | None = None
        """Log-probability of the last action."""
        self._timeout = timeout
        self._call: Any = None
        self._error: errors.MetarlError | None = None
        self._closed = False

    def _open(self) -> Any:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise errors.FailedPrecondition("the stream is closed: open another with stream()")
        if self._call is None:
            self._call = self.session._stub.StreamAct(
                timeout=self._timeout, metadata=self.session._client._metadata
            )
            return self._call, True
        return self._call, False

    def _fail(self, error: errors.MetarlError) -> errors.MetarlError:
        self._error = error
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        return error

    async def _explain(self, exc: grpc.RpcError) -> errors.MetarlError:
        error = errors.from_rpc_error(exc, errors.SessionNotFound)
        if error.code == grpc.StatusCode.INTERNAL and "Internal error from Core" in str(error):
            # grpc.aio reports INTERNAL instead of the server's status when the server ends the
            # stream while a message is being written (grpc/grpc#36066). Ask the server why.
            try:
                await self.session.info()
            except errors.MetarlError as why:
                return why
        return error

    async def _write(self, req: pb.StreamActRequest) -> Any:
        call, first = self._open()
        if first:
            req.session_id = self.session.id
        try:
            await call.write(req)
        except grpc.RpcError as exc:
            raise self._fail(await self._explain(exc)) from None
        except asyncio.InvalidStateError:  # the server already ended the call: read why
            raise self._fail(await self._status_error(call)) from None
        return call

    async def _status_error(self, call: Any) -> errors.MetarlError:
        code = await call.code()
        details = await call.details()
        if code == grpc.StatusCode.NOT_FOUND:
            return errors.SessionNotFound(details, code)
        return errors.from_rpc_error(_Status(code, details))

    async def act(
        self,
        obs: Any,
        reward: float | None = None,
        terminated: bool = False,
        truncated: bool = False,
        **unexpected: NoReturn,
    ) -> Any:
        """The action for ``obs``, reporting the previous action's outcome on the same
        message; see :meth:`metarl_client.ActionStream.act`."""
        proto.refuse_keywords(
            "AsyncActionStream.act",
            "(obs, reward=None, terminated=False, truncated=False)",
            unexpected,
        )
        arr = proto.observations(obs, self.session.policy_info, batch=False)
        req = pb.StreamActRequest(observation=to_tensor(arr), deterministic=self.deterministic)
        fb = proto.feedback(reward, terminated, truncated)
        if fb is not None:
            req.feedback.CopyFrom(fb)
        call = await self._write(req)
        try:
            resp = await asyncio.wait_for(call.read(), self.step_timeout)
        except asyncio.TimeoutError:
            raise self._fail(
                errors.DeadlineExceeded(
                    f"no action within {self.step_timeout} s; the stream is cancelled"
                )
            ) from None
        except grpc.RpcError as exc:
            raise self._fail(await self._explain(exc)) from None
        if resp is grpc.aio.EOF:
            raise self._fail(await self._status_error(call))
        self.log_prob = resp.log_prob
        return proto.action(resp.action, self.session.policy_info)

    async def report(
        self,
        reward: float,
        terminated: bool = False,
        truncated: bool = False,
        **unexpected: NoReturn,
    ) -> None:
        """Reports the last action's outcome without asking for another; see
        :meth:`metarl_client.ActionStream.report`."""
        proto.refuse_keywords(
            "AsyncActionStream.report", "(reward, terminated=False, truncated=False)", unexpected
        )
        proto.feedback(reward, terminated, truncated)
        if self._error is not None:
            raise self._error
        if self.session.recording:
            await self.session.report(reward, terminated, truncated)

    async def close(self) -> None:
        """Ends the stream and waits until the server has handled every message sent."""
        if self._closed:
            return
        self._closed = True
        call = self._call
        if call is None:
            return
        try:
            await asyncio.wait_for(self._finish(call), self.step_timeout)
        except asyncio.TimeoutError:
            call.cancel()
            raise errors.DeadlineExceeded(
                f"the server did not end the stream within {self.step_timeout} s"
            ) from None
        except grpc.RpcError as exc:
            self._error = errors.from_rpc_error(exc, errors.SessionNotFound)
            raise self._error from None

    async def _finish(self, call: Any) -> None:
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
        code = await call.code()
        if code != grpc.StatusCode.OK:
            self._error = await self._status_error(call)
            raise self._error

    async def __aenter__(self) -> AsyncActionStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        self._closed = True
        if self._call is not None:
            self._call.cancel()


class _Status(grpc.RpcError):
    """A finished call's status, in the shape :func:`errors.from_rpc_error` reads."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details
