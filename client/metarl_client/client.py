"""Synchronous client for ``metarl.v1.PolicyService``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import grpc
import numpy as np
from numpy.typing import NDArray

from metarl_client import errors
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.tensors import from_tensor, to_tensor
from metarl_client.types import AdaptStats, Episode, PolicyInfo, SessionInfo

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
"""Deadline of every call but Adapt, in seconds."""
DEFAULT_ADAPT_TIMEOUT = 120.0
"""Deadline of Adapt, in seconds."""


class ActResult(NamedTuple):
    actions: NDArray[Any]
    """``[batch, *action_shape]``: integers for discrete actions, floats for box actions."""
    log_probs: NDArray[np.float32]
    """``[batch]`` log-probability of each action."""


class PolicyClient:
    """A connection to a policy server.

    >>> with PolicyClient("localhost:50051") as client:
    ...     with client.create_session("cartpole-family") as session:
    ...         action = session.act(obs)
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        adapt_timeout: float = DEFAULT_ADAPT_TIMEOUT,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.adapt_timeout = adapt_timeout
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = pb_grpc.PolicyServiceStub(self._channel)

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
            raise errors.from_rpc_error(exc, not_found) from None

    def list_policies(self) -> list[PolicyInfo]:
        """The policies the server has loaded."""
        resp = self._call(self._stub.ListPolicies, pb.ListPoliciesRequest())
        return [PolicyInfo.from_proto(p) for p in resp.policies]

    def create_session(
        self,
        policy: str,
        version: str | None = None,
        seed: int | None = None,
        record: bool = False,
    ) -> Session:
        """Starts a session on ``policy`` (its newest version unless ``version`` is given).

        ``seed`` makes sampled actions repeatable; ``record`` makes the session record its
        served actions and reported rewards, so :meth:`Session.adapt` can run without episodes.
        """
        req = pb.CreateSessionRequest(policy=policy, version=version or "", record=record)
        if seed is not None:
            req.seed = seed
        resp = self._call(self._stub.CreateSession, req, not_found=errors.PolicyNotFound)
        return Session(self, resp.session)

    def get_session(self, session_id: str) -> Session:
        """Reattaches to an existing session, for example after the client restarted."""
        resp = self._call(
            self._stub.GetSession,
            pb.GetSessionRequest(session_id=session_id),
            not_found=errors.SessionNotFound,
        )
        return Session(self, resp.session)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """A session on the server: the policy's parameters, adapted to this client's task.

    Use it as a context manager to delete the session on exit.
    """

    def __init__(self, client: PolicyClient, session: pb.Session) -> None:
        self._client = client
        self._stub = client._stub
        self.id: str = session.id
        self.policy: str = session.policy
        self.version: str = session.version

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        return self._client._call(
            method, request, timeout=timeout, not_found=errors.SessionNotFound
        )

    def info(self) -> SessionInfo:
        resp = self._call(self._stub.GetSession, pb.GetSessionRequest(session_id=self.id))
        return SessionInfo.from_proto(resp.session)

    def act(self, obs: Any, deterministic: bool = False) -> Any:
        """The action for one observation: an ``int`` for discrete actions, else an array."""
        result = self._act(np.asarray(obs), deterministic, single=True)
        action = result.actions
        return int(action) if action.dtype.kind == "i" and action.ndim == 0 else action

    def act_batch(self, obs_batch: Any, deterministic: bool = False) -> ActResult:
        """Actions and their log-probabilities for a batch ``[batch, *obs_shape]``."""
        return self._act(np.asarray(obs_batch), deterministic, single=False)

    def _act(self, obs: NDArray[Any], deterministic: bool, single: bool) -> ActResult:
        if obs.dtype.kind not in "fiu":
            raise errors.InvalidArgument(f"observations must be numeric, got dtype {obs.dtype}")
        if not single and obs.ndim < 2:
            raise errors.InvalidArgument(
                f"act_batch needs [batch, *obs_shape] observations, got shape {obs.shape}; "
                "use act() for a single observation"
            )
        req = pb.ActRequest(
            session_id=self.id, observations=to_tensor(obs), deterministic=deterministic
        )
        resp = self._call(self._stub.Act, req)
        return ActResult(
            from_tensor(resp.actions, "actions"), from_tensor(resp.log_probs, "log_probs")
        )

    def adapt(
        self, episodes: Iterable[Episode] | None = None, steps: int | None = None
    ) -> AdaptStats:
        """Adapts the session's parameters to its task from ``episodes`` (or, with none, from
        what the session recorded) and returns what the inner loop did."""
        req = pb.AdaptRequest(session_id=self.id, episodes=_episodes_to_proto(episodes or []))
        if steps is not None:
            req.steps = steps
        resp = self._call(self._stub.Adapt, req, timeout=self._client.adapt_timeout)
        return AdaptStats.from_proto(resp.stats)

    def reset(self) -> SessionInfo:
        """Goes back to the meta-trained parameters and clears the recording."""
        resp = self._call(self._stub.ResetSession, pb.ResetSessionRequest(session_id=self.id))
        return SessionInfo.from_proto(resp.session)

    def close(self) -> None:
        """Deletes the session on the server (a session already gone is not an error)."""
        with contextlib.suppress(errors.SessionNotFound):
            self._call(self._stub.DeleteSession, pb.DeleteSessionRequest(session_id=self.id))

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _episodes_to_proto(episodes: Iterable[Episode]) -> Sequence[pb.Episode]:
    out = []
    for i, ep in enumerate(episodes):
        if not isinstance(ep, Episode):
            raise errors.InvalidArgument(
                f"episode {i} is a {type(ep).__name__}; wrap it in metarl_client.Episode("
                "observations, actions, rewards, terminated, truncated)"
            )
        out.append(
            pb.Episode(
                observations=to_tensor(ep.observations),
                actions=to_tensor(ep.actions),
                rewards=to_tensor(np.asarray(ep.rewards, dtype=np.float32)),
                terminated=ep.terminated,
                truncated=ep.truncated,
            )
        )
    return out
