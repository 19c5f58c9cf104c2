"""One code path from a single CPU process to many GPUs (torchrun + FSDP2)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_MINUTES = 30.0
"""A collective that waits longer than this aborts the job (NCCL's own default is 10)."""
HOST_WAIT_HOURS = 12.0
"""How long ranks wait for rank 0's host work (building data, writing an export)."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    host_group: object = None
    """A gloo group for waiting on rank 0's host work: its barrier has its own long
    timeout, so the device group's (minutes) can stay short enough to catch a hang."""
    one_rank_fsdp: bool = False
    """A process group of one rank run as if sharded: FSDP2 units (and in bf16 their
    MixedPrecisionPolicy) and every collective, as on many ranks. For checks on one
    device of what a multi-GPU run does; needs an initialised process group."""
    ranks_per_node: int | None = None
    """torchrun's LOCAL_WORLD_SIZE: where the job spans nodes, run.shard_ranks 0 shards
    within a node and replicates across nodes (HSDP)."""
    mesh: object = None
    """A device mesh made ahead (ftbench.doctor.rehearsal makes it before it enters fake
    tensor mode, where a mesh cannot be built); None: parallelize() makes one."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1 or self.one_rank_fsdp


def init_distributed(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistContext:
    """Read torchrun's environment; the backend follows the device (NCCL on GPUs, gloo on
    CPU). NCCL gets its device up front (`device_id`: no guessing at the first collective)
    and `timeout_minutes` for every collective. On CPU, FTBENCH_DEVICE_RULE=nccl makes
    collectives refuse host tensors as NCCL would (ftbench.training.device_rule)."""
    from ftbench.training.device_rule import install_from_env

    install_from_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    timeout = timedelta(minutes=timeout_minutes)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl", timeout=timeout, device_id=device)
    else:
        device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=timeout)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return DistContext(rank, world, local_rank, device, host_group=new_host_group(),
                       ranks_per_node=local_world)


def new_host_group():
    """The gloo group behind `wait_for_main` (collective: every rank calls it)."""
    return dist.new_group(backend="gloo", timeout=timedelta(hours=HOST_WAIT_HOURS))


def barrier(ctx: DistContext) -> None:
    """Every rank reaches this point; bounded by the device group's timeout."""
    if ctx.distributed:
        dist.barrier()


def wait_for_main(ctx: DistContext) -> None:
    """A barrier for ranks that wait while rank 0 does long host work (data preparation,
    writing an export): on the host group, so the device group's short timeout does not
    abort the waiting ranks."""
    if ctx.distributed:
        dist.barrier(group=ctx.host_group)  # None (a context made by hand): the default group


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean over ranks of a tensor on the run's device (NCCL takes no host tensor); stack
    scalars into one tensor to reduce them in one collective."""
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world
    return value


CHECKPOINTING = ("none", "full", "selective")


def checkpoint_policy(run) -> str:
    """run.activation_checkpointing and run.checkpoint_policy as one of CHECKPOINTING."""
    return run.checkpoint_policy if run.activation_checkpointing else "none"


def shard_ranks(world: int, ranks_per_node: int | None, requested: int = 0) -> int:
    """Ranks each parameter is sharded over; the job's other ranks hold replicas (HSDP).
    0: one node's ranks when the job spans nodes (gathers then stay on NVLink), else all."""
    if requested:
        if requested < 1 or world % requested:
            raise ValueError(f"run.shard_ranks={requested} does not divide the job's "
                             f"{world} ranks; use a divisor of {world} (0: one node's ranks)")
        return requested
    if ranks_per_node and ranks_per_node < world and world % ranks_per_node == 0:
        return ranks_per_node
    return world


def device_mesh(ctx: DistContext, requested_shard_ranks: int = 0):
    """The FSDP2 mesh: 1-D over every rank, or 2-D (replicate, shard) for HSDP."""
    from torch.distributed.device_mesh import init_device_mesh

    shard = shard_ranks(ctx.world, ctx.ranks_per_node, requested_shard_ranks)
    if shard == ctx.world:
        return init_device_mesh(ctx.device.type, (ctx.world,))
    return init_device_mesh(ctx.device.type, (ctx.world // shard, shard),
                            mesh_dim_names=("replicate", "shard"))


def _saved_by_selective_checkpointing():
    """The ops whose outputs selective checkpointing keeps (as torchtitan's op-level SAC):
    matmuls and attention, where the FLOPs are. Norms, RoPE, SiLU and the products are
    recomputed in the backward: a few memory-bound kernels instead of a second forward."""
    ops = [torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
           torch.ops.aten.bmm.default]
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention",
                 "_scaled_dot_product_flash_attention_for_cpu"):
        if hasattr(torch.ops.aten, name):
            ops.append(getattr(torch.ops.aten, name).default)
    return ops


def _checkpointed(block: torch.nn.Module, policy: str) -> torch.nn.Module:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if policy == "full":
        return checkpoint_wrapper(block)
    import functools

    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    saved = set(_saved_by_selective_checkpointing())

    def choose(ctx, op, *args, **kwargs):
        return (CheckpointPolicy.MUST_SAVE if op in saved
                else CheckpointPolicy.PREFER_RECOMPUTE)

    return checkpoint_wrapper(block, context_fn=functools.partial(
        create_selective_checkpoint_contexts, choose))


