"""The few distributed primitives the trainer needs; one process without torchrun.

Under `torchrun --nproc_per_node N` every process trains on its shard (gloo on CPU, nccl on
GPU); evaluation shards the split without padding and gathers every row exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.common.devices import parse_device


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when available, else CPU; under torchrun each process takes its GPU."""
    device = parse_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(device_name: str) -> Context:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size == 1:
        return Context(0, 1, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(value: Any, context: Context) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not context.distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, context: Context) -> Any:
    """Rank 0's `value` on every rank (e.g. a run directory chosen by rank 0)."""
    if not context.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def mean_across(value: float, context: Context) -> float:
    if not context.distributed:
        return value
    return sum(gather_objects(value, context)) / context.world_size


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def all_true(flag: torch.Tensor, context: Context) -> bool:
    """Whether a boolean device tensor is true on every rank. Every rank must call it at the
    same point, so that a condition seen by one rank (a non-finite loss) stops them all."""
    value = flag.to(torch.int32)
    if context.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
