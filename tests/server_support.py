"""Helpers of the server tests (tests/test_server_*.py): real servers on [::]:0, checkpoints
written by ``metarl.core.checkpoint.save_checkpoint``, and raw stubs (no SDK, so the tests see
exactly what goes over the wire)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from metarl.core import policies
from metarl.core.checkpoint import Checkpoint, save_checkpoint
from metarl.core.inner_loop import InnerLoopConfig
from metarl.core.policies import PolicySpec
from metarl_client.proto.metarl.v1 import admin_service_pb2 as admin_pb
from metarl_client.proto.metarl.v1 import admin_service_pb2_grpc as admin_grpc
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.tensors import from_tensor, to_tensor
from metarl_server.app import ServeConfig, Server, build_registry, create_server
from metarl_server.registry import PolicyRegistry

NAV_SPEC = PolicySpec(obs_dim=2, action_dim=2, distribution="gaussian", hidden_sizes=(64, 64))
UNREGISTERED_ENV = "test/Unregistered-v0"  # spaces then come from the architecture


def make_checkpoint(
    path: Path,
    name: str = "nav",
    version: str = "1",
    spec: PolicySpec = NAV_SPEC,
    seed: int = 0,
    env_id: str = UNREGISTERED_ENV,
    inner: InnerLoopConfig | None = None,
    learned_lr: bool = False,
) -> Path:
    """A checkpoint with random parameters (θ need not be meta-trained to test serving)."""
    gen = torch.Generator().manual_seed(seed)
    params = {
        k: v + 0.2 * torch.randn(v.shape, generator=gen)
        for k, v in policies.init_params(spec, gen).items()
    }
    lrs = (
        {k: torch.full_like(v, 0.05) + 0.01 * torch.rand(v.shape, generator=gen)
         for k, v in params.items()}
        if learned_lr
        else None
    )  # fmt: skip
    ckpt = Checkpoint(
        name=name,
        version=version,
        env_id=env_id,
        spec=spec,
        inner_loop=inner or InnerLoopConfig(lr=0.1, steps=1),
        params=params,
        learning_rates=lrs,
    )
    return save_checkpoint(ckpt, path)


@contextlib.contextmanager
def serving(
    registry: PolicyRegistry | None = None, **cfg: Any
) -> Iterator[tuple[Server, grpc.Channel]]:
    """A started server (bundled policies unless ``registry``) and a channel to it."""
    config = ServeConfig(**cfg)
    registry = registry if registry is not None else build_registry(config)
    server, port = create_server("[::]:0", registry, config)
    server.start()
    channel = grpc.insecure_channel(f"localhost:{port}")
    try:
        yield server, channel
    finally:
        channel.close()
        server.stop(None).wait(10)


def stub(channel: grpc.Channel) -> pb_grpc.PolicyServiceStub:
    return pb_grpc.PolicyServiceStub(channel)


def admin_stub(channel: grpc.Channel) -> admin_grpc.ModelAdminServiceStub:
    return admin_grpc.ModelAdminServiceStub(channel)


def create(s: pb_grpc.PolicyServiceStub, policy: str, **kw: Any) -> str:
    return str(s.CreateSession(pb.CreateSessionRequest(policy=policy, **kw)).session.id)


def act(
    s: pb_grpc.PolicyServiceStub, sid: str, obs: Any, deterministic: bool = False, **kw: Any
) -> tuple[np.ndarray, np.ndarray]:
    resp = s.Act(
        pb.ActRequest(
            session_id=sid, observations=to_tensor(np.asarray(obs)), deterministic=deterministic,
            **kw,
        )
    )  # fmt: skip
    return from_tensor(resp.actions), from_tensor(resp.log_probs)


def episode_proto(obs: Any, acts: Any, rewards: Any, terminated: bool = True) -> pb.Episode:
    return pb.Episode(
        observations=to_tensor(np.asarray(obs)),
        actions=to_tensor(np.asarray(acts)),
        rewards=to_tensor(np.asarray(rewards, dtype=np.float32)),
        terminated=terminated,
    )


def random_episodes(
    n: int, length: int, obs_dim: int, action_dim: int | None, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(obs, actions, rewards)``; ``action_dim`` None: discrete actions 0/1."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs = rng.normal(size=(length, obs_dim)).astype(np.float32) * 0.5
        acts = (
            rng.integers(0, 2, size=length)
            if action_dim is None
            else rng.normal(size=(length, action_dim)).astype(np.float32)
        )
        out.append((obs, acts, rng.uniform(-1, 1, size=length).astype(np.float32)))
    return out


def reload(channel: grpc.Channel) -> admin_pb.ReloadModelsResponse:
    return admin_stub(channel).ReloadModels(admin_pb.ReloadModelsRequest())
