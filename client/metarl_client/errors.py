"""Typed exceptions for the status codes the policy service returns.

Every exception keeps the server's message (``str(exc)``, also ``exc.message``) and the gRPC
status (``exc.code``). Checks the client makes before sending a request raise the exception the
server would have answered with (mostly :class:`InvalidArgument`), so one ``except`` clause
handles both.

Besides :class:`MetarlError`, each class also derives from the closest built-in exception
(``InvalidArgument`` is a ``ValueError``, ``NotFound`` a ``LookupError``, ``Unavailable`` a
``ConnectionError``, ``DeadlineExceeded`` a ``TimeoutError``).
"""

from __future__ import annotations

import grpc


class MetarlError(Exception):
    """A call to the policy service failed; ``str(exc)`` is the server's message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    """The gRPC status code of the failure."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        """The server's message (or the client's, for checks made before sending)."""
        if code is not None:
            self.code = code


class InvalidArgument(MetarlError, ValueError):
    """The request was malformed: wrong shape, dtype, NaN/inf, out-of-range value."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MetarlError, LookupError):
    """Something the request named does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class PolicyNotFound(NotFound):
    """The policy name or version is not loaded on the server."""


class SessionNotFound(NotFound):
    """The session does not exist (deleted, expired, or never created)."""


class ResourceExhausted(MetarlError):
    """A limit was hit: batch size, transitions per Adapt, sessions, message size."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MetarlError):
    """The session is not in a state to do this (for example, nothing recorded to adapt on)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(MetarlError):
    """The server wants credentials (``PolicyClient(..., token=...)``) it did not get."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MetarlError):
    """The credentials do not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(MetarlError, ConnectionError):
    """The server could not be reached (idempotent calls were already retried)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(MetarlError, TimeoutError):
    """The call did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(MetarlError):
    """The call was cancelled (by the client, or the server shutting down)."""

    code = grpc.StatusCode.CANCELLED


class Unimplemented(MetarlError, NotImplementedError):
    """The server does not implement this call (an older server version?)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MetarlError):
    """A bug on the server; its log has the details."""

    code = grpc.StatusCode.INTERNAL


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
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def from_rpc_error(error: grpc.RpcError, not_found: type[NotFound] = NotFound) -> MetarlError:
    """The typed exception for a failed call (sync or ``grpc.aio``), keeping the server's
    message; NOT_FOUND becomes ``not_found``."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    details = (details_fn() if callable(details_fn) else None) or str(error)
    if code == grpc.StatusCode.NOT_FOUND:
        cls: type[MetarlError] = not_found
    else:
        cls = _BY_CODE.get(code, MetarlError)
    return cls(details, code)
