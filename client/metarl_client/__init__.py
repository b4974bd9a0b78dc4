"""Client for the metarl policy service: act with and adapt meta-trained policies over gRPC.

Needs only grpcio, protobuf and numpy (no torch, no gymnasium).

- :class:`PolicyClient` / :class:`Session` / :class:`ActionStream`: the synchronous API.
- :class:`AsyncPolicyClient` / :class:`AsyncSession` / :class:`AsyncActionStream`: the same on
  ``grpc.aio``.
- :mod:`metarl_client.helpers`: run a session in gymnasium envs (``rollout``, ``adapt_on``).
- :mod:`metarl_client.errors`: typed exceptions for the service's status codes.
"""

from metarl_client.aio import AsyncActionStream, AsyncPolicyClient, AsyncSession
from metarl_client.client import ActionStream, ActResult, PolicyClient, Session
from metarl_client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MetarlError,
    NotFound,
    PermissionDenied,
    PolicyNotFound,
    ResourceExhausted,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from metarl_client.helpers import AdaptResult, adapt_on, mean_return, rollout
from metarl_client.tensors import TensorError, from_tensor, to_tensor
from metarl_client.types import (
    AdaptStats,
    Episode,
    InnerLoopInfo,
    PolicyInfo,
    SessionInfo,
    SpaceInfo,
)

__version__ = "0.1.0"

__all__ = [
    "ActResult",
    "ActionStream",
    "AdaptResult",
    "AdaptStats",
    "AsyncActionStream",
    "AsyncPolicyClient",
    "AsyncSession",
    "Cancelled",
    "DeadlineExceeded",
    "Episode",
    "FailedPrecondition",
    "InnerLoopInfo",
    "Internal",
    "InvalidArgument",
    "MetarlError",
    "NotFound",
    "PermissionDenied",
    "PolicyClient",
    "PolicyInfo",
    "PolicyNotFound",
    "ResourceExhausted",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "SpaceInfo",
    "TensorError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "adapt_on",
    "from_tensor",
    "mean_return",
    "rollout",
    "to_tensor",
]
