"""Domain errors of the service, each carrying the gRPC status it maps to."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error caused by the request or the server's state; never INTERNAL."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class Aborted(ServiceError):
    """A concurrent change got in the way (another Adapt, a reset); retrying is safe."""

    code = grpc.StatusCode.ABORTED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DataLoss(ServiceError):
    """Stored state that cannot be read back (corrupt or truncated in the session store)."""

    code = grpc.StatusCode.DATA_LOSS