def parallelize(model: torch.nn.Module, ctx: DistContext, *,
                activation_checkpointing: bool | str, compile: bool,
                param_dtype: torch.dtype | None = None,
                shard_ranks: int = 0) -> torch.nn.Module:
    """The fixed order: activation checkpointing, compile, fully_shard per unit, root.

    `activation_checkpointing`: "full" (True) recomputes each block's forward in the
    backward; "selective" keeps its matmul and attention outputs and recomputes the rest;
    "none" (False) keeps everything.

    `param_dtype` (bf16 runs): every unit gathers its weights in that dtype and reduces
    gradients in fp32 (FSDP2's MixedPrecisionPolicy), over fp32 sharded weights and AdamW
    state. Gathers move half the bytes, autocast finds bf16 weights and keeps no copies of
    its own, and the residual stream is bf16 from the embedding on.

    `shard_ranks` (see shard_ranks()): with fewer than all ranks, a 2-D mesh shards within
    groups of that many ranks and replicates across them (HSDP): the per-block gathers stay
    inside a node and only the gradients' all-reduce crosses the network.

    FSDP units (distributed runs): each decoder block; the encoder block; the rest of the
    encoder (zeta, readout) grouped with W_post; the root (embeddings, final norm, head).
    W_post is 2^H x D (0.1B parameters at 1.5B): left in the root, its gradient would be
    reduced only after the whole backward, with nothing to overlap. It shares a unit with
    the encoder because the Binary Mapper reads `post_sampler.weight` directly instead of
    calling the module: FSDP2 gathers a unit when any of its modules starts its forward,
    and the encoder always runs just before the mapper. A grouped module that never runs
    forward is completed by the root's post-forward (torch's `_force_complete...`), so
    W_post stays gathered from the encoder's forward through the backward, and its
    gradient is reduce-scattered once the encoder's backward is done.
    """
    policy = {True: "full", False: "none"}.get(activation_checkpointing,
                                               activation_checkpointing)
    if policy not in CHECKPOINTING:
        raise ValueError(f"activation checkpointing {policy!r}: expected one of "
                         f"{', '.join(CHECKPOINTING)}")
    encoder = getattr(model, "encoder", None)
    post_sampler = getattr(model, "post_sampler", None)
    if policy != "none":
        for i, block in enumerate(model.blocks):
            model.blocks[i] = _checkpointed(block, policy)
        if encoder is not None:
            # The encoder block's activations are as large as a decoder block's.
            encoder.block = _checkpointed(encoder.block, policy)
    blocks = list(model.blocks) + ([encoder.block] if encoder is not None else [])
    if compile:
        for block in blocks:
            block.compile()
    if ctx.distributed:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        _quiet_expected_unit_warning()
        mesh = ctx.mesh if ctx.mesh is not None else device_mesh(ctx, shard_ranks)
        mp = (MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
              if param_dtype is not None else MixedPrecisionPolicy())
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        if encoder is not None and post_sampler is not None:
            fully_shard([encoder, post_sampler], mesh=mesh, mp_policy=mp)
        # The root's float input is Z's uniforms: cast to bf16 they would keep 8 bits and
        # draw other codes than one device does. Inner units cast their (bf16) inputs.
        root_mp = (MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                        cast_forward_inputs=False)
                   if param_dtype is not None else mp)
        fully_shard(model, mesh=mesh, mp_policy=root_mp)
        _forward_prefetch(model, encoder)
    return model


class _PostSamplerNeverRunsForward(logging.Filter):
    """FSDP2 warns, every step on every rank, that a grouped module did not run forward:
    W_post's, by design (see parallelize). Only that warning is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("did not run forward before backward" in message
                    and "did not run forward: [FSDPEmbedding(" in message
                    and message.count("FSDP") <= 3)


def _quiet_expected_unit_warning() -> None:
    log = logging.getLogger("torch.distributed.fsdp._fully_shard._fsdp_state")
    if not any(isinstance(f, _PostSamplerNeverRunsForward) for f in log.filters):
        log.addFilter(_PostSamplerNeverRunsForward())


def _forward_prefetch(model: torch.nn.Module, encoder: torch.nn.Module | None) -> None:
    """Gather the next unit while this one computes. Backward needs nothing: FSDP2
    prefetches in reverse forward order by default. The encoder runs between blocks L/2
    and L/2+1, so block L/2 prefetches it."""
    order = list(model.blocks)
    if encoder is not None:
        half = len(order) // 2
        order = order[:half] + [encoder, encoder.block] + order[half:]
    for unit, nxt in zip(order, order[1:]):
        if hasattr(unit, "set_modules_to_forward_prefetch"):
            unit.set_modules_to_forward_prefetch([nxt])


def shutdown(ctx: DistContext) -> None:
    """Tear the process group down so torchrun's processes exit cleanly."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
