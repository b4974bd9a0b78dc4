"""The HalfCheetahVel family's former module: it lives in :mod:`metarl_envs.half_cheetah`."""

from __future__ import annotations

from metarl_envs.half_cheetah import (
    CTRL_COST,
    VELOCITY_HIGH,
    VELOCITY_LOW,
    BatchedHalfCheetahVel,
    HalfCheetahVelEnv,
)

__all__ = [
    "CTRL_COST",
    "VELOCITY_HIGH",
    "VELOCITY_LOW",
    "BatchedHalfCheetahVel",
    "HalfCheetahVelEnv",
]
