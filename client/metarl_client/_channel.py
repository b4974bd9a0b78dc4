"""Channel setup shared by the sync and async clients: options, retry policy, TLS, token."""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Sequence
from typing import Any, NamedTuple, Union

import grpc
import grpc.aio

from metarl_client import errors
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["PolicyService"].full_name

RETRIED_METHODS = ("ListPolicies", "GetSession", "DeleteSession", "CreateSession", "ResetSession")
"""Calls that gRPC itself retries on UNAVAILABLE (the channel's retry policy): the idempotent
ones, and CreateSession (a server that is still loading its policies answers UNAVAILABLE; a retry
after a connection lost mid-call may leave one unused session behind, which expires with the
session TTL). The server's ``grpc-retry-pushback-ms`` (0.5, 1, 2, 4 s) sets the waits while
it loads or drains. Act, StreamAct, ReportFeedback and Adapt are not retried: each changes its
session, so a retry after a lost answer could apply twice."""

RETRY_POLICY: dict[str, Any] = {
    # gRPC caps maxAttempts at 5. Attempt n waits random(0, min(0.5 s * 2^(n-1), 5 s)), so
    # four retries span a few seconds: enough for a server that is (re)starting.
    "maxAttempts": 5,
    "initialBackoff": "0.5s",
    "maxBackoff": "5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{"service": SERVICE, "method": m} for m in RETRIED_METHODS],
            "retryPolicy": RETRY_POLICY,
        }
    ]
}

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    # Reconnect soon after a server (re)starts: a robot should not sit out gRPC's default
    # 1 s -> 120 s backoff.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

TLS = Union[bool, str, "os.PathLike[str]", bytes, grpc.ChannelCredentials, None]
"""``None``/``False``: plaintext; ``True``: TLS with the system's root certificates; a path or
PEM bytes: TLS trusting that root certificate; or ready ``grpc.ChannelCredentials``."""


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """The client's channel options, with ``extra`` overriding options of the same name."""
    names = {name for name, _ in extra}
    return [(k, v) for k, v in DEFAULT_OPTIONS if k not in names] + list(extra)


def channel_credentials(tls: TLS) -> grpc.ChannelCredentials | None:
    """Channel credentials for ``tls`` (see :data:`TLS`), or None for plaintext."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    if isinstance(tls, bytes):
        return grpc.ssl_channel_credentials(root_certificates=tls)
    with open(os.fspath(tls), "rb") as f:
        return grpc.ssl_channel_credentials(root_certificates=f.read())


def _host_port(target: str) -> tuple[str, int] | None:
    """``(host, port)`` of a plain ``host:port`` target (``dns:///`` allowed), else None."""
    if target.startswith("dns:///"):
        target = target[len("dns:///") :]
    elif "://" in target or target.startswith(("unix:", "ipv4:", "ipv6:", "vsock:")):
        return None
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def speaks_tls(target: str, timeout: float = 1.0) -> tuple[bool | None, str]:
    """Whether the server at ``target`` speaks TLS: a handshake probe (no certificate check).
    ``(True, "")`` when it completes the handshake, ``(False, reason)`` when it answers with
    something else (a plaintext server), ``(None, "")`` when nothing answers there or the
    target is not ``host:port``."""
    address = _host_port(target)
    if address is None:
        return None, ""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection(address, timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=address[0]),
        ):
            return True, ""
    except ssl.SSLError as exc:
        return False, str(exc.reason or exc)
    except OSError:  # nothing listening, unreachable, or a server that hung up on the hello
        return None, ""


def uses_tls(tls: TLS) -> bool:
    return tls is not None and tls is not False


def explain_transport_failure(
    error: errors.MetarlError, target: str, tls: bool
) -> tuple[errors.MetarlError, bool]:
    """``error`` of a call, or, when it is UNAVAILABLE or DEADLINE_EXCEEDED because the client
    and the server disagree on TLS, an :class:`~metarl_client.errors.Unavailable` that says so
    (instead of gRPC's "failed to connect" or a bare deadline; :func:`speaks_tls` on the
    failure path only). Also whether the probe was conclusive: the server answered it, so the
    client need not probe ``target`` again."""
    if not isinstance(error, (errors.Unavailable, errors.DeadlineExceeded)):
        return error, False
    answer, reason = speaks_tls(target)
    if answer is None:
        return error, False
    if tls and not answer:
        return errors.Unavailable(
            f"TLS was refused by {target}: the server does not speak TLS ({reason} in answer "
            "to a TLS handshake; it serves plaintext). Connect without tls (tls=None), or "
            "serve with TLS (metarl serve --tls-cert FILE --tls-key FILE)"
        ), True
    if not tls and answer:
        return errors.Unavailable(
            f"{target} speaks TLS and this client plaintext: connect with tls=True (the "
            "system's root certificates), or tls=the path or PEM bytes of the root certificate "
            "that signed the server's"
        ), True
    return error, True


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization: Bearer <token>`` header, or nothing without a token."""
    if token is None:
        return ()
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("token must be a non-empty string without line breaks")
    return (("authorization", f"Bearer {token}"),)


class _CallDetails(
    NamedTuple(
        "_CallDetails",
        [
            ("method", str),
            ("timeout", Any),
            ("metadata", Any),
            ("credentials", Any),
            ("wait_for_ready", Any),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,
):
    pass


class MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the bearer token) to every call of a sync channel."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            d.method,
            d.timeout,
            (*(d.metadata or ()), *self._metadata),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def sync_channel(
    target: str,
    tls: TLS,
    token: str | None,
    options: Sequence[tuple[str, Any]],
    interceptors: Sequence[Any] = (),
) -> grpc.Channel:
    """A sync channel to ``target`` with the retry policy, TLS, bearer token and the caller's
    ``interceptors`` (which see the token's metadata)."""
    opts = channel_options(options)
    creds = channel_credentials(tls)
    channel = (
        grpc.secure_channel(target, creds, options=opts)
        if creds is not None
        else grpc.insecure_channel(target, options=opts)
    )
    metadata = auth_metadata(token)
    chain = [MetadataInterceptor(metadata)] if metadata else []
    chain += list(interceptors)
    if chain:
        channel = grpc.intercept_channel(channel, *chain)
    return channel


def aio_channel(
    target: str,
    tls: TLS,
    options: Sequence[tuple[str, Any]],
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target`` with the retry policy, TLS and the caller's
    ``interceptors``. (The async client sends the token as call metadata: an aio stream
    interceptor would put each stream's writes through a proxy task, which can turn the
    server's status into INTERNAL when the call ends during a write.)"""
    opts = channel_options(options)
    creds = channel_credentials(tls)
    chain = list(interceptors)
    if creds is not None:
        return grpc.aio.secure_channel(target, creds, options=opts, interceptors=chain)
    return grpc.aio.insecure_channel(target, options=opts, interceptors=chain)
