"""gRPC server for metarl policies: sessions, adaptation, health and reflection."""

from metarl_server.app import ServeConfig, create_server, serve
from metarl_server.registry import PolicyRegistry

__all__ = ["PolicyRegistry", "ServeConfig", "create_server", "serve"]
