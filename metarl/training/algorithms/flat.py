"""Parameter dicts as one flat vector (for conjugate gradient and for all-reducing at once)."""

from __future__ import annotations

import torch
from torch import Tensor

from metarl.core.policies import Params


def flatten(*groups: Params) -> Tensor:
    """The tensors of ``groups``, in order, concatenated into one vector."""
    return torch.cat([t.reshape(-1) for group in groups for t in group.values()])


def unflatten(vector: Tensor, *like: Params) -> list[Params]:
    """Splits ``vector`` back into dicts shaped like ``like`` (the inverse of :func:`flatten`)."""
    out: list[Params] = []
    offset = 0
    for group in like:
        part: Params = {}
        for name, t in group.items():
            part[name] = vector[offset : offset + t.numel()].view_as(t)
            offset += t.numel()
        out.append(part)
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} elements, the parameters {offset}")
    return out
