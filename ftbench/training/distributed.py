"""One code path from a single CPU process to many GPUs (torchrun + FSDP2)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed() -> DistContext:
    """Read torchrun's environment; the backend follows the device (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local_rank, device)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world
    return value


def parallelize(model: torch.nn.Module, ctx: DistContext, *, activation_checkpointing: bool,
                compile: bool) -> torch.nn.Module:
    """The fixed order: activation checkpointing, compile, fully_shard per block, root."""
    blocks = list(model.blocks)
    encoder_block = getattr(getattr(model, "encoder", None), "block", None)
    if encoder_block is not None:
        blocks.append(encoder_block)
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            checkpoint_wrapper)
        for i, block in enumerate(model.blocks):
            model.blocks[i] = checkpoint_wrapper(block)
        blocks = list(model.blocks) + ([encoder_block] if encoder_block is not None else [])
    if compile:
        for block in blocks:
            block.compile()
    if ctx.distributed:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(ctx.device.type, (ctx.world,))
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


def shutdown(ctx: DistContext) -> None:
    """Tear the process group down so torchrun's processes exit cleanly."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
