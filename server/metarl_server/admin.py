"""``metarl.v1.ModelAdminService``: operator calls on the model registry."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from metarl_client.proto.metarl.v1 import admin_service_pb2 as admin_pb
from metarl_client.proto.metarl.v1 import admin_service_pb2_grpc as admin_grpc
from metarl_server.registry import PolicyRegistry, PolicyVersion

log = logging.getLogger(__name__)


def _version(pv: PolicyVersion) -> admin_pb.ModelVersion:
    return admin_pb.ModelVersion(
        name=pv.name, version=pv.version, path=str(pv.path), sessions=max(pv.sessions, 0)
    )


class ModelAdminService(admin_grpc.ModelAdminServiceServicer):
    def __init__(self, registry: PolicyRegistry) -> None:
        self.registry = registry

    def ReloadModels(
        self, request: admin_pb.ReloadModelsRequest, context: Any
    ) -> admin_pb.ReloadModelsResponse:
        if not self.registry.model_dirs:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the server has no model directory to reload from: start it with --model-dir",
            )
        result = self.registry.scan()
        log.info(
            "ReloadModels: %d loaded, %d refused, %d unloaded",
            len(result.loaded),
            len(result.refused),
            len(result.unloaded),
        )
        return admin_pb.ReloadModelsResponse(
            loaded=[_version(pv) for pv in result.loaded],
            refused=[admin_pb.RefusedCheckpoint(path=str(p), reason=r) for p, r in result.refused],
            unloaded=[_version(pv) for pv in result.unloaded],
            serving=[_version(pv) for versions in self.registry.list() for pv in versions],
        )
