"""Data-parallel training of one evaluation over several GPUs (or gloo processes on a CPU host).

torchrun starts the ranks; each one holds the base model and the same fresh LoRA adapter, takes its share
of every step's micro-batches, and the gradients of the LoRA parameters (a few MB) are summed across ranks
before the optimizer step. Every rank computes the whole step plan, so the step's token count (the loss
normaliser) needs no communication, and the result does not depend on the number of ranks (up to float
summation order). Validation is split the same way and its sums reduced: one loss over the whole set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list[Any]) -> list[Any]:
        """This rank's part of a list every rank holds in the same order."""
        return items[self.rank :: self.size]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over the ranks (a no-op for one process)."""
        if self.size > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on any rank: ranks then take the same branch."""
        if self.size == 1:
            return flag
        value = torch.tensor(float(flag), device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over the ranks, in one flat buffer."""
        if self.size == 1:
            return
        for p in params:
            if p.grad is None:  # a rank with no micro-batch this step
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
        self.sum(flat)
        offset = 0
        for p in params:
            count = p.numel()
            p.grad.copy_(flat[offset : offset + count].view_as(p))  # type: ignore[union-attr]
            offset += count


SINGLE = World()


def world_from_env() -> World:
    """The rank and world size torchrun sets (one process otherwise)."""
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def start(world: World, device: torch.device) -> None:
    """Join the process group (NCCL on GPUs, gloo on the CPU); nothing for one process."""
    if world.size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.distributed.init_process_group(backend="nccl", device_id=device)
        else:
            torch.distributed.init_process_group(backend="gloo")


def stop() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
