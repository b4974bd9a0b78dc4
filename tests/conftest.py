"""Shared fixtures: a real gRPC server on a free port, serving the bundled policies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metarl_server.app import ServeConfig, build_registry, create_server


@pytest.fixture(scope="session")
def bundled_registry():  # type: ignore[no-untyped-def]
    return build_registry(ServeConfig())


@pytest.fixture
def server_target(bundled_registry) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Address of a fresh server (bound to [::]:0) on the bundled policies."""
    server, port = create_server("[::]:0", bundled_registry)
    server.start()
    try:
        yield f"localhost:{port}"
    finally:
        server.stop(None)
