"""Client for the metarl policy service: act with and adapt meta-trained policies over gRPC.

Needs only grpcio, protobuf and numpy (no torch).
"""

from metarl_client.client import ActResult, PolicyClient, Session
from metarl_client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MetarlError,
    NotFound,
    PermissionDenied,
    PolicyNotFound,
    ResourceExhausted,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
)
from metarl_client.tensors import TensorError, from_tensor, to_tensor
from metarl_client.types import AdaptStats, Episode, PolicyInfo, SessionInfo, SpaceInfo

__version__ = "0.1.0"

__all__ = [
    "ActResult",
    "AdaptStats",
    "DeadlineExceeded",
    "Episode",
    "FailedPrecondition",
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
    "from_tensor",
    "to_tensor",
]
