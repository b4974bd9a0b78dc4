"""Client for the metarl policy service: act with and adapt meta-trained policies over gRPC.

Needs only grpcio, protobuf and numpy (no torch, no gymnasium).

- :class:`PolicyClient` / :class:`Session` / :class:`ActionStream`: the synchronous API.
- :class:`AsyncPolicyClient` / :class:`AsyncSession` / :class:`AsyncActionStream`: the same on
  ``grpc.aio``.
- :mod:`metarl_client.helpers`: run a session in gymnasium envs (``rollout``, ``adapt_on``).
- :mod:`metarl_client.errors`: typed exceptions for the service's status codes.
"""

import importlib.metadata as _metadata
import os as _os

# gRPC's core logs each failed connection attempt on stderr (ten "Handshake failed" lines for a
# TLS client of a plaintext server) unless told otherwise; the SDK raises one error that says
# what failed. Read when grpc is first imported; GRPC_VERBOSITY set by the user wins.
_os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

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

try:  # the installed distribution's version (client/pyproject.toml), one source of truth
    __version__: str = _metadata.version("metarl-client")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

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
