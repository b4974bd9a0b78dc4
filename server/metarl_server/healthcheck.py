"""``python -m metarl_server.healthcheck``: exit 0 when the local server answers SERVING on the
standard ``grpc.health.v1.Health`` service, 1 otherwise (a container's HEALTHCHECK).

It finds the server the way the server configures itself: ``METARL_PORT`` (default 50051),
``METARL_HOST`` (a wildcard address is probed on 127.0.0.1), and TLS when ``METARL_TLS_CERT`` is
set. With TLS it trusts ``METARL_HEALTHCHECK_CA`` if given, else the server's own certificate
(right for a self-signed one), and checks the certificate's first DNS name (or
``METARL_HEALTHCHECK_SERVER_NAME``) instead of the address it connects to. When the server
requires client certificates (``METARL_TLS_CLIENT_CA``), it presents
``METARL_HEALTHCHECK_CERT``/``METARL_HEALTHCHECK_KEY``, else the server's own pair. Health checks
need no token. Flags (``--port``, ``--host``, ``--timeout``) win over the variables.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

WILDCARDS = {"", "[::]", "::", "0.0.0.0", "*"}


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


def certificate_name(cert: Path) -> str | None:
    """The first DNS name of a PEM certificate's subjectAltName, else its common name."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(cert))  # type: ignore[attr-defined]
    except Exception:
        return None
    for kind, value in decoded.get("subjectAltName", ()):
        if kind == "DNS":
            return str(value)
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def probe_target(host: str, port: int) -> str:
    host = "127.0.0.1" if host.strip() in WILDCARDS else host.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def channel(target: str) -> grpc.Channel:
    """A channel to ``target``, plaintext or TLS as ``METARL_TLS_*`` says."""
    cert = _env_path("METARL_TLS_CERT")
    if cert is None:
        return grpc.insecure_channel(target)
    root = _env_path("METARL_HEALTHCHECK_CA") or cert
    chain = key = None
    if _env_path("METARL_TLS_CLIENT_CA") is not None:
        own_cert = _env_path("METARL_HEALTHCHECK_CERT") or cert
        own_key = _env_path("METARL_HEALTHCHECK_KEY") or _env_path("METARL_TLS_KEY")
        chain = own_cert.read_bytes()
        key = own_key.read_bytes() if own_key is not None else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=root.read_bytes(), private_key=key, certificate_chain=chain
    )
    name = os.environ.get("METARL_HEALTHCHECK_SERVER_NAME") or certificate_name(cert)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, creds, options=options)


def check(target: str, timeout: float) -> tuple[bool, str]:
    """(SERVING?, what was seen)."""
    try:
        with channel(target) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
    except grpc.RpcError as exc:
        return False, f"{exc.code().name}: {exc.details()}"
    except OSError as exc:  # an unreadable certificate file
        return False, str(exc)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m metarl_server.healthcheck", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default=os.environ.get("METARL_HOST", "[::]"))
    parser.add_argument("--port", type=int, default=None, help="default: METARL_PORT, else 50051")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds")
    args = parser.parse_args(argv)
    port = args.port
    if port is None:
        raw = os.environ.get("METARL_PORT", "").strip()
        try:
            port = int(raw) if raw else 50051
        except ValueError:
            print(f"healthcheck: METARL_PORT={raw!r} is not a port number", file=sys.stderr)
            raise SystemExit(1) from None
    target = probe_target(args.host, port)
    ok, seen = check(target, args.timeout)
    print(f"healthcheck {target}: {seen}", file=sys.stdout if ok else sys.stderr)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
