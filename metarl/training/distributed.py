"""Data-parallel meta-training over ``torchrun`` processes (gloo, CPU).

``torchrun --nproc_per_node=N -m metarl.train ...`` starts N copies of the trainer. Every process
draws the same meta-batch of tasks, takes its own contiguous share of them, samples and computes
only those, and sums its share of every quantity that is a mean over tasks (meta-gradients,
TRPO's Fisher-vector products, surrogate and KL values, logged returns) with the others'
(all-reduce). Each quantity is divided by the global number of tasks before the sum, so every
process ends with the global mean and takes the same update: the parameters stay identical
everywhere without being broadcast. Episodes come from per-task random streams, so N processes
sample exactly what one would, and the run matches a single process up to the order of float
additions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Context:
    """This process's place in the run (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, metrics and the progress bar."""
        return self.rank == 0

    def task_share(self, num_tasks: int) -> slice:
        """The contiguous slice of a meta-batch's tasks this process handles (balanced)."""
        if num_tasks < self.world_size:
            raise ValueError(
                f"meta-batch of {num_tasks} tasks cannot be split over {self.world_size} "
                "processes: use --meta-batch-size of at least the number of processes"
            )
        lo = self.rank * num_tasks // self.world_size
        hi = (self.rank + 1) * num_tasks // self.world_size
        return slice(lo, hi)

    def sum_(self, t: Tensor) -> Tensor:
        """Sums ``t`` over all processes, in place; returns it."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def init() -> Context:
    """Joins the process group ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Context(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )


def shutdown(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def default_threads(ctx: Context) -> int:
    """Torch threads per process: the machine's cores shared among the local processes, so N
    processes never run more threads than there are cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // ctx.local_world_size)


def sum_tensor(ctx: Context, values: list[float]) -> list[float]:
    """Sums a few Python floats over all processes (float64)."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    ctx.sum_(t)
    return t.tolist()
