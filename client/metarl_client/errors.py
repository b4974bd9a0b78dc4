"""Typed exceptions for the status codes the policy service returns.

Every exception keeps the server's message (``str(exc)``) and the gRPC status (``exc.code``).
"""

from __future__ import annotations

import grpc


class MetarlError(Exception):
    """A call to the policy service failed."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(MetarlError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MetarlError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class PolicyNotFound(NotFound):
    """The policy name or version is not loaded on the server."""


class SessionNotFound(NotFound):
    """The session does not exist (deleted, expired, or never created)."""


class ResourceExhausted(MetarlError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MetarlError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(MetarlError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MetarlError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(MetarlError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(MetarlError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE: dict[grpc.StatusCode, type[MetarlError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        DeadlineExceeded,
    )
}


def from_rpc_error(error: grpc.RpcError, not_found: type[NotFound] = NotFound) -> MetarlError:
    """The typed exception for a failed call; NOT_FOUND becomes ``not_found``."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    cls = not_found if code == grpc.StatusCode.NOT_FOUND else _BY_CODE.get(code, MetarlError)
    return cls(details, code)
