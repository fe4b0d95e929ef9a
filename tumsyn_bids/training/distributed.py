"""One code path for a single process and for ``torchrun`` (one or many nodes).

``torchrun`` exports ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; when they are present we join the
process group (NCCL on GPUs, gloo on CPUs, which is what the CI tests use) and wrap the model in
DistributedDataParallel. Without them everything runs as rank 0 of 1 and no group is created, so
the same command works on a laptop, a GPU workstation and a SLURM allocation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..model.inference import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and logs; the others only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all ranks (a no-op in a single process)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._reduce_device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    @property
    def _reduce_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` when there is more than one rank."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the ``torchrun`` process group if there is one and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown(ctx: DistributedContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
